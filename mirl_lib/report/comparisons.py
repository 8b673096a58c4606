"""Every comparison a study can make, as an estimate with its crossed interval, and the ticket's
curve against the dense network over the trunk rounds.

``comparisons`` lists the ticket (the trunk) against the dense network at every trunk round and
against every other strategy at every round where it ran, and a strategy against those its class
names in ``compared_with`` (the structured ticket against the small dense network), per task and
all-in-one, for PSNR and SSIM (column ``a`` minus column ``b``): paired differences with the
interval of ``report.intervals`` (seeds and photos crossed). These
are *exploratory* estimates: they carry no verdict; the few comparisons the study declared in
advance are tested in ``report.primary``. ``trunk_curve`` is ticket − dense at every trunk round
with a simultaneous band (Šidák: each round's interval at level ``level ** (1 / rounds)``), so the
whole curve, not twelve verdicts, is read at once.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mirl_lib.core.names import ALL_IN_ONE, DENSE, TRUNK
from mirl_lib.files.atomic import atomic_write_text
from mirl_lib.files.paths import COMPARISONS_FILE
from mirl_lib.report.intervals import LEVEL, cell_table, crossed, paired_intervals, pairs
from mirl_lib.study import strategies

COLUMNS = ["metric", "round", "remaining", "a", "b", "task", "mean_a", "mean_b", "difference",
           "se", "df", "ci_low", "ci_high", "seeds", "photos", "images", "ms_seed", "dropped",
           "resampled", "level"]


def compare(metrics: pd.DataFrame, a: tuple[str, int], b: tuple[str, int], metric: str = "psnr",
            level: float = LEVEL) -> pd.DataFrame:
    """One comparison ``a - b`` of two points ``(strategy, round)``, per task and all-in-one:
    ``intervals.paired_intervals``'s columns plus the two means (over the complete pairs)."""
    diffs = pairs(metrics, metric, a, b)
    if diffs.empty:
        return pd.DataFrame()
    result = paired_intervals(diffs.drop(columns=["value_a", "value_b"]), level)
    means = {}
    for side in ("a", "b"):
        tables, _, _, _, _ = cell_table(diffs.assign(diff=diffs[f"value_{side}"]))
        means[side] = {task: float(cells.mean()) for task, cells in tables.items()}
    result.insert(1, "mean_a", result["task"].map(means["a"]))
    result.insert(2, "mean_b", result["task"].map(means["b"]))
    return result


def comparisons(metrics: pd.DataFrame, level: float = LEVEL,
                metric_names: Sequence[str] = ("psnr", "ssim")) -> pd.DataFrame:
    """Every comparison of the study (``COLUMNS``): the ticket at every trunk round against the
    dense network, and at every round where another strategy ran, against it. ``remaining`` is the
    trunk's ``remaining_all`` at that round (a control with its own count is labelled by it)."""
    rank = {name: i for i, name in enumerate(strategies.ordered())}
    remaining = metrics[metrics["strategy"] == TRUNK].groupby("round")["remaining_all"].mean()
    pairs_: list[tuple[int, str, int]] = []
    if (metrics["strategy"] == DENSE).any():
        pairs_ += [(int(r), DENSE, 0) for r in remaining.index]
    others = metrics.loc[~metrics["strategy"].isin([TRUNK, DENSE]), ["strategy", "round"]]
    others = others.drop_duplicates()
    others = others[others["round"].isin(remaining.index)]
    for name in sorted(set(others["strategy"]), key=lambda s: (rank.get(s, len(rank)), s)):
        pairs_ += [(int(r), name, int(r))
                   for r in sorted(others.loc[others["strategy"] == name, "round"])]
    runs = {(s, int(r)) for s, r in others.itertuples(index=False)}
    extra = [(int(r), a, b) for a in sorted({s for s, _ in runs}, key=lambda s: rank.get(s, 0))
             if a in strategies.REGISTRY for b in strategies.REGISTRY[a].compared_with
             for r in sorted(r for s, r in runs if s == a) if (b, r) in runs]
    jobs = [(TRUNK, rnd, b, b_round) for rnd, b, b_round in pairs_]
    jobs += [(a, rnd, b, rnd) for rnd, a, b in extra]
    frames = []
    for metric in metric_names:
        if metric not in metrics:
            continue
        for a, rnd, b, b_round in jobs:
            result = compare(metrics, (a, rnd), (b, b_round), metric, level)
            if result.empty:
                continue
            frames.append(result.assign(metric=metric, round=rnd,
                                        remaining=float(remaining[rnd]), a=a, b=b,
                                        level=level))
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(frames, ignore_index=True)[COLUMNS]


def trunk_curve(metrics: pd.DataFrame, level: float = LEVEL, metric: str = "psnr",
                task: str = ALL_IN_ONE) -> pd.DataFrame:
    """Ticket − dense at every trunk round with a simultaneous ``level`` band over the rounds
    (Šidák-corrected crossed intervals): columns round, remaining, difference, se, df, ci_low,
    ci_high (each round's own ``level`` interval), band_low, band_high, level, band_level."""
    remaining = metrics[metrics["strategy"] == TRUNK].groupby("round")["remaining_all"].mean()
    rows = []
    each = level ** (1.0 / max(len(remaining), 1))
    for rnd, rem in remaining.items():
        diffs = pairs(metrics, metric, (TRUNK, int(rnd)), (DENSE, 0))
        if diffs.empty:
            continue
        tables, _, _, _, _ = cell_table(diffs)
        result = crossed(tables[task])
        low, high = result.interval(level)
        band_low, band_high = result.interval(each)
        rows.append({"round": int(rnd), "remaining": float(rem), "difference": result.estimate,
                     "se": result.se, "df": result.df, "ci_low": low, "ci_high": high,
                     "band_low": band_low, "band_high": band_high, "level": level,
                     "band_level": each})
    return pd.DataFrame(rows, columns=["round", "remaining", "difference", "se", "df", "ci_low",
                                       "ci_high", "band_low", "band_high", "level",
                                       "band_level"])


def curve_reading(curve: pd.DataFrame) -> str:
    """What the band says, in words: the rounds where it lies above 0, below 0, or holds 0."""
    if curve.empty:
        return "No trunk round has been compared with the dense network yet."
    if curve["band_low"].isna().all():
        return (f"Ticket − dense over the {len(curve)} trunk rounds, all-in-one PSNR: no band (one "
                f"seed and one photo: nothing measures the spread).")
    above = curve.loc[curve["band_low"] > 0, "round"].tolist()
    below = curve.loc[curve["band_high"] < 0, "round"].tolist()
    holds = curve.loc[(curve["band_low"] <= 0) & (curve["band_high"] >= 0), "round"].tolist()
    parts = [f"above 0 at {_rounds(above)}" if above else "",
             f"below 0 at {_rounds(below)}" if below else "",
             f"holding 0 at {_rounds(holds)}" if holds else ""]
    level = float(curve["level"].iloc[0])
    return (f"Ticket − dense over the {len(curve)} trunk rounds, all-in-one PSNR, with a "
            f"simultaneous {100 * level:.0f}% band (Šidák): "
            + "; ".join(p for p in parts if p) + ".")


def _rounds(rounds: list[int]) -> str:
    if not rounds:
        return "no round"
    if rounds == list(range(rounds[0], rounds[-1] + 1)) and len(rounds) > 2:
        return f"rounds {rounds[0]}–{rounds[-1]}"
    return ("round " if len(rounds) == 1 else "rounds ") + ", ".join(map(str, rounds))


def branch_rounds(table: pd.DataFrame, column: str = "strategy") -> list[int]:
    """The branch rounds of a study, from the strategies in ``table[column]`` and the registry:
    the rounds where a control placed at the branch rounds (``placement`` ``branch_rounds``) ran;
    without one, where any strategy placed there ran; without any, the deepest round where a
    strategy other than the dense network and the trunk ran; else the deepest round of all."""
    if table.empty:
        return []
    registry = strategies.REGISTRY
    placed = [n for n, s in registry.items() if s.placement == "branch_rounds"]
    for names in ([n for n in placed if registry[n].role == "control"], placed):
        rounds = sorted({int(r) for r in table.loc[table[column].isin(names), "round"]})
        if rounds:
            return rounds
    others = table.loc[~table[column].isin([DENSE, TRUNK]), "round"]
    if len(others):
        return [int(others.max())]
    deepest = int(table["round"].max())
    return [deepest] if deepest > 0 else []


def label(name: str) -> str:
    return strategies.labels().get(name, name)


def ordered(names: Sequence[str]) -> list[str]:
    return strategies.ordered(set(names))


def interval(row: Any, unit: str = "") -> str:
    """``+0.12 [-0.05, +0.30]`` (``unit`` after the estimate, e.g. `` dB``); ``n/a`` for an
    interval that nothing measured (one seed and one photo)."""
    if not (np.isfinite(row.ci_low) and np.isfinite(row.ci_high)):
        return f"{row.difference:+.2f}{unit} [n/a]"
    return f"{row.difference:+.2f}{unit} [{row.ci_low:+.2f}, {row.ci_high:+.2f}]"


def design(row: Any) -> str:
    """``3 seeds × 3 photos (60 images), seeds and photos crossed`` for a comparison row."""
    seeds, photos = int(row.seeds), int(row.photos)
    over = ("seeds and photos crossed" if seeds > 1 and photos > 1 else
            "nothing varies" if seeds == photos == 1 else
            "photos only: one seed" if seeds == 1 else "seeds only: one photo")
    return (f"{seeds} seed{'s' if seeds != 1 else ''} × {photos} photo{'s' if photos != 1 else ''}"
            f" ({int(row.images)} images), {over}")


def where(rnd: int, remaining: float) -> str:
    return f"{100 * remaining:.1f}% of all parameters (trunk round {rnd})"


def psnr_overall(comps: pd.DataFrame) -> pd.DataFrame:
    return comps[(comps["metric"] == "psnr") & (comps["task"] == ALL_IN_ONE)]


def read_optional(path: Path) -> pd.DataFrame | None:
    """A CSV of the run folder, or None when it is absent or empty."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    table = pd.read_csv(path)
    return None if table.empty else table


def write_comparisons(run_dir: Path, comps: pd.DataFrame) -> Path:
    """``<run>/comparisons.csv``: every comparison of the study (``comparisons``)."""
    path = Path(run_dir) / COMPARISONS_FILE
    atomic_write_text(comps.to_csv(index=False), path)
    return path


def load_comparisons(run_dir: Path, metrics: pd.DataFrame) -> pd.DataFrame:
    """``<run>/comparisons.csv`` when the evaluation wrote it, else ``comparisons(metrics)``."""
    table = read_optional(Path(run_dir) / COMPARISONS_FILE)
    return comparisons(metrics) if table is None else table
