"""``scripts/gpu_check.sh`` as a dry run on the CPU: its steps run, each writes what it says, the
failing CUDA-only options become rows with their error, and the time budget is respected."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from mirl_lib.files.paths import CHECKOUT

pytestmark = pytest.mark.slow


def test_dry_run_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "MIRL_CHECK_STEPS": "1 1b 1c 1d", "MIRL_CHECK_PRESET": "tiny",
           "MIRL_CHECK_REPLICATE_PRESET": "tiny", "MIRL_CHECK_REPLICATES": "1,2",
           "MIRL_CHECK_OPTIONS": "fp32,fp32+cuda_graph", "MIRL_CHECK_SMALL_OPTIONS": "fp32,batched",
           "MIRL_CHECK_REPLICATE_OPTIONS": "fp32", "MIRL_REFERENCE": str(tmp_path / "none"),
           "MIRL_CHECK_BUDGET_S": "600"}
    proc = subprocess.run([str(CHECKOUT / "scripts" / "gpu_check.sh"), str(out)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = proc.stdout
    for step in ("== 1. ", "== 1b. ", "== 1c. ", "== 1d. ", "== done in"):
        assert step in log, log
    assert "benchmark exit 0" in log and "replicates (small network) exit 0" in log
    assert "skipped: MIRL_REFERENCE does not name a checkout" in log
    assert "== 2. " not in log  # not asked for
    rows = pd.read_csv(out / "train_throughput.csv")
    mine = rows[(rows["preset"] == "tiny") & (rows["device"] == "cpu")].set_index(
        ["option", "replicates", "patch"])
    assert mine.loc[("fp32", 1, 64), "step_ms"] > 0
    assert mine.loc[("fp32+cuda_graph", 1, 64), "note"].startswith("failed: RuntimeError: a CUDA")
    assert mine.loc[("batched", 2, 48), "step_ms"] > 0
    committed = pd.read_csv(CHECKOUT / "results" / "benchmarks" / "train_throughput.csv")
    assert len(rows) >= len(committed)  # the other devices' rows are kept
    assert (out / "pytest_gpu.log").is_file()  # no CUDA here: every gpu test deselected
