"""Images/s and peak memory of the masked training step, per precision / layout / optimizer option.

Run ``python benchmarks/train_throughput.py`` on the machine to measure. The step is the one
``mirl_lib.training.loop`` runs for a pruning round: forward (under bf16 autocast when the option
says so), L1 loss on the float32 output, ``zero_grad``, backward with ``MaskEnforcer`` zeroing the
gradients of pruned weights, AdamW step. The mask keeps a random 10% of every prunable tensor
(``reference`` scope, as ``params/paper.yaml``), so the masked path is what is timed. One fixed
random batch lives on the device: data loading is not part of the step
(``benchmarks/data_loader.py`` measures it).

Options (``--options``, comma-separated, or ``all``): ``fp32`` (the CPU path of
``mirl_lib.training.loop``), ``bf16`` autocast, ``channels_last``, ``bf16+channels_last`` (the CUDA
path of ``mirl_lib.training.loop``), ``bf16+channels_last+fused_adamw`` (``AdamW(fused=True)``,
else ``foreach=True`` where fused is not supported), ``bf16+channels_last+compile``
(``torch.compile`` of the model; the first step's time, compilation included, goes to the note),
the CPU's ``fp32+fused_adamw``, ``fp32+compile`` and ``channels_last+compile``, and
``channels_last+gemm_pointwise`` (every ungrouped 1x1 convolution as one ``F.linear`` over the
channels: a lever, not used by ``mirl_lib.training``), and ``batched`` (the step of
``mirl_lib.training.replicates``: every replicate's parameters stacked, one ``vmap`` of the network
over them, the losses' sum differentiated, one AdamW over the stacked tensors; contiguous layout),
``bf16+batched`` the same under bf16 autocast (as ``mirl_lib.training.replicates`` trains on CUDA),
and ``+cuda_graph`` (``fp32``, ``bf16+channels_last``, ``bf16+batched``): the step captured once in
a CUDA graph and replayed (``mirl_lib.training.graphed.GraphedStep``, capturable AdamW, as
``mirl_lib.training.loop`` runs on CUDA under ``train.step_graph: auto``; CUDA only).
``DEFAULT_OPTIONS`` says which run by default on CUDA and on the CPU, and why.

Replicates (``--replicates 1,4,10``): each option is measured for that many trainings of the same
shapes (the seeds of one point, each its own initialization). ``batched`` steps them as one
computation; every other option steps them one after the other in this process, which is what
separate trainings cost. ``step_ms`` is the time to step all of them; ``images_per_s`` counts every
replicate's batch.

FLOPs: ``gflop_per_step`` is three times the forward FLOPs of every replicate's batch
(``torch.utils.flop_counter``, the usual forward + backward = 3x forward estimate: the counter's
own backward figure for grouped convolutions is not usable), ``achieved_tflops`` that over the step
time, and ``peak_share`` that over ``peak_tflops`` (``--peak-tflops``, or the dense bf16
tensor-core peak of a known GPU, ``KNOWN_PEAKS``; empty where no peak is known, as on the CPU).
Each option starts from the same initial weights and is checked to keep the pruned weights at zero;
an option that fails is recorded with its error and the run goes on.

Timing (``time_step``, which ``reference_step.py`` uses for the published code's row too): the
median over ``--steps`` timed steps after ``--warmup`` steps; on CUDA events recorded around each
step back to back and read after one synchronization, ``time.perf_counter`` on the CPU. Peak memory:
``torch.cuda.max_memory_allocated`` (reset per option) on CUDA; on the CPU the process's peak
resident set (``VmHWM``, reset per option through ``/proc/self/clear_refs`` where Linux allows it,
else the peak since the process started), which includes Python and torch themselves; ``mem_kind``
says which. On the CPU the note gives the one-minute load average after the option: other processes
on a small machine slow a run down.

Host: ``measured`` (UTC) and ``gemm_gflops``, a fixed fp32 matrix product timed on the device just
before and just after each row's option (``hostprobe.py``): rows compare directly only where their
probes agree; the virtual machines of this repository ran the same step 1.7x apart under one CPU
model name. ``cpu_capability``: the vector level torch dispatches to on the CPU (``AVX2``,
``AVX512``, ...; ``not recorded`` in CPU rows from before the column, ``not applicable`` in GPU
rows), since one model name has covered CPUs with and without AVX-512.

Allocator (``--malloc``, as ``train.malloc``): ``auto`` (the default, as training) sets glibc's
``malloc`` to keep freed blocks for the next step (``mirl_lib.core.allocator``), ``system`` leaves
it as it comes; the row's ``malloc`` says which was in force (``tuned`` or ``system``; rows
measured before the column existed had the system's) and ``page_faults`` counts the process's
minor page faults per timed step. The setting is the process's, so one run measures one of them.

Writes ``results/benchmarks/train_throughput.csv`` (or ``--out``) atomically after each option, so
a run stopped by a time limit keeps what it measured. A row of the same device name, CPU
capability, preset, batch, patch, threads, option, replicates and allocator is replaced, every
other row is kept, so CPU and GPU rows sit side by side and runs of a few options add to the
others. Imports only
torch, pandas, tqdm and mirl_lib modules that need no notebook tooling (no papermill, jupyter or
ipywidgets).
"""
from __future__ import annotations

import argparse
import copy
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch.optim import AdamW
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchrows import NOT_RECORDED, merge_rows, one_line  # noqa: E402
from hostprobe import Probe  # noqa: E402

from mirl_lib.core import allocator  # noqa: E402
from mirl_lib.core.config import PRESETS, TrainConfig  # noqa: E402
from mirl_lib.core.device import device_name, kernel_env, resolve_device  # noqa: E402
from mirl_lib.core.errors import ConfigError, MirlError  # noqa: E402
from mirl_lib.files.atomic import atomic_write_text  # noqa: E402
from mirl_lib.net.promptir import PromptIR, build_model, count_parameters  # noqa: E402
from mirl_lib.net.sizing import skeleton  # noqa: E402
from mirl_lib.pruning.masks import Mask, MaskEnforcer, full_mask  # noqa: E402
from mirl_lib.pruning.rules import random_mask  # noqa: E402
from mirl_lib.training.graphed import GraphedStep  # noqa: E402
from mirl_lib.training.loop import set_memory_format, update  # noqa: E402
from mirl_lib.training.replicates import Replicates  # noqa: E402

DEFAULT_OUT = ROOT / "results" / "benchmarks" / "train_throughput.csv"
COLUMNS: tuple[str, ...] = ("device", "device_name", "torch", "preset", "parameters", "batch",
                            "patch", "option", "replicates", "step_ms", "images_per_s",
                            "gflop_per_step", "achieved_tflops", "peak_tflops", "peak_share",
                            "peak_mem_mb", "mem_kind", "threads", "measured", "gemm_gflops",
                            "malloc", "page_faults", "cpu_capability", "note")
# A rerun replaces the rows it shares all of these with; every other row is kept. A CPU row's
# ``cpu_capability`` is the vector level torch dispatches to (AVX2, AVX512, ...): one model name
# covers CPUs of different instruction sets (virtual machines named "AMD EPYC" with and without
# AVX-512), whose steps differ. A GPU row's reads ``not applicable``.
RUN_KEY: tuple[str, ...] = ("device_name", "cpu_capability", "preset", "batch", "patch",
                            "threads", "option", "replicates", "malloc")
NOT_APPLICABLE = "not applicable"
# Columns added after rows were committed, with what an older row stands for (one training; when
# and on how fast a machine unknown; glibc's allocator as it comes, page faults not counted; the
# FLOP columns, also unknown, are completed from shapes; a CPU row's instruction set unknown).
LATER: dict[str, object] = {
    "replicates": 1, "measured": "", "gemm_gflops": float("nan"), "malloc": allocator.SYSTEM,
    "page_faults": float("nan"),
    "cpu_capability": lambda old: old["device"].map(
        lambda kind: NOT_RECORDED if kind == "cpu" else NOT_APPLICABLE)}
# Dense bf16 tensor-core peaks (TFLOP/s, SXM parts, without sparsity) by a word of the device name.
KNOWN_PEAKS: dict[str, float] = {"H200": 989.4, "H100": 989.4, "A100": 312.0}
DENSITY = 0.1  # fraction of every prunable tensor the benchmark mask keeps
# AdamW settings of params/paper.yaml
LR, BETAS, WEIGHT_DECAY = 2e-4, (0.9, 0.999), 1e-4


@dataclass(frozen=True)
class Option:
    """One way to run the training step."""

    name: str
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False
    fused_adamw: bool = False
    gemm_pointwise: bool = False
    batched: bool = False
    graph: bool = False


OPTIONS: tuple[Option, ...] = (
    Option("fp32"),
    Option("bf16", bf16=True),
    Option("channels_last", channels_last=True),
    Option("bf16+channels_last", bf16=True, channels_last=True),
    Option("bf16+channels_last+compile", bf16=True, channels_last=True, compile=True),
    Option("bf16+channels_last+fused_adamw", bf16=True, channels_last=True, fused_adamw=True),
    Option("fp32+compile", compile=True),
    Option("channels_last+compile", channels_last=True, compile=True),
    Option("fp32+fused_adamw", fused_adamw=True),
    Option("channels_last+gemm_pointwise", channels_last=True, gemm_pointwise=True),
    Option("batched", batched=True),
    Option("bf16+batched", bf16=True, batched=True),
    Option("fp32+cuda_graph", graph=True),
    Option("bf16+channels_last+cuda_graph", bf16=True, channels_last=True, graph=True),
    Option("bf16+batched+cuda_graph", bf16=True, batched=True, graph=True),
)
_BY_NAME = {o.name: o for o in OPTIONS}
# Measured unless --options says otherwise. On CUDA: the training path of mirl_lib.train
# (bf16+channels_last) and the steps towards it, then fused AdamW and torch.compile on top of it
# (compile last: it takes longest, and the rows before it are already written). On the CPU, where
# mirl_lib.training.loop runs fp32: channels_last and fused AdamW on top of fp32. Left out on the
# CPU: bf16 autocast, which CPUs without native bf16 emulate (the cpu preset ran 15x slower than
# fp32 on the 2-core AVX2 machine of this repository; its row is in the committed CSV), and
# torch.compile, whose C++ build of the cpu preset took 150-252 s there for steps 0.96-1.05x the
# eager ones (train_throughput_cpu_compile.csv). Name them with --options to measure them.
DEFAULT_OPTIONS: dict[str, tuple[str, ...]] = {
    "cuda": ("fp32", "bf16", "channels_last", "bf16+channels_last",
             "bf16+channels_last+fused_adamw", "fp32+cuda_graph", "bf16+channels_last+cuda_graph",
             "bf16+batched", "bf16+channels_last+compile"),
    "cpu": ("fp32", "channels_last", "fp32+fused_adamw", "channels_last+gemm_pointwise",
            "batched"),
}


@dataclass(frozen=True)
class Measurement:
    """What one option gave: median step time, peak memory and a note (the error if it failed)."""

    step_ms: float
    peak_mem_mb: float
    mem_kind: str
    page_faults: float
    note: str


# ---------------------------------------------------------------------------------------------
# Device facts


class CpuPeak:
    """Peak resident set of this process: reset per option where Linux allows it."""

    def __init__(self) -> None:
        self.resettable = self.reset()

    @staticmethod
    def reset() -> bool:
        """Reset the peak (``VmHWM``) to the current RSS; False where the system refuses."""
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            return True
        except OSError:
            return False

    @property
    def kind(self) -> str:
        return ("process peak RSS (reset per option)" if self.resettable
                else "process peak RSS since start")

    def peak_mb(self) -> float:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except (OSError, ValueError, IndexError):
            pass
        import resource  # Unix only; Linux answers from /proc above

        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024  # bytes vs KiB


# ---------------------------------------------------------------------------------------------
# The step


def benchmark_mask(model: PromptIR, density: float = DENSITY, seed: int = 0) -> Mask:
    """A random mask keeping ``density`` of every prunable tensor (``reference`` scope)."""
    reference = {n: (torch.arange(m.numel()) < round(density * m.numel())).reshape(m.shape)
                 for n, m in full_mask(model, "reference").items()}
    return random_mask(reference, seed)


class _Pointwise(torch.nn.Module):
    """A 1x1 convolution as one matrix product over the channels (``F.linear`` on the
    channels-last view), with the convolution's own parameters (a lever measured here, not used by
    ``mirl_lib.training``)."""

    def __init__(self, conv: torch.nn.Conv2d) -> None:
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.view(self.weight.shape[0], -1)
        return F.linear(x.permute(0, 2, 3, 1), weight, self.bias).permute(0, 3, 1, 2)


def pointwise_as_gemm(model: torch.nn.Module) -> int:
    """Replace every ungrouped 1x1 convolution of ``model`` by ``_Pointwise`` (same parameters,
    same names); returns how many."""
    count = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if (isinstance(child, torch.nn.Conv2d) and child.kernel_size == (1, 1)
                    and child.groups == 1 and child.stride == (1, 1)):
                setattr(module, name, _Pointwise(child))
                count += 1
    return count


def make_optimizer(model: PromptIR, option: Option, device: torch.device
                   ) -> tuple[torch.optim.Optimizer, str]:
    """AdamW as ``mirl_lib.training.loop`` builds it, or fused (else foreach) for ``fused_adamw``;
    returns the optimizer and a note on what was used."""
    params = list(model.parameters())
    if not option.fused_adamw:
        return AdamW(params, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY), ""
    try:
        optimizer = AdamW(params, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, fused=True)
        return optimizer, "AdamW(fused=True)"
    except (RuntimeError, ValueError, TypeError) as exc:
        optimizer = AdamW(params, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, foreach=True)
        return optimizer, (f"AdamW(foreach=True): fused unsupported on {device.type} "
                           f"({one_line(exc)})")


def make_step(model: PromptIR, optimizer: torch.optim.Optimizer, option: Option,
              device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """One training step on a (degraded, clean) batch, as in ``mirl_lib.training.loop``; returns the
    detached loss (no host synchronization)."""
    net = torch.compile(model) if option.compile else model

    def body(degraded: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=option.bf16,
                            cache_enabled=not option.graph):
            restored = net(degraded)
        loss = F.l1_loss(restored.float(), clean)
        update(optimizer, loss)
        return loss.detach()

    def step(degraded: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        return body(degraded, clean)

    return graph_step(body, optimizer, option, device) or step


def graph_step(body: Callable[..., torch.Tensor], optimizer: torch.optim.Optimizer,
               option: Option, device: torch.device
               ) -> Callable[..., torch.Tensor] | None:
    """``body`` (a step without zeroing the gradients) captured in a CUDA graph after the
    graph's own warmup (``GraphedStep``); None unless ``option.graph``."""
    if not option.graph:
        return None
    if device.type != "cuda":
        raise RuntimeError("a CUDA graph needs a CUDA device")
    return GraphedStep(body, optimizer)


def compile_cache() -> tuple[str, bool]:
    """Where ``torch.compile`` keeps its compiled code between processes and whether anything
    is there already (a warm cache makes the first step a load, not a build)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    folder = Path(cache_dir())
    return str(folder), folder.is_dir() and any(folder.iterdir())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(step: Callable[..., torch.Tensor], data: tuple, device: torch.device, steps: int
                ) -> list[float]:
    """Milliseconds of each of ``steps`` calls of ``step(*data)`` (it returns a detached loss):
    CUDA events recorded around each step without waiting between steps on CUDA,
    ``perf_counter`` else; a loss that is not finite raises."""
    running = torch.zeros((), device=device)
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(steps)]
        for start, end in events:
            start.record()
            running += step(*data)
            end.record()
        synchronize(device)
        times = [start.elapsed_time(end) for start, end in events]
    else:
        times = []
        for _ in range(steps):
            started = time.perf_counter()
            running += step(*data)
            times.append((time.perf_counter() - started) * 1000)
    if not torch.isfinite(running):
        raise RuntimeError(f"the loss is not finite ({running.item()})")
    return times


def time_step(step: Callable[..., torch.Tensor], data: tuple, device: torch.device, steps: int,
              warmup: int) -> tuple[list[float], float, float]:
    """How every row of ``train_throughput.csv`` is timed, mirl's options and the published
    code's step alike: the first step's seconds (to its end on the device), ``warmup - 1`` more
    steps untimed, then ``timed_steps`` of ``steps``; with them the process's minor page faults
    per timed step (``getrusage``; NaN where the platform has none)."""
    started = time.perf_counter()
    step(*data)
    synchronize(device)
    first = time.perf_counter() - started
    if warmup > 1:
        timed_steps(step, data, device, warmup - 1)
    before = page_faults()
    times = timed_steps(step, data, device, steps)
    return times, first, (page_faults() - before) / steps


def page_faults() -> float:
    """This process's minor page faults so far (pages the kernel had to map and zero)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return float("nan")
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)


def measure(option: Option, templates: list[PromptIR], mask: Mask, device: torch.device,
            batch: int, patch: int, steps: int, warmup: int) -> Measurement:
    """Median time to step every one of ``templates`` (the replicates) once, and peak memory, of
    ``option`` (raises what the option raises)."""
    cpu_peak = None if device.type == "cuda" else CpuPeak()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    memory_format = torch.channels_last if option.channels_last else torch.contiguous_format
    count = len(templates)
    gen = torch.Generator().manual_seed(0)
    degraded, clean = (torch.rand(count, batch, 3, patch, patch, generator=gen).to(device)
                       for _ in range(2))
    models = [copy.deepcopy(t).to(device).train() for t in templates]
    device_mask = {n: m.to(device) for n, m in mask.items()}
    notes: list[str] = []
    cleanups: list[Callable[[], None]] = []
    try:
        if option.batched:
            stacked = Replicates(models, [device_mask] * count)
            cleanups.append(stacked.remove)
            optimizer = AdamW(stacked.parameters(), lr=LR, betas=BETAS,
                              weight_decay=WEIGHT_DECAY)
            cfg = TrainConfig(device=device.type)

            def body(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                losses = stacked.losses(x, y, cfg, autocast=option.bf16,
                                        cache=not option.graph)
                update(optimizer, losses.sum())
                return losses.detach().sum()

            def eager(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                optimizer.zero_grad(set_to_none=True)
                return body(x, y)

            step = graph_step(body, optimizer, option, device) or eager

            params = [dict(zip(stacked.params, (p[i] for p in stacked.parameters())))
                      for i in range(count)]
            data = (degraded, clean)
        else:
            replaced = 0
            singles = []
            for model in models:
                replaced = pointwise_as_gemm(model) if option.gemm_pointwise else 0
                set_memory_format(model, memory_format)
                enforcer = MaskEnforcer(model, device_mask)
                cleanups.append(enforcer.remove)
                optimizer, note = make_optimizer(model, option, device)
                singles.append(make_step(model, optimizer, option, device))
            if note:
                notes.append(note)
            if replaced:
                notes.append(f"{replaced} 1x1 convolutions as F.linear over channels")
            data = tuple(t.unbind(0) for t in (degraded, clean))
            data = tuple([x.contiguous(memory_format=memory_format) for x in part]
                         for part in data)

            def step(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> torch.Tensor:
                return sum(single(x, y) for single, x, y in zip(singles, xs, ys))

            params = [dict(m.named_parameters()) for m in models]
        cache = compile_cache() if option.compile else None
        times, first, faults = time_step(step, data, device, steps, warmup)
        pruned = sum(int((p.detach()[~device_mask[n]] != 0).sum())
                     for named in params for n, p in named.items() if n in mask)
        if pruned:
            raise RuntimeError(f"{pruned} pruned weights became non-zero: the mask was not kept")
        notes.insert(0, f"median of {steps} steps after {warmup}; first step {first:.1f} s"
                     + (f" (compilation; inductor cache {cache[0]}: "
                        f"{'warm' if cache[1] else 'cold'})" if cache else ""))
        if count > 1:
            notes.append(f"{count} replicates " + ("in one batched step" if option.batched
                                                  else "stepped one after the other"))
        if device.type != "cuda" and hasattr(os, "getloadavg"):
            notes.append(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        capped = kernel_env()
        if capped:
            notes.append(f"kernels chosen by {capped}")
        if option.bf16 and device.type != "cuda":
            notes.append("mirl_lib.training.loop uses bf16 on CUDA only")
        if option.channels_last and device.type != "cuda":
            notes.append("mirl_lib.training.loop uses channels_last on the CPU where "
                         "train.cpu_channels_last is set (the full tier)")
        if device.type == "cuda":
            peak, kind = torch.cuda.max_memory_allocated(device) / 2**20, \
                "torch.cuda.max_memory_allocated"
        else:
            peak, kind = cpu_peak.peak_mb(), cpu_peak.kind
        return Measurement(statistics.median(times), peak, kind, faults, "; ".join(notes))
    finally:
        for cleanup in cleanups:
            cleanup()


def forward_gflop(preset: str, batch: int, patch: int) -> float:
    """GFLOPs of one forward pass of the ``preset`` network on a ``batch`` x 3 x ``patch`` x
    ``patch`` batch (``torch.utils.flop_counter`` on the meta device: shapes only, no
    arithmetic)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        skeleton(PRESETS[preset])(torch.empty(batch, 3, patch, patch, device="meta"))
    return counter.get_total_flops() / 1e9


def complete_flops(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with the FLOP columns filled where a row lacks them (rows measured before the
    columns existed): the FLOPs are a function of preset, batch, patch and replicates."""
    table = table.copy()
    missing = table["gflop_per_step"].isna() & table["preset"].isin(list(PRESETS))
    forward: dict[tuple, float] = {}
    for i in table.index[missing]:
        row = table.loc[i]
        key = (str(row["preset"]), int(row["batch"]), int(row["patch"]))
        if key not in forward:
            forward[key] = forward_gflop(*key)
        gflop = 3 * forward[key] * int(row["replicates"])
        achieved = gflop / float(row["step_ms"])
        peak = known_peak(str(row["device_name"]))
        table.loc[i, ["gflop_per_step", "achieved_tflops", "peak_tflops", "peak_share"]] = [
            round(gflop, 3), round(achieved, 5), peak, round(achieved / peak, 6)]
    return table


def cpu_capability(device: torch.device) -> str:
    """The ``cpu_capability`` of a row measured on ``device`` (``RUN_KEY``)."""
    return torch.backends.cpu.get_cpu_capability() if device.type == "cpu" else NOT_APPLICABLE


def known_peak(name: str) -> float:
    """The dense bf16 tensor-core peak of a GPU named ``name`` (``KNOWN_PEAKS``), else NaN."""
    return next((v for k, v in KNOWN_PEAKS.items() if k in name), float("nan"))


def _release(option: Option, device: torch.device) -> None:
    """Free what an option left (compiled graphs, cached CUDA blocks)."""
    if option.compile:
        torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run(options: list[Option], preset: str, device: torch.device, batch: int, patch: int,
        steps: int, warmup: int, log: Callable[[str], None] = print,
        on_row: Callable[[pd.DataFrame], None] | None = None, replicates: tuple[int, ...] = (1,),
        peak_tflops: float | None = None) -> pd.DataFrame:
    """One row per option and replicate count (``COLUMNS``); a failing option gets empty figures
    and its error. ``on_row`` gets the table so far after each row (to save partial results)."""
    template = build_model(preset, seed=0)
    mask = benchmark_mask(template)
    forward = forward_gflop(preset, batch, patch)
    peak = known_peak(device_name(device)) if peak_tflops is None else peak_tflops
    facts = {"device": device.type, "device_name": device_name(device), "torch": torch.__version__,
             "preset": preset, "parameters": count_parameters(template), "batch": batch,
             "patch": patch, "threads": torch.get_num_threads(), "peak_tflops": peak,
             "malloc": allocator.current(), "cpu_capability": cpu_capability(device)}
    templates = [template, *(build_model(preset, seed=r) for r in range(1, max(replicates)))]
    rows = []
    for count in replicates:
        for option in options:
            log(f"{option.name}, {count} replicate(s): {warmup} warm-up + {steps} timed steps ...")
            gflop = 3 * forward * count
            probe = Probe(device)
            try:
                got = measure(option, templates[:count], mask, device, batch, patch, steps,
                              warmup)
                achieved = gflop / got.step_ms  # GFLOP per ms = TFLOP/s
                row = {"option": option.name, "replicates": count,
                       "step_ms": round(got.step_ms, 2),
                       "images_per_s": round(count * batch / got.step_ms * 1000, 2),
                       "gflop_per_step": round(gflop, 3), "achieved_tflops": round(achieved, 5),
                       "peak_share": round(achieved / peak, 6) if peak == peak else float("nan"),
                       "peak_mem_mb": round(got.peak_mem_mb, 1), "mem_kind": got.mem_kind,
                       "page_faults": round(got.page_faults, 1), "note": got.note}
            except Exception as exc:  # noqa: BLE001 - a failing option is a result, not a crash
                row = {"option": option.name, "replicates": count, "step_ms": float("nan"),
                       "images_per_s": float("nan"), "gflop_per_step": round(gflop, 3),
                       "achieved_tflops": float("nan"), "peak_share": float("nan"),
                       "peak_mem_mb": float("nan"), "mem_kind": "",
                       "page_faults": float("nan"), "note": f"failed: {one_line(exc)}"}
            finally:
                _release(option, device)
            rows.append({**facts, **probe.row(), **row})
            log(f"  {row['step_ms']} ms/step, {row['images_per_s']} images/s, "
                f"{row['achieved_tflops']} TFLOP/s, {row['peak_mem_mb']} MB peak; {row['note']}")
            if on_row is not None:
                on_row(pd.DataFrame(rows, columns=list(COLUMNS)))
    return pd.DataFrame(rows, columns=list(COLUMNS))


def merge(new: pd.DataFrame, path: Path) -> pd.DataFrame:
    """``new`` after the rows of ``path`` that do not share a ``RUN_KEY`` with it (other devices,
    presets, batches, patches, thread counts or options)."""
    return complete_flops(merge_rows(new, path, RUN_KEY, COLUMNS, "train_throughput", LATER))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA if present), cpu, cuda, cuda:N")
    parser.add_argument("--preset", default=None, choices=sorted(PRESETS),
                        help="architecture (default: paper on CUDA, cpu on the CPU)")
    parser.add_argument("--batch", type=int, default=8, help="images per step (default: 8)")
    parser.add_argument("--patch", type=int, default=64, help="patch side in pixels (default: 64)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default: 20)")
    parser.add_argument("--warmup", type=int, default=5,
                        help="untimed steps first, at least 1 (default: 5)")
    parser.add_argument("--options", default=None,
                        help=f"comma-separated options to measure, or 'all' (known: "
                             f"{', '.join(_BY_NAME)}; default on CUDA: "
                             f"{', '.join(DEFAULT_OPTIONS['cuda'])}; on the CPU: "
                             f"{', '.join(DEFAULT_OPTIONS['cpu'])})")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--replicates", default="1",
                        help="comma-separated replicate counts to measure each option at "
                             "(default: 1)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak in TFLOP/s for peak_share (default: a known "
                             "GPU's dense bf16 tensor-core peak, else none)")
    parser.add_argument("--malloc", default="auto", choices=allocator.MODES,
                        help="the C allocator's settings for this process, as train.malloc "
                             "(default: auto, as training; system: glibc as it comes)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="CSV to write")
    return parser


def _check(args: argparse.Namespace) -> None:
    for name, low in (("batch", 1), ("patch", 16), ("steps", 1), ("warmup", 1), ("threads", 0)):
        if getattr(args, name) < low:
            raise ConfigError(f"--{name} {getattr(args, name)}: must be at least {low}")
    if args.patch % 8:
        raise ConfigError(f"--patch {args.patch}: must be a multiple of 8")
    _replicates(args.replicates)
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        raise ConfigError(f"--peak-tflops {args.peak_tflops}: must be positive")


def _replicates(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(dict.fromkeys(int(n) for n in text.split(",") if n.strip()))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise ConfigError(f"--replicates {text!r}: must be positive integers, comma-separated")
    return counts


def _options(text: str | None, device: torch.device) -> list[Option]:
    if text is None:
        return [_BY_NAME[n] for n in DEFAULT_OPTIONS[device.type]]
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return list(OPTIONS)
    unknown = [n for n in names if n not in _BY_NAME]
    if unknown or not names:
        raise ConfigError(f"--options {text!r}: unknown option(s) {unknown}; known: "
                          f"{list(_BY_NAME)} or 'all'")
    return [_BY_NAME[n] for n in dict.fromkeys(names)]


def main(argv: list[str] | None = None) -> int:
    """Measure, merge into the CSV after each option, print the table; 2 with one ``error:``
    line on bad input, 130 on Ctrl-C (the options measured so far are kept)."""
    args = _parser().parse_args(argv)
    try:
        _check(args)
        device = resolve_device(args.device)
        options = _options(args.options, device)
        preset = args.preset or ("paper" if device.type == "cuda" else "cpu")
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        allocator.apply(args.malloc)
        if device.type == "cuda":
            torch.cuda.set_device(device.index or 0)
        merge(pd.DataFrame(columns=list(COLUMNS)), args.out)  # an unreadable CSV fails now

        def save(rows: pd.DataFrame) -> None:
            atomic_write_text(merge(rows, args.out).to_csv(index=False), args.out)

        def log(text: str) -> None:
            print(text, file=sys.stderr, flush=True)

        table = run(options, preset, device, args.batch, args.patch, args.steps, args.warmup,
                    log, on_row=save, replicates=_replicates(args.replicates),
                    peak_tflops=args.peak_tflops)
    except KeyboardInterrupt:
        print(f"interrupted: the options measured so far are in {args.out}", file=sys.stderr)
        return 130
    except (MirlError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    kinds = [k for k in table["mem_kind"] if k]
    print(f"{table['device_name'].iloc[0]} ({device}), torch {torch.__version__}, preset {preset} "
          f"({table['parameters'].iloc[0]:,} parameters), batch {args.batch}, patch {args.patch}, "
          f"{table['threads'].iloc[0]} threads; median of {args.steps} steps after {args.warmup}; "
          f"peak memory: {kinds[0] if kinds else 'n/a'}")
    shown = ["option", "replicates", "step_ms", "images_per_s", "achieved_tflops",
             "peak_mem_mb", "note"]
    print(table[shown].to_string(index=False))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
