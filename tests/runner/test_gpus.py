"""--gpus N / train.gpus: every point's training runs under torchrun with N ranks (tested with gloo
on CPU, 2 ranks) and trains like one process (same schedule, statistically the same batches)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml

from mirl_lib.core.config import load_config
from mirl_lib.core.errors import ConfigError
from mirl_lib.files.paths import CHECKOUT
from mirl_lib.files.tensors import load_tensors
from mirl_lib.study.study import Study

pytestmark = pytest.mark.slow  # trains under torchrun

REPO = CHECKOUT
SMOKE = REPO / "params" / "smoke.yaml"
SMALL = {"prune": {"rounds": 1}, "study": {"strategies": ["reinit"], "branch_remaining": [0.8]}}


@pytest.fixture(scope="module")
def flag_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Study]:
    """The small study through ``./run_all.sh --gpus 2``: every training under torchrun with two
    gloo ranks on the CPU. Returns its params file and study."""
    folder = tmp_path_factory.mktemp("gpus")
    spec = yaml.safe_load(SMOKE.read_text())
    for section, values in SMALL.items():
        spec[section].update(values) if section in spec else spec.setdefault(section, values)
    spec["study"]["name"] = "flag"
    params = folder / "flag.yaml"
    params.write_text(yaml.safe_dump(spec))
    out = subprocess.run([str(REPO / "run_all.sh"), str(params), "--results", str(folder),
                          "--gpus", "2"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    return params, Study(load_config(params), folder / "flag")


def test_two_ranks_train_every_point_like_one_process(tmp_path: Path,
                                                      flag_run: tuple[Path, Study]) -> None:
    params, two = flag_run
    one = Study(load_config(params, overrides={"train": {"gpus": 0}}), tmp_path / "flag")
    runs = {0: one, 2: two}
    for strategy, rnd in one.points():
        assert one.run_point(0, strategy, rnd)["strategy"] == strategy
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


def test_run_all_gpus_flag_reaches_every_training(flag_run: tuple[Path, Study]) -> None:
    params, run = flag_run
    for strategy, rnd in run.points():
        meta = load_tensors(run.point_dir(0, strategy, rnd) / "final.pt")["meta"]
        assert meta["world_size"] == 2, (strategy, rnd)
    dense = nbformat.read(run.run_dir / "notebooks" / "01_dense.ipynb", as_version=4)
    injected = [c for c in dense.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert 'overrides = {"train": {"gpus": 2}}' in injected[0].source
    # the run folder is the same study: gpus is a runtime setting, not identity
    assert run.cfg.hash() == load_config(run.run_dir / "config.yaml").hash()
