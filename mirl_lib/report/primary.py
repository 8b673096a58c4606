"""The primary comparisons: a few hypotheses declared in the params file before the data
(``analysis.primary``), tested with the crossed intervals, Holm-corrected together, each with the
seeds it needs.

Each is the ticket at the deepest branch round against one strategy (the dense network: ``dense``),
all-in-one PSNR, ``d = ticket - X`` with margin ``m`` (``analysis.margin_db``):

- ``noninferiority``: H0 ``d <= -m`` against ``d > -m`` (the paper's claim that the ticket matches
  the dense network or does better), one-sided t test;
- ``superiority``: H0 ``d <= 0`` against ``d > 0``, one-sided t test;
- ``equivalence``: two one-sided tests (TOST), H0 ``|d| >= m``; its p-value is the larger of the
  two, and it is shown exactly when the ``1 - 2 alpha`` interval lies inside ``±m``.

The p-values of the declared set are adjusted by Holm's step-down method at family-wise ``alpha``
(``statsmodels.stats.multitest.multipletests``); a hypothesis is *shown* when its adjusted p-value
is below ``alpha``. Power is simulated: runs of n seeds on the run's photos drawn from the variance
components it measured, each tested exactly as the run is (``power``): for non-inferiority and
equivalence at a true difference of 0 (the ticket as good as X), for superiority at the measured
difference, each at the Bonferroni level ``alpha / k`` (Holm's first step, so conservative).
``seeds_needed`` is the fewest seeds with at least ``analysis.power``, ``photos_needed`` the
fewest test photos with it at the run's seeds (new photos drawn like the run's: its photo
variance, estimated from few photos, is taken as the truth); ``planning_table`` prices other
designs the same way. An equivalence whose
``1 - 2 alpha`` interval is wider than ``2 m`` at this many seeds is *undecidable* (no outcome could
show it), never a verdict.

A confirmatory replication (``analysis.confirm_seeds``, declared before those seeds are trained):
``primary_table`` tests on the other seeds only (the exploration that chose the hypotheses, however
many looks it took), and ``confirmation_table`` tests the same hypotheses on the confirmation's
seeds alone, Holm over them at ``alpha``. Until every declared seed is scored it gives no estimate
and no decision (``PENDING``: a look at part of the confirmation would be one more look), only its
*planned power*: the power of a confirmation of that many seeds, simulated from the exploration's
variance components as above.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats
from statsmodels.stats.multitest import multipletests

from mirl_lib.core.config import AnalysisConfig
from mirl_lib.core.names import ALL_IN_ONE, DENSE, TRUNK
from mirl_lib.files.paths import CONFIG_FILE, HELDOUT_FILE, METRICS_FILE
from mirl_lib.report.intervals import Crossed, cell_table, crossed, crossed_many, pairs

SHOWN, NOT_SHOWN, UNDECIDABLE = "shown", "not shown", "undecidable"
UNTESTABLE = "untestable"  # one seed and one photo: no spread to test against
PENDING = "pending"  # a confirmation whose seeds are not all scored: no estimate, no decision
COLUMNS = ["round", "remaining", "vs", "kind", "difference", "se", "df", "ci_low", "ci_high",
           "seeds", "photos", "images", "p", "p_holm", "decision", "power", "seeds_needed",
           "photos_needed", "margin", "alpha", "var_seed", "var_photo", "var_resid"]
# the confirmation's table: the primary columns, then its declared and scored seeds and the power
# planned from the exploration
CONFIRM_COLUMNS = [*COLUMNS, "declared_seeds", "scored_seeds", "planned_power"]


def p_value(result: Crossed, kind: str, margin: float) -> float:
    """The one-sided p-value of the declared hypothesis (TOST: the larger of its two)."""
    if kind == "noninferiority":
        return result.one_sided_p(-margin, above=True)
    if kind == "superiority":
        return result.one_sided_p(0.0, above=True)
    return max(result.one_sided_p(-margin, above=True), result.one_sided_p(margin, above=False))


# ``power`` simulates this many runs per design; ``seeds_needed`` and ``photos_needed`` try these
POWER_SIMS = 2000
SEED_GRID = (2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 150, 200)
PHOTO_GRID = (2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 75, 100)


def power(result: Crossed, seeds: int, kind: str, margin: float, alpha: float,
          sims: int = POWER_SIMS, photos: int | None = None) -> float:
    """The power of the declared test with ``seeds`` seeds on ``photos`` photos (default: the
    run's): the share of ``sims`` runs simulated from the measured variance components (seed,
    photo and the rest, each table tested exactly as the run is: crossed interval, one-sided t,
    level ``alpha``) that show it; the true difference is 0 for non-inferiority and equivalence,
    the measured one for superiority. Deterministic (fixed generator)."""
    photos = result.photos if photos is None else photos
    if seeds < 2 or photos < 2:
        return np.nan
    truth = result.estimate if kind == "superiority" else 0.0
    rng = np.random.default_rng([seeds, photos])
    comps = [0.0 if np.isnan(v) else v for v in (result.var_seed, result.var_photo,
                                                 result.var_resid)]
    cells = (truth + rng.normal(0, np.sqrt(comps[0]), (sims, seeds, 1))
             + rng.normal(0, np.sqrt(comps[1]), (sims, 1, photos))
             + rng.normal(0, np.sqrt(comps[2]), (sims, seeds, photos)))
    with np.errstate(divide="ignore", invalid="ignore"):  # a table without spread: p 0 or 1
        return float(np.mean(_p_values(*crossed_many(cells), kind, margin) < alpha))


def _p_values(estimate: np.ndarray, se: np.ndarray, df: np.ndarray, kind: str, margin: float
              ) -> np.ndarray:
    """The declared test's one-sided p-values of many runs (as ``p_value`` of each)."""
    if kind == "noninferiority":
        p = scipy_stats.t.sf((estimate + margin) / se, df)
    elif kind == "superiority":
        p = scipy_stats.t.sf(estimate / se, df)
    else:
        p = np.maximum(scipy_stats.t.sf((estimate + margin) / se, df),
                       scipy_stats.t.cdf((estimate - margin) / se, df))
    return p


def _fewest(grid: tuple[int, ...], reaches: Callable[[int], bool]) -> int | None:
    """The smallest entry of ``grid`` for which ``reaches`` holds, power growing along the grid
    (bisected); None when even the last does not."""
    if not reaches(grid[-1]):
        return None
    low, high = 0, len(grid) - 1
    while low < high:
        middle = (low + high) // 2
        if reaches(grid[middle]):
            high = middle
        else:
            low = middle + 1
    return grid[low]


def seeds_needed(result: Crossed, kind: str, margin: float, alpha: float, target: float
                 ) -> int | None:
    """The fewest seeds of ``SEED_GRID`` whose power reaches ``target`` on the run's photos; None
    when none does (a superiority whose measured difference is not positive, or photos that vary
    too much for any number of seeds: more photos would be needed)."""
    return _fewest(SEED_GRID, lambda n: power(result, n, kind, margin, alpha) >= target)


def photos_needed(result: Crossed, seeds: int, kind: str, margin: float, alpha: float,
                  target: float) -> int | None:
    """The fewest test photos of ``PHOTO_GRID`` whose power reaches ``target`` with ``seeds``
    seeds (new photos varying as the run's did); None when none does (a superiority whose
    measured difference is not positive, or seeds that vary too much for any number of
    photos)."""
    if seeds < 2:
        return None
    return _fewest(PHOTO_GRID,
                   lambda n: power(result, seeds, kind, margin, alpha, photos=n) >= target)


def undecidable(result: Crossed, kind: str, margin: float, alpha: float) -> bool:
    """An equivalence whose ``1 - 2 alpha`` interval is wider than ``±margin`` cannot be shown by
    any outcome of this design."""
    if kind != "equivalence" or not np.isfinite(result.df) or result.df <= 0:
        return False
    return bool(scipy_stats.t.ppf(1 - alpha, result.df) * result.se >= margin)


@dataclass(frozen=True)
class Declared:
    """One primary comparison: the ticket at ``round`` against ``vs`` (its round: 0 for the dense
    network), of ``kind``."""

    round: int
    vs: str
    kind: str

    @property
    def b(self) -> tuple[str, int]:
        return (DENSE, 0) if self.vs == DENSE else (self.vs, self.round)


def declared(analysis: AnalysisConfig, rnd: int) -> list[Declared]:
    return [Declared(rnd, vs, kind) for vs, kind in analysis.comparisons()]


# What a run says while a declared confirmation is pending and some of its seeds are scored.
HELD_BACK = ("Until then the scores of those already scored are left out of every other table "
             "and figure of this run")


def held_back(metrics: pd.DataFrame, analysis: AnalysisConfig) -> tuple[int, ...]:
    """The declared confirmation's seeds already scored in ``metrics`` while it is pending (not
    every declared seed scored). Their scores stay out of every table, figure and line a run
    shows (``blinded``) until the last declared seed is scored, so that nobody sees part of the
    confirmation before its one look. Empty when no confirmation is declared, none of its seeds
    is scored yet, or all are."""
    if not analysis.confirm_seeds or "seed" not in metrics:
        return ()
    scored = sorted(int(s) for s in set(metrics["seed"]) & set(analysis.confirm_seeds))
    return () if len(scored) == len(analysis.confirm_seeds) else tuple(scored)


def held_back_in(run_dir: Path, table: pd.DataFrame) -> tuple[int, ...]:
    """``held_back`` for ``table`` of a run folder, under the analysis its ``config.yaml``
    declares (nothing held back where the folder has none)."""
    from mirl_lib.core.config import load_config

    config = Path(run_dir) / CONFIG_FILE
    return held_back(table, load_config(config).analysis) if config.is_file() else ()


def decided(confirm: pd.DataFrame | None) -> bool:
    """Whether ``confirm`` (``confirmation_table``'s) holds a tested confirmation: declared, and
    no longer ``PENDING``."""
    return confirm is not None and len(confirm) > 0 and confirm["decision"].iloc[0] != PENDING


def blinded(table: pd.DataFrame | None, seeds: tuple[int, ...]) -> pd.DataFrame | None:
    """``table`` (scores, held-out scores, the catalog, training curves: any table with a
    ``seed`` column) without the rows of ``seeds`` (``held_back``)."""
    if table is None or not seeds or "seed" not in table:
        return table
    return table[~table["seed"].isin(seeds)].reset_index(drop=True)


def visible_scores(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """A run folder's ``metrics.csv`` and ``heldout.csv`` (``None`` where it is absent or empty,
    as ``comparisons.read_optional`` reads it) as the run may show them: without the seeds its
    ``config.yaml`` holds back (``held_back``). Read a run's scores through this, not
    ``pd.read_csv``, wherever they are shown."""
    from mirl_lib.report.comparisons import read_optional

    run_dir = Path(run_dir)
    metrics = pd.read_csv(run_dir / METRICS_FILE)
    hidden = held_back_in(run_dir, metrics)
    return blinded(metrics, hidden), blinded(read_optional(run_dir / HELDOUT_FILE), hidden)


def split_seeds(metrics: pd.DataFrame, analysis: AnalysisConfig
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(exploration, confirmation)``: the rows of the seeds outside and inside
    ``analysis.confirm_seeds``."""
    inside = metrics["seed"].isin(analysis.confirm_seeds)
    return metrics[~inside], metrics[inside]


def _tested(metrics: pd.DataFrame, analysis: AnalysisConfig, rnd: int
            ) -> tuple[pd.DataFrame, list[tuple[Declared, Crossed]]]:
    """Every declared comparison at trunk round ``rnd`` found in ``metrics``: estimate, interval,
    p-value and Holm-adjusted p-value (no decision yet), with each comparison's crossed result."""
    rows, results = [], []
    remaining = metrics.loc[(metrics["strategy"] == TRUNK) & (metrics["round"] == rnd),
                            "remaining_all"]
    m, alpha = analysis.margin_db, analysis.alpha
    for item in declared(analysis, rnd):
        diffs = pairs(metrics, "psnr", (TRUNK, rnd), item.b)
        if diffs.empty:
            continue
        tables, counts, _, _, _ = cell_table(diffs)
        result = crossed(tables[ALL_IN_ONE])
        low, high = result.interval(analysis.level)
        results.append((item, result))
        rows.append({"round": rnd, "remaining": float(remaining.mean()), "vs": item.vs,
                     "kind": item.kind, "difference": result.estimate, "se": result.se,
                     "df": result.df, "ci_low": low, "ci_high": high, "seeds": result.seeds,
                     "photos": result.photos, "images": counts[ALL_IN_ONE],
                     "p": p_value(result, item.kind, m), "margin": m, "alpha": alpha,
                     "var_seed": result.var_seed, "var_photo": result.var_photo,
                     "var_resid": result.var_resid})
    table = pd.DataFrame(rows)
    if rows:
        finite = table["p"].notna()
        table["p_holm"] = np.nan
        if finite.any():
            table.loc[finite, "p_holm"] = multipletests(table.loc[finite, "p"], alpha=alpha,
                                                        method="holm")[1]
    return table, results


def _decision(item: Declared, result: Crossed, p_holm: float, analysis: AnalysisConfig) -> str:
    if pd.isna(p_holm):
        return UNTESTABLE
    if undecidable(result, item.kind, analysis.margin_db, analysis.alpha):
        return UNDECIDABLE
    return SHOWN if p_holm < analysis.alpha else NOT_SHOWN


def primary_table(metrics: pd.DataFrame, analysis: AnalysisConfig, rnd: int,
                  with_power: bool = True) -> pd.DataFrame:
    """Every declared comparison at trunk round ``rnd`` (the deepest branch round), on the seeds
    outside ``analysis.confirm_seeds``: estimate, crossed interval (``analysis.level``), one-sided
    p-value, Holm-adjusted p-value, decision, power now and seeds needed (``COLUMNS``; without
    ``with_power`` those two are left empty, for the decisions alone). A comparison whose points
    are missing is left out."""
    table, results = _tested(split_seeds(metrics, analysis)[0], analysis, rnd)
    if table.empty:
        return pd.DataFrame(columns=COLUMNS)
    return _decided(table, results, analysis, with_power)[COLUMNS]


def _decided(table: pd.DataFrame, results: list, analysis: AnalysisConfig,
             with_power: bool = True) -> pd.DataFrame:
    """``table`` (``_tested``'s) with each comparison's decision and, ``with_power``, its power
    at the seeds it has, the seeds that give ``analysis.power`` on its photos and the photos that
    give it at its seeds, all simulated from its own variance components at Holm's first step."""
    m, each = analysis.margin_db, analysis.alpha / len(table)
    decisions, powers, needed, photos = [], [], [], []
    for (item, result), p_holm in zip(results, table["p_holm"]):
        decisions.append(_decision(item, result, p_holm, analysis))
        powers.append(power(result, result.seeds, item.kind, m, each) if with_power else np.nan)
        needed.append(seeds_needed(result, item.kind, m, each, analysis.power)
                      if with_power else None)
        photos.append(photos_needed(result, result.seeds, item.kind, m, each, analysis.power)
                      if with_power else None)
    table["decision"] = decisions
    table["power"] = powers
    table["seeds_needed"] = pd.array(needed, dtype="Int64")
    table["photos_needed"] = pd.array(photos, dtype="Int64")
    return table


# the designs ``planning_table`` prices: seeds, and photos besides the run's own
PLAN_SEEDS = (5, 10, 20)
PLAN_PHOTOS = (10, 30)
PLAN_COLUMNS = ["vs", "kind", "seeds", "photos", "power"]


def planning_table(metrics: pd.DataFrame, analysis: AnalysisConfig, rnd: int) -> pd.DataFrame:
    """The power of each declared comparison under other designs, for planning the next run:
    ``PLAN_SEEDS`` seeds on the run's photos and on ``PLAN_PHOTOS`` photos, simulated from the
    variance components the exploration (``primary_table``'s seeds) measured, each at Holm's first
    step as ``primary_table``'s power (``PLAN_COLUMNS``, one row per comparison and design)."""
    _, results = _tested(split_seeds(metrics, analysis)[0], analysis, rnd)
    rows, each = [], analysis.alpha / max(len(results), 1)
    for item, result in results:
        for photos in sorted({result.photos, *PLAN_PHOTOS}):
            for seeds in PLAN_SEEDS:
                rows.append({"vs": item.vs, "kind": item.kind, "seeds": seeds, "photos": photos,
                             "power": power(result, seeds, item.kind, analysis.margin_db, each,
                                            photos=photos)})
    return pd.DataFrame(rows, columns=PLAN_COLUMNS)


def confirmation_table(metrics: pd.DataFrame, analysis: AnalysisConfig, rnd: int
                       ) -> pd.DataFrame:
    """The declared comparisons tested again on ``analysis.confirm_seeds`` alone
    (``CONFIRM_COLUMNS``; empty when none is declared). ``planned_power``: the power of a
    confirmation of that many seeds on the run's photos, simulated from the exploration's variance
    components (``power`` at Holm's first step). Until every declared seed is scored, the
    comparisons are ``PENDING`` with no estimate; then they are tested as ``primary_table`` tests
    (Holm over the declared set), with the power they had and the seeds and photos that would
    have given ``analysis.power``, from the confirmation's own variance components."""
    if not analysis.confirm_seeds:
        return pd.DataFrame(columns=CONFIRM_COLUMNS)
    explore, confirm = split_seeds(metrics, analysis)
    _, explored = _tested(explore, analysis, rnd)
    declared_n = len(analysis.confirm_seeds)
    scored = sorted(set(confirm["seed"]) & set(analysis.confirm_seeds))
    m = analysis.margin_db
    items = declared(analysis, rnd)
    each = analysis.alpha / len(items)
    planned = {item.vs: power(result, declared_n, item.kind, m, each)
               for item, result in explored}
    if len(scored) < declared_n:
        table = pd.DataFrame([{"round": rnd, "vs": item.vs, "kind": item.kind, "margin": m,
                               "alpha": analysis.alpha, "decision": PENDING} for item in items])
    else:
        table, results = _tested(confirm, analysis, rnd)
        if table.empty:
            return pd.DataFrame(columns=CONFIRM_COLUMNS)
        table = _decided(table, results, analysis)
    table["declared_seeds"] = " ".join(str(s) for s in analysis.confirm_seeds)
    table["scored_seeds"] = len(scored)
    table["planned_power"] = [planned.get(vs, np.nan) for vs in table["vs"]]
    return table.reindex(columns=CONFIRM_COLUMNS)
