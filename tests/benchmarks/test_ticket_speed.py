"""``benchmarks/ticket_speed.py``: four networks at matched sizes, their rows, bad input refused."""
from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest
import torch
from script_loader import script_fixture

from mirl_lib.core.device import device_name
from mirl_lib.files.paths import CHECKOUT

SCRIPT = CHECKOUT / "benchmarks" / "ticket_speed.py"
SMOKE = CHECKOUT / "params" / "smoke.yaml"
bench = script_fixture(SCRIPT, "ticket_speed_bench")


def quick(out: Path, *extra: str) -> list[str]:
    return ["--params", str(SMOKE), "--quick", "--side", "32", "--threads", "1",
            "--remaining", "0.6", "--out", str(out), *extra]


@pytest.mark.slow  # runs the benchmark
def test_quick_run_measures_four_networks_at_matched_sizes(
        bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ticket_speed.csv"
    other = dict.fromkeys(bench.COLUMNS, 1) | {"device": "Other CPU", "network": "dense"}
    pd.DataFrame([other], columns=list(bench.COLUMNS)).to_csv(out, index=False)
    assert bench.main(quick(out, "--run", str(tmp_path))) == 0  # an empty run: weights made
    table = pd.read_csv(out)
    assert list(table.columns) == list(bench.COLUMNS)
    ours = table[table["device"] == device_name(torch.device("cpu"))].set_index("network")
    assert table["device"].tolist()[0] == "Other CPU"
    assert list(ours.index) == list(bench.KINDS)
    assert ours.at["dense", "remaining_all"] == 1.0 and ours.at["dense", "forward_speedup"] == 1.0
    sized = ours.loc[["unstructured", "small_dense", "structured"]]
    assert (sized["round"] == 2).all()
    # matched sizes: within 5% of the dense network's count of each other (tiny preset: coarse)
    assert (sized["remaining_all"] - sized["remaining_all"].mean()).abs().max() < 0.05
    assert (ours["forward_ms"] > 0).all() and (ours["train_ms_per_step"] > 0).all()
    assert (ours["peak_forward_mb"] > 0).all()
    assert ours.at["structured", "source"].startswith("channels of the dense network")
    assert ours.at["structured", "parameters"] < ours.at["dense", "parameters"]
    assert ours["strategy"].to_dict() == bench.KIND_STRATEGY
    assert set(ours["device_type"]) == {"cpu"}
    captured = capsys.readouterr()
    assert "threads 1: forward passes" in captured.err and "wrote" in captured.out


def test_bad_input_fails_with_one_line_and_keeps_the_csv(
        bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ticket_speed.csv"
    out.write_text("not,a\n\"ticket_speed csv")
    before = out.read_bytes()
    for extra, message in ((["--side", "30"], "--side 30"),
                           (["--remaining", "1.5"], "--remaining '1.5'"),
                           (["--threads", "0"], "--threads '0'"),
                           (["--run", str(tmp_path / "nowhere")], "no such run folder"),
                           ([], str(out))):
        assert bench.main(quick(out, *extra)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
        assert out.read_bytes() == before


def test_rows_written_before_the_strategy_column_get_it_from_their_network(
        bench: ModuleType) -> None:
    from mirl_lib.core.names import DENSE, TRUNK
    from mirl_lib.study.strategies import REGISTRY

    old = pd.DataFrame({"device": ["AMD EPYC", "NVIDIA H200", "AMD EPYC"],
                        "network": ["dense", "unstructured", "structured"],
                        "strategy": [None, None, "kept"], "device_type": [None, None, "cuda"]})
    rows = bench.completed(old)
    assert rows["strategy"].tolist()[:2] == [DENSE, TRUNK] and rows.at[2, "strategy"] == "kept"
    assert rows["device_type"].tolist() == ["cpu", "cuda", "cuda"]
    assert set(bench.KIND_STRATEGY.values()) <= set(REGISTRY)  # every kind is a study's point
