"""The study's paired comparisons (``stats.comparisons`` with the registry's names and order), how
they are named and formatted, and the run's comparison tables on disk.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mirl_lib.core.names import ALL_IN_ONE, DENSE
from mirl_lib.files.atomic import atomic_write_text
from mirl_lib.files.paths import COMPARISONS_FILE, REPLICATION_FILE
from mirl_lib.report import stats
from mirl_lib.report.stats import EQUIVALENCE_MARGIN_DB, N_BOOT
from mirl_lib.study import strategies

# How a verdict of "ticket - X" reads before X in a sentence.
SHORT = {"matches": "matches", "better": "better than", "worse": "worse than",
         "inconclusive": "inconclusive against"}


# ----- comparisons ------------------------------------------------------------------------------

def comparisons(metrics: pd.DataFrame, margin: float = EQUIVALENCE_MARGIN_DB,
                n_boot: int = N_BOOT, seed: int = 0,
                metric_names: Sequence[str] = ("psnr", "ssim")) -> pd.DataFrame:
    """``stats.comparisons`` of a study's metrics with the registry's trunk, dense point and
    display order: the ticket against the dense network at every trunk round, and against every
    other strategy at every round where it ran (columns in ``stats.comparisons``)."""
    return stats.comparisons(metrics, margin, n_boot, seed, trunk=strategies.TRUNK, dense=DENSE,
                             order=strategies.ordered(), metric_names=metric_names)


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
    others = table.loc[~table[column].isin([DENSE, strategies.TRUNK]), "round"]
    if len(others):
        return [int(others.max())]
    deepest = int(table["round"].max())
    return [deepest] if deepest > 0 else []


def label(name: str) -> str:
    return strategies.labels().get(name, name)


def ordered(names: Sequence[str]) -> list[str]:
    return strategies.ordered(set(names))


def interval(row: Any, unit: str = "") -> str:
    """``+0.12 [-0.05, +0.30]`` (``unit`` after the mean, e.g. `` dB``)."""
    return f"{row.difference:+.2f}{unit} [{row.ci_low:+.2f}, {row.ci_high:+.2f}]"


def design(row: Any) -> str:
    """``3 seeds × 15 images, bootstrap over seeds and images`` for a comparison row."""
    seeds = int(row.seeds)
    over = "seeds and images" if seeds > 1 else "images only"
    return (f"{seeds} seed{'s' if seeds != 1 else ''} × {int(row.images)} images, "
            f"bootstrap over {over}")


def where(rnd: int, remaining: float) -> str:
    return f"{100 * remaining:.1f}% of all parameters (trunk round {rnd})"


def psnr_overall(comps: pd.DataFrame) -> pd.DataFrame:
    return comps[(comps["metric"] == "psnr") & (comps["task"] == ALL_IN_ONE)]


def verdict_name(rnd: int, b: str) -> str:
    """``round 12 vs dense``: how ``headline_verdicts`` and ``kept_shares`` name a comparison."""
    return f"round {int(rnd)} vs {b}"


def stated_rows(comps: pd.DataFrame) -> tuple[pd.DataFrame, dict[int, pd.DataFrame]]:
    """What the headline speaks of (all-in-one PSNR): the rows against the dense network in
    round order, and at each branch round the rows against every other strategy, indexed by
    ``b`` in display order. ``comps``: ``comparisons`` rows, or rows that are all-in-one PSNR
    already (without ``metric`` and ``task``, e.g. ``stats.replications``)."""
    overall = psnr_overall(comps) if "metric" in comps else comps
    vs_dense = overall[overall["b"] == DENSE].sort_values("round")
    branches = {}
    for rnd in branch_rounds(overall, "b"):
        at = overall[(overall["round"] == rnd) & (overall["b"] != DENSE)]
        if len(at):
            branches[rnd] = at.set_index("b").loc[ordered(list(at["b"]))]
    return vs_dense, branches


def trunk_tally(vs_dense: pd.DataFrame) -> str:
    """``9 better, 3 inconclusive``: the verdicts of the trunk rounds against the dense network."""
    counts = vs_dense["verdict"].value_counts()
    return ", ".join(f"{int(counts[v])} {v}" for v in stats.VERDICTS if v in counts)


def write_replication(run_dir: Path, table: pd.DataFrame) -> Path:
    """``<run>/replication.csv``: ``stats.replications`` of the run."""
    path = Path(run_dir) / REPLICATION_FILE
    atomic_write_text(table.to_csv(index=False), path)
    return path


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
