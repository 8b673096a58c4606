"""The study: a trunk (dense training, then IMP rounds rewound to initialization) and branches.

Every trained network is a *point* ``(seed, strategy, round)`` with its own folder (the layout and
every file name: ``mirl_lib.files.paths``). What each strategy is (its rounds, the points it
requires, its mask and starting weights) is declared once, in ``mirl_lib.study.strategies``;
``Study`` keeps the run folder, runs points and collects
their records. ``point.json`` is written last; a point whose ``point.json`` exists is skipped, and a
point whose training was interrupted resumes from its ``state.pt``. Besides its sizes, collapse
counts, mean PSNR and times, a point's record names what computed it (``device.arithmetic``: the
machine, torch, the CPU vector level, threads and any kernel-choosing environment variable), so two
runs that differ in the last bits say why.

Seeds are replicates: path components (``seed_<s>``), not part of the run's identity. A run folder
records its config in ``config.yaml``; a config whose identity (``Config.identity()``: everything
that changes a result) differs is refused, while adding seeds or strategies extends the study.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch
import yaml

from mirl_lib.core import allocator
from mirl_lib.core.config import Config, config_from_dict, identity_changes, load_config, read_yaml
from mirl_lib.core.device import arithmetic, resolve_device, torch_threads
from mirl_lib.core.errors import ConfigError
from mirl_lib.data.heldout import load_heldout_set
from mirl_lib.data.stream import build_train_source
from mirl_lib.data.testset import TestItem, load_test_set
from mirl_lib.evaluation.scoring import evaluate
from mirl_lib.files import paths, tickets
from mirl_lib.files.atomic import atomic_write_text
from mirl_lib.files.paths import (
    CATALOG_COLUMNS,
    CATALOG_FILE,
    CONFIG_FILE,
    FINAL_FILE,
    HELDOUT_FILE,
    HISTORY_FILE,
    MASK_FILE,
    METRICS_FILE,
    POINT_FILE,
    TICKET_FILE,
)
from mirl_lib.net import checkpoints, structured
from mirl_lib.net.promptir import PromptIR, build_model
from mirl_lib.net.sizing import skeleton
from mirl_lib.pruning import masks
from mirl_lib.pruning.collapse import collapse
from mirl_lib.pruning.plan import plan_table
from mirl_lib.study import strategies
from mirl_lib.study.strategies import REGISTRY, PointContext, Schedule
from mirl_lib.training import replicates
from mirl_lib.training.launch import launch_distributed
from mirl_lib.training.loop import TrainResult, train

# Where a point's time goes, recorded in its point.json as ``phase_seconds`` (this attempt's wall
# clock, in the point's process): the mask and starting weights, the training loop less its
# checkpoint writes, those writes, scoring the test photos, scoring the held-out photos, the
# layer-collapse analysis, writing the ticket.
PHASES = ("start", "train", "checkpoints", "evaluate", "heldout", "collapse", "ticket")


class Study:
    """One run folder: its config, its points, and the records they leave."""

    def __init__(self, cfg: Config, run_dir: str | Path) -> None:
        strategies.check_study(cfg.study)
        strategies.check_analysis(cfg)
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self._test_items: list[TestItem] | None = None
        self._heldout_items: list[TestItem] | None = None

    # ----- folders and bookkeeping -------------------------------------------------------------
    def prepare(self) -> None:
        """Create the run folder and record the config; refuse a folder whose recorded config has
        another identity (naming what changed). Seeds, strategies and runtime settings may differ:
        the record is updated to the current config."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / CONFIG_FILE
        text = yaml.safe_dump(self.cfg.to_dict(), sort_keys=False)
        if path.exists():
            self.check_identity()
            if path.read_text() == text:
                return
        atomic_write_text(text, path)

    def check_identity(self) -> None:
        """Raise ``ConfigError`` when ``config.yaml`` records a config of another identity."""
        path = self.run_dir / CONFIG_FILE
        if not path.exists():
            return
        recorded = config_from_dict(read_yaml(path), str(path))
        changes = identity_changes(recorded, self.cfg)
        if changes:
            raise ConfigError(
                f"{path}: this run folder was made with another configuration (hash "
                f"{recorded.hash()}, now {self.cfg.hash()}; changed: {'; '.join(changes)}); "
                f"choose another study.name or move the folder away")

    def point_dir(self, seed: int, strategy: str, rnd: int) -> Path:
        return paths.point_dir(self.run_dir, seed, strategy, rnd)

    def point_files(self, name: str) -> list[Path]:
        """Every live point's ``name`` file, sorted (``paths.point_files``)."""
        return paths.point_files(self.run_dir, name)

    def is_done(self, seed: int, strategy: str, rnd: int) -> bool:
        return (self.point_dir(seed, strategy, rnd) / POINT_FILE).is_file()

    def plan(self) -> pd.DataFrame:
        """Remaining fractions after each trunk round, computed from exact counts (no training)."""
        return plan_table(self.cfg.model, self.cfg.prune)

    def branch_rounds(self) -> list[int]:
        """Trunk rounds closest to each ``study.branch_remaining`` target (fraction of all
        params)."""
        plan = self.plan()[lambda d: d["round"] > 0]
        return sorted({int(plan.loc[(plan["remaining_all"] - t).abs().idxmin(), "round"])
                       for t in self.cfg.study.branch_remaining})

    def schedule(self) -> Schedule:
        return Schedule(self.cfg.prune.rounds, tuple(self.branch_rounds()))

    def points(self, strategy: str | None = None) -> list[strategies.Point]:
        """Every ``(strategy, round)`` of the study (or of one strategy), in display order and,
        within a strategy, in the order its rounds must run."""
        schedule = self.schedule()
        return [(s.name, r) for s in strategies.in_study(self.cfg.study)
                if strategy is None or s.name == strategy for r in s.rounds(schedule)]

    def optional_points(self, strategy: str | None = None, rnd: int | None = None
                        ) -> list[strategies.Point]:
        """The points of the study's optional strategies (``study.strategies``), or of one of
        them, at every round or at ``rnd``."""
        chosen = self.cfg.study.strategies if strategy is None else (strategy,)
        return [(s, r) for s, r in self.points() if s in chosen and (rnd is None or r == rnd)]

    def requires(self, strategy: str, rnd: int) -> tuple[strategies.Point, ...]:
        return REGISTRY[strategy].requires(rnd)

    def skeleton(self) -> PromptIR:
        """The study's network on the meta device (shapes only)."""
        return skeleton(self.cfg.model)

    def new_model(self, init_seed: int) -> PromptIR:
        """A freshly initialized network (``init_seed`` fixes the initialization)."""
        return build_model(self.cfg.model, seed=init_seed)

    def load_state(self, path: Path) -> dict[str, torch.Tensor]:
        """The weights of a mirl weights file, checked against the study's architecture."""
        model, _ = checkpoints.load_model(path, expected=self.cfg.model)
        return model.state_dict()

    # ----- running -------------------------------------------------------------------------------
    def run_points(self, points: list[strategies.Point],
                   seeds: list[int] | tuple[int, ...] | None = None) -> pd.DataFrame:
        """Run ``points`` for ``seeds`` (default: every seed of the study; seed-major, so each
        seed's chain runs in order); one record per point."""
        chosen = self.chosen_seeds(seeds)
        if len(chosen) > 1 and replicates.batching(self.cfg.train, self.cfg.cluster.executor):
            records = {(rec["seed"], s, r): rec for s, r in points
                       for rec in self.run_replicates(chosen, s, r)}
            return pd.DataFrame([records[seed, s, r] for seed in chosen for s, r in points])
        return pd.DataFrame([self.run_point(seed, s, r) for seed in chosen for s, r in points])

    def run_replicates(self, seeds: tuple[int, ...], strategy: str, rnd: int) -> list[dict]:
        """Run one point for several ``seeds``, their trainings batched where their networks'
        shapes and start steps agree (``mirl_lib.training.replicates``); one record per seed, in
        ``seeds``' order. Finished seeds are only read; a lone seed runs as ``run_point`` does.
        Each record adds ``batched_replicates`` (how many trained together) and its
        ``phase_seconds`` give each replicate an equal share of the batch's training time."""
        todo = [seed for seed in seeds if not self.is_done(seed, strategy, rnd)]
        if len(todo) < 2:
            return [self.run_point(seed, strategy, rnd) for seed in seeds]
        for seed in todo:  # every seed ready before any starts
            self._context(seed, strategy, rnd).check_ready()
        opened = {seed: self._open_point(seed, strategy, rnd) for seed in todo}
        phases = {seed: opened[seed][2] for seed in todo}
        begun = {}
        with torch_threads(self.cfg.train.threads):
            for seed in todo:
                with _timed(phases[seed], "start"):
                    begun[seed] = self.start(seed, strategy, rnd)
            groups: dict[tuple, list[int]] = {}
            for seed, (model, _, start_step, _) in begun.items():
                groups.setdefault((start_step, replicates.signature(model)), []).append(seed)
            results, sizes = {}, {}
            for (start_step, _), group in groups.items():
                t0 = time.perf_counter()
                trained = replicates.train_replicates(
                    [begun[s][0] for s in group], self.cfg.train,
                    [build_train_source(self.cfg.data, s) for s in group],
                    [self.point_dir(s, strategy, rnd) for s in group], seeds=list(group),
                    masks=[begun[s][1] for s in group], start_step=start_step,
                    snapshot_steps=REGISTRY[strategy].snapshot_steps(self.cfg),
                    progress_desc=f"seeds {','.join(map(str, group))} {strategy} r{rnd}")
                share = (time.perf_counter() - t0) / len(group)
                for seed, result in zip(group, trained):
                    results[seed], sizes[seed] = result, len(group)
                    phases[seed]["train"] += share - result.checkpoint_seconds
                    phases[seed]["checkpoints"] += result.checkpoint_seconds
            records = {}
            for seed in todo:
                model, mask, _, extra = begun[seed]
                folder, started, _ = opened[seed]
                records[seed] = self._finish(
                    seed, strategy, rnd, folder, model, mask, results[seed], started,
                    {**extra, "batched_replicates": sizes[seed]}, phases[seed])
        return [records[seed] if seed in records else self.run_point(seed, strategy, rnd)
                for seed in seeds]

    def chosen_seeds(self, seeds: list[int] | tuple[int, ...] | None) -> tuple[int, ...]:
        """``seeds`` (default: every seed of the study), refused where one is not the study's."""
        chosen = tuple(self.cfg.study.seeds if seeds is None else seeds)
        unknown = sorted(set(chosen) - set(self.cfg.study.seeds))
        if unknown:
            raise ConfigError(f"seeds {unknown} are not seeds of this study "
                              f"(study.seeds: {list(self.cfg.study.seeds)})")
        return chosen

    def run_point(self, seed: int, strategy: str, rnd: int) -> dict:
        """Train and evaluate one point unless it is already done; return its record.

        With ``train.gpus`` > 1 the training runs under ``torchrun`` (``mirl_lib.study.rank``),
        one process per GPU; evaluation and the record stay in this process.
        """
        if self.is_done(seed, strategy, rnd):
            return json.loads((self.point_dir(seed, strategy, rnd) / POINT_FILE).read_text())
        self._context(seed, strategy, rnd).check_ready()
        folder, started, phases = self._open_point(seed, strategy, rnd)
        with torch_threads(self.cfg.train.threads):  # evaluation too, not only training
            if self.cfg.train.gpus > 1 and not (folder / FINAL_FILE).exists():
                with _timed(phases, "start"):  # mask.pt (and init.pt) before the ranks read them
                    self.start(seed, strategy, rnd)
                with _timed(phases, "train"):
                    launch_distributed("mirl_lib.study.rank", self.cfg.train.gpus,
                                       str(self.run_dir), str(seed), strategy, str(rnd))
            # after a distributed run, train() finds final.pt and only loads it
            model, mask, result, extra = self.train_point(seed, strategy, rnd, phases)
            return self._finish(seed, strategy, rnd, folder, model, mask, result, started, extra,
                                phases)

    def _context(self, seed: int, strategy: str, rnd: int) -> PointContext:
        folder = self.point_dir(seed, strategy, rnd)
        return PointContext(self, seed, REGISTRY[strategy], rnd, folder)

    def _open_point(self, seed: int, strategy: str, rnd: int
                    ) -> tuple[Path, float, dict[str, float]]:
        """Record the config and make the point's folder (its requirements checked before);
        returns the folder, the time it started and its phase timers (``PHASES``) at zero."""
        self.prepare()
        folder = self.point_dir(seed, strategy, rnd)
        folder.mkdir(parents=True, exist_ok=True)
        return folder, time.time(), dict.fromkeys(PHASES, 0.0)

    def train_point(self, seed: int, strategy: str, rnd: int,
                    phases: dict[str, float] | None = None
                    ) -> tuple[PromptIR, masks.Mask, TrainResult, dict]:
        """Train one point in this process (or in this rank, under torchrun); returns the trained
        model, its mask, the training result and what to record. ``phases`` (``PHASES``) gets the
        seconds of the start (mask, starting weights), the training and its checkpoint writes
        added to it."""
        phases = {} if phases is None else phases
        with _timed(phases, "start"):
            model, mask, start_step, extra = self.start(seed, strategy, rnd)
        with _timed(phases, "train"):
            result = train(model, self.cfg.train, build_train_source(self.cfg.data, seed),
                           self.point_dir(seed, strategy, rnd), seed=seed, mask=mask,
                           start_step=start_step,
                           snapshot_steps=REGISTRY[strategy].snapshot_steps(self.cfg),
                           progress_desc=f"seed {seed} {strategy} r{rnd}")
        phases["train"] -= result.checkpoint_seconds  # the writes are a phase of their own
        phases["checkpoints"] = phases.get("checkpoints", 0.0) + result.checkpoint_seconds
        return model, mask, result, extra

    def start(self, seed: int, strategy: str, rnd: int
              ) -> tuple[PromptIR, masks.Mask, int, dict]:
        """A point's starting network, mask (made and saved once) and schedule step, and what to
        record of them, as its strategy declares."""
        folder = self.point_dir(seed, strategy, rnd)
        declared = REGISTRY[strategy]
        ctx = self._context(seed, strategy, rnd)
        mask_path = folder / MASK_FILE
        begin = declared.start(ctx, rnd)
        model = declared.network(self.cfg, rnd, begin.state)
        if mask_path.exists():
            mask = masks.load_mask(mask_path)
        else:
            mask = declared.mask(ctx, rnd)
            masks.save_mask(mask, mask_path, model)
        return model, mask, begin.step, dict(begin.record)

    def _finish(self, seed: int, strategy: str, rnd: int, folder: Path, model: torch.nn.Module,
                mask: masks.Mask, result, started: float, extra: dict,
                phases: dict[str, float]) -> dict:
        cfg = self.cfg
        state = checkpoints.cpu_state_dict(model)  # train() leaves the final weights in model
        frac = masks.sparsity(mask, model)
        # remaining_all is always a fraction of the study's dense network, so a narrowed network
        # (the small-dense control) sits at its own parameter count on the same axis
        dense_total = int(self.plan().at[0, "total"])
        frac["remaining_all"] = (frac["total"] - frac["prunable"] + frac["kept"]) / dense_total
        device = resolve_device(cfg.train.device)
        written = {}
        for name, items, phase in ((METRICS_FILE, self.test_items(), "evaluate"),
                                   (HELDOUT_FILE, self.heldout_items(), "heldout")):
            with _timed(phases, phase):
                scores = evaluate(model, items, device=str(device))
                scores.insert(0, "seed", seed)
                scores.insert(1, "strategy", strategy)
                scores.insert(2, "round", rnd)
                scores.insert(3, "remaining_all", frac["remaining_all"])
                scores.insert(4, "remaining_prunable", frac["remaining_prunable"])
                scores["config_hash"] = cfg.hash()
                atomic_write_text(scores.to_csv(index=False), folder / name)
            written[name] = scores
        scores = written[METRICS_FILE]
        with _timed(phases, "collapse"):
            collapsed = collapse(model.cpu(), mask)
        meta = {"model_config": asdict(model.config), "strategy": strategy, "round": rnd,
                "seed": seed, "config_hash": cfg.hash(), **frac,
                **({structured.STRUCTURED: True} if structured.is_structured(model) else {}),
                "empty_tensors": collapsed["empty_tensors"],
                "prunable_tensors": collapsed["prunable_tensors"],
                "path_cut": bool(collapsed["path_cut"])}
        with _timed(phases, "ticket"):
            tickets.export_ticket(state, mask, folder / TICKET_FILE, meta)
        record = {**meta, **extra, "mean_psnr": float(scores["psnr"].mean()),
                  "mean_input_psnr": float(scores["input_psnr"].mean()),
                  "train_seconds": float(result.seconds), "step_graph": result.step_graph,
                  "malloc": allocator.current(), "seconds": time.time() - started,
                  "phase_seconds": {k: round(v, 4) for k, v in phases.items()},
                  "ticket": str((folder / TICKET_FILE).relative_to(self.run_dir)),
                  **arithmetic(device, cfg.train.threads or torch.get_num_threads())}
        record.pop("model_config")
        atomic_write_text(json.dumps(record, indent=2), folder / POINT_FILE)
        return record

    def test_items(self) -> list[TestItem]:
        if self._test_items is None:
            self._test_items = load_test_set(self.cfg.data, seed=self.cfg.data.test_seed)
        return self._test_items

    def heldout_items(self) -> list[TestItem]:
        """The held-out check (``mirl_lib.data.heldout``): unseen photos, out-of-range rain and
        haze."""
        if self._heldout_items is None:
            self._heldout_items = load_heldout_set(self.cfg.data, seed=self.cfg.data.test_seed)
        return self._heldout_items

    # ----- collecting -----------------------------------------------------------------------------
    def records(self) -> pd.DataFrame:
        """One row per finished point (the contents of every point.json)."""
        rows = [json.loads(p.read_text()) for p in self.point_files(POINT_FILE)]
        return pd.DataFrame(rows)

    def point_table(self, strategy: str, rnd: int, name: str = METRICS_FILE,
                    seeds: list[int] | tuple[int, ...] | None = None) -> pd.DataFrame:
        """One point's ``name`` CSV (its metrics, mask report, history...) for ``seeds`` (default:
        every seed of the study), one below the other, with a ``seed`` column first."""
        chosen = self.cfg.study.seeds if seeds is None else seeds
        frames = [pd.read_csv(self.point_dir(seed, strategy, rnd) / name) for seed in chosen]
        return pd.concat([f.drop(columns="seed", errors="ignore").assign(seed=seed)
                          for seed, f in zip(chosen, frames)], ignore_index=True
                         ).pipe(lambda t: t[["seed", *[c for c in t if c != "seed"]]])

    def histories(self) -> pd.DataFrame:
        """Every point's training curve with its seed, strategy and round."""
        frames = [pd.read_csv(self.point_dir(r.seed, r.strategy, r.round) / HISTORY_FILE)
                  .assign(seed=r.seed, strategy=r.strategy, round=r.round)
                  for r in self.records().itertuples()]
        return pd.concat(frames, ignore_index=True)

    def collect(self) -> pd.DataFrame:
        """Concatenate every point's metrics into ``metrics.csv`` and write ``catalog.csv``."""
        frames = [pd.read_csv(p) for p in self.point_files(METRICS_FILE)]
        if not frames:
            raise ConfigError(f"{self.run_dir}: no finished points to collect")
        metrics = pd.concat(frames, ignore_index=True).sort_values(
            ["seed", "strategy", "round", "task", "dataset", "image"], kind="stable")
        atomic_write_text(metrics.to_csv(index=False), self.run_dir / METRICS_FILE)
        held = [pd.read_csv(p) for p in self.point_files(HELDOUT_FILE)]
        if held:
            heldout = pd.concat(held, ignore_index=True).sort_values(
                ["seed", "strategy", "round", "task", "dataset", "image"], kind="stable")
            atomic_write_text(heldout.to_csv(index=False), self.run_dir / HELDOUT_FILE)
        records = self.records()
        columns = [c for c in CATALOG_COLUMNS if c in records.columns]
        atomic_write_text(records[columns].to_csv(index=False), self.run_dir / CATALOG_FILE)
        return metrics


@contextmanager
def _timed(phases: dict[str, float], phase: str) -> Iterator[None]:
    """Add the block's wall-clock seconds to ``phases[phase]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        phases[phase] = phases.get(phase, 0.0) + time.perf_counter() - t0


def open_study(params_file: str | Path, results_root: str | Path,
               overrides: dict | None = None) -> Study:
    """The study of a params file (with ``overrides``, a nested dict such as
    ``{"train": {"gpus": 2}}``, merged over it), in ``<results_root>/<study.name>``."""
    cfg = load_config(params_file, overrides)
    try:
        return Study(cfg, paths.run_dir(results_root, cfg.study.name))
    except ConfigError as exc:
        raise ConfigError(f"{params_file}: {exc}") from None
