"""Intervals with the study's units of replication: training seeds and test photos, crossed.

A comparison of network ``a`` with network ``b`` is *paired*: both are trained from the same seed
and scored on the same test images, so each (seed, image) gives one difference ``d = a - b``. Its
population is the training runs (seeds) and the test photographs the study could have drawn; the
five tasks are fixed (every task weighs the same in the all-in-one score) and a photo's crops and
tasks are repeated measurements of that photo, not new photos.

The model of the differences, for seed s, photo p, task t and crop c of the photo::

    d[s, p, t, c] = mu_t + A_s + B_p + AB_sp + (task and crop terms)

with seed effects ``A_s`` (variance ``var_seed``), photo effects ``B_p`` (``var_photo``, shared by
the photo's tasks and crops), their interaction and the rest (``var_resid``). The estimate of the
all-in-one difference is the mean of the cell means ``y[s, p]`` (each the mean over the photo's
tasks, every task weighing the same, and crops); a task's is the same with that task's cells. The
cell means form a balanced two-way crossed table, whose ANOVA mean squares

    MS_seed = P var_s(row means), MS_photo = S var_p(column means), MS_resid (interaction)

have the expectations ``var_resid + P var_seed``, ``var_resid + S var_photo`` and ``var_resid``.
So the variance of the estimate, ``var_seed / S + var_photo / P + var_resid / (S P)``, is
``(MS_seed + MS_photo - MS_resid) / (S P)``; each variance component is truncated at 0
(``max(MS_seed, MS_resid) + max(MS_photo, MS_resid) - MS_resid``), and the interval is
``estimate +- t(df) se`` with Satterthwaite's degrees of freedom for that combination of mean
squares (``scipy.stats.t``). With one seed the seeds cannot vary: the interval is over photos
only (``df = P - 1``) and says nothing about another training run; with one photo it is over
seeds only. ``docs/statistics.md`` has the formulas; ``tests/report/test_intervals.py`` checks by
simulation that the 95% and 90% intervals cover what they claim at 2, 3, 5 and 10 seeds, and that
the percentile bootstrap the study used before (``percentile_bootstrap``) does not.

A rerun (new seeds, or the same seeds on other float kernels) is judged with a *prediction*
interval for its estimate (``prediction_interval``): both runs are uncertain in their seeds, while
the photos, the same in both, cancel.

numpy, pandas and scipy only (no torch).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from mirl_lib.core.names import ALL_IN_ONE, task_order

LEVEL = 0.95
CROSSED = "seeds × photos"
PHOTOS_ONLY = "photos only (1 seed)"
SEEDS_ONLY = "seeds only (1 photo)"
COLUMNS = ["task", "difference", "se", "df", "ci_low", "ci_high", "seeds", "photos", "images",
           "var_seed", "var_photo", "var_resid", "ms_seed", "ms_photo", "ms_resid", "resampled"]


@dataclass(frozen=True)
class Crossed:
    """What a seeds × photos table of cell means says: the estimate, its standard error and degrees
    of freedom, the ANOVA mean squares and the variance components (truncated at 0)."""

    estimate: float
    se: float
    df: float
    seeds: int
    photos: int
    ms_seed: float
    ms_photo: float
    ms_resid: float

    @property
    def var_seed(self) -> float:
        return max(0.0, (self.ms_seed - self.ms_resid) / self.photos) if self.seeds > 1 else np.nan

    @property
    def var_photo(self) -> float:
        return max(0.0, (self.ms_photo - self.ms_resid) / self.seeds) if self.photos > 1 else np.nan

    @property
    def var_resid(self) -> float:
        return self.ms_resid

    @property
    def design(self) -> str:
        if self.seeds > 1 and self.photos > 1:
            return CROSSED
        return PHOTOS_ONLY if self.seeds == 1 else SEEDS_ONLY

    def interval(self, level: float = LEVEL) -> tuple[float, float]:
        """The two-sided ``level`` interval (NaN ends when nothing varies that could be
        measured)."""
        if np.isnan(self.df) or self.df <= 0:
            return (np.nan, np.nan)
        half = scipy_stats.t.ppf(0.5 + level / 2, self.df) * self.se
        return (self.estimate - half, self.estimate + half)

    def one_sided_p(self, bound: float, above: bool = True) -> float:
        """The p-value of ``H0: mean <= bound`` (``above``) or ``H0: mean >= bound``."""
        if np.isnan(self.df) or self.df <= 0 or not self.se > 0:
            return np.nan
        t = (self.estimate - bound) / self.se
        return float(scipy_stats.t.sf(t if above else -t, self.df))


def satterthwaite(terms: Sequence[tuple[float, float, float]]) -> tuple[float, float]:
    """``(value, df)`` of ``sum(c * ms)`` for ``(c, ms, df_ms)`` terms (Satterthwaite 1946)."""
    value = sum(c * ms for c, ms, _ in terms)
    denominator = sum((c * ms) ** 2 / d for c, ms, d in terms if d > 0 and ms > 0)
    return value, (value ** 2 / denominator if denominator > 0 else np.inf)


def crossed(cells: np.ndarray) -> Crossed:
    """The crossed seeds × photos analysis of a complete table of cell means (rows: seeds)."""
    cells = np.asarray(cells, dtype=float)
    s, p = cells.shape
    grand = float(cells.mean())
    rows, cols = cells.mean(axis=1), cells.mean(axis=0)
    ms_seed = p * float(rows.var(ddof=1)) if s > 1 else 0.0
    ms_photo = s * float(cols.var(ddof=1)) if p > 1 else 0.0
    if s > 1 and p > 1:
        resid = cells - rows[:, None] - cols[None, :] + grand
        ms_resid = float((resid ** 2).sum() / ((s - 1) * (p - 1)))
        terms = [(1.0, max(ms_seed, ms_resid), s - 1), (1.0, max(ms_photo, ms_resid), p - 1),
                 (-1.0, ms_resid, (s - 1) * (p - 1))]
        value, df = satterthwaite(terms)
        variance = max(value, 0.0) / (s * p)
    elif s > 1:
        ms_resid, variance, df = np.nan, ms_seed / (s * p), s - 1.0
    elif p > 1:
        ms_resid, variance, df = np.nan, ms_photo / (s * p), p - 1.0
    else:
        ms_resid, variance, df = np.nan, np.nan, 0.0
    return Crossed(grand, float(np.sqrt(variance)) if np.isfinite(variance) else np.nan,
                   float(df), s, p, ms_seed, ms_photo, ms_resid)


def crossed_many(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``crossed`` of many tables at once (``cells``: tables × seeds × photos, at least 2 × 2):
    the estimates, standard errors and degrees of freedom."""
    n, s, p = cells.shape
    grand = cells.mean(axis=(1, 2))
    rows, cols = cells.mean(axis=2), cells.mean(axis=1)
    ms_seed = p * rows.var(axis=1, ddof=1)
    ms_photo = s * cols.var(axis=1, ddof=1)
    resid = cells - rows[:, :, None] - cols[:, None, :] + grand[:, None, None]
    ms_resid = (resid ** 2).sum(axis=(1, 2)) / ((s - 1) * (p - 1))
    a, b = np.maximum(ms_seed, ms_resid), np.maximum(ms_photo, ms_resid)
    value = a + b - ms_resid
    with np.errstate(divide="ignore", invalid="ignore"):  # no spread at all: infinite df
        df = value ** 2 / (a ** 2 / (s - 1) + b ** 2 / (p - 1)
                           + ms_resid ** 2 / ((s - 1) * (p - 1)))
    df = np.where(np.isnan(df), np.inf, df)
    return grand, np.sqrt(np.maximum(value, 0.0) / (s * p)), df


def prediction_interval(result: Crossed, new_seeds: int, level: float = LEVEL
                        ) -> tuple[float, float]:
    """Where another run's estimate on the same photos falls with probability ``level``: its new
    seeds and this run's both vary, the photos do not (``var = MS_seed / P * (1/S + 1/S')``,
    ``df = S - 1``). NaN ends with one seed (nothing says how much a seed moves the estimate)."""
    s, p = result.seeds, result.photos
    if s < 2:
        return (np.nan, np.nan)
    se = np.sqrt(result.ms_seed / p * (1.0 / s + 1.0 / new_seeds))
    half = scipy_stats.t.ppf(0.5 + level / 2, s - 1) * se
    return (result.estimate - half, result.estimate + half)


# ----- from long tables ---------------------------------------------------------------------------

def photo_column(table: pd.DataFrame) -> pd.Series:
    """Each row's photo: the ``photo`` column where there is one (crops of a photo share it), else
    the image itself (tables written before crops existed), keyed by dataset."""
    photo = table["photo"] if "photo" in table else table["image"]
    return table["dataset"].astype(str) + "/" + photo.astype(str)


def cell_table(diffs: pd.DataFrame) -> tuple[dict[str, np.ndarray], dict[str, int], np.ndarray,
                                             np.ndarray, int]:
    """``diffs`` (columns seed, task, photo, image, diff) as complete seeds × photos tables of cell
    means, one per task and ``ALL_IN_ONE`` (the mean of the task cells). Only complete data are
    used: the seeds with every (task, image), then the images every kept seed has, then the photos
    with an image in every task. Returns the tables, the images used per table, the seeds, the
    photos and the number of differences left out."""
    data = diffs.dropna(subset=["diff"])
    dropped = len(diffs) - len(data)
    wide = data.pivot_table(index="seed", columns=["task", "photo", "image"], values="diff",
                            aggfunc="mean").sort_index()
    values = wide.to_numpy(dtype=float)
    present = ~np.isnan(values)
    keep_rows = present.sum(axis=1) == present.sum(axis=1).max() if len(values) else present[:, 0]
    cols = present[keep_rows].all(axis=0)
    tasks = wide.columns.get_level_values("task").to_numpy()
    photos = wide.columns.get_level_values("photo").to_numpy()
    chosen = [p for p in dict.fromkeys(photos[cols])
              if all(((photos == p) & (tasks == t) & cols).any() for t in set(tasks[cols]))]
    cols &= np.isin(photos, chosen)
    values, tasks, photos = values[keep_rows][:, cols], tasks[cols], photos[cols]
    dropped += int(present.sum()) - int(keep_rows.sum()) * int(cols.sum())
    tables, counts = {}, {}
    for task in task_order(tasks):
        in_task = tasks == task
        tables[task] = np.stack([values[:, in_task & (photos == p)].mean(axis=1) for p in chosen],
                                axis=1)
        counts[task] = int(in_task.sum())
    if tables:
        tables[ALL_IN_ONE] = np.mean(list(tables.values()), axis=0)
        counts[ALL_IN_ONE] = int(cols.sum())
    return tables, counts, wide.index.to_numpy()[keep_rows], np.asarray(chosen), dropped


def paired_intervals(diffs: pd.DataFrame, level: float = LEVEL) -> pd.DataFrame:
    """The mean difference per task and all-in-one with its crossed interval (``COLUMNS``, plus
    ``dropped``). ``diffs``: columns seed, task, photo, image (unique within the task), diff."""
    tables, counts, _, _, dropped = cell_table(diffs)
    rows = []
    for task, cells in tables.items():
        result = crossed(cells)
        low, high = result.interval(level)
        n_images = counts[task]
        rows.append([task, result.estimate, result.se, result.df, low, high, result.seeds,
                     result.photos, n_images, result.var_seed, result.var_photo,
                     result.var_resid, result.ms_seed, result.ms_photo, result.ms_resid,
                     result.design])
    out = pd.DataFrame(rows, columns=COLUMNS)
    out["dropped"] = dropped
    return out


def pairs(metrics: pd.DataFrame, metric: str, a: tuple[str, int], b: tuple[str, int]
          ) -> pd.DataFrame:
    """The paired differences ``a - b`` of one metric (columns seed, task, photo, image, diff,
    value_a, value_b), matched by (seed, task, dataset, image); a row without a partner is left
    out."""
    keys = ["seed", "task", "dataset", "image"]
    table = metrics.assign(photo=photo_column(metrics),
                           image=(metrics["dataset"].astype(str) + "/"
                                  + metrics["image"].astype(str)))
    left = table[(table["strategy"] == a[0]) & (table["round"] == a[1])]
    right = table[(table["strategy"] == b[0]) & (table["round"] == b[1])]
    both = left[[*keys, "photo", metric]].merge(right[[*keys, metric]], on=keys,
                                                suffixes=("_a", "_b"))
    return pd.DataFrame({"seed": both["seed"], "task": both["task"], "photo": both["photo"],
                         "image": both["image"], "diff": both[f"{metric}_a"] - both[f"{metric}_b"],
                         "value_a": both[f"{metric}_a"], "value_b": both[f"{metric}_b"]})


def chance_misses(n: int, level: float = LEVEL, confidence: float = LEVEL) -> int:
    """How many of ``n`` values may fall outside their ``level`` intervals by chance alone: the
    ``confidence`` quantile of Binomial(n, 1 - level) (``chance_misses(228) == 17``). Intervals
    that share a network miss together, so the real count varies more: the allowance is strict."""
    if n <= 0:
        return 0
    return int(scipy_stats.binom.ppf(confidence, n, 1.0 - level))


# ----- the method the study used before, kept to show why it was replaced ------------------------

def percentile_bootstrap(values: np.ndarray, task_of: np.ndarray, n_boot: int = 2000,
                         seed: int = 0, level: float = LEVEL) -> tuple[float, float]:
    """The all-in-one percentile bootstrap interval the study reported before these intervals:
    seeds resampled with replacement (the same for every task), images resampled within each task,
    crossed. ``values``: seeds × images differences, ``task_of`` each image's task. With 2-3 seeds
    it covers the true mean about 80% of the time, not 95% (``tests/report/test_intervals.py``)."""
    rng = np.random.default_rng(seed)
    n_seeds = values.shape[0]
    seed_w = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=n_boot) / n_seeds
    reps = []
    for task in task_order(task_of):
        grid = values[:, task_of == task]
        n_images = grid.shape[1]
        image_w = (rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=n_boot)
                   / n_images)
        reps.append(np.einsum("bs,si,bi->b", seed_w, grid, image_w))
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(np.mean(reps, axis=0), [tail, 1.0 - tail])
    return float(low), float(high)


# ----- does an interval cover what it claims? -----------------------------------------------------

@dataclass(frozen=True)
class Components:
    """A normal model of one comparison's differences, for simulation: the task means (fixed); the
    seed, photo and seed × photo variances; the seed × photo × task variance (``var_task``: how a
    photo's tasks differ beyond the task means) and the variance of one crop around its task cell
    (``var_crop``)."""

    task_means: tuple[float, ...]
    var_seed: float
    var_photo: float
    var_inter: float
    var_task: float
    var_crop: float

    @classmethod
    def of(cls, diffs: pd.DataFrame) -> Components:
        """The components a run's differences show (moment estimates from the complete tables)."""
        tables, counts, _, photos, _ = cell_table(diffs)
        overall = crossed(tables[ALL_IN_ONE])
        tasks = [t for t in tables if t != ALL_IN_ONE]
        crops = counts[tasks[0]] / len(photos)
        data = diffs.dropna(subset=["diff"])
        cell = data.groupby(["seed", "task", "photo"])["diff"].transform("mean")
        groups = data.groupby(["seed", "task", "photo"]).ngroups
        var_crop = (float(((data["diff"] - cell) ** 2).sum() / (len(data) - groups))
                    if len(data) > groups else 0.0)
        x = np.stack([tables[t] for t in tasks])  # tasks × seeds × photos
        resid = (x - x.mean(axis=0, keepdims=True) - x.mean(axis=(1, 2), keepdims=True)
                 + x.mean())
        cells = x.shape[1] * x.shape[2]
        var_cells = float((resid ** 2).sum() / max((len(tasks) - 1) * (cells - 1), 1))
        var_task = max(0.0, var_cells - var_crop / crops)
        var_inter = max(0.0, overall.var_resid - var_cells / len(tasks))
        return cls(tuple(float(tables[t].mean()) for t in tasks), overall.var_seed,
                   overall.var_photo, var_inter, var_task, var_crop)

    @property
    def mean(self) -> float:
        """The true all-in-one difference of the model (the mean of the task means)."""
        return float(np.mean(self.task_means))

    def photos(self, rng: np.random.Generator, photos: int) -> np.ndarray:
        """Draw the effects of ``photos`` test photos (``draw`` takes them to score two runs on
        the same photos)."""
        return rng.normal(0, np.sqrt(self.var_photo), (1, 1, photos, 1))

    def draw(self, rng: np.random.Generator, seeds: int, photos: int, crops: int = 1,
             photo: np.ndarray | None = None) -> np.ndarray:
        """One run's differences: seeds × tasks × photos × crops (new photos unless ``photo``)."""
        tasks = len(self.task_means)
        seed = rng.normal(0, np.sqrt(self.var_seed), (seeds, 1, 1, 1))
        photo = self.photos(rng, photos) if photo is None else photo
        inter = rng.normal(0, np.sqrt(self.var_inter), (seeds, 1, photos, 1))
        task = rng.normal(0, np.sqrt(self.var_task), (seeds, tasks, photos, 1))
        crop = rng.normal(0, np.sqrt(self.var_crop), (seeds, tasks, photos, crops))
        return (np.asarray(self.task_means)[None, :, None, None] + seed + photo + inter + task
                + crop)


def coverage(model: Components, seeds: int, photos: int, level: float, sims: int,
             rng: np.random.Generator, method: str = "crossed", crops: int = 1) -> float:
    """The share of ``sims`` simulated runs whose all-in-one ``level`` interval (``crossed``, or
    the former ``bootstrap``) holds the model's true difference."""
    hits = 0
    task_of = np.repeat(np.arange(len(model.task_means)), photos * crops).astype(str)
    for _ in range(sims):
        run = model.draw(rng, seeds, photos, crops)
        if method == "crossed":
            low, high = crossed(run.mean(axis=(1, 3))).interval(level)
        else:
            low, high = percentile_bootstrap(run.reshape(seeds, -1), task_of, 500,
                                             int(rng.integers(2**31)), level)
        hits += low <= model.mean <= high
    return hits / sims
