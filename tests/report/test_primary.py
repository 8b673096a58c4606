"""The primary comparisons: the three kinds of test, Holm over the declared set, power from the
measured components, the seeds needed, and an equivalence the design cannot decide."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.multitest import multipletests

from mirl_lib.core.config import AnalysisConfig
from mirl_lib.core.errors import ConfigError
from mirl_lib.report import primary as pr
from mirl_lib.report.intervals import crossed

TASKS = ("denoise_25", "derain")
PHOTOS = ("a", "b", "c", "d")


def metrics(seeds: int, effects: dict[str, float], spread: float = 0.1, seed: int = 0
            ) -> pd.DataFrame:
    """Dense at 25 dB; ticket (round 2) and the named strategies at 25 + their effect, with seed,
    photo and cell noise of ``spread`` dB."""
    rng = np.random.default_rng(seed)
    photo = {p: rng.normal(0, 1) for p in PHOTOS}
    rows = []
    for s in range(seeds):
        shift = {name: rng.normal(0, spread) for name in ("dense", "rewind", *effects)}
        for strategy, rnd in [("dense", 0), ("rewind", 2), *((n, 2) for n in effects)]:
            base = 25.0 + (0.0 if strategy in ("dense", "rewind") else -effects[strategy])
            for task in TASKS:
                for p in PHOTOS:
                    rows.append({"seed": s, "strategy": strategy, "round": rnd,
                                 "remaining_all": 1.0 if strategy == "dense" else 0.64,
                                 "remaining_prunable": 1.0, "task": task, "dataset": "bundled",
                                 "image": p, "photo": p,
                                 "psnr": base + photo[p] + shift[strategy]
                                 + rng.normal(0, spread),
                                 "ssim": 0.8, "input_psnr": 20.0, "input_ssim": 0.5})
    return pd.DataFrame(rows)


def analysis(*primary: str, margin: float = 0.25) -> AnalysisConfig:
    return AnalysisConfig(primary=primary, margin_db=margin)


def test_the_three_kinds_test_what_they_claim() -> None:
    data = metrics(5, {"reinit": 1.5, "finetune": 0.0, "oneshot": -3.0}, spread=0.05)
    table = pr.primary_table(data, analysis("dense:noninferiority", "reinit:superiority",
                                            "finetune:equivalence", "oneshot:superiority"), 2)
    by = table.set_index("vs")
    assert by.loc["dense", "decision"] == pr.SHOWN  # a ticket as good as the dense network
    assert by.loc["reinit", "decision"] == pr.SHOWN and by.loc["reinit", "difference"] > 1.3
    assert by.loc["finetune", "decision"] == pr.SHOWN  # equivalent within 0.25 dB
    assert by.loc["oneshot", "decision"] == pr.NOT_SHOWN  # worse, so not better
    assert by.loc["oneshot", "p"] > 0.99 and pd.isna(by.loc["oneshot", "seeds_needed"])


def test_p_values_are_the_t_tests_and_holm_adjusts_them() -> None:
    data = metrics(3, {"reinit": 0.3, "random_mask": 0.2}, spread=0.3, seed=4)
    declared = analysis("dense:noninferiority", "reinit:superiority", "random_mask:superiority")
    table = pr.primary_table(data, declared, 2)
    for r in table.itertuples():
        bound = -0.25 if r.kind == "noninferiority" else 0.0
        assert r.p == pytest.approx(scipy_stats.t.sf((r.difference - bound) / r.se, r.df))
    holm = multipletests(table["p"], alpha=0.05, method="holm")[1]
    assert table["p_holm"].tolist() == pytest.approx(list(holm))
    assert (table["p_holm"] >= table["p"]).all()


def test_equivalence_is_two_one_sided_tests() -> None:
    result = crossed(np.array([[0.1, 0.0, 0.2], [0.05, -0.1, 0.15], [0.0, 0.1, 0.1]]))
    p = pr.p_value(result, "equivalence", 0.25)
    lower = scipy_stats.t.sf((result.estimate + 0.25) / result.se, result.df)
    upper = scipy_stats.t.cdf((result.estimate - 0.25) / result.se, result.df)
    assert p == pytest.approx(max(lower, upper))
    # shown exactly when the 90% interval lies inside the margin
    low, high = result.interval(0.90)
    assert (p < 0.05) == (-0.25 < low and high < 0.25)


def test_an_equivalence_too_wide_to_fit_the_margin_is_undecidable() -> None:
    data = metrics(2, {"late_rewind": 0.0}, spread=0.6, seed=2)
    table = pr.primary_table(data, analysis("late_rewind:equivalence"), 2)
    row = table.iloc[0]
    result = crossed_of(data, "late_rewind")
    assert scipy_stats.t.ppf(0.95, result.df) * result.se >= 0.25
    assert row.decision == pr.UNDECIDABLE and row.power < 0.8
    assert pd.isna(row.seeds_needed) or row.seeds_needed > 2


def test_power_grows_with_seeds_and_the_seeds_needed_reach_it() -> None:
    result = crossed(np.array([[0.5, 0.3, 0.6, 0.4], [0.2, 0.1, 0.6, 0.3], [0.7, 0.4, 0.3, 0.5]]))
    powers = [pr.power(result, n, "superiority", 0.25, 0.05) for n in (2, 3, 5, 10, 20)]
    assert powers == sorted(powers) and powers[-1] > 0.8
    needed = pr.seeds_needed(result, "superiority", 0.25, 0.05, 0.8)
    assert pr.power(result, needed, "superiority", 0.25, 0.05) >= 0.8
    before = pr.SEED_GRID[pr.SEED_GRID.index(needed) - 1]
    assert pr.power(result, before, "superiority", 0.25, 0.05) < 0.8
    assert pr.seeds_needed(crossed(-result.estimate + 0 * np.ones((3, 4)) - 0.5 + np.array(
        [[0.1, 0.0, -0.1, 0.2], [0.0, 0.1, 0.1, -0.2], [0.2, -0.1, 0.0, 0.1]])),
        "superiority", 0.25, 0.05, 0.8) is None  # no lead: no seed count shows one
    data = metrics(3, {"reinit": 0.4}, spread=0.4, seed=1)
    table = pr.primary_table(data, analysis("reinit:superiority"), 2)
    assert table["power"].iloc[0] == pytest.approx(
        pr.power(crossed_of(data, "reinit"), 3, "superiority", 0.25, 0.05))


def crossed_of(data: pd.DataFrame, vs: str):
    from mirl_lib.core.names import ALL_IN_ONE
    from mirl_lib.report.intervals import cell_table, pairs

    tables, _, _, _, _ = cell_table(pairs(data, "psnr", ("rewind", 2), (vs, 2)))
    return crossed(tables[ALL_IN_ONE])


@pytest.mark.slow  # thousands of simulated runs
def test_power_is_what_runs_of_the_measured_model_show() -> None:
    """The simulated power of a model's components against runs of that model, tested one by one
    with the run's own interval (``crossed``): the same share, within Monte Carlo error."""
    from mirl_lib.report.intervals import Components, Crossed

    model = Components((0.3,) * 2, var_seed=0.05, var_photo=0.04, var_inter=0.01, var_task=0.02,
                       var_crop=0.0)
    resid = model.var_inter + model.var_task / 2  # what a cell mean carries beyond seed and photo
    truth = Crossed(0.3, np.nan, np.nan, seeds=10, photos=6, ms_seed=resid + 6 * model.var_seed,
                    ms_photo=resid + 10 * model.var_photo, ms_resid=resid)
    assert (truth.var_seed, truth.var_photo) == pytest.approx((0.05, 0.04))
    rng = np.random.default_rng(0)
    for seeds in (3, 6):
        simulated = pr.power(truth, seeds, "superiority", 0.25, 0.05)
        shown = [pr.p_value(crossed(model.draw(rng, seeds, 6).mean(axis=(1, 3))),
                            "superiority", 0.25) < 0.05 for _ in range(2000)]
        assert np.mean(shown) == pytest.approx(simulated, abs=0.035)


def test_bad_declarations_name_the_key() -> None:
    with pytest.raises(ConfigError, match="analysis.primary: 'reinit:better': write <strategy>"):
        AnalysisConfig(primary=("reinit:better",))
    with pytest.raises(ConfigError, match="analysis.primary: names a strategy twice"):
        AnalysisConfig(primary=("reinit:superiority", "reinit:equivalence"))
    with pytest.raises(ConfigError, match="analysis.margin_db: must be positive"):
        AnalysisConfig(margin_db=0.0)


def test_a_declared_comparison_the_study_did_not_run_is_left_out() -> None:
    data = metrics(3, {"reinit": 1.0})
    table = pr.primary_table(data, analysis("dense:noninferiority", "reinit:superiority",
                                            "small_dense:superiority"), 2)
    assert list(table["vs"]) == ["dense", "reinit"]


def test_a_declared_confirmation_is_tested_on_its_seeds_alone_once_all_are_scored() -> None:
    """``analysis.confirm_seeds``: the primary table keeps to the other seeds; the confirmation
    gives no estimate and no decision while a declared seed is missing, then tests its seeds
    alone, Holm over the declared set; its planned power is the exploration's at that many seeds."""
    data = metrics(6, {"reinit": 1.5, "small_dense": 0.05}, spread=0.05, seed=3)
    declared = AnalysisConfig(primary=("dense:noninferiority", "reinit:superiority",
                                       "small_dense:superiority"), confirm_seeds=(3, 4, 5))
    plain = AnalysisConfig(primary=declared.primary)
    table = pr.primary_table(data, declared, 2)
    assert (table["seeds"] == 3).all()
    pd.testing.assert_frame_equal(table, pr.primary_table(data[data["seed"] < 3], plain, 2))

    pending = pr.confirmation_table(data[data["seed"] < 5], declared, 2)
    assert list(pending.columns) == pr.CONFIRM_COLUMNS
    assert list(pending["vs"]) == ["dense", "reinit", "small_dense"]
    assert (pending["decision"] == pr.PENDING).all() and (pending["scored_seeds"] == 2).all()
    assert pending["difference"].isna().all() and pending["p_holm"].isna().all()
    explore = crossed_of(data[data["seed"] < 3], "reinit")
    assert pending.set_index("vs").loc["reinit", "planned_power"] == pytest.approx(
        pr.power(explore, 3, "superiority", 0.25, 0.05 / 3))

    done = pr.confirmation_table(data, declared, 2)
    again = pr.primary_table(data[data["seed"] >= 3], plain, 2)
    for column in ("difference", "ci_low", "ci_high", "p", "p_holm", "decision", "seeds"):
        assert done[column].tolist() == again[column].tolist(), column
    assert (done["scored_seeds"] == 3).all() and done["declared_seeds"].iloc[0] == "3 4 5"
    by = done.set_index("vs")
    assert by.loc["reinit", "decision"] == pr.SHOWN
    assert by.loc["small_dense", "decision"] == pr.NOT_SHOWN
    assert pr.confirmation_table(data, plain, 2).empty


def test_a_pending_confirmations_scored_seeds_are_held_back() -> None:
    """``held_back``: the declared seeds already scored, while one is missing; ``blinded``
    drops their rows from any table with a ``seed`` column."""
    table = pd.DataFrame({"seed": [0, 0, 1, 5, 5, 6], "psnr": [1.0, 2, 3, 4, 5, 6]})
    declared = AnalysisConfig(confirm_seeds=(5, 6, 7))
    assert pr.held_back(table, declared) == (5, 6)
    assert list(pr.blinded(table, (5, 6))["psnr"]) == [1.0, 2, 3]
    assert pr.held_back(table[table["seed"] < 5], declared) == ()  # none scored yet
    assert pr.held_back(table, AnalysisConfig(confirm_seeds=(5, 6))) == ()  # all scored
    assert pr.held_back(table, AnalysisConfig()) == ()  # none declared
    assert pr.blinded(None, (5,)) is None and pr.blinded(table, ()) is table


def test_a_bad_confirmation_declaration_names_the_key() -> None:
    with pytest.raises(ConfigError, match="analysis.confirm_seeds: lists a seed twice"):
        AnalysisConfig(confirm_seeds=(5, 5))
    with pytest.raises(ConfigError, match="analysis.confirm_seeds: seeds are non-negative"):
        AnalysisConfig(confirm_seeds=(-1, 2))
    with pytest.raises(ConfigError, match="analysis.confirm_seeds: one seed cannot confirm"):
        AnalysisConfig(confirm_seeds=(7,))


def test_where_photos_dominate_no_seed_count_decides_but_photos_do() -> None:
    """``photos_needed``: the fewest photos of the grid whose power reaches the target at the
    run's seeds; more seeds do not help a comparison whose spread is between photos."""
    from mirl_lib.report.intervals import Crossed

    resid = 0.01
    result = Crossed(0.3, np.nan, np.nan, seeds=5, photos=3, ms_seed=resid + 3 * 0.001,
                     ms_photo=resid + 5 * 0.2, ms_resid=resid)
    assert pr.seeds_needed(result, "superiority", 0.25, 0.05, 0.8) is None
    photos = pr.photos_needed(result, 5, "superiority", 0.25, 0.05, 0.8)
    assert photos is not None and photos > 3
    assert pr.power(result, 5, "superiority", 0.25, 0.05, photos=photos) >= 0.8
    before = pr.PHOTO_GRID[pr.PHOTO_GRID.index(photos) - 1]
    assert pr.power(result, 5, "superiority", 0.25, 0.05, photos=before) < 0.8
    lost = Crossed(-0.3, np.nan, np.nan, seeds=5, photos=3, ms_seed=resid, ms_photo=resid,
                   ms_resid=resid)
    assert pr.photos_needed(lost, 5, "superiority", 0.25, 0.05, 0.8) is None  # no lead to show
    data = metrics(3, {"reinit": 0.4}, spread=0.4, seed=1)
    row = pr.primary_table(data, analysis("reinit:superiority"), 2).iloc[0]
    expected = pr.photos_needed(crossed_of(data, "reinit"), 3, "superiority", 0.25, 0.05, 0.8)
    assert (pd.isna(row.photos_needed) and expected is None) or row.photos_needed == expected


def test_the_planning_table_prices_other_designs_from_the_exploration() -> None:
    """``planning_table``: each comparison's power at ``PLAN_SEEDS`` seeds on the run's photos
    and on ``PLAN_PHOTOS`` photos, from the exploration's components (confirmation seeds left
    out), at Holm's first step; the summary shows it."""
    from mirl_lib.report.summary import summary_markdown

    data = metrics(6, {"reinit": 0.5}, spread=0.3, seed=5)
    declared = AnalysisConfig(primary=("dense:noninferiority", "reinit:superiority"),
                              confirm_seeds=(4, 5))
    plan = pr.planning_table(data, declared, 2)
    assert list(plan.columns) == pr.PLAN_COLUMNS
    assert set(zip(plan["seeds"], plan["photos"])) == {
        (s, p) for s in pr.PLAN_SEEDS for p in (len(PHOTOS), *pr.PLAN_PHOTOS)}
    row = plan[(plan["vs"] == "reinit") & (plan["seeds"] == 10) & (plan["photos"] == 30)]
    explore = crossed_of(data[data["seed"] < 4], "reinit")
    assert row["power"].iloc[0] == pytest.approx(
        pr.power(explore, 10, "superiority", 0.25, 0.05 / 2, photos=30))
    text = summary_markdown(data, "t", declared)
    assert "## Planning: the power of other designs" in text
    assert "| random re-init | superiority | " in text.split("## Planning")[1]
