"""Milliseconds per masked training step on the CPU, per precision / memory-layout option.

Run ``python benchmarks/train_step.py`` on a quiet machine (nothing else using its cores); writes
``results/benchmarks/train_step.csv`` (or ``--out``). ``--quick`` takes a few steps only, to check
that the script works (its figures are not worth keeping).

The step is the one ``mirl_lib.training.loop`` runs for a pruning round of the study's default
config (``params/default.yaml``: the model preset, AdamW settings, warm-up + cosine schedule through
``mirl_lib.training.loop.lr_factor``): forward under ``torch.autocast("cpu", dtype=torch.bfloat16)``
when the option says bf16, L1 loss on the float32 output, ``zero_grad``, backward with
``MaskEnforcer`` zeroing the gradients of pruned weights, AdamW step, scheduler step. The mask is a
~50% global magnitude mask of the config's pruning scope
(``mirl_lib.pruning.rules.global_magnitude`` at rate 0.5), one round's worth of the study. One fixed
random batch: data loading is not timed.

Options: ``fp32`` (what ``mirl_lib.training.loop`` runs on the CPU), ``channels_last`` (inputs and
4-D weights in channels-last layout, ``mirl_lib.training.loop.set_memory_format``), ``bf16``
autocast, and ``bf16+channels_last`` (what ``mirl_lib.training.loop`` runs on CUDA). Each is
measured at every ``--threads`` count and every ``--shapes`` batch x patch. Within one (threads,
shape) group the options take turns step by step (after ``--warmup`` untimed steps each), so a
change in background load touches every option alike. Time: ``time.perf_counter`` around each step;
the row gives the median and 90th percentile over ``--steps`` timed steps, the speedup of the median
over ``fp32``'s, and ``chosen`` marks the fastest option of its group. bf16 is native on CPUs with
AMX or AVX512_BF16 (the ``amx`` and ``avx512_bf16`` columns); CPUs with neither emulate it, so
bf16 is expected to be much slower there.

Rows: one per (threads, batch, patch, option). A rerun replaces every row of the same ``device``
(the CPU model name) and ``cpu_capability`` (the vector level torch dispatches to, ``AVX2``,
``AVX512``, ...) and keeps the others: one model name covers CPUs of different instruction sets
(virtual machines named ``AMD EPYC`` with and without AVX-512), so measurements of several machines
accumulate in one file. Rows written before these two columns read ``not recorded`` there. The
file is rewritten atomically after each group. Progress goes to stderr.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch.optim import AdamW
from torch.optim.lr_scheduler import LambdaLR

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchrows import NOT_RECORDED, merge_rows  # noqa: E402

from mirl_lib.core.config import PRESETS, TrainConfig, load_config  # noqa: E402
from mirl_lib.core.device import device_name  # noqa: E402
from mirl_lib.core.errors import ConfigError, MirlError  # noqa: E402
from mirl_lib.files.atomic import atomic_write_text  # noqa: E402
from mirl_lib.net.promptir import PromptIR, build_model  # noqa: E402
from mirl_lib.pruning.masks import Mask, MaskEnforcer, full_mask  # noqa: E402
from mirl_lib.pruning.rules import global_magnitude  # noqa: E402
from mirl_lib.training.loop import lr_factor, set_memory_format  # noqa: E402

DEFAULT_OUT = ROOT / "results" / "benchmarks" / "train_step.csv"
DEFAULT_PARAMS = ROOT / "params" / "default.yaml"
COLUMNS: tuple[str, ...] = ("date", "device", "cpu_capability", "amx", "avx512_bf16", "torch",
                            "threads", "batch", "patch", "option", "ms_per_step", "p90_ms",
                            "steps_timed", "speedup_vs_fp32", "chosen", "load_avg")
# A rerun replaces the rows it shares these with; columns added later, and what older rows read.
RUN_KEY: tuple[str, ...] = ("device", "cpu_capability")
LATER: dict[str, object] = {"cpu_capability": NOT_RECORDED, "avx512_bf16": NOT_RECORDED}
MASK_RATE = 0.5  # fraction of the prunable weights the benchmark mask removes
QUICK_STEPS, QUICK_WARMUP = 3, 1


@dataclass(frozen=True)
class Option:
    """One way to run the training step."""

    name: str
    bf16: bool = False
    channels_last: bool = False

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


OPTIONS: tuple[Option, ...] = (
    Option("fp32"),
    Option("channels_last", channels_last=True),
    Option("bf16", bf16=True),
    Option("bf16+channels_last", bf16=True, channels_last=True),
)


def cpu_flags() -> set[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def has_amx(flags: set[str] | None = None) -> bool:
    """Whether the CPU has AMX (flag ``amx_bf16`` or ``amx_tile``): native bf16 matrix products."""
    return bool({"amx_bf16", "amx_tile"} & (cpu_flags() if flags is None else flags))


def has_avx512_bf16(flags: set[str] | None = None) -> bool:
    """Whether the CPU has AVX512_BF16 (flag ``avx512_bf16``): native bf16 dot products in vector
    registers (e.g. AMD Zen 4, Intel Cooper Lake), without AMX's tiles."""
    return "avx512_bf16" in (cpu_flags() if flags is None else flags)


def benchmark_mask(model: PromptIR, scope: str, rate: float = MASK_RATE) -> Mask:
    """A global magnitude mask removing ``rate`` of the prunable weights of ``scope``."""
    return global_magnitude(model.state_dict(), full_mask(model, scope), rate)


class Setup:
    """A model copy with its mask enforcer, optimizer, scheduler and batch; ``step()`` trains."""

    def __init__(self, option: Option, template: PromptIR, mask: Mask, cfg: TrainConfig,
                 batch: int, patch: int) -> None:
        self.option = option
        self.model = copy.deepcopy(template).train()
        set_memory_format(self.model, option.memory_format)
        self.enforcer = MaskEnforcer(self.model, mask)
        self.optimizer = AdamW(self.model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas),
                               weight_decay=cfg.weight_decay)
        self.scheduler = LambdaLR(self.optimizer, partial(lr_factor, cfg=cfg))
        self.grad_clip = cfg.grad_clip
        gen = torch.Generator().manual_seed(0)
        self.degraded, self.clean = (
            torch.rand(batch, 3, patch, patch, generator=gen)
            .contiguous(memory_format=option.memory_format) for _ in range(2))

    def step(self) -> float:
        """One training step as ``mirl_lib.training.loop`` runs it; returns the loss."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.option.bf16):
            restored = self.model(self.degraded)
        loss = F.l1_loss(restored.float(), self.clean)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return loss.item()

    def close(self) -> None:
        self.enforcer.remove()


def time_group(setups: list[Setup], steps: int, warmup: int) -> dict[str, list[float]]:
    """Milliseconds of ``steps`` steps of each setup, after ``warmup`` steps each; the setups take
    turns step by step. Raises ``RuntimeError`` on a non-finite loss."""
    for setup in setups:
        for _ in range(warmup):
            setup.step()
    times: dict[str, list[float]] = {s.option.name: [] for s in setups}
    for _ in range(steps):
        for setup in setups:
            started = time.perf_counter()
            loss = setup.step()
            times[setup.option.name].append((time.perf_counter() - started) * 1000)
            if not math.isfinite(loss):
                raise RuntimeError(f"{setup.option.name}: the loss is not finite ({loss})")
    return times


def p90(values: list[float]) -> float:
    """90th percentile, linear interpolation between the order statistics."""
    ordered = sorted(values)
    pos = 0.9 * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def group_rows(times: dict[str, list[float]], facts: dict[str, object]) -> list[dict[str, object]]:
    """One row per option of a (threads, batch, patch) group, with speedups and ``chosen``."""
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians.get("fp32")
    fastest = min(medians, key=medians.get)
    return [{**facts, "option": name, "ms_per_step": round(medians[name], 2),
             "p90_ms": round(p90(t), 2), "steps_timed": len(t),
             "speedup_vs_fp32": round(base / medians[name], 3) if base else float("nan"),
             "chosen": name == fastest} for name, t in times.items()]


def merge(new: pd.DataFrame, path: Path) -> pd.DataFrame:
    """The rows of ``path`` of other devices or instruction sets, then ``new`` (the rows sharing
    ``RUN_KEY`` with ``new`` replaced)."""
    return merge_rows(new, path, RUN_KEY, COLUMNS, "train_step", LATER)


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """``"8x32,4x64"`` -> ``[(8, 32), (4, 64)]`` (batch x patch side)."""
    shapes = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        try:
            batch, patch = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise ConfigError(f"--shapes {text!r}: {item!r} is not BATCHxPATCH") from None
        if batch < 1 or patch < 8 or patch % 8:
            raise ConfigError(f"--shapes {text!r}: {item!r} needs batch >= 1 and a patch side "
                              f"that is a positive multiple of 8")
        shapes.append((batch, patch))
    if not shapes:
        raise ConfigError("--shapes: no shape given")
    return shapes


def parse_threads(text: str) -> list[int]:
    try:
        threads = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--threads {text!r}: not a comma-separated list of integers") from None
    if not threads or min(threads) < 1:
        raise ConfigError(f"--threads {text!r}: thread counts must be at least 1")
    return list(dict.fromkeys(threads))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None,
                        help=f"timed steps per option (default: 15; {QUICK_STEPS} with --quick)")
    parser.add_argument("--warmup", type=int, default=None,
                        help=f"untimed steps per option first (default: 3; {QUICK_WARMUP} with "
                             f"--quick)")
    parser.add_argument("--quick", action="store_true",
                        help="a few steps only: checks the script works, not worth keeping")
    parser.add_argument("--threads", default="1,2", help="torch thread counts (default: 1,2)")
    parser.add_argument("--shapes", default="8x32,4x64",
                        help="BATCHxPATCH list (default: 8x32,4x64)")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS,
                        help="config whose model preset, train and prune settings the step uses "
                             "(default: params/default.yaml)")
    parser.add_argument("--preset", default=None, choices=sorted(PRESETS),
                        help="override the config's model preset")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="CSV to write (default: results/benchmarks/train_step.csv)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Measure, write the CSV after each group, print the table; 2 with one ``error:`` line on bad
    input, 130 on Ctrl-C (the groups measured so far are kept)."""
    args = _parser().parse_args(argv)
    steps = args.steps if args.steps is not None else (QUICK_STEPS if args.quick else 15)
    warmup = args.warmup if args.warmup is not None else (QUICK_WARMUP if args.quick else 3)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    threads_before = torch.get_num_threads()
    try:
        if steps < 1 or warmup < 0:
            raise ConfigError(f"--steps {steps} / --warmup {warmup}: need steps >= 1, warmup >= 0")
        shapes, thread_counts = parse_shapes(args.shapes), parse_threads(args.threads)
        cfg = load_config(args.params)
        template = build_model(args.preset or cfg.model, seed=0)
        mask = benchmark_mask(template, cfg.prune.scope)
        merge(pd.DataFrame(columns=list(COLUMNS)), args.out)  # an unreadable CSV fails now
        device = device_name(torch.device("cpu"))
        facts = {"date": datetime.date.today().isoformat(), "device": device,
                 "cpu_capability": torch.backends.cpu.get_cpu_capability(), "amx": has_amx(),
                 "avx512_bf16": has_avx512_bf16(), "torch": torch.__version__}
        kept = sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())
        log(f"{device} ({facts['cpu_capability']}, amx: {facts['amx']}, avx512_bf16: "
            f"{facts['avx512_bf16']}), torch {torch.__version__}, preset "
            f"{template.config.preset}, mask keeps {kept:.0%} of the {cfg.prune.scope}-scope "
            f"weights; {warmup} warm-up + {steps} timed steps")
        rows: list[dict[str, object]] = []
        for threads in thread_counts:
            torch.set_num_threads(threads)
            for batch, patch in shapes:
                log(f"threads {threads}, batch {batch} x {patch}x{patch}: "
                    f"{', '.join(o.name for o in OPTIONS)} ...")
                setups = [Setup(o, template, mask, cfg.train, batch, patch) for o in OPTIONS]
                try:
                    times = time_group(setups, steps, warmup)
                finally:
                    for setup in setups:
                        setup.close()
                load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
                group = group_rows(times, {**facts, "threads": threads, "batch": batch,
                                           "patch": patch, "load_avg": round(load, 2)})
                for row in group:
                    log(f"  {row['option']:20s} {row['ms_per_step']:9.1f} ms (p90 "
                        f"{row['p90_ms']:.1f})  x{row['speedup_vs_fp32']:.2f} vs fp32"
                        f"{'  <- fastest' if row['chosen'] else ''}")
                if load - threads > 0.5:  # the load average counts this run's threads too
                    log(f"  note: load average {load:.1f} on {os.cpu_count()} cores; other "
                        f"processes slow these steps down")
                rows.extend(group)
                table = pd.DataFrame(rows, columns=list(COLUMNS))
                atomic_write_text(merge(table, args.out).to_csv(index=False), args.out)
    except KeyboardInterrupt:
        log(f"interrupted: the groups measured so far are in {args.out}")
        return 130
    except (MirlError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads_before)
    shown = ["threads", "batch", "patch", "option", "ms_per_step", "p90_ms", "speedup_vs_fp32",
             "chosen"]
    print(table[shown].to_string(index=False))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
