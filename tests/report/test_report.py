"""Tables, the answer sentences, the summary page, the reproduction check and the figures, from
constructed long metrics tables with one seed and with several."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from mirl_lib.core.config import AnalysisConfig
from mirl_lib.core.names import INPUT
from mirl_lib.report import figures, means
from mirl_lib.report.comparisons import (
    branch_rounds,
    comparisons,
    curve_reading,
    read_optional,
    trunk_curve,
)
from mirl_lib.report.headline import answer, headline, headline_decisions, primary_sentence
from mirl_lib.report.means import point_means, seed_stats
from mirl_lib.report.primary import (
    HELD_BACK,
    NOT_SHOWN,
    SHOWN,
    UNDECIDABLE,
    UNTESTABLE,
    confirmation_table,
    primary_table,
)
from mirl_lib.report.reproduction import reproduction, reproduction_inputs
from mirl_lib.report.summary import summary_markdown

# the primary comparisons these tables can make (at round 2)
ANALYSIS = AnalysisConfig(primary=("dense:noninferiority", "reinit:superiority",
                                   "random_mask:superiority", "oneshot:superiority"),
                          margin_reason="the reason")

TASKS = ("denoise_25", "derain")
IMAGES = ("a", "b", "c", "d")
# (strategy, round, remaining_all); the control at round 2 has its own parameter count
POINTS = (("dense", 0, 1.0), ("rewind", 1, 0.8), ("rewind", 2, 0.64), ("reinit", 2, 0.65),
          ("random_mask", 2, 0.64), ("oneshot", 2, 0.64))
BASE = {"dense": 25.0, "rewind": 25.0, "reinit": 24.0, "random_mask": 24.0, "oneshot": 24.5}


def metrics(seeds: tuple[int, ...], ticket_gap: float, noise: float = 0.05,
            points: tuple = POINTS) -> pd.DataFrame:
    """Dense at 25 dB; the ticket ``ticket_gap`` dB off at round 2; controls 1 dB lower, one-shot
    0.5 dB lower; every image has its own difficulty, every score ``noise`` dB of noise."""
    rng = np.random.default_rng(0)
    difficulty = {(t, i): rng.normal(0, 1) for t in TASKS for i in IMAGES}
    rows = []
    for seed in seeds:
        for strategy, rnd, rem in points:
            base = BASE[strategy] + (ticket_gap if (strategy, rnd) == ("rewind", 2) else 0.0)
            for task in TASKS:
                for image in IMAGES:
                    rows.append({"seed": seed, "strategy": strategy, "round": rnd,
                                 "remaining_all": rem, "remaining_prunable": rem, "task": task,
                                 "dataset": "bundled", "image": image, "photo": image,
                                 "psnr": base + 0.1 * seed + difficulty[task, image]
                                 + noise * rng.normal(),
                                 "ssim": 0.8 + 0.001 * rng.normal(), "input_psnr": 20.0,
                                 "input_ssim": 0.5, "config_hash": "x"})
    return pd.DataFrame(rows)




def test_point_means_average_images_then_tasks() -> None:
    means = point_means(metrics((0,), -0.5, noise=0.0))
    overall = means[(means["task"] == "all-in-one") & (means["strategy"] == "rewind")]
    gap = np.subtract(*overall.sort_values("round")["psnr"].tolist())
    assert gap == pytest.approx(0.5)


def catalog(with_collapse: bool = True) -> pd.DataFrame:
    rows = []
    for seed in (0, 1):
        for strategy, rnd, rem in POINTS:
            row = {"seed": seed, "strategy": strategy, "round": rnd, "remaining_all": rem,
                   "remaining_prunable": rem, "ticket": "t.mirl", "mean_psnr": 25.0}
            if with_collapse:
                row.update(empty_tensors=(3 + seed if (strategy, rnd) == ("oneshot", 2) else
                                          2 if (strategy, rnd) == ("rewind", 1) else 0),
                           prunable_tensors=85,
                           path_cut=(strategy == "oneshot" and seed == 1))
            rows.append(row)
    return pd.DataFrame(rows)


def test_seed_stats_keeps_its_columns() -> None:
    stats_ = seed_stats(point_means(metrics((0, 1), -0.5)))
    for column in ("strategy", "round", "task", "remaining_all", "psnr", "psnr_sd", "ssim",
                   "ssim_sd", "input_psnr", "seeds"):
        assert column in stats_.columns


def test_comparisons_use_the_registry_and_pair_controls_with_their_own_count() -> None:
    comps = comparisons(metrics((0, 1), -0.05))
    psnr = comps[(comps["metric"] == "psnr") & (comps["task"] == "all-in-one")]
    assert [(r.round, r.b) for r in psnr.itertuples()] == [
        (1, "dense"), (2, "dense"), (2, "oneshot"), (2, "reinit"), (2, "random_mask")]
    assert set(psnr["remaining"].round(2)) == {0.8, 0.64}
    assert branch_rounds(comps, "b") == [2]
    assert "verdict" not in comps.columns  # exploratory estimates carry no verdict
    row = psnr[psnr["b"] == "reinit"].iloc[0]
    plain = (data_mean := metrics((0, 1), -0.05)).query("strategy == 'rewind' and round == 2")[
        "psnr"].mean() - data_mean.query("strategy == 'reinit'")["psnr"].mean()
    assert row.difference == pytest.approx(plain) and row.ci_low < row.difference < row.ci_high
    assert (row.seeds, row.photos, row.images) == (2, 4, 8)


def test_a_strategy_is_also_compared_with_what_it_declares() -> None:
    """The structured ticket declares the small dense network (``compared_with``): A − B rows
    beside the ticket's, in the summary's own table, and not in the ticket's tables."""
    points = (*POINTS, ("small_dense", 2, 0.64), ("channel_rewind", 1, 0.8),
              ("channel_rewind", 2, 0.64))
    BASE.update(small_dense=23.5, channel_rewind=24.25)
    try:
        data = metrics((0, 1), -0.05, points=points)
    finally:
        del BASE["small_dense"], BASE["channel_rewind"]
    comps = comparisons(data)
    extra = comps[(comps["a"] != "rewind") & (comps["metric"] == "psnr")]
    assert set(zip(extra["a"], extra["b"], extra["round"])) == {
        ("channel_rewind", "small_dense", 2)}
    row = extra[extra["task"] == "all-in-one"].iloc[0]
    assert row.difference == pytest.approx(0.75, abs=0.05)
    assert row.ci_low < row.difference < row.ci_high
    text = summary_markdown(data, "t", ANALYSIS, comps=comps)
    section = text.split("other pairs of the same size")[1]
    assert "structured ticket (channels) − small dense (same size)" in section
    assert "ticket − structured ticket (channels)" in text  # the ticket's own comparisons too


def test_the_trunk_curve_has_a_simultaneous_band() -> None:
    curve = trunk_curve(metrics((0, 1, 2), -0.5))
    assert list(curve["round"]) == [1, 2]
    assert curve["band_level"].iloc[0] == pytest.approx(0.95 ** 0.5)
    assert ((curve["band_low"] <= curve["ci_low"]) & (curve["ci_high"] <= curve["band_high"])).all()
    text = curve_reading(curve)
    assert "simultaneous 95% band" in text and "below 0 at round 2" in text
    assert "holding 0 at round 1" in text


def test_headline_is_a_markdown_list_of_the_primary_decisions_and_the_curve() -> None:
    data = metrics((0, 1, 2), -0.5)
    lines = headline(data, ANALYSIS).strip().splitlines()
    assert all(line.startswith("- ") for line in lines)
    primary = primary_table(data, ANALYSIS, 2)
    assert [line[2:] for line in lines] == answer(primary, trunk_curve(data), ANALYSIS)
    assert lines[0].startswith("- Primary comparisons (declared in the params file; ticket at "
                               "64.0% of all parameters (trunk round 2) − X")
    by = {r.vs: r.decision for r in primary.itertuples()}
    # the ticket 0.5 dB below the dense network, 1 dB above the controls, level with one-shot
    assert by == {"dense": "not shown", "reinit": "shown", "random_mask": "shown",
                  "oneshot": "not shown"}
    assert "Ticket vs random re-init: **better than random re-init: shown**" in lines[2]
    assert ("Ticket vs the dense network: **not worse than the dense network by more than "
            "0.25 dB: not shown, undecided**") in lines[1]
    assert headline_decisions(primary) == {
        "vs dense (noninferiority)": "not shown", "vs reinit (superiority)": "shown",
        "vs random_mask (superiority)": "shown", "vs oneshot (superiority)": "not shown"}


def test_a_declared_confirmation_is_pending_then_decided_in_headline_and_summary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``analysis.confirm_seeds`` the headline and the summary test the primary comparisons
    on the other seeds, say the confirmation is pending (its planned power, no estimate) while a
    declared seed is missing, and give its decisions once all are scored; ``analyse_run`` writes
    ``confirmation.csv``."""
    from mirl_lib.core.config import Config, StudyConfig
    from mirl_lib.report.stages import analyse_run

    declared = AnalysisConfig(primary=ANALYSIS.primary, confirm_seeds=(3, 4, 5))
    data = metrics((0, 1, 2, 3, 4, 5), 1.0)
    partial = data[data["seed"] != 5]
    lines = headline(partial, declared).strip().splitlines()
    assert "tested on the 3 seeds outside the confirmation below" in lines[0]
    pending = [line for line in lines if line.startswith("- Confirmation")]
    assert len(pending) == 1 and "**pending**, 2 of 3 seeds scored" in pending[0]
    assert "seeds 3–5 alone" in pending[0] and "random re-init" in pending[0]
    planned = confirmation_table(partial, declared, 2).set_index("vs")["planned_power"]
    assert f"random re-init {100 * planned['reinit']:.0f}%" in pending[0]
    text = summary_markdown(partial, "t", declared)
    assert "## Confirmation" in text and "Pending: 2 of 3 seeds scored." in text
    # seeds 3 and 4 are scored but held back: nothing else shows them until seed 5 is scored
    assert HELD_BACK in pending[0] and HELD_BACK in text
    assert text == summary_markdown(partial, "t", declared,
                                    confirm=confirmation_table(partial, declared, 2))
    explored = partial[partial["seed"] < 3]
    assert headline(partial, declared).split("- Confirmation")[0] == \
        headline(explored, declared).split("- Confirmation")[0]
    def unconfirmed(page: str) -> list[str]:
        return [line for line in page.splitlines() if "onfirmation" not in line
                and not line.startswith("Pending")]

    assert unconfirmed(text) == unconfirmed(summary_markdown(explored, "t", declared))
    cfg = Config(study=StudyConfig(seeds=(0, 1, 2, 3, 4, 5)), analysis=declared)
    pending_dir = tmp_path / "pending"
    analyse_run(pending_dir, cfg, partial)
    assert pd.read_csv(pending_dir / "comparisons.csv")["seeds"].eq(3).all()
    assert pd.read_csv(pending_dir / "confirmation.csv")["scored_seeds"].eq(2).all()
    partial.to_csv(pending_dir / "metrics.csv", index=False)
    (pending_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    seen, reference, _, _ = reproduction_inputs(pending_dir / "metrics.csv",
                                                pending_dir / "metrics.csv")
    assert sorted(seen["seed"].unique()) == sorted(reference["seed"].unique()) == [0, 1, 2]

    decided = headline(data, declared).strip().splitlines()
    confirm = confirmation_table(data, declared, 2)
    assert (confirm["seeds"] == 3).all()
    shown = int((confirm["decision"] == SHOWN).sum())
    assert any(line.endswith(f"Holm at α = 0.05: {shown} of 4 shown.")
               for line in decided)
    firsts = [line for line in decided if line.startswith("- Confirmation: Ticket vs")]
    assert len(firsts) == 4
    row = next(confirm.assign(decision=NOT_SHOWN).itertuples())
    assert f"planned power {100 * row.planned_power:.0f}%" in primary_sentence(row, 0.8)
    # decided: what a next confirmation would need, from the confirmation's own seeds
    assert confirm["power"].between(0, 1).all()
    assert "seeds give 80% power" in primary_sentence(row, 0.8) or \
        "no number of seeds up to 200 gives it 80% power" in primary_sentence(row, 0.8)
    # the power named is the one the seeds were counted for (analysis.power), not a fixed 80%
    assert "90% power" in primary_sentence(row, 0.9)
    assert "80% power" not in primary_sentence(row, 0.9)
    assert "| random re-init | superiority | +" in summary_markdown(data, "t", declared)
    assert "| planned power | power | seeds for 80% | photos for 80% |" in \
        summary_markdown(data, "t", declared)
    # the exploration is one sentence once the confirmation decides, one per comparison before
    assert decided[0].startswith("- Exploration: the primary comparisons")
    assert "ticket − X: the dense network " in decided[0] and "; random re-init +" in decided[0]
    assert not any(line.startswith("- Ticket vs") for line in decided)
    assert sum(line.startswith("- Ticket vs") for line in lines) == 4

    analyse_run(tmp_path, cfg, data)
    assert pd.read_csv(tmp_path / "comparisons.csv")["seeds"].eq(6).all()  # all seeds again
    written = pd.read_csv(tmp_path / "confirmation.csv")
    assert list(written["decision"]) == list(confirm["decision"])
    assert pd.read_csv(tmp_path / "primary.csv")["seeds"].eq(3).all()

    # the forest is coloured by the primary table while the confirmation is pending, by the
    # confirmation's decisions once it is decided
    from mirl_lib.report import stages

    drawn = []
    monkeypatch.setattr(stages.figures, "comparison_forest",
                        lambda *a, decided_by, **k: drawn.append((a[2], decided_by)))
    monkeypatch.setattr(stages.figures, "psnr_vs_remaining", lambda *a, **k: None)
    data.to_csv(tmp_path / "metrics.csv", index=False)
    stages.draw_statistics(pending_dir, declared)
    stages.draw_statistics(tmp_path, declared)
    assert [by for _, by in drawn] == ["primary", "confirmation"]
    assert list(drawn[0][0]["seeds"].unique()) == [3]
    assert list(drawn[1][0]["decision"]) == list(confirm["decision"])


def test_summary_has_the_primary_tests_the_curve_and_exploratory_estimates() -> None:
    text = summary_markdown(metrics((0, 1, 2), -0.5), "t", ANALYSIS)
    answer_part = text.split("## Answer")[1].split("## Primary comparisons")[0]
    assert "not shown, undecided" in answer_part and "margin ±0.25 dB (the reason)" in answer_part
    primary = text.split("## Primary comparisons")[1].split("## Dense network")[0]
    assert re.search(r"\| random re-init \| superiority \| \+0\.[45]\d \[", primary)
    assert "| shown |" in primary and "| not shown |" in primary
    assert "share from seeds" in primary
    assert re.search(r"\| all-in-one \| 20\.00 \| \d+\.\d\d ± \d\.\d\d \| \+\d\.\d\d ± \d\.\d\d "
                     r"\| 0\.5000 \| 0\.\d{4} ± 0\.\d{4} \|", text)
    table = text.split("## All-in-one PSNR")[1].split("## The trunk as a curve")[0]
    assert "| 64.0 (2) |" in table and "| 100.0 (0) |" in table and "±" in table
    assert "65.0" not in table  # the control sits on the trunk's row
    curve = text.split("## The trunk as a curve")[1].split("## Exploratory")[0]
    assert "| 2 | 64.0 | -0.49 [" in curve and "simultaneous band" in curve
    explore = text.split("## Exploratory: ticket − X at 64.0% remaining (trunk round 2)")[1]
    assert "ticket − random re-init" in explore
    for word in ("better", "worse", "matches", "inconclusive", "shown"):
        assert word not in explore.split("## ")[0].split("Exploratory: no")[-1].replace(
            "verdict (only the primary comparisons are tested).", "")
    assert "## Held-out photos" not in text and "## Layer collapse" not in text
    one_seed = summary_markdown(metrics((0,), -0.5), "t", ANALYSIS)
    assert "±" not in one_seed.split("## All-in-one PSNR")[1].split("## The trunk")[0]
    assert "1 seed × 4 photos" not in one_seed or "photos only" in one_seed


def test_summary_heldout_section() -> None:
    data = metrics((0, 1), -0.5)
    held = metrics((0, 1), -1.5).query("strategy in ['dense', 'rewind']")
    held = held.assign(dataset="heldout", input_psnr=18.0)
    section = summary_markdown(data, "t", ANALYSIS, heldout=held).split("## Held-out photos")[1]
    assert "ticket − dense at 64.0% (round 2)" in section
    assert "(round 1)" not in section  # branch rounds only
    assert re.search(r"\| all-in-one \| 18\.00 \| \d+\.\d\d ± \d\.\d\d \| \+\d\.\d\d ± \d\.\d\d "
                     r"\| -1\.\d\d \[-\d\.\d\d, -\d\.\d\d\] \|", section)


def test_summary_layer_collapse_section(tmp_path: Path) -> None:
    data = metrics((0, 1), -0.5)
    path = tmp_path / "catalog.csv"
    catalog().to_csv(path, index=False)  # as the run writes it (path_cut read back from text)
    text = summary_markdown(data, "t", ANALYSIS, points=read_optional(path))
    section = text.split("## Layer collapse")[1]
    assert "| 2 | 64.0 | one-shot | 3–4 of 85 | 1 of 2 |" in section
    assert "| 1 | 80.0 | ticket (rewind to init) | 2 of 85 | 0 of 2 |" in section  # has empties
    assert "| 2 | 64.0 | random re-init | 0 of 85 | 0 of 2 |" in section  # a branch round
    assert "dense" not in section.split("|---|")[-1]
    without = summary_markdown(data, "t", ANALYSIS, points=catalog(False))
    assert "## Layer collapse" not in without
    assert means.collapse_of(catalog(), "oneshot", 2) == {
        "empty_tensors": "3–4", "seeds": 2, "prunable_tensors": "85", "path_cut": 1}
    assert means.collapse_of(catalog(False), "oneshot", 2) is None


def test_reproduction_of_an_identical_rerun() -> None:
    data = metrics((0, 1), -0.5)
    table, line = reproduction(data, data.copy(), ANALYSIS)
    estimates = table[table["kind"] == "estimate"]
    n = len(estimates)
    assert n == 6 * 3  # (5 comparisons + the dense gain) × (2 tasks + all-in-one)
    assert set(estimates["set"]) == {"test"}
    gains = estimates[estimates["b"] == INPUT]
    assert len(gains) == 3 and (gains["a"] == "dense").all()
    assert line.startswith("reproduced within noise: 4 of 4 primary decisions held (vs dense "
                           "(noninferiority): ")
    assert (f"; 0 of {n} exploratory estimates outside their 95% prediction intervals, no more "
            f"than the 3 that {n} such intervals miss by chance (point means: max |ΔPSNR| = "
            f"0.000 dB); the dense network's bars read as committed.") in line
    assert estimates["inside"].all()
    points = table[table["kind"] == "point"]
    assert len(points) == 2 * len(POINTS) * 3 and (points["difference"] == 0).all()
    for column in ("reference_difference", "pi_low", "pi_high", "rerun_difference", "inside"):
        assert column in table.columns


def test_reproduction_allows_the_misses_chance_makes_and_names_them() -> None:
    """Two of 18 estimates outside are no more than 18 95% intervals miss by chance (3), and the
    primary decisions held: reproduced within noise, yet both are named."""
    reference = metrics((0, 1), -0.5)
    rerun = reference.copy()
    rerun.loc[(rerun["strategy"] == "reinit") & (rerun["task"] == "derain"), "psnr"] += 1.5
    table, line = reproduction(rerun, reference, ANALYSIS)
    assert line.startswith("reproduced within noise: 4 of 4 primary decisions held")
    assert ("2 of 18 exploratory estimates outside their 95% prediction intervals, no more than "
            "the 3 that 18 such intervals miss by chance: round 2 (64.0%), rewind vs reinit, "
            "derain: committed +") in line
    outside = table[(table["kind"] == "estimate") & ~table["inside"].astype(bool)]
    assert set(outside["b"]) == {"reinit"} and set(outside["task"]) == {"derain", "all-in-one"}


def test_a_changed_primary_decision_is_not_a_reproduction() -> None:
    reference = metrics((0, 1, 2), -0.5)
    rerun = reference.copy()
    rerun.loc[rerun["strategy"] == "reinit", "psnr"] += 1.2  # the ticket no longer leads it
    _, line = reproduction(rerun, reference, ANALYSIS)
    assert line.startswith("NOT reproduced within noise: 3 of 4 primary decisions held")
    assert "changed: vs reinit (superiority): shown → not shown" in line


def test_reproduction_names_the_estimates_outside_when_more_than_chance() -> None:
    reference = metrics((0, 1), -0.5)
    rerun = reference.copy()
    moved = rerun["strategy"].isin(["random_mask", "oneshot"]) & (rerun["task"] == "derain")
    rerun.loc[moved, "psnr"] += 1.5
    table, line = reproduction(rerun, reference, ANALYSIS)
    assert line.startswith("NOT reproduced within noise: 4 of 4 primary decisions held")
    assert "4 of 18 exploratory estimates outside their 95% prediction intervals, more than the " \
           "3 that 18 such intervals miss by chance: round 2 (64.0%), rewind vs " in line
    assert "; and 1 more (" in line
    outside = table[(table["kind"] == "estimate") & ~table["inside"].astype(bool)]
    assert set(outside["b"]) == {"oneshot", "random_mask"} and len(outside) == 4


def test_reproduction_checks_the_dense_gain() -> None:
    """A rerun whose dense network gains 3 dB less over the degraded input is outside, though
    every ticket − X difference moved with it and stays inside."""
    reference = metrics((0, 1), -0.5)
    rerun = reference.assign(psnr=reference["psnr"] - 3.0)
    table, line = reproduction(rerun, reference, ANALYSIS)
    assert "3 of 18 exploratory estimates outside" in line
    assert "round 0 (100.0%), dense vs input, " in line
    outside = table[(table["kind"] == "estimate") & ~table["inside"].astype(bool)]
    assert set(outside["b"]) == {INPUT}
    assert outside["rerun_difference"].to_numpy() == pytest.approx(
        outside["reference_difference"].to_numpy() - 3.0)


def test_reproduction_covers_the_heldout_photos() -> None:
    """With both runs' held-out tables: their estimates are counted apart (``set``), a held-out
    estimate outside is named, and a dense network that no longer beats the input on a held-out
    task changes the bars' sentence."""
    reference, held = metrics((0, 1), -0.5), metrics((0, 1), -0.5)
    same, line = reproduction(reference.copy(), reference, ANALYSIS, heldout=(held.copy(), held))
    estimates = same[same["kind"] == "estimate"]
    assert estimates.groupby("set").size().to_dict() == {"heldout": 18, "test": 18}
    assert set(same.loc[same["kind"] == "point", "set"]) == {"heldout", "test"}
    assert ("0 of 36 exploratory estimates (18 on the test photos, 18 on the held-out photos) "
            "outside") in line
    assert line.endswith("; the dense network's bars read as committed.")
    moved = held.copy()
    moved.loc[(moved["strategy"] == "rewind") & (moved["round"] == 2), "psnr"] += 3.0
    table, line = reproduction(reference.copy(), reference, ANALYSIS, heldout=(moved, held))
    assert line.startswith("NOT reproduced within noise: 4 of 4 primary decisions held")
    assert "heldout: round 2 (64.0%), rewind vs " in line
    outside = table[(table["kind"] == "estimate") & ~table["inside"].astype(bool)]
    assert set(outside["set"]) == {"heldout"}
    lost = held.copy()
    lost.loc[(lost["strategy"] == "dense") & (lost["task"] == "derain"), "psnr"] = 15.0
    _, line = reproduction(reference.copy(), reference, ANALYSIS, heldout=(lost, held))
    assert ("the dense network's bars changed: committed \"" in line
            and "beats the degraded input on 2 of 2 tasks." in line
            and "beats the degraded input on 1 of 2 tasks (not on derain).\"." in line)


def test_keep_reference_copies_the_tables_once(tmp_path: Path) -> None:
    from mirl_lib.report.reproduction import keep_reference, reproduction_report
    data, held = metrics((0, 1), -0.5), metrics((0, 1), -0.5)
    data.to_csv(tmp_path / "metrics.csv", index=False)
    held.to_csv(tmp_path / "heldout.csv", index=False)
    assert keep_reference(tmp_path) == tmp_path / "reference" / "metrics.csv"
    assert sorted(p.name for p in (tmp_path / "reference").iterdir()) == [
        "heldout.csv", "metrics.csv"]
    held.assign(psnr=held["psnr"] + 5.0).to_csv(tmp_path / "heldout.csv", index=False)
    keep_reference(tmp_path)  # a resumed run: the committed copy stays
    assert pd.read_csv(tmp_path / "reference" / "heldout.csv")["psnr"].equals(held["psnr"])
    line = reproduction_report(tmp_path)
    # only the three held-out dense gains move (every ticket - X moved with its X)
    assert line.startswith("Against the committed results: reproduced within noise: ")
    assert "3 of 36 exploratory estimates (18 on the test photos, 18 on the held-out photos)" \
        in line and "heldout: round 0 (100.0%), dense vs input" in line


def test_reproduction_report_writes_the_csv(tmp_path: Path) -> None:
    from mirl_lib.report.reproduction import reproduction_report
    assert reproduction_report(tmp_path).startswith("No committed reference")
    data = metrics((0, 1), -0.5)
    (tmp_path / "reference").mkdir()
    data.to_csv(tmp_path / "reference" / "metrics.csv", index=False)
    data.to_csv(tmp_path / "metrics.csv", index=False)
    line = reproduction_report(tmp_path)
    assert "reproduced within noise" in line and "max |ΔPSNR| = 0.000 dB" in line
    assert "\n" not in line
    written = pd.read_csv(tmp_path / "reproduction.csv")
    assert set(written["kind"]) == {"point", "estimate"}


def test_margin_is_configurable_and_stated() -> None:
    data = metrics((0, 1, 2), -0.05)
    wide = AnalysisConfig(primary=("dense:noninferiority",), margin_db=1.0)
    text = summary_markdown(data, "t", wide)
    assert "margin ±1.00 dB" in text and "by more than 1.00 dB: shown" in text


def test_figures_are_written_for_several_seeds(tmp_path: Path) -> None:
    data = metrics((0, 1), -0.5)
    paths = [figures.psnr_vs_remaining(data, tmp_path / "psnr.png", trunk_curve(data)),
             figures.psnr_vs_remaining(data, tmp_path / "psnr_plain.png")]
    density = pd.DataFrame({"name": ["a.weight", "b.weight", "c.bias"],
                            "density": [0.5, 0.0, 1.0], "prunable": [True, True, False]})
    paths.append(figures.layer_density(
        pd.concat([density, density.assign(density=[0.4, 0.0, 1.0])]), tmp_path / "density.png",
        "t", collapse=means.collapse_of(catalog(), "oneshot", 2)))
    paths.append(figures.layer_density(density, tmp_path / "density_plain.png", "t"))
    paths.append(figures.comparison_forest(comparisons(data), tmp_path / "comparisons.png",
                                           primary_table(data, ANALYSIS, 2)))
    paths.append(figures.comparison_forest(comparisons(data.iloc[:0]), tmp_path / "empty.png"))
    history = pd.DataFrame({"step": [1, 2] * 4, "loss": np.linspace(0.2, 0.1, 8),
                            "strategy": "rewind", "round": [1, 1, 2, 2] * 2,
                            "seed": [0] * 4 + [1] * 4})
    paths.append(figures.training_curves(history, tmp_path / "curves.png"))
    for path in paths:
        with Image.open(path) as image:
            assert image.width > 300 and np.asarray(image.convert("L")).std() > 5


@pytest.mark.parametrize("decision", [SHOWN, NOT_SHOWN, UNDECIDABLE, UNTESTABLE])
def test_the_forest_draws_every_decision_a_primary_can_take(tmp_path: Path, decision: str) -> None:
    data = metrics((0, 1), -0.5)
    primary = primary_table(data, ANALYSIS, 2).assign(decision=decision)
    path = figures.comparison_forest(comparisons(data), tmp_path / "forest.png", primary)
    with Image.open(path) as image:
        assert image.width > 300


def test_dense_bars_are_computed_from_paired_gains() -> None:
    from mirl_lib.report.gains import DENSE_MIN_GAIN_DB, dense_bars, dense_gains

    rows = []
    for seed in (0, 1):
        for task, gain, dssim in (("denoise_25", 5.0, 0.2), ("derain", 3.5, 0.01),
                                  ("dehaze", 2.0, -0.02)):
            for image in ("a", "b", "c"):
                rows.append({"seed": seed, "strategy": "dense", "round": 0, "task": task,
                             "dataset": "bundled", "image": image, "input_psnr": 20.0,
                             "psnr": 20.0 + gain, "input_ssim": 0.5, "ssim": 0.5 + dssim,
                             "remaining_all": 1.0, "remaining_prunable": 1.0})
    gains = dense_gains(pd.DataFrame(rows)).set_index("task")
    assert gains.loc["derain", "gain_db"] == pytest.approx(3.5)
    assert gains.loc["derain", "gain_low"] == pytest.approx(3.5)  # no spread: a point interval
    assert gains.loc["dehaze", "ssim_change"] == pytest.approx(-0.02)
    assert gains.loc["all-in-one", "gain_db"] == pytest.approx((5.0 + 3.5 + 2.0) / 3)
    assert (gains["photos"] == 3).all()
    sentences = dense_bars(gains.reset_index(), gains.reset_index())
    assert DENSE_MIN_GAIN_DB == 3.0
    assert sentences[0].endswith("it does not yet learn every task (short on dehaze).")
    assert "≥ +3 dB on 2 of 3 tasks, SSIM above the input on 2 of 3" in sentences[0]
    assert sentences[1].endswith("beats the degraded input on 3 of 3 tasks.")


def test_reproduce_command_compares_two_files(tmp_path: Path, capsys) -> None:
    """``python -m mirl_lib reproduce RERUN REFERENCE -o CSV``: the line and the table; a missing
    file or another study's metrics is one error line, exit 2, and writes nothing."""
    from mirl_lib.cli.main import main

    reference = metrics((0, 1), -0.5).assign(config_hash="abc")
    rerun = reference.copy()
    rerun.loc[(rerun["strategy"] == "reinit") & (rerun["task"] == "derain"), "psnr"] += 1.5
    reference.to_csv(tmp_path / "ref.csv", index=False)
    rerun.to_csv(tmp_path / "rerun.csv", index=False)
    out = tmp_path / "reproduction.csv"
    assert main(["reproduce", str(tmp_path / "rerun.csv"), str(tmp_path / "ref.csv"),
                 "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("reproduced within noise: ") and "2 of 18 exploratory" in printed
    assert set(pd.read_csv(out)["kind"]) == {"point", "estimate"}
    out.unlink()
    for run in ("rerun", "ref"):  # run folders, each with its held-out table
        (tmp_path / run).mkdir()
        (rerun if run == "rerun" else reference).to_csv(tmp_path / run / "metrics.csv",
                                                        index=False)
        reference.to_csv(tmp_path / run / "heldout.csv", index=False)
    assert main(["reproduce", str(tmp_path / "rerun"), str(tmp_path / "ref")]) == 0
    assert "2 of 36 exploratory estimates (18 on the test photos, 18 on the held-out photos)" \
        in capsys.readouterr().out
    other = reference.assign(config_hash="def")
    other.to_csv(tmp_path / "other.csv", index=False)
    for argv, message in (([str(tmp_path / "nope.csv"), str(tmp_path / "ref.csv")],
                           "nope.csv: no such file"),
                          ([str(tmp_path / "other.csv"), str(tmp_path / "ref.csv")],
                           "config hash def differs from")):
        assert main(["reproduce", *argv, "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
        assert not out.exists()


def test_a_claim_not_shown_either_way_holds() -> None:
    """Not shown in the committed run, undecidable in the rerun (its seeds disagree far more):
    neither claims anything, so the decision held, and the line names the move."""
    analysis = AnalysisConfig(primary=("dense:equivalence",), margin_reason="the reason")
    reference = metrics((0, 1, 2), -0.5)
    rerun = reference.copy()
    ticket = (rerun["strategy"] == "rewind") & (rerun["round"] == 2)
    rerun.loc[ticket, "psnr"] += rerun.loc[ticket, "seed"].map({0: -2.0, 1: 2.0, 2: 0.0})
    _, line = reproduction(rerun, reference, analysis)
    assert line.startswith("reproduced within noise: 1 of 1 primary decisions held (vs dense "
                           "(equivalence): not shown → undecidable)"), line
