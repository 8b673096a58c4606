"""DDP under torchrun (gloo, CPU, 2 ranks) matches one process with the same global batch."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_worker import DDP_CONFIG, FakeSource

from mirl_lib.files.paths import CHECKOUT
from mirl_lib.net.checkpoints import load_model
from mirl_lib.net.promptir import build_model
from mirl_lib.training.loop import train

pytestmark = pytest.mark.slow  # trains under torchrun

ROOT = CHECKOUT


def test_two_ranks_equal_one_process(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(Path(__file__).with_name("ddp_worker.py")), str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["final_step"] for r in ranks] == [DDP_CONFIG.steps] * 2
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["final.pt", "history.csv", "state.pt"]
    a, b = (r["state_dict"] for r in ranks)
    assert all(torch.equal(a[k], b[k]) for k in a)
    final, _ = load_model(run / "final.pt")
    assert all(torch.equal(final.state_dict()[k], a[k]) for k in a)

    single = build_model("tiny", seed=0)
    train(single, dataclasses.replace(DDP_CONFIG, threads=2), FakeSource(), tmp_path / "single",
          seed=0)
    worst = max((single.state_dict()[k] - a[k]).abs().max().item() for k in a)
    moved = max((build_model("tiny", seed=0).state_dict()[k] - a[k]).abs().max().item() for k in a)
    assert worst < 1e-4 < moved, (worst, moved)
