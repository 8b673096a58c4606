"""--gpus N / train.gpus: every point's training runs under torchrun with N ranks (tested with
gloo on CPU, 2 ranks) and trains like one process (same schedule, statistically the same batches)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml

from mirl_lib.config import load_config
from mirl_lib.errors import ConfigError
from mirl_lib.lottery import Study
from mirl_lib.tensorio import load_tensors

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "params" / "smoke.yaml"
SMALL = {"prune": {"rounds": 1}, "study": {"branches": ["reinit"], "branch_remaining": [0.8]}}


def study(tmp_path: Path, name: str, gpus: int) -> Study:
    cfg = load_config(SMOKE, overrides={**SMALL, "train": {"gpus": gpus},
                                        "study": {**SMALL["study"], "name": name}})
    return Study(cfg, tmp_path / name)


def test_two_ranks_train_every_point_like_one_process(tmp_path: Path) -> None:
    runs = {}
    for gpus in (0, 2):
        run = study(tmp_path, f"gpus{gpus}", gpus)
        runs[gpus] = run
        for strategy, rnd in run.points():
            record = run.run_point(0, strategy, rnd)
            assert record["strategy"] == strategy
    for strategy, rnd in runs[2].points():
        final = [load_tensors(runs[g].point_dir(0, strategy, rnd) / "final.pt") for g in (0, 2)]
        assert [f["meta"]["world_size"] for f in final] == [1, 2]
        # each rank draws its own half of the global batch (seeded by rank), so the samples differ
        # from one process's: the same schedule and statistics, not the same numbers
        losses = [pd.read_csv(runs[g].point_dir(0, strategy, rnd) / "history.csv")["loss"]
                  for g in (0, 2)]
        assert len(losses[0]) == len(losses[1])
        assert abs(losses[0].iloc[-1] - losses[1].iloc[-1]) < 0.25 * losses[0].iloc[-1]
        records = [runs[g].records().set_index(["strategy", "round"]) for g in (0, 2)]
        gap = abs(records[0].loc[(strategy, rnd), "mean_psnr"]
                  - records[1].loc[(strategy, rnd), "mean_psnr"])
        assert gap < 1.0, (strategy, rnd, gap)


def test_gpus_must_divide_the_batch() -> None:
    with pytest.raises(ConfigError, match="train.gpus: batch_size 2 is not divisible by 3"):
        load_config(SMOKE, overrides={"train": {"gpus": 3}})


def test_run_all_gpus_flag_reaches_every_training(tmp_path: Path) -> None:
    spec = yaml.safe_load(SMOKE.read_text())
    for section, values in SMALL.items():
        spec[section].update(values) if section in spec else spec.setdefault(section, values)
    spec["study"]["name"] = "flag"
    params = tmp_path / "flag.yaml"
    params.write_text(yaml.safe_dump(spec))
    out = subprocess.run([str(REPO / "run_all.sh"), str(params), "--results", str(tmp_path),
                          "--gpus", "2"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    run = Study(load_config(params), tmp_path / "flag")
    for strategy, rnd in run.points():
        meta = load_tensors(run.point_dir(0, strategy, rnd) / "final.pt")["meta"]
        assert meta["world_size"] == 2, (strategy, rnd)
    dense = nbformat.read(tmp_path / "flag" / "notebooks" / "01_dense.ipynb", as_version=4)
    injected = [c for c in dense.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert 'overrides = {"train": {"gpus": 2}}' in injected[0].source
    # the run folder is the same study: gpus is a runtime setting, not identity
    assert run.cfg.hash() == load_config(tmp_path / "flag" / "config.yaml").hash()
