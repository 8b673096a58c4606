"""Paired comparisons of the study with bootstrap confidence intervals and a verdict.

Every comparison is *paired*: network ``a`` and network ``b`` are scored on the same test images
with the same training seed, so each (seed, image) gives one difference ``a - b`` and the
comparison is about the mean of those differences. The all-in-one difference is the mean over
tasks of the per-task mean differences (every task weighs the same whatever its number of images,
as ``core.protocol.task_means`` defines the all-in-one score).

Uncertainty (``paired_bootstrap``)
    A percentile bootstrap that resamples, in each of ``n_boot`` replicates,

    - the training seeds with replacement (a seed is one trained network per strategy and round;
      the same resampled seeds serve every task), and
    - the test images with replacement, within each task (stratified), the same resampled images
      for every resampled seed (seeds and images are crossed: every seed is scored on the same
      images).

    With a single seed only the images are resampled; the result says which (``resampled``). The
    interval is then about the test images only: it says nothing about how another training seed
    would do. Only complete pairs are used: a (seed, image) cell missing for one of the two
    networks, or an image some seed lacks, is dropped (counted in ``dropped``).

Verdict (``verdict``), with the equivalence margin ``m`` (``EQUIVALENCE_MARGIN_DB`` for PSNR;
a study may pass its own):

- ``matches``: the whole 95% interval lies within ``[-m, +m]`` (the interval may touch ``±m``);
- otherwise ``better``: the interval lies above 0 (``lo > 0``);
- otherwise ``worse``: the interval lies below 0 (``hi < 0``);
- otherwise ``inconclusive``: the interval holds 0 and reaches beyond the margin, so the data
  neither show a difference nor rule out one larger than the margin.

``comparisons`` lists every comparison the study makes: the ticket (trunk strategy ``TRUNK``) at
every trunk round against the dense network, and at every round where another strategy ran the
ticket against that strategy, for PSNR (and SSIM), per task and all-in-one.

``chance_misses`` says how many of ``n`` such 95% intervals a rerun may leave by chance alone
(the reproduction check's allowance; ``report.reproduction.reproduction``).

How often a verdict replicates (``replication``, ``replications``)
    A verdict is a function of an interval, so a comparison whose interval lies near a verdict
    boundary (0 or ±margin) can get another verdict from another run however honest both runs
    are. ``replication`` simulates whole runs of one comparison from its committed seeds under a
    normal model (``simulated_runs``): each simulation draws a truth from what the committed seeds
    leave uncertain (the mean differences and the size of the spread between seeds), then runs of
    ``n`` new seeds from it, scored on the same test images, each given its verdict with this
    module's interval. It reports how often a run with the committed number of seeds gives the
    committed verdict (``survives``), how often two runs of ``n`` seeds agree with each other for
    several ``n``, and the fewest seeds at which they agree at least ``REPLICATION_TARGET`` of the
    time. The seeds are independent: a rerun of the *same* seeds on other float kernels moves
    less than a new seed does. With one seed there is no spread to draw from and every value is
    NaN.

This module needs numpy, pandas and scipy only (no torch), so the report can be built anywhere.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import binom

from mirl_lib.core.names import ALL_IN_ONE, DENSE, TRUNK, task_order

# A ticket "matches" another network when the whole 95% interval of the PSNR difference lies
# within +-EQUIVALENCE_MARGIN_DB (dB). The SSIM rows use EQUIVALENCE_MARGIN_SSIM.
EQUIVALENCE_MARGIN_DB = 0.25
EQUIVALENCE_MARGIN_SSIM = 0.01
LEVEL = 0.95
N_BOOT = 2000
VERDICTS = ("matches", "better", "worse", "inconclusive")


# ``replication``: the seed counts it simulates, how many simulated runs per count, and the
# agreement between two runs that counts as a verdict that replicates.
REPLICATION_SEEDS = (3, 5, 10, 20, 40)
REPLICATION_SIMS = 400
REPLICATION_BOOT = 500
REPLICATION_TARGET = 0.9
SEEDS_AND_IMAGES = "seeds × images"
IMAGES_ONLY = "images only (1 seed)"


def verdict(lo: float, hi: float, margin: float = EQUIVALENCE_MARGIN_DB) -> str:
    """``matches`` / ``better`` / ``worse`` / ``inconclusive`` for the interval ``[lo, hi]`` of a
    difference ``a - b`` (rules in the module docstring; ``verdicts`` holds them)."""
    return str(verdicts(lo, hi, margin))


def verdicts(lo: np.ndarray, hi: np.ndarray, margin: float = EQUIVALENCE_MARGIN_DB
             ) -> np.ndarray:
    """The verdict of every interval ``[lo, hi]`` (arrays of equal shape): ``matches`` when
    ``-margin <= lo`` and ``hi <= margin``, else ``better`` when ``lo > 0``, else ``worse`` when
    ``hi < 0``, else ``inconclusive``."""
    lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    return np.select([(-margin <= lo) & (hi <= margin), lo > 0, hi < 0],
                     ["matches", "better", "worse"], "inconclusive")


def chance_misses(n: int, level: float = LEVEL, confidence: float = LEVEL) -> int:
    """How many of ``n`` values may fall outside their ``level`` intervals by chance alone.

    Each ``level`` interval misses with probability ``1 - level``, so the count of misses among
    ``n`` independent comparisons is Binomial(n, 1 - level); this returns its ``confidence``
    quantile, the smallest ``k`` with P(misses <= k) >= ``confidence``:
    ``chance_misses(18) == 3``, ``chance_misses(228) == 17``, ``chance_misses(0) == 0``.
    Comparisons that share a network miss together (a rerun's dense network moves every
    "ticket vs dense" row), which makes the count more variable than the binomial: the allowance
    is then strict rather than lenient.
    """
    if n <= 0:
        return 0
    return int(binom.ppf(confidence, n, 1.0 - level))


def _complete(values: np.ndarray, task_of: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Restrict a seeds × (task, image) array (NaN = missing) to a full grid: the seeds with at
    least one value in every task that has any, then the images every kept seed has. Returns the
    row mask, the column mask and how many values were dropped."""
    present = ~np.isnan(values)
    tasks = np.unique(task_of[present.any(axis=0)])
    rows = np.ones(values.shape[0], dtype=bool)
    for task in tasks:
        rows &= present[:, task_of == task].any(axis=1)
    cols = present[rows].all(axis=0) if rows.any() else np.zeros(values.shape[1], dtype=bool)
    return rows, cols, int(present.sum()) - int(rows.sum()) * int(cols.sum())


def _bootstrap(values: np.ndarray, task_of: np.ndarray, n_boot: int, seed: int,
               level: float) -> pd.DataFrame:
    """``paired_bootstrap`` on a complete seeds × (task, image) array of differences."""
    columns = ["task", "difference", "ci_low", "ci_high", "seeds", "images"]
    if values.size == 0:
        return pd.DataFrame(columns=columns)
    n_seeds = values.shape[0]
    rng = np.random.default_rng(seed)
    # how often each seed is drawn in each replicate, shared by all tasks
    if n_seeds > 1:
        seed_w = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=n_boot) / n_seeds
    else:
        seed_w = np.ones((n_boot, 1))
    tail = (1.0 - level) / 2.0
    rows, reps = [], []
    for task in task_order(task_of):
        grid = values[:, task_of == task]  # seeds × images
        n_images = grid.shape[1]
        # how often each image is drawn: the same images for every drawn seed (crossed)
        image_w = rng.multinomial(n_images, np.full(n_images, 1.0 / n_images),
                                  size=n_boot) / n_images
        rep = np.einsum("bs,si,bi->b", seed_w, grid, image_w)
        lo, hi = np.quantile(rep, [tail, 1.0 - tail])
        rows.append((task, float(grid.mean()), float(lo), float(hi), n_seeds, n_images))
        reps.append(rep)
    overall = np.mean(reps, axis=0)  # every task weighs the same
    lo, hi = np.quantile(overall, [tail, 1.0 - tail])
    rows.append((ALL_IN_ONE, float(np.mean([r[1] for r in rows])), float(lo), float(hi), n_seeds,
                 int(sum(r[5] for r in rows))))
    return pd.DataFrame(rows, columns=columns)


def _finish(result: pd.DataFrame, dropped: int, n_boot: int) -> pd.DataFrame:
    result["dropped"] = dropped
    result["resampled"] = SEEDS_AND_IMAGES if (result["seeds"] > 1).any() else IMAGES_ONLY
    result["n_boot"] = n_boot
    return result


def _task_means(values: np.ndarray, task_of: np.ndarray) -> dict[str, float]:
    means = {task: float(values[:, task_of == task].mean()) for task in task_order(task_of)}
    means[ALL_IN_ONE] = float(np.mean(list(means.values())))
    return means


def paired_bootstrap(diffs: pd.DataFrame, n_boot: int = N_BOOT, seed: int = 0,
                     level: float = LEVEL) -> pd.DataFrame:
    """Mean paired difference and its percentile bootstrap interval, per task and all-in-one.

    ``diffs``: columns ``seed``, ``task``, ``image`` (a key unique within the task, e.g.
    dataset/image) and ``diff`` (a - b for the same seed and image). Returns one row per task (in
    ``TASKS`` order) and one ``all-in-one`` row (the mean of the task means) with columns task,
    difference, ci_low, ci_high, seeds, images, dropped, resampled, n_boot. Only complete
    (seed, image) pairs are used: a seed is kept when it has images in every task, an image when
    every kept seed has it; ``dropped`` counts the other rows (and rows with a NaN ``diff``).
    Deterministic for a given ``seed``; resampling as in the module docstring.
    """
    nan_rows = int(diffs["diff"].isna().sum()) if "diff" in diffs else 0
    data = diffs.dropna(subset=["diff"])
    if data.empty:
        return _finish(_bootstrap(np.empty((0, 0)), np.empty(0), n_boot, seed, level),
                       nan_rows, n_boot)
    wide = data.pivot_table(index="seed", columns=["task", "image"], values="diff",
                            aggfunc="mean").sort_index()
    values = wide.to_numpy(dtype=float)
    task_of = wide.columns.get_level_values("task").to_numpy()
    rows, cols, dropped = _complete(values, task_of)
    result = _bootstrap(values[rows][:, cols], task_of[cols], n_boot, seed, level)
    return _finish(result, dropped + nan_rows, n_boot)


class _Points:
    """Every point's values of one metric as a seeds × (task, image) array on shared columns."""

    def __init__(self, metrics: pd.DataFrame, metric: str) -> None:
        data = metrics.assign(image=metrics["dataset"].astype(str) + "/"
                              + metrics["image"].astype(str))
        wide = data.pivot_table(index=["strategy", "round", "seed"], columns=["task", "image"],
                                values=metric, aggfunc="mean").sort_index()
        self.task_of = wide.columns.get_level_values("task").to_numpy()
        values = wide.to_numpy(dtype=float)
        index = wide.index.to_frame(index=False)
        self.points: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
        for (strategy, rnd), at in index.groupby(["strategy", "round"]).indices.items():
            self.points[(strategy, int(rnd))] = (index["seed"].to_numpy()[at], values[at])

    def pairs(self, a: tuple[str, int], b: tuple[str, int]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
        """The complete seeds × (task, image) grids of ``a`` and ``b`` (same seeds, same cells),
        the task of each column and how many values were left out; None when a point is absent."""
        if a not in self.points or b not in self.points:
            return None
        (seeds_a, left), (seeds_b, right) = self.points[a], self.points[b]
        seeds, ia, ib = np.intersect1d(seeds_a, seeds_b, return_indices=True)
        left, right = left[ia], right[ib]
        both = ~np.isnan(left) & ~np.isnan(right)
        unmatched = (int((~np.isnan(self.points[a][1])).sum())
                     + int((~np.isnan(self.points[b][1])).sum()) - 2 * int(both.sum()))
        rows, cols, dropped = _complete(left - right, self.task_of)
        return (left[rows][:, cols], right[rows][:, cols], self.task_of[cols],
                dropped + unmatched)

    def compare(self, a: tuple[str, int], b: tuple[str, int], margin: float, n_boot: int,
                seed: int, level: float) -> pd.DataFrame:
        found = self.pairs(a, b)
        if found is None:
            return pd.DataFrame()
        left, right, task_of, dropped = found
        result = _bootstrap(left - right, task_of, n_boot, seed, level)
        if result.empty:
            return result
        result = _finish(result, dropped, n_boot)
        result.insert(1, "mean_a", result["task"].map(_task_means(left, task_of)))
        result.insert(2, "mean_b", result["task"].map(_task_means(right, task_of)))
        result["margin"] = margin
        result["verdict"] = [verdict(lo, hi, margin)
                             for lo, hi in zip(result["ci_low"], result["ci_high"])]
        return result


def compare(metrics: pd.DataFrame, a: tuple[str, int], b: tuple[str, int], metric: str = "psnr",
            margin: float = EQUIVALENCE_MARGIN_DB, n_boot: int = N_BOOT, seed: int = 0,
            level: float = LEVEL) -> pd.DataFrame:
    """One comparison ``a - b`` of two points ``(strategy, round)`` of a long metrics table,
    paired by (seed, task, dataset, image), per task and all-in-one: ``paired_bootstrap``'s
    columns plus mean_a, mean_b (over the complete pairs; all-in-one: the mean of the task
    means), margin and verdict. ``dropped`` counts the rows of either point without a partner
    plus the pairs left out to make a full seeds × images grid."""
    return _Points(metrics, metric).compare(a, b, margin, n_boot, seed, level)


def comparisons(metrics: pd.DataFrame, margin: float = EQUIVALENCE_MARGIN_DB,
                n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL, *,
                trunk: str = TRUNK, dense: str = DENSE, order: Sequence[str] | None = None,
                metric_names: Sequence[str] = ("psnr", "ssim"),
                ssim_margin: float = EQUIVALENCE_MARGIN_SSIM) -> pd.DataFrame:
    """Every comparison of the study, from the rows of a long ``metrics`` table.

    - the ticket (``trunk`` at round r) against the dense network (``dense``, round 0), at every
      trunk round r;
    - at every round r where another strategy X ran (and the trunk did), ticket r against X r.

    Rows are paired by (seed, task, dataset, image). ``order`` lists strategy names in display
    order (``strategies.ordered()``; others follow by name). ``margin`` is the PSNR margin (dB),
    ``ssim_margin`` the SSIM one. Columns: metric, round, remaining (the trunk's ``remaining_all``
    at that round: a control with its own parameter count is labelled by the trunk's), a, b,
    task, mean_a, mean_b, difference, ci_low, ci_high, margin, verdict, seeds, images, dropped,
    resampled, n_boot, level. Every comparison uses the same bootstrap ``seed`` (deterministic).
    """
    columns = ["metric", "round", "remaining", "a", "b", "task", "mean_a", "mean_b",
               "difference", "ci_low", "ci_high", "margin", "verdict", "seeds", "images",
               "dropped", "resampled", "n_boot", "level"]
    rank = {name: i for i, name in enumerate(order or ())}
    remaining = metrics[metrics["strategy"] == trunk].groupby("round")["remaining_all"].mean()
    pairs: list[tuple[int, str, int]] = []  # (trunk round, b strategy, b round)
    if (metrics["strategy"] == dense).any():
        pairs += [(int(r), dense, 0) for r in remaining.index]
    others = metrics.loc[~metrics["strategy"].isin([trunk, dense]), ["strategy", "round"]]
    others = others.drop_duplicates()
    others = others[others["round"].isin(remaining.index)]
    names = sorted(set(others["strategy"]), key=lambda s: (rank.get(s, len(rank)), s))
    for name in names:
        pairs += [(int(r), name, int(r))
                  for r in sorted(others.loc[others["strategy"] == name, "round"])]
    frames = []
    for metric in metric_names:
        if metric not in metrics or not pairs:
            continue
        points = _Points(metrics, metric)
        m = margin if metric == "psnr" else ssim_margin
        for rnd, b, b_round in pairs:
            result = points.compare((trunk, rnd), (b, b_round), m, n_boot, seed, level)
            if result.empty:
                continue
            frames.append(result.assign(metric=metric, round=rnd,
                                        remaining=float(remaining[rnd]), a=trunk, b=b,
                                        level=level))
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]


# ----- how often a verdict replicates ---------------------------------------------------------------

def _draw_weights(rng: np.random.Generator, shape: tuple[int, ...], n: int) -> np.ndarray:
    """Bootstrap weights: for each of ``shape`` replicates, how often each of ``n`` items is drawn
    in ``n`` draws with replacement, divided by ``n`` (a Multinomial(n, 1/n) count vector, drawn
    as ``n`` uniform integers and counted, which is much faster than ``rng.multinomial``)."""
    draws = rng.integers(0, n, size=(*shape, n))
    offsets = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(*shape, 1) * n
    counts = np.bincount((draws + offsets).ravel(), minlength=int(np.prod(shape)) * n)
    return counts.reshape(*shape, n) / n


def overall_intervals(runs: np.ndarray, task_of: np.ndarray, n_boot: int,
                      rng: np.random.Generator, level: float = LEVEL
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The all-in-one interval of ``paired_bootstrap`` for many runs at once: ``runs`` is
    runs × seeds × (task, image) (complete), and each run is resampled as ``_bootstrap`` resamples
    one (seeds with replacement, shared by the tasks; images with replacement within each task,
    the same for every drawn seed; the all-in-one replicate is the mean of the task replicates).
    Returns the lower and upper ends of the ``level`` percentile interval, one per run."""
    n_runs, n_seeds = runs.shape[0], runs.shape[1]
    seed_w = (_draw_weights(rng, (n_runs, n_boot), n_seeds) if n_seeds > 1
              else np.ones((n_runs, n_boot, 1)))
    reps = []
    for task in task_order(task_of):
        grid = runs[:, :, task_of == task]
        image_w = _draw_weights(rng, (n_runs, n_boot), grid.shape[2])
        reps.append(((seed_w @ grid) * image_w).sum(axis=-1))
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(np.mean(reps, axis=0), [tail, 1.0 - tail], axis=1)
    return lo, hi


def simulated_runs(values: np.ndarray, n_seeds: int, n_runs: int, rng: np.random.Generator,
                   pairs: int = 1) -> np.ndarray:
    """Simulated runs of ``n_seeds`` new seeds each, drawn from the committed seeds' ``values``
    (committed seeds × cells) under a normal model, as ``pairs × n_runs × n_seeds × cells``.

    Each of the ``n_runs`` simulations first draws what it takes as the truth, from what
    ``values`` leave uncertain (the posterior under a flat prior): a spread scale s with
    s² = (k − 1) / χ²(k − 1) (k committed seeds; a normal sample's variance estimate on k − 1
    degrees of freedom) and true means mean + s · z̄ @ R / sqrt(k), where R = (values − mean) /
    sqrt(k − 1) and z̄ ~ N(0, I_k). Then ``pairs`` independent runs share that truth: every seed
    is true means + s · z @ R, z ~ N(0, I_k), so the seeds' covariance is s² times the committed
    seeds' unbiased covariance. With few committed seeds s is often large: a spread estimated from
    two or three runs can be far too small, and the simulation says so."""
    k = values.shape[0]
    mean = values.mean(axis=0)
    root = (values - mean) / np.sqrt(k - 1)
    scale = np.sqrt((k - 1) / rng.chisquare(k - 1, size=n_runs))[:, None]
    truth = mean + scale * (rng.standard_normal((n_runs, k)) @ root) / np.sqrt(k)
    seeds = rng.standard_normal((pairs, n_runs, n_seeds, k)) @ root
    return truth[None, :, None, :] + scale[None, :, :, None] * seeds


def replication(values: np.ndarray, task_of: np.ndarray, committed: str,
                margin: float = EQUIVALENCE_MARGIN_DB, seeds: Sequence[int] = REPLICATION_SEEDS,
                n_sims: int = REPLICATION_SIMS, n_boot: int = REPLICATION_BOOT, seed: int = 0,
                level: float = LEVEL, target: float = REPLICATION_TARGET) -> dict:
    """How often the all-in-one verdict of one comparison replicates (module docstring).

    ``values``: the committed run's complete seeds × (task, image) differences ``a - b``;
    ``committed``: its verdict. ``simulated_runs`` draws ``n_sims`` truths from what the
    committed seeds leave uncertain and, for each, two independent runs of n seeds scored on the
    same test images. Returns ``survives`` (the share of simulated runs with the committed number
    of seeds whose verdict is ``committed``), ``agree`` ({n: the share of simulations whose two
    runs of n seeds give the same verdict} for every n of ``seeds``), ``shares`` ({n: {verdict:
    share of runs}}) and ``seeds_needed`` (the fewest n of ``seeds`` whose ``agree`` reaches
    ``target``; None when none does). With fewer than two seeds every number is NaN and
    ``seeds_needed`` None. Deterministic for a given ``seed``.
    """
    counts = sorted(set(int(n) for n in seeds))
    n0 = int(values.shape[0])
    if n0 < 2:
        nan = float("nan")
        return {"survives": nan, "agree": {n: nan for n in counts}, "shares": {},
                "seeds_needed": None}
    rng = np.random.default_rng(seed)
    shares, agree, survives = {}, {}, float("nan")
    for n in sorted(set(counts) | {n0}):
        runs = simulated_runs(values, n, n_sims, rng, pairs=2)
        found = []
        for pair in runs:
            lo, hi = overall_intervals(pair, task_of, n_boot, rng, level)
            found.append(verdicts(lo, hi, margin))
        share = {v: float(np.mean(found[0] == v)) for v in VERDICTS}
        if n == n0:
            survives = share[committed]
        if n in counts:
            shares[n] = share
            agree[n] = float(np.mean(found[0] == found[1]))
    needed = next((n for n in counts if agree[n] >= target), None)
    return {"survives": survives, "agree": agree, "shares": shares, "seeds_needed": needed}


def replications(metrics: pd.DataFrame, comps: pd.DataFrame | None = None,
                 margin: float = EQUIVALENCE_MARGIN_DB, seeds: Sequence[int] = REPLICATION_SEEDS,
                 n_sims: int = REPLICATION_SIMS, n_boot: int = REPLICATION_BOOT, seed: int = 0,
                 *, trunk: str = TRUNK, dense: str = DENSE) -> pd.DataFrame:
    """``replication`` of every all-in-one PSNR comparison of ``comps`` (``comparisons(metrics)``
    when None; its verdicts are the committed ones). Columns: round, remaining, a, b, difference,
    ci_low, ci_high, verdict, seeds (committed), survives, agree_<n> for every n of ``seeds``,
    seeds_needed (NaN when no n of ``seeds`` reaches ``REPLICATION_TARGET``)."""
    counts = sorted(set(int(n) for n in seeds))
    columns = ["round", "remaining", "a", "b", "difference", "ci_low", "ci_high", "verdict",
               "seeds", "survives", *[f"agree_{n}" for n in counts], "seeds_needed"]
    comps = comparisons(metrics, margin, seed=seed, metric_names=("psnr",),
                        trunk=trunk, dense=dense) if comps is None else comps
    rows = comps[(comps["metric"] == "psnr") & (comps["task"] == ALL_IN_ONE)]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    points = _Points(metrics, "psnr")
    out = []
    for _, row in rows.iterrows():
        rnd = int(row["round"])
        found = points.pairs((str(row.a), rnd), (str(row.b), 0 if row.b == dense else rnd))
        if found is None:
            continue
        left, right, task_of, _ = found
        result = replication(left - right, task_of, str(row.verdict), float(row.margin), counts,
                             n_sims, n_boot, seed)
        out.append([rnd, float(row.remaining), row.a, row.b, float(row.difference),
                    float(row.ci_low), float(row.ci_high), str(row.verdict), int(left.shape[0]),
                    result["survives"], *[result["agree"][n] for n in counts],
                    result["seeds_needed"] if result["seeds_needed"] is not None else np.nan])
    return pd.DataFrame(out, columns=columns)
