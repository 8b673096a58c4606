"""The study's stage graph: the stages (one per group of points, as each strategy declares), what
each waits for (derived from the points it ``requires``) and a scheduler that runs them
(``graphlib``), whatever executes a stage.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from graphlib import TopologicalSorter
from pathlib import Path

from mirl_lib.core.errors import MirlError
from mirl_lib.files.paths import (
    DATA_PREVIEW_NOTEBOOK,
    EVALUATE_NOTEBOOK,
    FIGURES_NOTEBOOK,
    MOVED_ASIDE,
)
from mirl_lib.study.stage import Stage
from mirl_lib.study.strategies import REGISTRY
from mirl_lib.study.study import Study
from mirl_lib.training.replicates import batching

# The stages that train nothing: the data preview, the evaluation and the figures.
DATA_STAGE, EVALUATE_STAGE, FIGURES_STAGE = "data", "evaluate", "figures"


def stage_list(study: Study) -> list[Stage]:
    """Every stage: the data preview, one stage per group of points (as each strategy's
    ``stage(rnd)`` declares, in the registry's order), the evaluation and the figures.

    With several seeds, every group of points is one stage per seed (``round_03_seed1``, with
    the notebook parameter ``seeds=[1]``): seeds are independent replicates, so their chains run
    side by side with ``--jobs``. Where the study batches replicates
    (``training.replicates.batching``: ``train.batch_replicates``), a group is one stage for all
    seeds instead, whose seeds train as one batched computation. Listed group-major, so the
    trunk's stages of every seed come before the branches (the scheduler's priority)."""
    groups: dict[str, Stage] = {}
    for strategy, rnd in study.points():
        spec = REGISTRY[strategy].stage(rnd)
        stage = groups.get(spec.name) or Stage(spec.name, spec.notebook, dict(spec.parameters))
        groups[spec.name] = Stage(stage.name, stage.notebook, stage.parameters,
                                  (*stage.points, (strategy, rnd)))
    seeds = study.cfg.study.seeds
    per_seed = len(seeds) > 1 and not batching(study.cfg.train, study.cfg.cluster.executor)
    trained = [Stage(f"{g.name}_seed{seed}", g.notebook, {**g.parameters, "seeds": [seed]},
                     g.points, (seed,)) for g in groups.values() for seed in seeds
               ] if per_seed else list(groups.values())
    return [Stage(DATA_STAGE, DATA_PREVIEW_NOTEBOOK), *trained,
            Stage(EVALUATE_STAGE, EVALUATE_NOTEBOOK), Stage(FIGURES_STAGE, FIGURES_NOTEBOOK)]


def stage_seeds(study: Study, stage: Stage) -> tuple[int, ...]:
    """The seeds a stage trains (all of the study's unless the stage names its own)."""
    return study.cfg.study.seeds if stage.seeds is None else stage.seeds


def stage_done(study: Study, stage: Stage) -> bool:
    """A stage with points is done when all of them are, for each of its seeds. The others (data
    preview, evaluation, figures) take seconds and always rerun, so a fresh clone redoes them."""
    return bool(stage.points) and all(study.is_done(seed, s, r)
                                      for seed in stage_seeds(study, stage)
                                      for s, r in stage.points)


def move_aside(study: Study, stage: Stage) -> list[Path]:
    """Rename a stage's point folders to ``<folder>.replaced-<time>`` so it reruns; returns them."""
    moved = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for seed in stage_seeds(study, stage):
        for strategy, rnd in stage.points:
            folder = study.point_dir(seed, strategy, rnd)
            if folder.exists():
                target = folder.with_name(f"{folder.name}{MOVED_ASIDE}{stamp}")
                folder.rename(target)
                moved.append(target)
    return moved


def dependencies(study: Study, stages: list[Stage]) -> dict[str, set[str]]:
    """Which stages each stage waits for, derived from what each point ``requires``: a stage
    waits for every other stage that holds a point one of its points reads. The evaluation waits
    for every stage with points (and the data preview), the figures for the evaluation."""
    owner = {(seed, point): stage.name for stage in stages
             for seed in stage_seeds(study, stage) for point in stage.points}
    deps: dict[str, set[str]] = {}
    for stage in stages:
        needed = {(seed, req) for seed in stage_seeds(study, stage) for point in stage.points
                  for req in study.requires(*point)}
        missing = sorted(needed - set(owner))
        if missing:
            raise MirlError(f"stage {stage.name}: requires point(s) {missing} that no stage of "
                            f"this study runs")
        deps[stage.name] = {owner[req] for req in needed} - {stage.name}
    deps[EVALUATE_STAGE] = {s.name for s in stages if s.points} | {DATA_STAGE}
    deps[FIGURES_STAGE] = {EVALUATE_STAGE}
    return deps


def schedule(deps: dict[str, set[str]], jobs: int, run_stage: Callable[[str], None],
             abort: Callable[[], None] = lambda: None) -> None:
    """Run every stage once the stages it depends on have finished, ``jobs`` at a time.

    ``graphlib.TopologicalSorter`` decides what is ready; among ready stages, a free slot goes to
    the one listed first in ``deps`` (stage order: the trunk before the branches, so the critical
    path never waits behind a long branch). On the first failure (or Ctrl-C) nothing new starts,
    ``abort()`` stops the stages still running, and the failure is raised.
    """
    priority = {name: i for i, name in enumerate(deps)}
    sorter = TopologicalSorter(deps)
    sorter.prepare()
    failure: BaseException | None = None
    ready: list[str] = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        running: dict[Future, str] = {}
        try:
            while failure is None and sorter.is_active():
                ready = sorted([*ready, *sorter.get_ready()], key=priority.__getitem__)
                while ready and len(running) < jobs:
                    name = ready.pop(0)
                    running[pool.submit(run_stage, name)] = name
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    name = running.pop(future)
                    if future.exception() is not None:
                        failure = failure or future.exception()
                    else:
                        sorter.done(name)
        except BaseException:  # Ctrl-C while waiting: stop the running stages before leaving
            abort()
            raise
        if failure is not None:
            abort()
    if failure is not None:
        raise failure
