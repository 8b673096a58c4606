"""Test helpers: a tiny deterministic batch source, and a DDP training worker run by torchrun.

``python -m torch.distributed.run --nproc_per_node=2 tests/training/ddp_worker.py OUT_DIR`` trains
the ``tiny`` preset with ``DDP_CONFIG`` and each rank saves its final weights as
``OUT_DIR/rank{r}.pt``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from mirl_lib.core.config import TrainConfig

DDP_CONFIG = TrainConfig(steps=4, batch_size=4, lr=1e-3, min_lr=1e-5, warmup_steps=1, device="cpu",
                         checkpoint_every=2, log_every=1, threads=1)


class FakeSource:
    """Smooth random images plus noise, a pure function of (seed, step); ranks slice the batch."""

    def __init__(self, seed: int = 0, patch: int = 16) -> None:
        self.seed, self.patch = seed, patch

    def batch(self, step: int, batch_size: int, rank: int = 0, world_size: int = 1
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + step)
        total = batch_size * world_size
        coarse = torch.rand(total, 3, self.patch // 4, self.patch // 4, generator=gen)
        clean = torch.nn.functional.interpolate(coarse, size=(self.patch, self.patch),
                                                mode="bilinear", align_corners=False)
        degraded = (clean + 0.1 * torch.randn(clean.shape, generator=gen)).clamp(0, 1)
        part = slice(rank * batch_size, (rank + 1) * batch_size)
        return degraded[part], clean[part], torch.zeros(total, dtype=torch.long)[part]


def main(out_dir: str) -> None:
    from mirl_lib.files.tensors import cpu_state_dict
    from mirl_lib.net.promptir import build_model
    from mirl_lib.training.loop import train

    model = build_model("tiny", seed=0)
    result = train(model, DDP_CONFIG, FakeSource(), Path(out_dir) / "run", seed=0)
    rank = int(os.environ["RANK"])
    torch.save({"state_dict": cpu_state_dict(model), "final_step": result.final_step},
               Path(out_dir) / f"rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
