"""The study: a trunk (dense training, then IMP rounds rewound to initialization) and branches.

Every trained network is a *point* ``(seed, strategy, round)`` with its own folder::

    <run>/seed_<s>/dense/                 round 0: init.pt, weights_step<k>.pt, final.pt, ...
    <run>/seed_<s>/<strategy>/round_<rr>/ mask.pt, mask_report.csv, final.pt, history.csv,
                                          metrics.csv, ticket.mirl, point.json

``point.json`` is written last; a point whose ``point.json`` exists is skipped, and a point whose
training was interrupted resumes from its ``state.pt``. Strategies:

- ``rewind`` (the trunk, MIR-L): prune the previous round's trained weights, rewind the survivors to
  their values at initialization, retrain.
- ``late_rewind``: the same chain, rewinding to the dense run's weights after ``prune.late_rewind_step``
  steps; the learning-rate schedule resumes from that step.
- ``finetune``: the same chain without rewinding: survivors keep their trained values.
- ``oneshot``: prune the trained dense network straight to a trunk round's sparsity, rewind, retrain.
- ``reinit`` (control): the trunk's mask with a fresh random initialization (seed ``seed + 10000``).
- ``random_mask`` (control): a random mask with the trunk mask's per-layer counts, rewound to init
  (mask seed ``seed + 20000 + round``).

Branch points other than the chains sit at the trunk rounds whose remaining fraction of all
parameters is closest to each ``study.branch_remaining`` target.
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

from mirl_lib import checkpoints, masks, pruning, tickets
from mirl_lib.config import Config, config_from_dict, read_yaml
from mirl_lib.data import TestItem, build_train_source, load_test_set
from mirl_lib.errors import ConfigError
from mirl_lib.evaluate import evaluate
from mirl_lib.model import build_model
from mirl_lib.device import resolve_device
from mirl_lib.train import train

CHAINS = ("rewind", "late_rewind", "finetune")
CONTROLS = ("oneshot", "reinit", "random_mask")
REINIT_SEED_OFFSET = 10_000
RANDOM_MASK_SEED_OFFSET = 20_000


class Study:
    """One run folder: its config, its points, and the stages that fill them."""

    def __init__(self, cfg: Config, run_dir: str | Path) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self._test_items: list[TestItem] | None = None
        self._plan: pd.DataFrame | None = None

    # ----- folders and bookkeeping -------------------------------------------------------------
    def prepare(self) -> None:
        """Create the run folder and record the config; refuse a folder made with another config."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "config.yaml"
        if path.exists():
            recorded = config_from_dict(read_yaml(path), str(path))
            if recorded.hash() != self.cfg.hash():
                raise ConfigError(
                    f"{path}: this run folder was made with another configuration (hash "
                    f"{recorded.hash()}, now {self.cfg.hash()}); choose another study.name or move "
                    f"the folder away")
            return
        checkpoints.atomic_write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False), path)

    def point_dir(self, seed: int, strategy: str, rnd: int) -> Path:
        base = self.run_dir / f"seed_{seed}"
        return base / "dense" if strategy == "dense" else base / strategy / f"round_{rnd:02d}"

    def is_done(self, seed: int, strategy: str, rnd: int) -> bool:
        return (self.point_dir(seed, strategy, rnd) / "point.json").is_file()

    def plan(self) -> pd.DataFrame:
        """Remaining fractions after each trunk round, computed from exact counts (no training)."""
        if self._plan is None:
            model = build_model(self.cfg.model)
            mask = masks.full_mask(model, self.cfg.prune.scope)
            # distinct magnitudes within each tensor: a planning round prunes exact counts
            proxy = {n: torch.arange(1, m.numel() + 1, dtype=torch.float32).reshape(m.shape)
                     for n, m in mask.items()}
            rows = []
            for rnd in range(self.cfg.prune.rounds + 1):
                if rnd:
                    mask = pruning.prune(proxy, mask, self.cfg.prune)
                rows.append({"round": rnd, **masks.sparsity(mask, model)})
            self._plan = pd.DataFrame(rows)
        return self._plan

    def branch_rounds(self) -> list[int]:
        """Trunk rounds closest to each ``study.branch_remaining`` target (fraction of all params)."""
        plan = self.plan()[lambda d: d["round"] > 0]
        return sorted({int(plan.loc[(plan["remaining_all"] - t).abs().idxmin(), "round"])
                       for t in self.cfg.study.branch_remaining})

    def stages(self) -> list[tuple[str, int]]:
        """Every (strategy, round) point of the study, in an order that respects dependencies."""
        out: list[tuple[str, int]] = [("dense", 0)]
        out += [("rewind", r) for r in range(1, self.cfg.prune.rounds + 1)]
        deepest = max(self.branch_rounds())
        for strategy in self.cfg.study.branches:
            rounds = range(1, deepest + 1) if strategy in CHAINS else self.branch_rounds()
            out += [(strategy, r) for r in rounds]
        return out

    # ----- running -------------------------------------------------------------------------------
    def run_point(self, seed: int, strategy: str, rnd: int) -> dict:
        """Train and evaluate one point unless it is already done; return its record."""
        folder = self.point_dir(seed, strategy, rnd)
        if self.is_done(seed, strategy, rnd):
            return json.loads((folder / "point.json").read_text())
        self.prepare()
        folder.mkdir(parents=True, exist_ok=True)
        started = time.time()
        with _threads(self.cfg.train.threads):  # evaluation too, not only training
            model, mask, start_step, extra = self._start(seed, strategy, rnd, folder)
            late = strategy == "dense" and "late_rewind" in self.cfg.study.branches
            snapshots = (self.cfg.prune.late_rewind_step,) if late else ()
            result = train(model, self.cfg.train, build_train_source(self.cfg.data, seed), folder,
                           seed=seed, mask=mask, start_step=start_step, snapshot_steps=snapshots,
                           progress_desc=f"seed {seed} {strategy} r{rnd}")
            return self._finish(seed, strategy, rnd, folder, model, mask, result, started, extra)

    def _start(self, seed: int, strategy: str, rnd: int, folder: Path
               ) -> tuple[torch.nn.Module, masks.Mask, int, dict]:
        """The starting weights, mask and schedule step of a point (and what to record of them)."""
        cfg = self.cfg
        model = build_model(cfg.model, seed=seed)
        dense = self.point_dir(seed, "dense", 0)
        if strategy == "dense":
            if not (folder / "init.pt").exists():
                checkpoints.save_weights(model, folder / "init.pt", {"seed": seed})
            return model, masks.full_mask(model, cfg.prune.scope), 0, {"init_seed": seed}
        self._require_done(seed, "dense", 0)
        mask_path = folder / "mask.pt"
        if mask_path.exists():
            mask = masks.load_mask(mask_path)
        else:
            mask = self._make_mask(seed, strategy, rnd, model)
            masks.save_mask(mask, mask_path, model)
        extra: dict = {"init_seed": seed}
        start_step = 0
        if strategy == "finetune":
            start = self._final_weights(seed, *_previous(strategy, rnd))
        elif strategy == "late_rewind":
            start_step = cfg.prune.late_rewind_step
            start = _load_state(dense / f"weights_step{start_step}.pt", cfg)
            extra["rewind_step"] = start_step
        elif strategy == "reinit":
            extra["init_seed"] = seed + REINIT_SEED_OFFSET
            start = build_model(cfg.model, seed=extra["init_seed"]).state_dict()
        else:  # rewind, oneshot, random_mask: back to the original initialization
            start = _load_state(dense / "init.pt", cfg)
        if strategy == "random_mask":
            extra["mask_seed"] = seed + RANDOM_MASK_SEED_OFFSET + rnd
        model.load_state_dict(start)
        return model, mask, start_step, extra

    def _make_mask(self, seed: int, strategy: str, rnd: int, model: torch.nn.Module) -> masks.Mask:
        cfg = self.cfg
        if strategy in CHAINS:
            self._require_done(seed, *_previous(strategy, rnd))
            weights = self._final_weights(seed, *_previous(strategy, rnd))
            prev_mask = masks.full_mask(model, cfg.prune.scope) if rnd == 1 else \
                masks.load_mask(self.point_dir(seed, strategy, rnd - 1) / "mask.pt")
            return pruning.prune({n: weights[n] for n in prev_mask}, prev_mask, cfg.prune)
        self._require_done(seed, "rewind", rnd)
        trunk = masks.load_mask(self.point_dir(seed, "rewind", rnd) / "mask.pt")
        if strategy == "reinit":
            return trunk
        if strategy == "random_mask":
            return pruning.random_mask(trunk, seed=seed + RANDOM_MASK_SEED_OFFSET + rnd)
        weights = self._final_weights(seed, "dense", 0)
        target = masks.sparsity(trunk, model)["remaining_prunable"]
        full = masks.full_mask(model, cfg.prune.scope)
        return pruning.oneshot_mask({n: weights[n] for n in full}, full, target, cfg.prune.method,
                                    cfg.prune.output_rate_factor)

    def _finish(self, seed: int, strategy: str, rnd: int, folder: Path, model: torch.nn.Module,
                mask: masks.Mask, result, started: float, extra: dict) -> dict:
        cfg = self.cfg
        state = checkpoints.cpu_state_dict(model)  # train() leaves the final weights in model
        frac = masks.sparsity(mask, model)
        scores = evaluate(model, self.test_items(), device=str(resolve_device(cfg.train.device)))
        scores.insert(0, "seed", seed)
        scores.insert(1, "strategy", strategy)
        scores.insert(2, "round", rnd)
        scores.insert(3, "remaining_all", frac["remaining_all"])
        scores.insert(4, "remaining_prunable", frac["remaining_prunable"])
        scores["config_hash"] = cfg.hash()
        checkpoints.atomic_write_text(scores.to_csv(index=False), folder / "metrics.csv")
        meta = {"model_config": asdict(cfg.model), "strategy": strategy, "round": rnd,
                "seed": seed, "config_hash": cfg.hash(), **frac}
        tickets.export_ticket(state, mask, folder / "ticket.mirl", meta)
        record = {**meta, **extra, "mean_psnr": float(scores["psnr"].mean()),
                  "mean_input_psnr": float(scores["input_psnr"].mean()),
                  "train_seconds": float(result.seconds), "seconds": time.time() - started,
                  "ticket": str((folder / "ticket.mirl").relative_to(self.run_dir))}
        record.pop("model_config")
        checkpoints.atomic_write_text(json.dumps(record, indent=2), folder / "point.json")
        return record

    def _final_weights(self, seed: int, strategy: str, rnd: int) -> dict[str, torch.Tensor]:
        return _load_state(self.point_dir(seed, strategy, rnd) / "final.pt", self.cfg)

    def _require_done(self, seed: int, strategy: str, rnd: int) -> None:
        if not self.is_done(seed, strategy, rnd):
            raise ConfigError(f"{self.point_dir(seed, strategy, rnd)}: this stage has not been run "
                              f"yet; run the stages in order (./run_all.sh does)")

    def test_items(self) -> list[TestItem]:
        if self._test_items is None:
            self._test_items = load_test_set(self.cfg.data, seed=self.cfg.data.test_seed)
        return self._test_items

    # ----- collecting ------------------------------------------------------------------------------
    def records(self) -> pd.DataFrame:
        """One row per finished point (the contents of every point.json)."""
        rows = [json.loads(p.read_text()) for p in sorted(self.run_dir.glob("seed_*/**/point.json"))]
        return pd.DataFrame(rows)

    def histories(self) -> pd.DataFrame:
        """Every point's training curve with its seed, strategy and round."""
        frames = [pd.read_csv(self.point_dir(r.seed, r.strategy, r.round) / "history.csv")
                  .assign(seed=r.seed, strategy=r.strategy, round=r.round)
                  for r in self.records().itertuples()]
        return pd.concat(frames, ignore_index=True)

    def collect(self) -> pd.DataFrame:
        """Concatenate every point's metrics into ``metrics.csv`` and write ``catalog.csv``."""
        frames = [pd.read_csv(p) for p in sorted(self.run_dir.glob("seed_*/**/metrics.csv"))]
        if not frames:
            raise ConfigError(f"{self.run_dir}: no finished points to collect")
        metrics = pd.concat(frames, ignore_index=True).sort_values(
            ["seed", "strategy", "round", "task", "dataset", "image"], kind="stable")
        checkpoints.atomic_write_text(metrics.to_csv(index=False), self.run_dir / "metrics.csv")
        catalog = self.records()[["seed", "strategy", "round", "remaining_all",
                                  "remaining_prunable", "ticket", "mean_psnr"]]
        checkpoints.atomic_write_text(catalog.to_csv(index=False), self.run_dir / "catalog.csv")
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


def _previous(strategy: str, rnd: int) -> tuple[str, int]:
    """The point a chain's round starts from: the dense network for round 1."""
    return ("dense", 0) if rnd == 1 else (strategy, rnd - 1)


def _load_state(path: Path, cfg: Config) -> dict[str, torch.Tensor]:
    model, _ = checkpoints.load_model(path, expected=cfg.model)
    return model.state_dict()
