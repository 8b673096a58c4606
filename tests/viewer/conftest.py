"""Fixtures for the viewer tests: a small finished run folder built from the tiny preset."""
from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from mirl_lib.core.config import config_from_dict
from mirl_lib.files import tickets
from mirl_lib.net.promptir import build_model
from mirl_lib.pruning import masks

# (seed, strategy, round, fraction of prunable weights kept by a random mask)
VIEWER_POINTS: tuple[tuple[int, str, int, float], ...] = (
    (0, "dense", 0, 1.0), (0, "rewind", 1, 0.5), (0, "rewind", 2, 0.25),
    (0, "finetune", 2, 0.25), (1, "dense", 0, 1.0))


def _build_run(root: Path) -> Path:
    """Write ``root/results/default`` (config.yaml, tickets, catalog.csv) and return its path."""
    run = root / "results" / "default"
    run.mkdir(parents=True)
    cfg = config_from_dict({
        "model": {"preset": "tiny"},
        "data": {"source": "bundled", "tasks": ["denoise_25", "derain"], "test_max_side": 64,
                 "test_per_task": 2},
        "study": {"seeds": [0, 1]}})
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    rows = []
    for seed, strategy, rnd, keep in VIEWER_POINTS:
        model = build_model("tiny", seed=seed)
        with torch.no_grad():  # a visible, colour-shifting "restoration" so screens differ clearly
            model.output.weight.mul_(8.0)
        gen = torch.Generator().manual_seed(1000 * seed + 10 * rnd + len(strategy))
        mask = {n: torch.rand(m.shape, generator=gen) < keep if keep < 1 else m
                for n, m in masks.full_mask(model).items()}
        state = {n: t * mask[n] if n in mask else t for n, t in model.state_dict().items()}
        frac = masks.sparsity(mask, model)
        ticket = Path(f"seed_{seed}") / strategy / f"round_{rnd:02d}" / "ticket.mirl"
        meta = {"model_config": asdict(cfg.model), "strategy": strategy, "round": rnd,
                "seed": seed, "remaining_all": frac["remaining_all"],
                "remaining_prunable": frac["remaining_prunable"]}
        (run / ticket).parent.mkdir(parents=True)
        tickets.export_ticket(state, mask, run / ticket, meta)
        rows.append({"seed": seed, "strategy": strategy, "round": rnd,
                     "remaining_all": frac["remaining_all"],
                     "remaining_prunable": frac["remaining_prunable"],
                     "ticket": str(ticket), "mean_psnr": 20.0 + rnd})
    pd.DataFrame(rows).to_csv(run / "catalog.csv", index=False)
    return run


@pytest.fixture(scope="session")
def viewer_make_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], Path]:
    """A builder: ``viewer_make_run(root)`` puts a small run at ``root/results/default``.

    The run is built once per session and copied (with file times) for each caller.
    """
    template = _build_run(tmp_path_factory.mktemp("viewer_template"))

    def make(root: Path) -> Path:
        run = root / "results" / "default"
        shutil.copytree(template, run)
        return run

    return make


@pytest.fixture
def viewer_run(tmp_path: Path, viewer_make_run: Callable[[Path], Path]) -> Path:
    """A small finished run folder (tiny preset, bundled 64 px test images, 5 tickets)."""
    return viewer_make_run(tmp_path)
