"""The runner: the smoke study end to end through ./run_all.sh and papermill (the session's
``smoke_run``, interrupted once and resumed), forcing a stage, bad params, and the notebook-free
rerun script (which also shows the schedule's waits)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from smoke import SmokeRun, run_all

from mirl_lib.core.config import load_config
from mirl_lib.files.paths import CHECKOUT
from mirl_lib.runner.papermill import executed_notebook
from mirl_lib.study.graph import dependencies, stage_list
from mirl_lib.study.study import Study

pytestmark = pytest.mark.slow  # runs studies through ./run_all.sh

REPO = CHECKOUT
SMOKE = REPO / "params" / "smoke.yaml"


def test_resumed_run_skips_finished_stages(smoke_run: SmokeRun) -> None:
    log = smoke_run.log
    for stage in ("dense", "round_01"):
        assert f"{stage}: done already" in log  # no training repeated
    assert "data: running" in log  # seconds-long stages without points always rerun
    assert "round_03: finished" in log and "Study finished" in log
    # the first stage started once the warm start had imported torch, the study and papermill
    assert re.search(r"^warm start: imported in \d+ s$", log, re.M), log
    assert log.index("warm start: imported") < log.index("data: running")


def test_every_artifact_exists_and_is_consistent(smoke_run: SmokeRun) -> None:
    run_dir = smoke_run.run_dir
    cfg = load_config(SMOKE)
    study = Study(cfg, run_dir)
    for name in ("config.yaml", "metrics.csv", "catalog.csv", "summary.md", "report.html",
                 "data_preview.png", "figures/psnr_vs_remaining.png", "figures/layer_density.png",
                 "figures/training_curves.png"):
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name
    metrics = pd.read_csv(run_dir / "metrics.csv")
    expected_cols = {"seed", "strategy", "round", "remaining_all", "remaining_prunable", "task",
                     "dataset", "image", "psnr", "ssim", "input_psnr", "input_ssim", "config_hash"}
    assert expected_cols <= set(metrics.columns)
    assert set(metrics["strategy"]) == {"dense", "rewind", *cfg.study.strategies}
    assert len(metrics) == len(study.points()) * len(study.test_items())
    assert set(metrics["task"]) == set(cfg.data.tasks)
    summary = (run_dir / "summary.md").read_text()
    assert "## Answer" in summary
    assert re.search(r"Ticket vs the dense network: \*\*not worse than the dense network by more "
                     r"than 0\.25 dB: (shown|not shown|undecidable|cannot be tested)\*\*", summary)
    for stage in stage_list(study):
        notebook = executed_notebook(stage, run_dir / "notebooks")
        nb = nbformat.read(notebook, as_version=4)
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert injected and str(SMOKE) in injected[0].source, notebook
        assert not any(o.get("output_type") == "error"
                       for c in nb.cells for o in c.get("outputs", []))
    html = (run_dir / "report.html").read_text()
    assert "data:image/png;base64" in html
    record = json.loads((study.point_dir(0, "rewind", 3) / "point.json").read_text())
    assert record["remaining_prunable"] == pytest.approx(0.8 ** 3, abs=0.01)


def test_force_moves_a_stage_aside_and_reruns_it(smoke_run: SmokeRun) -> None:
    run_dir = smoke_run.run_dir
    before = pd.read_csv(run_dir / "seed_0" / "rewind" / "round_03" / "metrics.csv")
    out = run_all(SMOKE, run_dir.parent, "--force", "round_03")
    assert out.returncode == 0, out.stderr
    assert "round_03: moved round_03.replaced-" in out.stdout
    moved = list((run_dir / "seed_0" / "rewind").glob("round_03.replaced-*"))
    assert len(moved) == 1 and (moved[0] / "final.pt").is_file()
    after = pd.read_csv(run_dir / "seed_0" / "rewind" / "round_03" / "metrics.csv")
    pd.testing.assert_frame_equal(before, after)  # same seeds, same numbers
    # the moved-aside folder is history: the gathered tables count the rerun point once
    keys = ["seed", "strategy", "round", "task", "dataset", "image"]
    assert not pd.read_csv(run_dir / "metrics.csv").duplicated(keys).any()
    assert not pd.read_csv(run_dir / "catalog.csv").duplicated(["seed", "strategy", "round"]).any()
    assert "max |ΔPSNR| = 0.000 dB" in out.stdout


def test_bad_params_fail_with_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stepz: 3\n")
    out = subprocess.run([str(REPO / "run_all.sh"), str(bad), "--results", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: {bad}: train: unknown key")
    assert not any(tmp_path.glob("*/config.yaml"))


def test_gpu_rerun_script_reruns_with_the_same_identity(smoke_run: SmokeRun,
                                                        tmp_path: Path) -> None:
    """scripts/gpu_rerun.sh, dry-run on the CPU: the copied params keep the config hash, every
    point is trained without notebooks (``stages points``, two stages at a time) in the order the
    runner derives from what each strategy requires (a branch that reads trunk round N starts only
    after it finished), and the gathered metrics reproduce the notebook run (bit-exact on one
    machine) through ``reproduce``."""
    run_dir = smoke_run.run_dir
    out = tmp_path / "out"
    env = {**os.environ, "MIRL_RERUN_DEVICE": "cpu", "PYTHON": sys.executable}
    done = subprocess.run([str(REPO / "scripts" / "gpu_rerun.sh"), str(SMOKE), str(out), "2"],
                          capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    log = (out / "run.log").read_text()
    assert "run exit 0" in log and "has not been run yet" not in log
    assert_each_stage_started_after_what_it_reads(Study(load_config(SMOKE), run_dir), log)
    rerun = pd.read_csv(out / "metrics.csv")
    assert set(rerun["config_hash"]) == set(pd.read_csv(run_dir / "metrics.csv")["config_hash"])
    points = pd.read_csv(out / "points.csv")
    notebook_run = pd.read_csv(run_dir / "metrics.csv")
    assert len(points) == len(notebook_run.groupby(["seed", "strategy", "round"]))
    keys = ["seed", "strategy", "round", "task", "image"]
    assert len(rerun) == len(notebook_run) and not list(out.glob("*.ipynb"))
    assert len(rerun.merge(notebook_run[keys], on=keys)) == len(rerun)  # the same points
    check = subprocess.run([sys.executable, "-m", "mirl_lib", "reproduce", str(out / "metrics.csv"),
                            str(run_dir / "metrics.csv")], capture_output=True, text=True,
                           timeout=300, cwd=REPO)
    assert check.returncode == 0, check.stderr
    # one seed: nothing to judge against intervals, but every point's PSNR is the notebook run's
    assert check.stdout.startswith(("reproduced within noise", "nothing to judge"))
    assert "max |ΔPSNR| = 0.000 dB" in check.stdout, check.stdout
    bad = tmp_path / "nodevice.yaml"
    bad.write_text(SMOKE.read_text().replace("  device: cpu\n", ""))
    refused = subprocess.run([str(REPO / "scripts" / "gpu_rerun.sh"), str(bad), str(out)],
                             capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
    assert refused.returncode == 2 and "nodevice.yaml: no 'train.device' line" in refused.stderr


def assert_each_stage_started_after_what_it_reads(study: Study, log: str) -> None:
    """In a ``stages points`` log, every stage's ``training`` line comes after the ``finished``
    line of each stage it depends on (``graph.dependencies``); some stage had to wait."""
    lines = re.split(r"[\r\n]", log)  # the trainings' progress bars share the log

    def first(name: str, word: str) -> int:
        at = [i for i, line in enumerate(lines) if f"{name}: {word} " in line]
        assert at, f"no '{name}: {word}' line in the log:\n{log}"
        return at[0]

    stages = [stage for stage in stage_list(study) if stage.points]
    deps = dependencies(study, stages)
    for stage in stages:
        started = first(stage.name, "training")
        for dep in deps[stage.name]:
            assert first(dep, "finished") < started, (stage.name, dep, log)
    assert any(dep.startswith("round_") for stage in stages if stage.name.startswith("branch_")
               for dep in deps[stage.name]), deps  # a branch that had to wait for a trunk round
