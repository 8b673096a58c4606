"""The study: a trunk (dense training, then IMP rounds rewound to initialization) and branches.

Every trained network is a *point* ``(seed, strategy, round)`` with its own folder::

    <run>/seed_<s>/dense/                 round 0: init.pt, weights_step<k>.pt, final.pt, ...
    <run>/seed_<s>/<strategy>/round_<rr>/ mask.pt, mask_report.csv, final.pt, history.csv,
                                          metrics.csv, ticket.mirl, point.json

What each strategy is (its rounds, the points it requires, its mask and starting weights) is
declared once, in ``mirl_lib.strategies``; ``Study`` keeps the run folder, runs points and collects
their records. ``point.json`` is written last; a point whose ``point.json`` exists is skipped, and a
point whose training was interrupted resumes from its ``state.pt``. Besides its sizes, collapse
counts, mean PSNR and times, a point's record names what computed it (``device.arithmetic``: the
machine, torch, the CPU vector level, threads and any kernel-choosing environment variable), so two
runs that differ in the last bits say why.

Seeds are replicates: path components (``seed_<s>``), not part of the run's identity. A run folder
records its config in ``config.yaml``; a config whose identity (``Config.identity()``: everything
that changes a result) differs is refused, while adding seeds or branches extends the study.
"""
from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch
import yaml

from mirl_lib import checkpoints, masks, pruning, strategies, tickets
from mirl_lib.config import (Config, ModelConfig, PruneConfig, config_from_dict, identity_changes,
                             read_yaml)
from mirl_lib.data import TestItem, build_train_source, load_test_set
from mirl_lib.device import arithmetic, resolve_device
from mirl_lib.errors import ConfigError
from mirl_lib.evaluate import evaluate
from mirl_lib.fileio import atomic_write_text
from mirl_lib.heldout import load_heldout_set
from mirl_lib.model import PromptIR, build_model
from mirl_lib.strategies import REGISTRY, PointContext, Schedule
from mirl_lib.sizing import plan_table, skeleton  # noqa: F401 (re-exported)
from mirl_lib.processes import launch_distributed
from mirl_lib.train import TrainResult, train


# catalog.csv: one row per point (the viewer reads the first seven; collapse counts after them)
MOVED_ASIDE = ".replaced-"  # a point folder renamed to <folder>.replaced-<time> so its stage reruns
CATALOG_RECORD_COLUMNS = ("seed", "strategy", "round", "remaining_all", "remaining_prunable",
                          "ticket", "mean_psnr", "total", "empty_tensors", "prunable_tensors",
                          "path_cut")


class Study:
    """One run folder: its config, its points, and the records they leave."""

    def __init__(self, cfg: Config, run_dir: str | Path) -> None:
        strategies.check_study(cfg.study)
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self._test_items: list[TestItem] | None = None
        self._heldout_items: list[TestItem] | None = None

    # ----- folders and bookkeeping -------------------------------------------------------------
    def prepare(self) -> None:
        """Create the run folder and record the config; refuse a folder whose recorded config has
        another identity (naming what changed). Seeds, branches and runtime settings may differ:
        the record is updated to the current config."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "config.yaml"
        text = yaml.safe_dump(self.cfg.to_dict(), sort_keys=False)
        if path.exists():
            self.check_identity()
            if path.read_text() == text:
                return
        atomic_write_text(text, path)

    def check_identity(self) -> None:
        """Raise ``ConfigError`` when ``config.yaml`` records a config of another identity."""
        path = self.run_dir / "config.yaml"
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
        base = self.run_dir / f"seed_{seed}"
        return base / "dense" if strategy == "dense" else base / strategy / f"round_{rnd:02d}"

    def point_files(self, name: str) -> list[Path]:
        """Every live point's ``name`` file, sorted; folders moved aside by ``--force``
        (``<folder>{MOVED_ASIDE}<time>``) are history, not results, and are left out."""
        return [p for p in sorted(self.run_dir.glob(f"seed_*/**/{name}"))
                if not any(MOVED_ASIDE in part for part in p.relative_to(self.run_dir).parts)]

    def is_done(self, seed: int, strategy: str, rnd: int) -> bool:
        return (self.point_dir(seed, strategy, rnd) / "point.json").is_file()

    def plan(self) -> pd.DataFrame:
        """Remaining fractions after each trunk round, computed from exact counts (no training)."""
        return plan_table(self.cfg.model, self.cfg.prune)

    def branch_rounds(self) -> list[int]:
        """Trunk rounds closest to each ``study.branch_remaining`` target (fraction of all params)."""
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
        chosen = self.cfg.study.seeds if seeds is None else tuple(seeds)
        unknown = sorted(set(chosen) - set(self.cfg.study.seeds))
        if unknown:
            raise ConfigError(f"seeds {unknown} are not seeds of this study "
                              f"(study.seeds: {list(self.cfg.study.seeds)})")
        return pd.DataFrame([self.run_point(seed, s, r) for seed in chosen for s, r in points])

    def run_point(self, seed: int, strategy: str, rnd: int) -> dict:
        """Train and evaluate one point unless it is already done; return its record.

        With ``train.gpus`` > 1 the training runs under ``torchrun`` (``mirl_lib.distributed``),
        one process per GPU; evaluation and the record stay in this process.
        """
        folder = self.point_dir(seed, strategy, rnd)
        if self.is_done(seed, strategy, rnd):
            return json.loads((folder / "point.json").read_text())
        ctx = PointContext(self, seed, REGISTRY[strategy], rnd, folder)
        ctx.check_ready()
        self.prepare()
        folder.mkdir(parents=True, exist_ok=True)
        started = time.time()
        with _threads(self.cfg.train.threads):  # evaluation too, not only training
            if self.cfg.train.gpus > 1 and not (folder / "final.pt").exists():
                self.start(seed, strategy, rnd)  # mask.pt (and init.pt) before the ranks read them
                launch_distributed("mirl_lib.distributed", self.cfg.train.gpus,
                                   str(self.run_dir), str(seed), strategy, str(rnd))
            # after a distributed run, train() finds final.pt and only loads it
            model, mask, result, extra = self.train_point(seed, strategy, rnd)
            return self._finish(seed, strategy, rnd, folder, model, mask, result, started, extra)

    def train_point(self, seed: int, strategy: str, rnd: int
                    ) -> tuple[PromptIR, masks.Mask, TrainResult, dict]:
        """Train one point in this process (or in this rank, under torchrun); returns the trained
        model, its mask, the training result and what to record."""
        model, mask, start_step, extra = self.start(seed, strategy, rnd)
        result = train(model, self.cfg.train, build_train_source(self.cfg.data, seed),
                       self.point_dir(seed, strategy, rnd), seed=seed, mask=mask,
                       start_step=start_step,
                       snapshot_steps=REGISTRY[strategy].snapshot_steps(self.cfg),
                       progress_desc=f"seed {seed} {strategy} r{rnd}")
        return model, mask, result, extra

    def start(self, seed: int, strategy: str, rnd: int
              ) -> tuple[PromptIR, masks.Mask, int, dict]:
        """A point's starting network, mask (made and saved once) and schedule step, and what to
        record of them, as its strategy declares."""
        folder = self.point_dir(seed, strategy, rnd)
        declared = REGISTRY[strategy]
        ctx = PointContext(self, seed, declared, rnd, folder)
        mask_path = folder / "mask.pt"
        arch = declared.model_config(self.cfg, rnd)
        if mask_path.exists():
            mask = masks.load_mask(mask_path)
        else:
            mask = declared.mask(ctx, rnd)
            masks.save_mask(mask, mask_path, skeleton(arch))
        begin = declared.start(ctx, rnd)
        model = build_model(arch)
        model.load_state_dict(begin.state)
        return model, mask, begin.step, dict(begin.record)

    def _finish(self, seed: int, strategy: str, rnd: int, folder: Path, model: torch.nn.Module,
                mask: masks.Mask, result, started: float, extra: dict) -> dict:
        cfg = self.cfg
        state = checkpoints.cpu_state_dict(model)  # train() leaves the final weights in model
        frac = masks.sparsity(mask, model)
        # remaining_all is always a fraction of the study's dense network, so a narrowed network
        # (the small-dense control) sits at its own parameter count on the same axis
        dense_total = int(self.plan().at[0, "total"])
        frac["remaining_all"] = (frac["total"] - frac["prunable"] + frac["kept"]) / dense_total
        device = resolve_device(cfg.train.device)
        written = {}
        for name, items in (("metrics.csv", self.test_items()), ("heldout.csv", self.heldout_items())):
            scores = evaluate(model, items, device=str(device))
            scores.insert(0, "seed", seed)
            scores.insert(1, "strategy", strategy)
            scores.insert(2, "round", rnd)
            scores.insert(3, "remaining_all", frac["remaining_all"])
            scores.insert(4, "remaining_prunable", frac["remaining_prunable"])
            scores["config_hash"] = cfg.hash()
            atomic_write_text(scores.to_csv(index=False), folder / name)
            written[name] = scores
        scores = written["metrics.csv"]
        collapsed = masks.collapse(model.cpu(), mask)
        meta = {"model_config": asdict(model.config), "strategy": strategy, "round": rnd,
                "seed": seed, "config_hash": cfg.hash(), **frac,
                "empty_tensors": collapsed["empty_tensors"],
                "prunable_tensors": collapsed["prunable_tensors"],
                "path_cut": bool(collapsed["path_cut"])}
        tickets.export_ticket(state, mask, folder / "ticket.mirl", meta)
        record = {**meta, **extra, "mean_psnr": float(scores["psnr"].mean()),
                  "mean_input_psnr": float(scores["input_psnr"].mean()),
                  "train_seconds": float(result.seconds), "seconds": time.time() - started,
                  "ticket": str((folder / "ticket.mirl").relative_to(self.run_dir)),
                  **arithmetic(device, cfg.train.threads or torch.get_num_threads())}
        record.pop("model_config")
        atomic_write_text(json.dumps(record, indent=2), folder / "point.json")
        return record

    def test_items(self) -> list[TestItem]:
        if self._test_items is None:
            self._test_items = load_test_set(self.cfg.data, seed=self.cfg.data.test_seed)
        return self._test_items

    def heldout_items(self) -> list[TestItem]:
        """The held-out check (``mirl_lib.heldout``): unseen photos, out-of-range rain and haze."""
        if self._heldout_items is None:
            self._heldout_items = load_heldout_set(self.cfg.data, seed=self.cfg.data.test_seed)
        return self._heldout_items

    # ----- collecting ------------------------------------------------------------------------------
    def records(self) -> pd.DataFrame:
        """One row per finished point (the contents of every point.json)."""
        rows = [json.loads(p.read_text()) for p in self.point_files("point.json")]
        return pd.DataFrame(rows)

    def histories(self) -> pd.DataFrame:
        """Every point's training curve with its seed, strategy and round."""
        frames = [pd.read_csv(self.point_dir(r.seed, r.strategy, r.round) / "history.csv")
                  .assign(seed=r.seed, strategy=r.strategy, round=r.round)
                  for r in self.records().itertuples()]
        return pd.concat(frames, ignore_index=True)

    def collect(self) -> pd.DataFrame:
        """Concatenate every point's metrics into ``metrics.csv`` and write ``catalog.csv``."""
        frames = [pd.read_csv(p) for p in self.point_files("metrics.csv")]
        if not frames:
            raise ConfigError(f"{self.run_dir}: no finished points to collect")
        metrics = pd.concat(frames, ignore_index=True).sort_values(
            ["seed", "strategy", "round", "task", "dataset", "image"], kind="stable")
        atomic_write_text(metrics.to_csv(index=False), self.run_dir / "metrics.csv")
        held = [pd.read_csv(p) for p in self.point_files("heldout.csv")]
        if held:
            heldout = pd.concat(held, ignore_index=True).sort_values(
                ["seed", "strategy", "round", "task", "dataset", "image"], kind="stable")
            atomic_write_text(heldout.to_csv(index=False), self.run_dir / "heldout.csv")
        records = self.records()
        columns = [c for c in CATALOG_RECORD_COLUMNS if c in records.columns]
        atomic_write_text(records[columns].to_csv(index=False), self.run_dir / "catalog.csv")
        return metrics


@contextmanager
def _threads(count: int) -> Iterator[None]:
    """Use ``count`` torch threads inside the block (0 = leave as is)."""
    before = torch.get_num_threads()
    if count > 0:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
