"""The published MIR-L code's own training step, timed as ``train_throughput.py`` times mirl's
(its ``time_step``: the same warm-up and the same clocks).

Run ``python benchmarks/reference_step.py --reference DIR`` where ``DIR`` is a checkout of the
published MIR-L repository (github.com/Thomkat/MIR-L; it needs ``lightning`` and ``einops``).
Nothing of it is copied into mirl: this script imports its modules from ``DIR`` and calls them.

The step is the published one, through the published objects: ``MIRLModel`` (its ``PromptIR``
network, its L1 loss), its ``configure_optimizers`` (AdamW with its scheduler),
``training_step``, ``on_after_backward`` (zeroes the pruned weights' gradients) and
``optimizer_step`` (AdamW step, then the pruned weights multiplied by the mask again), in the order
Lightning calls them, without Lightning's ``Trainer`` loop around them (its logging and callbacks
are left out, so the row is a lower bound on the published training's step time). fp32, as the
published training runs (Lightning's default precision). The mask keeps a random ``--density`` of
every parameter whose name holds ``weight`` (the published code's mask list), as after pruning
rounds. ``MIRLModel``'s constructor moves its network to ``cuda:0``; on a machine without CUDA the
script builds the same object without that move (``LightningModule.__init__``, then the
constructor's attributes), so the step can be checked on the CPU too.

Writes one row (``option`` = ``reference_code``, ``preset`` = ``paper``: the same 35.6M-parameter
network) into ``results/benchmarks/train_throughput.csv`` (or ``--out``) with its columns, so it
sits beside mirl's rows of the same device, batch and patch. ``--malloc`` sets the process's
allocator as ``train_throughput.py``'s does (the published code's step runs in this process, so
the same setting applies to it; its ``malloc`` column says which).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from hostprobe import Probe  # noqa: E402
from train_throughput import (  # noqa: E402
    COLUMNS,
    DEFAULT_OUT,
    cpu_capability,
    forward_gflop,
    known_peak,
    merge,
    time_step,
)

from mirl_lib.core import allocator  # noqa: E402
from mirl_lib.core.device import device_name, resolve_device  # noqa: E402
from mirl_lib.core.errors import ConfigError, MirlError  # noqa: E402
from mirl_lib.files.atomic import atomic_write_text  # noqa: E402

OPTION = "reference_code"


def load_reference(directory: Path, device: torch.device) -> torch.nn.Module:
    """The published ``MIRLModel`` from the checkout at ``directory`` on ``device``."""
    if not (directory / "models" / "MIRLModel.py").is_file():
        raise ConfigError(f"--reference {directory}: no models/MIRLModel.py there (give a "
                          f"checkout of the published MIR-L code)")
    sys.path.insert(0, str(directory))
    try:
        from models.MIRLModel import MIRLModel
        from models.network import PromptIR
    except ImportError as exc:
        raise ConfigError(f"--reference {directory}: its modules do not import ({exc}); it "
                          f"needs lightning and einops") from exc
    args = SimpleNamespace(lr=2e-4, epochs=120, warmup_epochs=15)  # its options' defaults
    if device.type == "cuda":
        return MIRLModel(args).to(device)
    import lightning.pytorch as pl

    model = MIRLModel.__new__(MIRLModel)
    pl.LightningModule.__init__(model)
    model.net, model.loss_fn, model.args, model.mask = (
        PromptIR(decoder=True), torch.nn.L1Loss(), args, None)
    return model.to(device)


def reference_mask(model: torch.nn.Module, density: float, seed: int = 0) -> list[torch.Tensor]:
    """The published mask format (one tensor per parameter named ``weight``, in order), keeping a
    random ``density`` of each."""
    gen = torch.Generator().manual_seed(seed)
    masks = []
    for name, param in model.named_parameters():
        if "weight" in name:
            keep = torch.rand(param.shape, generator=gen) < density
            masks.append(keep.to(param.device, param.dtype))
    return masks


def time_steps(model: torch.nn.Module, device: torch.device, batch: int, patch: int, steps: int,
               warmup: int) -> tuple[list[float], float, float, float]:
    """Milliseconds of each timed step, the first step's seconds, the peak memory (MB) and the
    minor page faults per timed step."""
    optimizers, _ = model.configure_optimizers()
    optimizer = optimizers[0]
    gen = torch.Generator().manual_seed(0)
    degraded, clean = (torch.rand(batch, 3, patch, patch, generator=gen).to(device)
                       for _ in range(2))
    data = ([[f"img{i}" for i in range(batch)], torch.zeros(batch)], degraded, clean)

    def step() -> torch.Tensor:
        loss = model.training_step(data, 0)
        optimizer.zero_grad()
        loss.backward()
        model.on_after_backward()
        model.optimizer_step(0, 0, optimizer)
        return loss.detach()

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times, first, faults = time_step(step, (), device, steps, warmup)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else float("nan")
    return times, first, peak, faults


def measure(directory: Path, device: torch.device, batch: int, patch: int, steps: int,
            warmup: int, density: float) -> pd.DataFrame:
    """One ``train_throughput`` row for the published code's step."""
    import warnings

    warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer: logging is off
    model = load_reference(directory, device).train()
    model.mask = reference_mask(model, density)
    with torch.no_grad():
        weights = [p for n, p in model.named_parameters() if "weight" in n]
        for param, keep in zip(weights, model.mask, strict=True):
            param.mul_(keep)
    probe = Probe(device)
    times, first, peak, faults = time_steps(model, device, batch, patch, steps, warmup)
    kept = sum(int((p.detach() != 0).sum()) for p in weights)
    outside = sum(int((p.detach()[m == 0] != 0).sum()) for p, m in zip(weights, model.mask))
    if outside:
        raise RuntimeError(f"{outside} masked weights are non-zero after the steps")
    step_ms = statistics.median(times)
    gflop = 3 * forward_gflop("paper", batch, patch)
    achieved = gflop / step_ms
    peak_tflops = known_peak(device_name(device))
    parameters = sum(p.numel() for p in model.parameters())
    note = (f"published MIR-L code ({directory.name}): MIRLModel.training_step, "
            f"on_after_backward, optimizer_step without Lightning's Trainer loop; fp32; "
            f"median of {steps} steps after {warmup}; first step {first:.1f} s; "
            f"{kept} weights kept ({density:.0%} mask)")
    row = {"device": device.type, "device_name": device_name(device),
           "torch": torch.__version__, "preset": "paper", "parameters": parameters,
           "batch": batch, "patch": patch, "option": OPTION, "replicates": 1,
           "step_ms": round(step_ms, 2), "images_per_s": round(batch / step_ms * 1000, 2),
           "gflop_per_step": round(gflop, 3), "achieved_tflops": round(achieved, 5),
           "peak_tflops": peak_tflops,
           "peak_share": round(achieved / peak_tflops, 6) if peak_tflops == peak_tflops
           else float("nan"),
           "peak_mem_mb": round(peak, 1),
           "mem_kind": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "",
           "threads": torch.get_num_threads(), **probe.row(), "malloc": allocator.current(),
           "page_faults": round(faults, 1), "cpu_capability": cpu_capability(device),
           "note": note}
    return pd.DataFrame([row], columns=list(COLUMNS))


def main(argv: list[str] | None = None) -> int:
    """Measure and merge the row into the CSV; 2 with one ``error:`` line on bad input."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True,
                        help="a checkout of the published MIR-L code")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--density", type=float, default=0.1,
                        help="fraction of each weight tensor the mask keeps (default 0.1)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--malloc", default="auto", choices=allocator.MODES,
                        help="the C allocator's settings for this process, as mirl's rows "
                             "(default: auto; system: glibc as it comes)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    try:
        for name, low in (("batch", 1), ("patch", 16), ("steps", 1), ("warmup", 1)):
            if getattr(args, name) < low:
                raise ConfigError(f"--{name} {getattr(args, name)}: must be at least {low}")
        if not 0 < args.density <= 1:
            raise ConfigError(f"--density {args.density}: must be in (0, 1]")
        if args.patch % 8:
            raise ConfigError(f"--patch {args.patch}: must be a multiple of 8")
        device = resolve_device(args.device)
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        allocator.apply(args.malloc)
        merge(pd.DataFrame(columns=list(COLUMNS)), args.out)  # an unreadable CSV fails now
        row = measure(args.reference, device, args.batch, args.patch, args.steps, args.warmup,
                      args.density)
        atomic_write_text(merge(row, args.out).to_csv(index=False), args.out)
    except MirlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(row.drop(columns=["note"]).to_string(index=False))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
