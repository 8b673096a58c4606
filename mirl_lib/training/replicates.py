"""Replicates of one training as one batched computation (``torch.func``).

Replicates are trainings with the same architecture's shapes, config and start step, each with its
own initial weights, mask, data stream (its seed), optimizer state and output folder: the seeds of
one point. Their parameters are stacked (``torch.func.stack_module_state``) and every step
evaluates the network once for all of them (``vmap`` of ``functional_call``); the gradient of the
sum of their losses is, per replicate, that replicate's own gradient. AdamW is elementwise, so one
AdamW over the stacked tensors is each replicate's own AdamW; gradient clipping is per replicate,
and each mask zeroes its own replicate's pruned weights and gradients.

Each replicate writes the files of a separate training (``mirl_lib.training.loop``) in its own
folder: ``state.pt`` in the same format (its slice of the weights and of the optimizer state, so a
batched training resumes batched or alone, and a separate one batched), ``weights_step{k}.pt``,
``history.csv`` and ``final.pt`` (its metadata adds ``batched_replicates``). Replicates whose
saved states stand at different steps train in groups of equal step; a group of one trains in
``mirl_lib.training.loop.train`` itself. An interrupted group resumes bit for bit when it resumes
as the same group (a group of another size runs other kernels: the last bits differ). The
weights are not laid out channels-last here (the stacked tensors are 5-D); floats differ from a
separate run's in the last bits, as under another thread count, which is why
``train.batch_replicates`` is a runtime setting.

``batching(cfg, executor)`` says whether the study batches: ``train.batch_replicates``
``batched``, ``separate``, or ``auto`` (batched on CUDA with the local executor and eager steps
only: on the CPU a batched step measured slower than separate ones, and on a GPU slower than
separate steps captured in CUDA graphs, see ``results/benchmarks/train_throughput.csv``).
"""
from __future__ import annotations

import copy
import dataclasses
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.optim import AdamW
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from mirl_lib.core import allocator
from mirl_lib.core.config import TrainConfig
from mirl_lib.core.device import resolve_device, torch_threads
from mirl_lib.core.errors import ConfigError
from mirl_lib.data.stream import BatchSource, step_batches
from mirl_lib.files.atomic import atomic_write_text
from mirl_lib.files.paths import FINAL_FILE, HISTORY_FILE, STATE_FILE, snapshot_file
from mirl_lib.files.tensors import atomic_torch_save, cpu_state_dict, load_tensors
from mirl_lib.net.checkpoints import save_weights
from mirl_lib.training import loop
from mirl_lib.training.loop import TrainResult
from mirl_lib.training.losses import restoration_loss

Mask = dict[str, torch.Tensor]


def batching(cfg: TrainConfig, executor: str = "local") -> bool:
    """Whether the seeds of a point train as batched replicates under ``cfg``: ``batched``,
    ``separate``, or ``auto``: on CUDA with the local executor (one machine, whose GPU one small
    training cannot fill) when the training step is not captured in a CUDA graph
    (``train.step_graph: eager``); not under ``torchrun`` and not on a Slurm cluster (whose stages
    spread the seeds over its GPUs). With graphs (``step_graph`` auto or graph) the seeds train
    separately: on an H200 a separate graphed step outran the batched eager one (``cpu`` preset, 10
    replicates: 1,031 against 726 images/s; ``paper``, 4: 163 against 81;
    ``results/benchmarks/train_throughput.csv``), and the batched training is not graphed."""
    if cfg.batch_replicates == "auto":
        return (cfg.gpus <= 1 and executor == "local" and cfg.step_graph == "eager"
                and resolve_device(cfg.device).type == "cuda")
    return cfg.batch_replicates == "batched"


def signature(model: nn.Module) -> tuple:
    """The names and shapes of a network's parameters and buffers: replicates batch together only
    where these are equal."""
    return tuple((n, tuple(t.shape)) for n, t in (*model.named_parameters(),
                                                  *model.named_buffers()))


class Replicates:
    """``models`` (same signature, on one device) stacked: the parameters are leaves of shape
    ``(R, ...)``; ``masks[i]`` (or ``None``: nothing pruned) zeroes replicate ``i``'s pruned
    weights now and their gradients in every backward pass."""

    def __init__(self, models: list[nn.Module], masks: list[Mask | None]) -> None:
        if len({signature(m) for m in models}) != 1:
            raise ConfigError("replicates must have the same parameter names and shapes")
        from mirl_lib.pruning.masks import check_fits

        for model, mask in zip(models, masks):
            if mask is not None:
                check_fits(mask, model)
        self.base = copy.deepcopy(models[0]).to("meta")
        self.params, self.buffers = stack_module_state(models)
        self.count = len(models)
        names = sorted({n for m in masks if m is not None for n in m})
        self.pruned = {n: torch.stack([~m[n].to(self.params[n].device) if m is not None and n in m
                                       else torch.zeros_like(self.params[n][0], dtype=torch.bool)
                                       for m in masks]) for n in names}
        self._handles = [self.params[n].register_hook(partial(_zero_pruned, pruned=p))
                         for n, p in self.pruned.items()]
        with torch.no_grad():
            for name, pruned in self.pruned.items():
                self.params[name].masked_fill_(pruned, 0)

    def parameters(self) -> list[torch.Tensor]:
        """The stacked parameters, in the networks' ``named_parameters`` order (the order of a
        separate training's optimizer)."""
        return list(self.params.values())

    def losses(self, degraded: torch.Tensor, clean: torch.Tensor, cfg: TrainConfig,
               autocast: bool = False, cache: bool = True) -> torch.Tensor:
        """Each replicate's training loss (shape ``(R,)``) on its own batch: ``degraded`` and
        ``clean`` are ``(R, B, 3, H, W)``. ``cache=False`` turns autocast's weight cache off
        (needed inside a CUDA graph capture)."""
        def one(params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast,
                                cache_enabled=cache):
                restored = functional_call(self.base, (params, buffers), (x,))
            return restoration_loss(restored.float(), y, cfg.ssim_weight, cfg.psnr_weight)

        return vmap(one)(self.params, self.buffers, degraded, clean)

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Clip each replicate's gradient to total norm ``max_norm`` as
        ``torch.nn.utils.clip_grad_norm_`` does for one network; returns the norms ``(R,)``."""
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads]).norm(dim=0)
        coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for grad in grads:
            grad.mul_(coef.view(-1, *[1] * (grad.dim() - 1)))
        return norms

    def write_into(self, index: int, model: nn.Module) -> nn.Module:
        """Copy replicate ``index``'s current weights into ``model``; returns it."""
        with torch.no_grad():
            for name, tensor in (*model.named_parameters(), *model.named_buffers()):
                source = self.params[name] if name in self.params else self.buffers[name]
                tensor.copy_(source[index])
        return model

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _zero_pruned(grad: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    return grad.masked_fill(pruned, 0)


def split_optimizer_state(state: dict[str, Any], index: int) -> dict[str, Any]:
    """Replicate ``index``'s slice of a batched AdamW ``state_dict``: the state dict of a separate
    training's AdamW (the per-tensor step counts are shared)."""
    return {"state": {k: {name: (v[index].clone() if v.dim() > 0 else v.clone())
                          for name, v in entry.items()} for k, entry in state["state"].items()},
            "param_groups": copy.deepcopy(state["param_groups"])}


def stack_optimizer_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """The batched AdamW ``state_dict`` of separate trainings' ones (inverse of
    ``split_optimizer_state``)."""
    first = states[0]
    return {"state": {k: {name: (torch.stack([s["state"][k][name] for s in states])
                                 if v.dim() > 0 else v) for name, v in entry.items()}
                      for k, entry in first["state"].items()},
            "param_groups": copy.deepcopy(first["param_groups"])}


def train_replicates(models: list[nn.Module], cfg: TrainConfig, sources: list[BatchSource],
                     out_dirs: list[str | Path], *, seeds: list[int],
                     masks: list[Mask | None], start_step: int = 0,
                     snapshot_steps: tuple[int, ...] = (), progress_desc: str = "train",
                     stop_after: int | None = None) -> list[TrainResult]:
    """Train each ``models[i]`` in place on ``sources[i]`` into ``out_dirs[i]`` as
    ``loop.train(models[i], cfg, sources[i], out_dirs[i], seed=seeds[i], mask=masks[i], ...)``
    would, the replicates that stand at the same step batched together (module doc). A finished
    replicate (``final.pt``) is only loaded. Returns one ``TrainResult`` per replicate."""
    count = len(models)
    if not count or any(len(x) != count for x in (sources, out_dirs, seeds, masks)):
        raise ConfigError("train_replicates: models, sources, out_dirs, seeds and masks must be "
                          "lists of one length")
    if cfg.gpus > 1:
        raise ConfigError(f"train.gpus={cfg.gpus}: batched replicates train in one process")
    if len({getattr(source, "epoch_size", None) for source in sources}) != 1:
        raise ConfigError("train_replicates: the replicates' data differ in epoch size")
    cfg = loop.steps_for(cfg, sources[0])
    if not 0 <= start_step < cfg.steps:
        raise ConfigError(f"start_step={start_step}: must be in [0, train.steps={cfg.steps})")
    out_dirs = [Path(d) for d in out_dirs]
    allocator.apply(cfg.malloc)
    results: list[TrainResult | None] = [None] * count
    states: dict[int, dict | None] = {}
    for i in range(count):
        if (out_dirs[i] / FINAL_FILE).is_file():
            results[i] = loop.finished(models[i], out_dirs[i])
        else:
            path = out_dirs[i] / STATE_FILE
            states[i] = load_tensors(path) if path.is_file() else None
    groups: dict[int, list[int]] = {}
    for i, state in states.items():
        groups.setdefault(start_step if state is None else int(state["step"]), []).append(i)
    for group in groups.values():
        if len(group) == 1:
            (i,) = group
            results[i] = loop.train(models[i], cfg, sources[i], out_dirs[i], seed=seeds[i],
                                    mask=masks[i], start_step=start_step,
                                    snapshot_steps=snapshot_steps, progress_desc=progress_desc,
                                    stop_after=stop_after)
            continue
        with torch_threads(cfg.threads):
            trained = _run([models[i] for i in group], cfg, [sources[i] for i in group],
                           [out_dirs[i] for i in group], seeds=[seeds[i] for i in group],
                           masks=[masks[i] for i in group], states=[states[i] for i in group],
                           start_step=start_step, snapshot_steps=snapshot_steps,
                           progress_desc=progress_desc, stop_after=stop_after)
        for i, result in zip(group, trained):
            results[i] = result
    return results  # type: ignore[return-value]


def _run(models: list[nn.Module], cfg: TrainConfig, sources: list[BatchSource],
         out_dirs: list[Path], *, seeds: list[int], masks: list[Mask | None],
         states: list[dict | None], start_step: int, snapshot_steps: tuple[int, ...],
         progress_desc: str, stop_after: int | None) -> list[TrainResult]:
    count = len(models)
    device = loop.train_device(cfg.device, loop.Dist())
    cuda = device.type == "cuda"
    identities = [loop.run_identity(cfg, seed, start_step) for seed in seeds]
    done, seconds, loss_count = start_step, [0.0] * count, 0
    histories: list[list[dict[str, float]]] = [[] for _ in range(count)]
    loss_sum = torch.zeros(count)
    resumed = states[0] is not None
    if resumed:
        for i, state in enumerate(states):
            loop.check_resumable(out_dirs[i] / STATE_FILE, state, identities[i])
            models[i].load_state_dict(state["model"])
        done, loss_count = int(states[0]["step"]), int(states[0]["loss_count"])
        histories = [list(s["history"]) for s in states]
        seconds = [float(s["seconds"]) for s in states]
        loss_sum = torch.tensor([float(s["loss_sum"]) for s in states])
    for model in models:
        model.to(device=device).train()
    batch = Replicates(models, [None if m is None else {k: v.to(device) for k, v in m.items()}
                                for m in masks])
    optimizer = AdamW(batch.parameters(), lr=cfg.lr, betas=tuple(cfg.betas),
                      weight_decay=cfg.weight_decay)
    scheduler = LambdaLR(optimizer, partial(loop.offset_factor, cfg=cfg, offset=start_step))
    if resumed:
        optimizer.load_state_dict(stack_optimizer_states([s["optimizer"] for s in states]))
        scheduler.load_state_dict(states[0]["scheduler"])
        loop.set_rng_state(states[0]["rng"])
    else:
        loop.seed_all(seeds[0])
    states.clear()
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    streams = [step_batches(source, range(done, end), cfg.batch_size, 0, 1,
                            workers=getattr(source, "workers", 0), pin_memory=cuda)
               for source in sources]
    running = loss_sum.to(device)
    started = time.perf_counter()
    writing = 0.0

    def save_states() -> None:
        nonlocal writing
        t0 = time.perf_counter()
        optimizer_state = optimizer.state_dict()
        sums = running.tolist()
        rng = loop.rng_state()
        for i, model in enumerate(models):
            batch.write_into(i, model)
            atomic_torch_save({"identity": identities[i], "model": cpu_state_dict(model),
                               "optimizer": split_optimizer_state(optimizer_state, i),
                               "scheduler": scheduler.state_dict(), "rng": rng, "step": done,
                               "history": histories[i],
                               "seconds": seconds[i] + time.perf_counter() - started,
                               "loss_sum": sums[i], "loss_count": loss_count},
                              out_dirs[i] / STATE_FILE)
        writing += time.perf_counter() - t0

    def snapshot() -> None:
        nonlocal writing
        if done not in snapshot_steps:
            return
        t0 = time.perf_counter()
        for i, model in enumerate(models):
            path = out_dirs[i] / snapshot_file(done)
            if not path.is_file():
                save_weights(batch.write_into(i, model), path, {"step": done, "seed": seeds[i]})
        writing += time.perf_counter() - t0

    clip = (lambda: batch.clip_grad_norm_(cfg.grad_clip)) if cfg.grad_clip > 0 else None
    bar = tqdm(total=cfg.steps, initial=done, dynamic_ncols=True,
               desc=f"{progress_desc} ({count} replicates)")
    try:
        snapshot()
        for items in zip(*streams):
            degraded = torch.stack([item[0] for item in items]).to(device, non_blocking=True)
            clean = torch.stack([item[1] for item in items]).to(device, non_blocking=True)
            losses = batch.losses(degraded, clean, cfg, autocast=cuda and cfg.bf16)
            lr = loop.optimizer_step(optimizer, scheduler, losses.sum(), clip)
            done += 1
            running += losses.detach()
            loss_count += 1
            bar.update(1)
            if done % cfg.log_every == 0 or done == cfg.steps:
                means = (running / loss_count).tolist()
                for history, mean in zip(histories, means):
                    history.append({"step": done, "loss": mean, "lr": lr})
                running.zero_()
                loss_count = 0
                bar.set_postfix(loss=f"{sum(means) / count:.4f}", lr=f"{lr:.2e}")
            snapshot()
            if done % cfg.checkpoint_every == 0 or done == end:
                save_states()
    finally:
        for stream in streams:
            stream.close()
        bar.close()
        batch.remove()
    elapsed = time.perf_counter() - started
    for i, model in enumerate(models):
        batch.write_into(i, model)
    results = []
    for i, model in enumerate(models):
        frame = loop.history_frame(histories[i])
        total = seconds[i] + elapsed
        if done == cfg.steps:
            t0 = time.perf_counter()
            atomic_write_text(frame.to_csv(index=False), out_dirs[i] / HISTORY_FILE)
            save_weights(model, out_dirs[i] / FINAL_FILE,
                         {"final_step": done, "seconds": total, "seed": seeds[i],
                          "world_size": 1, "start_step": start_step,
                          "train_config": dataclasses.asdict(cfg),
                          "epoch_size": getattr(sources[i], "epoch_size", None),
                          "batched_replicates": count, "step_graph": "eager"})
            writing += time.perf_counter() - t0
        results.append(TrainResult(frame, done, total, writing / count, "eager"))
    return results
