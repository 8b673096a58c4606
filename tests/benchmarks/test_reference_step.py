"""``benchmarks/reference_step.py``: the published code's mask format, its refusals, and its step
timed as mirl's, on a stand-in with the published objects' methods (the published step itself
needs the published checkout and lightning: it runs in ``scripts/gpu_check.sh``)."""
from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest
import torch
from script_loader import script_fixture

from mirl_lib.files.paths import CHECKOUT
from mirl_lib.net.promptir import build_model

ref = script_fixture(CHECKOUT / "benchmarks" / "reference_step.py", "reference_step")


def test_mask_in_the_published_format(ref: ModuleType) -> None:
    model = build_model("tiny", seed=0)
    masks = ref.reference_mask(model, 0.1)
    weights = [p for n, p in model.named_parameters() if "weight" in n]
    assert len(masks) == len(weights)
    assert all(m.shape == p.shape and m.dtype == p.dtype for m, p in zip(masks, weights))
    kept = sum(float(m.sum()) for m in masks) / sum(m.numel() for m in masks)
    assert 0.08 < kept < 0.12
    assert set(masks[0].unique().tolist()) <= {0.0, 1.0}


def test_bad_input_is_one_error_and_keeps_the_csv(ref: ModuleType, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "throughput.csv"
    out.write_text(pd.read_csv(CHECKOUT / "results" / "benchmarks" / "train_throughput.csv")
                   .to_csv(index=False))
    before = out.read_text()
    for args, problem in ((["--reference", str(tmp_path)], "no models/MIRLModel.py"),
                          (["--reference", str(tmp_path), "--density", "0"], "--density 0"),
                          (["--reference", str(tmp_path), "--patch", "20"], "multiple of 8")):
        assert ref.main([*args, "--device", "cpu", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and problem in err[0], err
    assert out.read_text() == before


class StandIn(torch.nn.Module):
    """The four methods of the published ``MIRLModel`` that the benchmark calls, recording their
    order, around one convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.calls: list[str] = []

    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], list]:
        return [torch.optim.AdamW(self.parameters(), lr=1e-3)], []

    def training_step(self, batch: tuple, index: int) -> torch.Tensor:
        self.calls.append("training_step")
        _, degraded, clean = batch
        return (self.conv(degraded) - clean).abs().mean()

    def on_after_backward(self) -> None:
        self.calls.append("on_after_backward")
        assert self.conv.weight.grad is not None

    def optimizer_step(self, epoch: int, index: int, optimizer: torch.optim.Optimizer) -> None:
        self.calls.append("optimizer_step")
        optimizer.step()


def test_the_published_step_is_timed_as_mirls(ref: ModuleType) -> None:
    """The published objects' step, in Lightning's order, through ``train_throughput``'s own
    timing: one first step, ``warmup - 1`` untimed, ``steps`` timed."""
    model = StandIn()
    before = model.conv.weight.detach().clone()
    times, first, peak, faults = ref.time_steps(model, torch.device("cpu"), 2, 16, steps=3,
                                                warmup=2)
    assert len(times) == 3 and all(t > 0 for t in times) and first > 0 and faults >= 0
    assert model.calls == ["training_step", "on_after_backward", "optimizer_step"] * 5
    assert not torch.equal(model.conv.weight, before)  # the optimizer stepped
    assert peak != peak  # no CUDA: no peak


def test_a_step_whose_loss_is_not_finite_is_refused(ref: ModuleType) -> None:
    model = StandIn()
    model.training_step = lambda batch, index: model.conv.weight.sum() * float("nan")
    with pytest.raises(RuntimeError, match="not finite"):
        ref.time_steps(model, torch.device("cpu"), 2, 16, steps=2, warmup=1)
