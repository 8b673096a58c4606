"""Paired bootstrap comparisons: known answers, the resampling design, verdict rules."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from mirl_lib.core.names import ALL_IN_ONE
from mirl_lib.report import stats

FIVE = ("denoise_15", "denoise_25", "denoise_50", "derain", "dehaze")


def diffs(values: dict[tuple[int, str], list[float]]) -> pd.DataFrame:
    """Long table from {(seed, task): [diff per image]}."""
    return pd.DataFrame([{"seed": seed, "task": task, "image": f"i{i}", "diff": d}
                         for (seed, task), ds in values.items() for i, d in enumerate(ds)])


def row(result: pd.DataFrame, task: str = ALL_IN_ONE) -> pd.Series:
    return result.set_index("task").loc[task]


def test_constant_difference_gives_a_point_interval() -> None:
    data = diffs({(s, t): [0.3] * 4 for s in range(3) for t in FIVE})
    result = stats.paired_bootstrap(data)
    assert list(result["task"]) == [*FIVE, ALL_IN_ONE]
    for r in result.itertuples():
        assert (r.difference, r.ci_low, r.ci_high) == pytest.approx((0.3, 0.3, 0.3), abs=1e-12)
    overall = row(result)
    assert overall.seeds == 3 and overall.images == 20 and overall.dropped == 0
    assert overall.resampled == stats.SEEDS_AND_IMAGES


def test_images_only_bootstrap_of_a_two_valued_vector_matches_known_answers() -> None:
    # 40 images, half 0 and half 1: the bootstrap mean is Binomial(40, 1/2) / 40, so the 95%
    # interval is about 0.5 +- 1.96 * 0.5 / sqrt(40) = [0.345, 0.655]
    values = [0.0, 1.0] * 20
    result = stats.paired_bootstrap(diffs({(0, "derain"): values}), n_boot=20000, seed=1)
    r = row(result, "derain")
    assert r.resampled == stats.IMAGES_ONLY and r.seeds == 1
    assert r.difference == pytest.approx(0.5)
    half = 1.96 * 0.5 / np.sqrt(40)
    assert r.ci_low == pytest.approx(0.5 - half, abs=0.03)
    assert r.ci_high == pytest.approx(0.5 + half, abs=0.03)
    # and against scipy's percentile bootstrap (independent draws, so within Monte Carlo error)
    ref = scipy_stats.bootstrap((np.array(values),), np.mean, n_resamples=20000,
                                method="percentile", random_state=0).confidence_interval
    assert (r.ci_low, r.ci_high) == pytest.approx((ref.low, ref.high), abs=0.03)
    # a single task: the all-in-one row is that task
    assert row(result)[["difference", "ci_low", "ci_high"]].tolist() == pytest.approx(
        [r.difference, r.ci_low, r.ci_high])


def test_seed_resampling_widens_the_interval_when_seeds_differ() -> None:
    rng = np.random.default_rng(0)
    images = {t: rng.normal(0, 0.2, 10) for t in FIVE}
    same = diffs({(s, t): list(images[t]) for s in range(3) for t in FIVE})
    apart = diffs({(s, t): list(images[t] + (s - 1) * 0.5) for s in range(3) for t in FIVE})
    w_same = row(stats.paired_bootstrap(same))
    w_apart = row(stats.paired_bootstrap(apart))
    assert w_same.difference == pytest.approx(w_apart.difference)
    assert (w_apart.ci_high - w_apart.ci_low) > 2 * (w_same.ci_high - w_same.ci_low)
    assert w_apart.resampled == stats.SEEDS_AND_IMAGES


def test_one_seed_resamples_images_only() -> None:
    result = stats.paired_bootstrap(diffs({(7, t): [0.1, 0.2, 0.4] for t in FIVE}))
    assert set(result["resampled"]) == {stats.IMAGES_ONLY} and set(result["seeds"]) == {1}


def test_all_in_one_weighs_every_task_the_same() -> None:
    data = diffs({(0, "derain"): [1.0] * 2, (0, "dehaze"): [0.0] * 10,
                  (1, "derain"): [1.0] * 2, (1, "dehaze"): [0.0] * 10})
    overall = row(stats.paired_bootstrap(data))
    assert overall.difference == pytest.approx(0.5)  # not 2 / 12
    assert (overall.ci_low, overall.ci_high) == pytest.approx((0.5, 0.5))
    assert overall.images == 12


def test_incomplete_pairs_are_dropped_and_counted() -> None:
    data = diffs({(s, t): [0.1, 0.2, 0.3] for s in range(2) for t in ("derain", "dehaze")})
    data = data.drop(data[(data.seed == 1) & (data.task == "derain") & (data.image == "i2")].index)
    data.loc[(data.seed == 0) & (data.task == "dehaze") & (data.image == "i0"), "diff"] = np.nan
    result = stats.paired_bootstrap(data).set_index("task")
    # derain loses i2 for seed 0 too (1 row), dehaze loses i0 for seed 1 (1 row) + the NaN row
    assert result.loc["derain", "images"] == 2 and result.loc["dehaze", "images"] == 2
    assert set(result["dropped"]) == {3}
    assert result.loc["derain", "difference"] == pytest.approx(0.15)


@pytest.mark.parametrize("lo, hi, expected", [
    (-0.1, 0.2, "matches"),
    (-0.25, 0.25, "matches"),        # touching the margin counts as inside
    (0.05, 0.25, "matches"),         # inside the margin wins over "better"
    (0.1, 0.3, "better"),
    (1e-9, 2.0, "better"),
    (-0.6, -0.2, "worse"),
    (-0.3, -1e-9, "worse"),
    (-0.3, 0.1, "inconclusive"),
    (0.0, 0.5, "inconclusive"),       # an interval touching 0 does not show a difference
    (-0.5, 0.0, "inconclusive"),
    (-0.2500001, 0.1, "inconclusive"),
])
def test_verdict_rules(lo: float, hi: float, expected: str) -> None:
    assert stats.verdict(lo, hi, stats.EQUIVALENCE_MARGIN_DB) == expected


def test_chance_misses_is_the_binomial_quantile() -> None:
    """Known answers of Binomial(n, 0.05): n = 18 gives P(X <= 2) = 0.9419 < 0.95 <= P(X <= 3) =
    0.9891, so 3; n = 1 gives P(X <= 0) = 0.95, so 0; n = 20: P(X <= 2) = 0.9245, P(X <= 3) =
    0.9841, so 3."""
    from math import comb
    assert stats.chance_misses(18) == 3 and stats.chance_misses(1) == 0
    assert stats.chance_misses(20) == 3 and stats.chance_misses(0) == 0
    for n in (5, 36, 228):
        k = stats.chance_misses(n)
        cdf = [sum(comb(n, j) * 0.05 ** j * 0.95 ** (n - j) for j in range(i + 1))
               for i in (k - 1, k)]
        assert cdf[1] >= 0.95 and (k == 0 or cdf[0] < 0.95)
    assert stats.chance_misses(100, level=0.99) < stats.chance_misses(100)


def test_verdict_margin_is_configurable() -> None:
    assert stats.verdict(-0.4, 0.4, 0.5) == "matches"
    assert stats.verdict(-0.4, 0.4, 0.25) == "inconclusive"


def test_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(3)
    data = diffs({(s, t): list(rng.normal(0, 1, 15)) for s in range(3) for t in FIVE})
    first = stats.paired_bootstrap(data, n_boot=2000, seed=5)
    pd.testing.assert_frame_equal(first, stats.paired_bootstrap(data, n_boot=2000, seed=5))
    assert not first.equals(stats.paired_bootstrap(data, n_boot=2000, seed=6))


def metrics_table(seeds=(0, 1), images=("a", "b", "c")) -> pd.DataFrame:
    """dense 25 dB; ticket round 1 +0.0, round 2 -1.0 (+ image noise); control 'ctl' at round 2
    2 dB below the ticket with its own (slightly different) remaining_all."""
    rng = np.random.default_rng(0)
    points = (("dense", 0, 1.0, 25.0), ("rewind", 1, 0.8, 25.0), ("rewind", 2, 0.64, 24.0),
              ("ctl", 2, 0.65, 22.0))
    rows = []
    for seed in seeds:
        for strategy, rnd, rem, base in points:
            for task in ("derain", "dehaze"):
                for k, image in enumerate(images):
                    noise = 0.01 * rng.normal()
                    rows.append({"seed": seed, "strategy": strategy, "round": rnd,
                                 "remaining_all": rem, "remaining_prunable": rem, "task": task,
                                 "dataset": "d", "image": image, "psnr": base + 0.1 * k + noise,
                                 "ssim": 0.8, "input_psnr": 20.0, "input_ssim": 0.5})
    return pd.DataFrame(rows)


def test_comparisons_cover_dense_at_every_round_and_others_where_they_ran() -> None:
    table = stats.comparisons(metrics_table(), n_boot=500)
    psnr = table[(table["metric"] == "psnr") & (table["task"] == ALL_IN_ONE)]
    got = [(r.round, r.a, r.b) for r in psnr.itertuples()]
    assert got == [(1, "rewind", "dense"), (2, "rewind", "dense"), (2, "rewind", "ctl")]
    by = psnr.set_index(["round", "b"])
    assert by.loc[(1, "dense"), "verdict"] == "matches"
    assert by.loc[(2, "dense"), "verdict"] == "worse"
    assert by.loc[(2, "ctl"), "verdict"] == "better"
    assert by.loc[(2, "ctl"), "difference"] == pytest.approx(2.0, abs=0.05)
    assert by.loc[(2, "ctl"), "remaining"] == pytest.approx(0.64)  # the trunk's, not the control's
    assert by.loc[(2, "dense"), "mean_a"] - by.loc[(2, "dense"), "mean_b"] == pytest.approx(
        by.loc[(2, "dense"), "difference"])
    assert set(psnr["seeds"]) == {2} and set(psnr["images"]) == {6}
    assert set(table["metric"]) == {"psnr", "ssim"}
    ssim = table[table["metric"] == "ssim"]
    assert set(ssim["verdict"]) == {"matches"} and set(ssim["margin"]) == {
        stats.EQUIVALENCE_MARGIN_SSIM}


def test_comparisons_pair_by_seed_and_image_and_count_the_unpaired() -> None:
    data = metrics_table()
    data = data.drop(data[(data.strategy == "ctl") & (data.seed == 1) & (data.image == "c")
                          & (data.task == "derain")].index)
    table = stats.comparisons(data, n_boot=200, metric_names=("psnr",))
    ctl = table[(table["b"] == "ctl")].set_index("task")
    # the ticket's row without a partner, plus the pair of the other seed on that image (so
    # that every seed is scored on the same images)
    assert ctl.loc["derain", "images"] == 2 and ctl.loc["dehaze", "images"] == 3
    assert set(ctl["dropped"]) == {2}


def test_comparisons_of_an_empty_table() -> None:
    table = stats.comparisons(metrics_table().iloc[:0])
    assert table.empty and "verdict" in table.columns


def test_a_task_neither_point_has_does_not_void_the_comparison() -> None:
    data = metrics_table()
    data = data[~((data["strategy"] == "ctl") & (data["task"] == "derain"))]
    table = stats.comparisons(data, n_boot=200, metric_names=("psnr",))
    ctl = table[table["b"] == "ctl"]
    assert list(ctl["task"]) == ["dehaze", ALL_IN_ONE]
    assert set(ctl["dropped"]) == {6}  # the ticket's derain rows, without a partner


# ----- how often a verdict replicates -----------------------------------------------------------

def grid(n_seeds: int, mean: float, seed_sd: float, image_sd: float = 0.05,
         images: int = 3, rng_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeds × (task, image) array of differences: ``mean`` plus a per-seed offset (sd
    ``seed_sd``) plus per-cell noise (sd ``image_sd``), five tasks of ``images`` images."""
    rng = np.random.default_rng(rng_seed)
    task_of = np.repeat(np.array(FIVE), images)
    values = (mean + rng.normal(0, seed_sd, (n_seeds, 1))
              + rng.normal(0, image_sd, (n_seeds, task_of.size)))
    return values, task_of


def test_verdicts_of_many_intervals_follow_the_rules_of_one() -> None:
    ends = np.linspace(-1.0, 1.0, 21)
    lo, hi = np.meshgrid(ends, ends)
    keep = lo <= hi
    found = stats.verdicts(lo[keep], hi[keep], 0.25)
    assert list(found) == [stats.verdict(a, b, 0.25) for a, b in zip(lo[keep], hi[keep])]


def test_many_runs_at_once_resample_as_the_bootstrap_does() -> None:
    """One run through ``overall_intervals`` has ``paired_bootstrap``'s all-in-one interval (to
    Monte Carlo error; the two draw their weights differently)."""
    values, task_of = grid(3, 0.2, 0.4, image_sd=0.3)
    data = diffs({(s, t): list(values[s, task_of == t]) for s in range(3) for t in FIVE})
    one = row(stats.paired_bootstrap(data, n_boot=40000, seed=2))
    lo, hi = stats.overall_intervals(values[None], task_of, 40000, np.random.default_rng(3))
    assert lo[0] == pytest.approx(one.ci_low, abs=0.02)
    assert hi[0] == pytest.approx(one.ci_high, abs=0.02)


def test_identical_seeds_and_images_replicate_exactly() -> None:
    """No spread anywhere: every simulated run is the committed one, every interval the point
    0.1, every verdict *matches*; a committed verdict that says otherwise is never kept."""
    values = np.full((3, 15), 0.1)
    task_of = np.repeat(np.array(FIVE), 3)
    kept = stats.replication(values, task_of, "matches", n_sims=50, n_boot=100)
    assert kept["survives"] == 1.0 and set(kept["agree"].values()) == {1.0}
    assert kept["seeds_needed"] == min(stats.REPLICATION_SEEDS)
    assert kept["shares"][5] == {"matches": 1.0, "better": 0.0, "worse": 0.0,
                                 "inconclusive": 0.0}
    assert stats.replication(values, task_of, "better", n_sims=50, n_boot=100)["survives"] == 0.0


def test_a_large_effect_replicates_and_an_effect_near_the_margin_needs_more_seeds() -> None:
    far = stats.replication(*grid(3, 3.0, 0.2), "better", n_sims=200, n_boot=300)
    assert far["survives"] >= 0.99 and min(far["agree"].values()) >= 0.99
    assert far["seeds_needed"] == 3
    # 0.15 dB with 0.3 dB between seeds: with 3 seeds the interval reaches past the margin in
    # some runs and not in others; with 40 it lies inside it
    values, task_of = grid(3, 0.15, 0.3, rng_seed=4)
    near = stats.replication(values, task_of, "inconclusive", n_sims=200, n_boot=300)
    assert near["agree"][3] < 0.9 and near["agree"][40] > near["agree"][3]
    assert near["seeds_needed"] is None or near["seeds_needed"] > 3
    assert near["shares"][40]["matches"] > near["shares"][3]["matches"]


def test_replication_is_deterministic_and_needs_two_seeds() -> None:
    values, task_of = grid(3, 0.3, 0.3)
    first = stats.replication(values, task_of, "better", n_sims=100, n_boot=200, seed=1)
    assert first == stats.replication(values, task_of, "better", n_sims=100, n_boot=200, seed=1)
    one = stats.replication(values[:1], task_of, "better", n_sims=100, n_boot=200)
    assert np.isnan(one["survives"]) and one["seeds_needed"] is None
    assert all(np.isnan(v) for v in one["agree"].values())


def test_simulated_seeds_carry_the_uncertainty_of_the_committed_ones() -> None:
    """From k committed seeds, a simulated seed is truth + s · (spread): over simulations its
    mean is the committed mean and its covariance the committed one times E[s²] (1 + 1/k), with
    E[s²] = (k - 1) / (k - 3) (a scaled inverse χ² on k - 1 degrees of freedom); the two runs of a
    pair share the truth, and every seed lies in the span of the committed ones."""
    k = 6
    values, _ = grid(k, 0.4, 0.5, image_sd=0.2)
    runs = stats.simulated_runs(values, 1, 200000, np.random.default_rng(0), pairs=2)
    assert runs.shape == (2, 200000, 1, 15)
    one = runs[0, :, 0, :]
    np.testing.assert_allclose(one.mean(axis=0), values.mean(axis=0), atol=0.02)
    factor = (k - 1) / (k - 3) * (1 + 1 / k)
    np.testing.assert_allclose(np.cov(one, rowvar=False), factor * np.cov(values, rowvar=False),
                               rtol=0.1, atol=0.01)
    # the pair's runs share the truth: their seeds correlate (the truth's share of the variance)
    other = runs[1, :, 0, :]
    shared = np.corrcoef(one[:, 0], other[:, 0])[0, 1]
    assert shared == pytest.approx(1 / (k + 1), abs=0.03)
    centred = one[:1000] - values.mean(axis=0)
    _, sv, _ = np.linalg.svd(np.vstack([values - values.mean(axis=0), centred]))
    assert sv[k - 1] < 1e-8 * sv[0]  # rank k - 1: nothing outside the committed seeds' span
