"""``benchmarks/tier_time.py``: a run folder's point records as one row of what its trainings cost,
a sitting picked by time, and bad input refused before the CSV is touched."""
from __future__ import annotations

import json
import os
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest
from script_loader import script_fixture

from mirl_lib.files.paths import CHECKOUT

bench = script_fixture(CHECKOUT / "benchmarks" / "tier_time.py", "tier_time_bench")
T0 = 1_764_900_000.0  # 2025-12-05T02:00Z


def point(run: Path, seed: int, strategy: str, rnd: int, train: float, finished: float,
          malloc: str | None = None, capability: str | None = None) -> None:
    folder = run / f"seed_{seed}" / strategy / (f"round_{rnd:02d}" if rnd else "")
    folder.mkdir(parents=True)
    record = {"seed": seed, "phase_seconds": {"train": train, "evaluate": 2.0},
              "seconds": train + 5, "machine": "AMD EPYC", "threads": 1}
    if malloc:
        record["malloc"] = malloc
    if capability:
        record["cpu_capability"] = capability
    path = folder / "point.json"
    path.write_text(json.dumps(record))
    os.utime(path, (finished, finished))


def test_a_run_and_one_of_its_sittings(bench: ModuleType, tmp_path: Path) -> None:
    run, out = tmp_path / "run", tmp_path / "tier.csv"
    for i, train in enumerate((100.0, 200.0, 300.0, 400.0)):  # the first: seed_0/dense/
        point(run, seed=i % 2, strategy="dense" if i == 0 else "rewind", rnd=i, train=train,
              finished=T0 + 600 * i)
    log = tmp_path / "run.log"
    log.write_text("[1/5] data: finished in 2 s\nStudy finished in 30.0 min: /x\n")
    assert bench.main([str(run), "--label", "all", "--log", str(log), "--malloc", "system",
                       "--out", str(out)]) == 0
    row = pd.read_csv(out).set_index("label").loc["all"]
    assert (row["points"], row["seeds"], row["malloc"]) == (4, 2, "system")
    assert row["cpu_capability"] == "not recorded"  # the points do not say
    assert row["train_s_median"] == 250.0 and row["point_s_median"] == 255.0
    assert row["train_s_p10"] == pytest.approx(130.0) and row["train_s_p90"] == 370.0
    assert row["wall_min"] == 30.0 and row["seeds_per_hour"] == 4.0  # 2 seeds in half an hour
    # the last two points only: their span, no seeds per hour
    assert bench.main([str(run), "--label", "late", "--since", "2025-12-05T02:15",
                       "--malloc", "system", "--out", str(out)]) == 0
    table = pd.read_csv(out).set_index("label")
    late = table.loc["late"]
    assert late["points"] == 2 and late["train_s_median"] == 350.0
    assert late["wall_min"] == pytest.approx((1800 - (1200 - 305)) / 60, abs=0.05)
    assert pd.isna(late["seeds_per_hour"]) and list(table.index) == ["all", "late"]
    # a rerun of a label replaces its row
    assert bench.main([str(run), "--label", "all", "--malloc", "system", "--out",
                       str(out)]) == 0
    assert list(pd.read_csv(out)["label"]) == ["late", "all"]


def test_recorded_allocator_and_bad_input(bench: ModuleType, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    run, out = tmp_path / "run", tmp_path / "tier.csv"
    point(run, 0, "dense", 0, 100.0, T0, malloc="tuned", capability="AVX512")
    point(run, 1, "dense", 0, 120.0, T0 + 10, malloc="tuned", capability="AVX512")
    # a file from before the cpu_capability column: its row reads "not recorded"
    pd.DataFrame([{"label": "old", "machine": "AMD EPYC", "malloc": "system"}]).to_csv(
        out, index=False)
    assert bench.main([str(run), "--label", "tuned", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert table["malloc"].tolist() == ["system", "tuned"]
    assert table["cpu_capability"].tolist() == ["not recorded", "AVX512"]
    out.unlink()
    assert bench.main([str(run), "--label", "tuned", "--out", str(out)]) == 0
    before = out.read_bytes()
    cases = [([str(run), "--label", "x", "--malloc", "system"], "not --malloc system"),
             ([str(tmp_path / "none"), "--label", "x"], "no such run folder"),
             ([str(run), "--label", "x", "--since", "yesterday"], "--since 'yesterday'"),
             ([str(run), "--label", "x", "--since", "2030-01-01T00:00"], "no finished point"),
             ([str(run), "--label", "x", "--log", str(tmp_path / "none.log")], "cannot read")]
    for argv, problem in cases:
        assert bench.main([*argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and problem in err, err
    log = tmp_path / "unfinished.log"
    log.write_text("[1/5] data: finished in 2 s\n")
    assert bench.main([str(run), "--label", "x", "--log", str(log), "--out", str(out)]) == 2
    assert "did not end" in capsys.readouterr().err
    old = tmp_path / "old"
    point(old, 0, "dense", 0, 100.0, T0)
    assert bench.main([str(old), "--label", "x", "--out", str(out)]) == 2
    assert "give --malloc" in capsys.readouterr().err
    assert out.read_bytes() == before  # nothing written by a refused run
