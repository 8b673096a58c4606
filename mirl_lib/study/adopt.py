"""Points shared between runs of the same identity: ``adopt`` takes finished points of one
strategy from another run folder instead of training them again.

Two runs whose configs have the same identity (``Config.identity()``) compute the same points: a
study that adds a strategy to a finished one (``params/structured.yaml`` beside
``params/full.yaml``) need not retrain the trunk it shares. ``adopt`` copies each point's tables
(``metrics.csv``, ``heldout.csv``, ``history.csv``, ``mask_report.csv``) and its ticket where the
source has one, and writes a ``point.json`` from the source's record (its ``point.json``, or for a
committed run, whose markers are not committed, its ``catalog.csv`` row) with ``adopted_from``
naming the source folder. The weights files (``final.pt``, ``mask.pt``) are not copied: an
adopted point is scored and shown, not trained from. So ``adopt`` refuses a point that a point of
this study still to be trained requires (its weights would be missing), and refuses a source of
another identity, a point the source has not finished and a table scored by another config.
Nothing already in this run folder is replaced: points done here are kept as they are.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from mirl_lib.core.config import load_config, scored_by
from mirl_lib.core.errors import ConfigError, DataError
from mirl_lib.files import paths
from mirl_lib.files.atomic import atomic_write, atomic_write_text
from mirl_lib.files.paths import (
    CATALOG_FILE,
    CONFIG_FILE,
    HELDOUT_FILE,
    HISTORY_FILE,
    MASK_REPORT_FILE,
    METRICS_FILE,
    POINT_FILE,
    TICKET_FILE,
)
from mirl_lib.study.study import Study

TABLES = (METRICS_FILE, HELDOUT_FILE, HISTORY_FILE, MASK_REPORT_FILE)
SCORED = (METRICS_FILE, HELDOUT_FILE)  # tables with a config_hash column
ADOPTED = "adopted_from"  # the point.json key naming the source point folder


def _records(source: Path) -> dict[tuple[int, str, int], dict]:
    """The source run's point records by (seed, strategy, round): its ``point.json`` files, and
    for points without one (a committed run), its ``catalog.csv`` rows."""
    records: dict[tuple[int, str, int], dict] = {}
    catalog = source / CATALOG_FILE
    if catalog.is_file():
        for row in pd.read_csv(catalog).to_dict("records"):
            row = {k: v for k, v in row.items() if not pd.isna(v)}  # empty cells: not recorded
            records[(int(row["seed"]), str(row["strategy"]), int(row["round"]))] = row
    for path in paths.point_files(source, POINT_FILE):
        row = json.loads(path.read_text())
        records[(int(row["seed"]), str(row["strategy"]), int(row["round"]))] = row
    return records


def _scored_table(path: Path, config_hash: str) -> pd.DataFrame:
    """A point's metrics or held-out table, checked to be scored by ``config_hash``, with the
    ``photo`` column that tables written before crops existed lack (each image its own photo)."""
    table = pd.read_csv(path)
    made = scored_by(table)
    if made != [config_hash]:
        raise DataError(f"{path}: scored by config {', '.join(made) or 'none'}, not {config_hash}")
    if "photo" not in table:
        table.insert(int(table.columns.get_loc("image")) + 1, "photo", table["image"])
    return table


def adopt(study: Study, source: Path, strategy: str,
          seeds: list[int] | tuple[int, ...] | None = None) -> list[Path]:
    """Adopt ``strategy``'s points (every round of it in ``study``, for ``seeds``, default every
    seed of the study) from the run folder ``source``; returns the point folders written.
    Points already done in ``study`` are left alone."""
    source = Path(source)
    config = source / CONFIG_FILE
    if not config.is_file():
        raise DataError(f"{config}: no such file (is {source} a run folder?)")
    if source.resolve() == study.run_dir.resolve():
        raise ConfigError(f"{source}: a run cannot adopt its own points")
    theirs = load_config(config)
    if theirs.hash() != study.cfg.hash():
        raise ConfigError(f"{config}: config hash {theirs.hash()}, not this study's "
                          f"{study.cfg.hash()}: only a run of the same identity computes the "
                          f"same points")
    chosen = study.chosen_seeds(seeds)
    rounds = [r for s, r in study.points(strategy)]
    if not rounds:
        raise ConfigError(f"{strategy!r}: no point of this study (study.strategies and the "
                          f"registry say which strategies it runs)")
    wanted = [(seed, strategy, r) for seed in chosen for r in rounds
              if not study.is_done(seed, strategy, r)]
    records = _records(source)
    adopted = set(wanted)
    for seed, s, r in wanted:  # nothing to be trained here may read an adopted point's weights
        for other, other_round in study.points():
            if (seed, other, other_round) in adopted or study.is_done(seed, other, other_round):
                continue
            if (s, r) in study.requires(other, other_round):
                raise ConfigError(f"seed {seed} {s} round {r}: {other} round {other_round} of this "
                                  f"study trains from it, and an adopted point has no weights; "
                                  f"adopt {other} too or train both here")
    staged: list[tuple[Path, Path, dict, dict[str, pd.DataFrame]]] = []
    for key in wanted:  # everything is read and checked before anything is written
        seed, s, r = key
        folder = paths.point_dir(source, seed, s, r)
        if key not in records:
            raise DataError(f"{folder}: the source run has not finished this point (no "
                            f"{POINT_FILE} and no {CATALOG_FILE} row)")
        tables = {}
        for name in TABLES:
            path = folder / name
            if not path.is_file():
                raise DataError(f"{path}: no such file (an adopted point needs its {name})")
            tables[name] = (_scored_table(path, study.cfg.hash()) if name in SCORED
                            else pd.read_csv(path))
        staged.append((folder, study.point_dir(seed, s, r), records[key], tables))
    written = []
    for folder, target, record, tables in staged:
        target.mkdir(parents=True, exist_ok=True)
        for name, table in tables.items():
            atomic_write_text(table.to_csv(index=False), target / name)
        record = {k: v for k, v in record.items() if k != "ticket"} | {ADOPTED: str(folder)}
        if (folder / TICKET_FILE).is_file():
            with atomic_write(target / TICKET_FILE) as tmp:
                shutil.copyfile(folder / TICKET_FILE, tmp)
            record["ticket"] = str((target / TICKET_FILE).relative_to(study.run_dir))
        atomic_write_text(json.dumps(record, indent=2, default=_plain), target / POINT_FILE)
        written.append(target)
    return written


def _plain(value: object) -> object:
    """numpy scalars of a catalog row as plain JSON numbers."""
    return value.item() if hasattr(value, "item") else str(value)
