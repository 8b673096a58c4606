"""One training run: AdamW, linear warmup then cosine decay, L1 loss, exact resume, optional DDP.

Layout of ``out_dir``: ``state.pt`` (everything needed to resume, rewritten every
``checkpoint_every`` steps and at the end), ``weights_step{k}.pt`` (requested snapshots),
``history.csv`` and ``final.pt`` (a mirl weights file, written last; its presence marks the run
done).

Batches: ``cfg.batch_size`` is the *global* batch. Under ``torchrun`` with ``WORLD_SIZE`` ranks each
rank draws ``batch_size // WORLD_SIZE`` samples with ``source.batch(step, per_rank, rank, world)``;
DDP averages the gradients, so the update equals one over the whole global batch. Only rank 0
writes files. The batches are made by ``mirl_lib.data.stream.step_batches`` in ``source.workers``
DataLoader processes (0, or a source without that attribute: in the training process), pinned when
training on CUDA; since a batch is a pure function of (seed, step, rank), any worker count gives the
same run.

CUDA graphs: on CUDA in one process the step is captured once and replayed
(``mirl_lib.training.graphed``, ``train.step_graph``); ``state.pt`` keeps the eager optimizer
format either way.

Durations: a config in epochs (``TrainConfig.epochs``) is converted to steps by ``resolve_steps``
with the source's ``epoch_size`` (``mirl_lib.data.stream.TrainSource``) when training starts.
"""
from __future__ import annotations

import dataclasses
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import AdamW
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from mirl_lib.core import allocator
from mirl_lib.core.config import TrainConfig
from mirl_lib.core.device import resolve_device, torch_threads
from mirl_lib.core.errors import CheckpointError, ConfigError
from mirl_lib.data.stream import BatchSource, step_batches
from mirl_lib.files.atomic import atomic_write_text
from mirl_lib.files.paths import FINAL_FILE, HISTORY_FILE, STATE_FILE, snapshot_file
from mirl_lib.files.tensors import atomic_torch_save, cpu_state_dict, load_tensors
from mirl_lib.net.checkpoints import load_into, save_weights
from mirl_lib.net.promptir import PromptIR
from mirl_lib.training.graphed import GraphedStep, graphing, portable_optimizer_state
from mirl_lib.training.losses import restoration_loss


@dataclass
class TrainResult:
    """``history``: columns step, loss (mean over the logged interval), lr; one row per log.
    ``seconds``: the training loop's time over every attempt (a resumed run adds to it).
    ``checkpoint_seconds``: what this call spent writing checkpoints, snapshots, the history and
    the final weights (0 when it only loaded a finished training). ``step_graph``: how the
    finishing attempt ran its steps, ``graph`` (a CUDA graph) or ``eager`` (``""`` for a training
    finished before this was recorded)."""

    history: pd.DataFrame
    final_step: int
    seconds: float
    checkpoint_seconds: float = 0.0
    step_graph: str = ""


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created: bool = False


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Factor on ``cfg.lr`` at global ``step``: linear warmup, then cosine decay to ``min_lr``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / (cfg.steps - cfg.warmup_steps))
    floor = cfg.min_lr / cfg.lr
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def resolve_steps(cfg: TrainConfig, epoch_size: int, log: bool = True) -> TrainConfig:
    """``cfg`` with ``steps`` and ``warmup_steps`` derived from its epochs and ``epoch_size`` (the
    training samples of one epoch, ``mirl_lib.data.stream.epoch_size``): one epoch is
    ``ceil(epoch_size / batch_size)`` steps of the global batch, ``steps = epochs * that`` and
    ``warmup_steps = warmup_epochs * that``. A config in steps comes back unchanged. With ``log``,
    prints the derivation on one line to stderr.
    """
    if cfg.epochs == 0:
        return cfg
    if epoch_size < 1:
        raise ConfigError(f"train.epochs={cfg.epochs}: the training data has no samples")
    per_epoch = -(-epoch_size // cfg.batch_size)
    resolved = dataclasses.replace(cfg, steps=cfg.epochs * per_epoch,
                                   warmup_steps=cfg.warmup_epochs * per_epoch)
    if log:
        print(f"train: {cfg.epochs} epochs of {epoch_size} samples at batch {cfg.batch_size} "
              f"({per_epoch} steps each) = {resolved.steps} steps, warmup {cfg.warmup_epochs} "
              f"epochs = {resolved.warmup_steps} steps", file=sys.stderr, flush=True)
    return resolved


def steps_for(cfg: TrainConfig, source: BatchSource) -> TrainConfig:
    """``cfg`` with its steps derived from ``source.epoch_size`` (``resolve_steps``, logged on
    rank 0) when it is given in epochs and not resolved yet; else ``cfg`` itself."""
    if not cfg.epochs or cfg.steps:
        return cfg
    size = getattr(source, "epoch_size", None)
    if size is None:
        raise ConfigError(f"train.epochs={cfg.epochs}: this data source does not know its "
                          f"epoch size; pass resolve_steps(cfg, epoch_size) instead")
    return resolve_steps(cfg, size, log=os.environ.get("RANK", "0") == "0")


def optimizer_step(optimizer: torch.optim.Optimizer, scheduler: LambdaLR, loss: torch.Tensor,
                   clip: Callable[[], object] | None = None) -> float:
    """One update from ``loss``: zero the gradients, ``update``, step the schedule; returns the
    learning rate the update used."""
    optimizer.zero_grad(set_to_none=True)
    lr = scheduled_lr(scheduler)
    update(optimizer, loss, clip)
    scheduler.step()
    return lr


def update(optimizer: torch.optim.Optimizer, loss: torch.Tensor,
           clip: Callable[[], object] | None = None) -> None:
    """Backpropagate ``loss``, ``clip`` the gradients (when given), step the optimizer: the part
    of an update a CUDA graph captures (``GraphedStep``)."""
    loss.backward()
    if clip is not None:
        clip()
    optimizer.step()


def scheduled_lr(scheduler: LambdaLR) -> float:
    """The learning rate the schedule gives the next update (first group), computed on the host:
    the same value ``LambdaLR`` sets, also where the optimizer holds it as a device tensor."""
    return scheduler.base_lrs[0] * scheduler.lr_lambdas[0](scheduler.last_epoch)


def offset_factor(i: int, cfg: TrainConfig, offset: int) -> float:
    return lr_factor(offset + i, cfg)


def _init_distributed(device_name: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    created = not dist.is_initialized()
    if created:
        cuda = device_name != "cpu" and device_name != "mps" and torch.cuda.is_available()
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                 created)


def train_device(name: str, ctx: Dist) -> torch.device:
    device = resolve_device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", ctx.local_rank if ctx.world_size > 1 else 0)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def run_identity(cfg: TrainConfig, seed: int, start_step: int) -> dict[str, Any]:
    """What must not change when a run resumes from ``state.pt``: the seed, the start step and
    the training section's identity (``TrainConfig.identity()``, the run folder's notion too)."""
    return {"seed": seed, "start_step": start_step, **cfg.identity()}


def check_resumable(path: Path, state: dict[str, Any], identity: dict[str, Any]) -> None:
    saved = state.get("identity", {})
    for key, value in identity.items():
        old = saved.get(key)
        if (list(old) if isinstance(old, (tuple, list)) else old) != (
                list(value) if isinstance(value, tuple) else value):
            raise CheckpointError(f"{path}: written by a different run ({key}={old!r}, now "
                                  f"{value!r}); delete it or use another output folder")


def history_frame(rows: list[dict[str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["step", "loss", "lr"])


def finished(model: PromptIR, out_dir: Path) -> TrainResult:
    """Stage skipping: load ``final.pt`` into ``model`` and return the recorded result."""
    meta = load_into(model, out_dir / FINAL_FILE)
    history_path = out_dir / HISTORY_FILE
    history = pd.read_csv(history_path) if history_path.is_file() else history_frame([])
    return TrainResult(history, int(meta["final_step"]), float(meta["seconds"]),
                       step_graph=str(meta.get("step_graph", "")))


def train(model: PromptIR, cfg: TrainConfig, source: BatchSource, out_dir: str | Path, *,
          seed: int, mask: dict[str, torch.Tensor] | None = None, start_step: int = 0,
          snapshot_steps: tuple[int, ...] = (), progress_desc: str = "train",
          stop_after: int | None = None) -> TrainResult:
    """Train ``model`` in place for global steps ``start_step .. cfg.steps`` (see module doc).

    ``start_step=k`` (late rewinding) resumes the schedule at step k. ``mask`` keeps pruned weights
    at zero (``MaskEnforcer``) for the whole run. ``snapshot_steps``: after that many global steps,
    save ``weights_step{k}.pt``. ``stop_after=k`` stops once global step k is done (state saved,
    no ``final.pt``), as an interruption would. Resumes from ``state.pt``; returns at once when
    ``final.pt`` exists. ``cfg.threads`` applies during the run only, ``cfg.malloc`` to the process
    from here on (``mirl_lib.core.allocator``). The model is left on the training device. A
    ``cfg`` in epochs whose steps are not derived yet (``steps == 0``) is resolved with
    ``source.epoch_size`` (``resolve_steps``); ``final.pt`` records the resolved config
    (``train_config``) and the epoch size.
    """
    out_dir = Path(out_dir)
    allocator.apply(cfg.malloc)  # the process's, for the scoring that follows too
    cfg = steps_for(cfg, source)
    if not 0 <= start_step < cfg.steps:
        raise ConfigError(f"start_step={start_step}: must be in [0, train.steps={cfg.steps})")
    if (out_dir / FINAL_FILE).is_file():
        return finished(model, out_dir)
    with torch_threads(cfg.threads):
        ctx = _init_distributed(cfg.device)
        try:
            if cfg.batch_size % ctx.world_size:
                raise ConfigError(f"train.batch_size={cfg.batch_size}: not divisible by the "
                                  f"{ctx.world_size} distributed ranks")
            return _run(model, cfg, source, out_dir, ctx, seed=seed, mask=mask,
                        start_step=start_step, snapshot_steps=snapshot_steps,
                        progress_desc=progress_desc, stop_after=stop_after)
        finally:
            if ctx.created:
                dist.destroy_process_group()


def set_memory_format(model: nn.Module, memory_format: torch.memory_format) -> None:
    """Lay out the 4-D (convolution) weights in ``memory_format``; ``Module.to`` cannot, since the
    prompt parameters are 5-D."""
    for param in model.parameters():
        if param.dim() == 4:
            param.data = param.data.contiguous(memory_format=memory_format)


def _run(model: PromptIR, cfg: TrainConfig, source: BatchSource, out_dir: Path, ctx: Dist, *,
         seed: int, mask: dict[str, torch.Tensor] | None, start_step: int,
         snapshot_steps: tuple[int, ...], progress_desc: str, stop_after: int | None
         ) -> TrainResult:
    device = train_device(cfg.device, ctx)
    cuda = device.type == "cuda"
    channels_last = cfg.channels_last if cuda else cfg.cpu_channels_last
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device=device).train()
    set_memory_format(model, memory_format)
    enforcer = None
    if mask is not None:
        from mirl_lib.pruning.masks import MaskEnforcer

        enforcer = MaskEnforcer(model, {k: v.to(device) for k, v in mask.items()})
    optimizer = AdamW(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas),
                      weight_decay=cfg.weight_decay)
    scheduler = LambdaLR(optimizer, partial(offset_factor, cfg=cfg, offset=start_step))
    identity = run_identity(cfg, seed, start_step)
    state_path = out_dir / STATE_FILE
    done, history, seconds, loss_sum, loss_count = start_step, [], 0.0, 0.0, 0
    if state_path.is_file():
        state = load_tensors(state_path)
        check_resumable(state_path, state, identity)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        done, history, seconds = state["step"], list(state["history"]), state["seconds"]
        loss_sum, loss_count = state["loss_sum"], state["loss_count"]
        if ctx.rank == 0:
            print(f"resuming at step {done} of {cfg.steps} from {state_path}", flush=True)
    else:
        seed_all(seed)
    net = (DistributedDataParallel(model, device_ids=[device.index] if cuda else None,
                                   static_graph=True)
           if ctx.world_size > 1 else model)
    writer = ctx.rank == 0
    per_rank = cfg.batch_size // ctx.world_size
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    batches = step_batches(source, range(done, end), per_rank, ctx.rank, ctx.world_size,
                           workers=getattr(source, "workers", 0), pin_memory=cuda)
    running = torch.tensor(loss_sum, device=device)
    started = time.perf_counter()
    writing = 0.0  # this call's seconds spent writing checkpoints

    def save_state() -> None:
        nonlocal writing
        t0 = time.perf_counter()
        atomic_torch_save({"identity": identity, "model": cpu_state_dict(model),
                           "optimizer": portable_optimizer_state(optimizer),
                           "scheduler": scheduler.state_dict(),
                           "rng": rng_state(), "step": done, "history": history,
                           "seconds": seconds + time.perf_counter() - started,
                           "loss_sum": running.item(), "loss_count": loss_count}, state_path)
        writing += time.perf_counter() - t0

    def snapshot() -> None:
        nonlocal writing
        path = out_dir / snapshot_file(done)
        if done in snapshot_steps and not path.is_file():
            t0 = time.perf_counter()
            save_weights(model, path, {"step": done, "seed": seed})
            writing += time.perf_counter() - t0

    clip = ((lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
            if cfg.grad_clip > 0 else None)
    graph_on = graphing(cfg, device, ctx.world_size)
    step_graph = "graph" if graph_on else "eager"

    def forward_loss(degraded: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        # autocast's weight cache would be stale when a CUDA graph replays
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda and cfg.bf16,
                            cache_enabled=not graph_on):
            restored = net(degraded)
        return restoration_loss(restored.float(), clean, cfg.ssim_weight, cfg.psnr_weight)

    def graph_body(degraded: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        loss = forward_loss(degraded, clean)
        update(optimizer, loss, clip)
        return loss.detach()

    graphed = GraphedStep(graph_body, optimizer) if graph_on else None
    bar = tqdm(total=cfg.steps, initial=done, desc=progress_desc, disable=not writer,
               dynamic_ncols=True)
    try:
        if writer:
            snapshot()
        for degraded, clean, _ in batches:
            degraded = degraded.to(device, memory_format=memory_format, non_blocking=True)
            clean = clean.to(device, memory_format=memory_format, non_blocking=True)
            if graphed is not None:
                lr = scheduled_lr(scheduler)
                loss = graphed(degraded, clean)
                scheduler.step()
            else:
                loss = forward_loss(degraded, clean)
                lr = optimizer_step(optimizer, scheduler, loss, clip)
            done += 1
            running += loss.detach()
            loss_count += 1
            bar.update(1)
            if done % cfg.log_every == 0 or done == cfg.steps:
                total = running.clone()
                if ctx.world_size > 1:
                    dist.all_reduce(total)
                    total /= ctx.world_size
                mean = total.item() / loss_count
                history.append({"step": done, "loss": mean, "lr": lr})
                running.zero_()
                loss_count = 0
                bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}")
            if writer:
                snapshot()
                if done % cfg.checkpoint_every == 0 or done == end:
                    save_state()
    finally:
        batches.close()  # stops the DataLoader workers
        bar.close()
        if enforcer is not None:
            enforcer.remove()
    seconds += time.perf_counter() - started
    frame = history_frame(history)
    if writer and done == cfg.steps:
        t0 = time.perf_counter()
        atomic_write_text(frame.to_csv(index=False), out_dir / HISTORY_FILE)
        save_weights(model, out_dir / FINAL_FILE,
                     {"final_step": done, "seconds": seconds, "seed": seed,
                      "world_size": ctx.world_size, "start_step": start_step,
                      "train_config": dataclasses.asdict(cfg),
                      "epoch_size": getattr(source, "epoch_size", None),
                      "step_graph": step_graph})
        writing += time.perf_counter() - t0
    if ctx.world_size > 1:
        dist.barrier()
    set_memory_format(model, torch.contiguous_format)
    return TrainResult(frame, done, seconds, writing, step_graph)
