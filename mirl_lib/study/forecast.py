"""How long a study takes on a given number of GPUs: the stage graph (``graph.dependencies``)
scheduled as the runner schedules it (a free slot goes to the ready stage listed first, the trunk
before the branches), each stage taking its trainings' hours.

A stage trains its points one after another, each ``hours_per_training`` on one GPU; on
``gpus_per_stage`` GPUs under DDP a training takes ``hours / (gpus_per_stage * scaling)``, where
``scaling`` is the data-parallel efficiency (1.0 is the ideal, an upper bound on speed). A study
holds ``gpus // gpus_per_stage`` stages at once. Stages without trainings (preview, evaluation,
figures) count as taking no time. The critical path is the longest chain of stages through the
graph; no number of GPUs finishes the study sooner than it takes.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from graphlib import TopologicalSorter

from mirl_lib.core.errors import ConfigError
from mirl_lib.study.graph import Stage, dependencies, stage_list, stage_seeds
from mirl_lib.study.study import Study


@dataclass(frozen=True)
class Forecast:
    """A study's schedule on ``gpus`` GPUs: ``hours`` of wall-clock, the ``critical_hours`` no
    number of GPUs beats, the chain of stages that makes it, the trainings and their GPU-hours."""

    gpus: int
    gpus_per_stage: int
    slots: int
    hours: float
    critical_hours: float
    critical_path: tuple[str, ...]
    trainings: int
    gpu_hours: float


def stage_hours(study: Study, stage: Stage, hours_per_training: float, gpus_per_stage: int,
                scaling: float) -> float:
    """Wall-clock hours of one stage: its trainings one after another."""
    trainings = len(stage.points) * len(stage_seeds(study, stage))
    return trainings * hours_per_training / (gpus_per_stage * scaling)


def forecast(study: Study, hours_per_training: float, gpus: int, gpus_per_stage: int = 1,
             scaling: float = 1.0) -> Forecast:
    """Simulate the runner's schedule of ``study`` on ``gpus`` GPUs (module docstring)."""
    if hours_per_training <= 0:
        raise ConfigError("--hours-per-training: must be positive")
    if gpus_per_stage < 1 or gpus < gpus_per_stage:
        raise ConfigError(f"--gpus {gpus}: must be at least --gpus-per-stage ({gpus_per_stage}), "
                          f"which must be >= 1")
    if not 0 < scaling <= 1:
        raise ConfigError(f"--scaling {scaling}: must be in (0, 1]")
    stages = stage_list(study)
    deps = dependencies(study, stages)
    hours = {s.name: stage_hours(study, s, hours_per_training, gpus_per_stage, scaling)
             for s in stages}
    slots = gpus // gpus_per_stage
    priority = {name: i for i, name in enumerate(deps)}
    sorter = TopologicalSorter(deps)
    sorter.prepare()
    ready: list[str] = []
    running: list[tuple[float, int, str]] = []  # (finish time, priority, name)
    now = 0.0
    while sorter.is_active():
        ready = sorted([*ready, *sorter.get_ready()], key=priority.__getitem__)
        while ready and len(running) < slots:
            name = ready.pop(0)
            heapq.heappush(running, (now + hours[name], priority[name], name))
        now, _, name = heapq.heappop(running)
        sorter.done(name)
        while running and running[0][0] == now:  # everything finishing at this moment
            sorter.done(heapq.heappop(running)[2])
    # the critical path: the longest chain, found over the graph in dependency order
    longest: dict[str, tuple[float, tuple[str, ...]]] = {}
    for name in TopologicalSorter(deps).static_order():
        before = max((longest[d] for d in deps.get(name, ())), default=(0.0, ()))
        longest[name] = (before[0] + hours[name], (*before[1], name))
    critical, chain = max(longest.values())
    trainings = sum(len(s.points) * len(stage_seeds(study, s)) for s in stages)
    return Forecast(gpus, gpus_per_stage, slots, now, critical,
                    tuple(n for n in chain if hours[n] > 0), trainings,
                    trainings * hours_per_training / scaling)


def forecast_text(result: Forecast) -> str:
    """A forecast in a few lines, for the command line and docs/cluster.md."""
    return (f"{result.trainings} trainings, {result.gpu_hours:,.0f} GPU-hours; "
            f"{result.gpus} GPU(s), {result.gpus_per_stage} per stage, {result.slots} stage(s) "
            f"at once: {result.hours:,.0f} h ({result.hours / 24:,.1f} days) of wall-clock\n"
            f"critical path {result.critical_hours:,.0f} h ({result.critical_hours / 24:,.1f} "
            f"days; no number of GPUs beats it at {result.gpus_per_stage} per stage): "
            f"{len(result.critical_path)} stages, {' -> '.join(result.critical_path)}")
