"""The masked training step captured in a CUDA graph (``train.step_graph``).

On a GPU the step of a small restoration network is bound by launching its kernels from Python
(thousands per step), not by arithmetic. ``GraphedStep`` records one step (forward, loss, backward
with the mask's gradient hooks, gradient clipping, AdamW) in a ``torch.cuda.CUDAGraph`` and then
replays it: each step copies its batch into the graph's static input tensors and launches the
whole step at once. The optimizer runs with ``capturable=True`` and a tensor learning rate on the
device, so the schedule changes the learning rate without a new capture.

The first ``warmup`` steps run eagerly on a side stream (the usual recipe: memory pools and
library handles settle before capture); every step, eager or replayed, is a real training step.
Gradients are set to ``None`` before the capture, so the captured backward writes fresh gradients
each replay. Under bf16 autocast the caller disables autocast's weight cache (a cache filled during
capture would be stale at replay).

Checkpoints stay portable: ``portable_optimizer_state`` writes the optimizer state with a float
learning rate and ``capturable=False``, the format of an eager run, so a graphed training resumes
eagerly (or on the CPU) and an eager one graphed. Floats differ from an eager run's in the last
bits (capturable AdamW computes its bias corrections on the device), so ``train.step_graph`` is a
runtime setting, not part of a run's identity.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from mirl_lib.core.config import TrainConfig
from mirl_lib.core.errors import ConfigError

WARMUP_STEPS = 3  # eager steps before the capture


def graphing(cfg: TrainConfig, device: torch.device, world_size: int = 1) -> bool:
    """Whether the training step is captured in a CUDA graph under ``cfg`` on ``device``:
    ``graph`` (CUDA and one process required), ``eager``, or ``auto`` (graph on CUDA in one
    process; eager on the CPU and under ``torchrun``)."""
    mode = cfg.step_graph
    possible = device.type == "cuda" and world_size == 1
    if mode == "graph" and not possible:
        why = (f"the training runs on {device.type}" if device.type != "cuda"
               else f"the training runs in {world_size} processes (torchrun)")
        raise ConfigError(f"train.step_graph=graph: a CUDA graph needs one CUDA device in one "
                          f"process, but {why}; use auto or eager")
    return possible if mode == "auto" else mode == "graph"


def make_capturable(optimizer: torch.optim.Optimizer) -> None:
    """Switch ``optimizer`` (Adam/AdamW) in place to ``capturable=True`` with its learning rate
    as a one-element tensor on its parameters' device and its step counts there too."""
    for group in optimizer.param_groups:
        device = group["params"][0].device
        group["capturable"] = True
        if not isinstance(group["lr"], torch.Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)
        for param in group["params"]:
            state = optimizer.state.get(param)
            if state and "step" in state:
                state["step"] = state["step"].to(device=param.device, dtype=torch.float32)


def portable_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` as an eager optimizer writes it: float learning rates,
    ``capturable=False`` (a capturable optimizer's state loads into an eager one and back)."""
    state = optimizer.state_dict()
    groups = []
    for group in state["param_groups"]:
        group = dict(group)
        if isinstance(group.get("lr"), torch.Tensor):
            group["lr"] = float(group["lr"])
        if "capturable" in group:
            group["capturable"] = False
        groups.append(group)
    return {**state, "param_groups": groups}


class GraphedStep:
    """One training step, replayed from a CUDA graph after ``warmup`` eager steps.

    ``body(*batch)`` does the whole step except zeroing the gradients: forward, loss, backward,
    clipping, ``optimizer.step()``; it returns the detached loss (a loss that keeps its autograd
    graph alive would carry the warmup's gradient-accumulation nodes into the capture) and must
    not synchronize with the host. The first batch, on a CUDA device, sets the static inputs'
    shapes and layouts: every later batch must match it. Calling the step with a batch returns
    the step's loss, a tensor the next call overwrites (read or accumulate it before then).
    """

    def __init__(self, body: Callable[..., torch.Tensor], optimizer: torch.optim.Optimizer,
                 warmup: int = WARMUP_STEPS) -> None:
        self.body, self.optimizer, self.warmup = body, optimizer, warmup
        make_capturable(optimizer)
        self.lrs = [group["lr"] for group in optimizer.param_groups]
        self.static: tuple[torch.Tensor, ...] | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.loss: torch.Tensor | None = None
        self.eager_steps = 0

    def _sync_lr(self) -> None:
        """Keep each group's learning rate the device tensor the graph reads (a scheduler of an
        older torch may assign a float instead of filling the tensor)."""
        for group, tensor in zip(self.optimizer.param_groups, self.lrs):
            if group["lr"] is not tensor:
                tensor.fill_(float(group["lr"]))
                group["lr"] = tensor

    def __call__(self, *batch: torch.Tensor) -> torch.Tensor:
        if self.static is None:
            if not all(t.is_cuda for t in batch):
                raise ValueError("GraphedStep needs its inputs on a CUDA device")
            self.static = tuple(torch.empty_like(t) for t in batch)
        for static, value in zip(self.static, batch, strict=True):
            static.copy_(value, non_blocking=True)
        self._sync_lr()
        if self.graph is None and self.eager_steps < self.warmup:
            current = torch.cuda.current_stream()
            side = torch.cuda.Stream()
            side.wait_stream(current)
            with torch.cuda.stream(side):
                self.optimizer.zero_grad(set_to_none=True)
                loss = self.body(*self.static)
            current.wait_stream(side)
            self.eager_steps += 1
            return loss
        if self.graph is None:
            self.optimizer.zero_grad(set_to_none=True)
            self.graph = torch.cuda.CUDAGraph()
            # thread_local: the DataLoader's pin-memory thread may call CUDA during the capture
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.loss = self.body(*self.static)
        self.graph.replay()
        return self.loss
