"""Tables, the answer sentences, the reproduction check and the figures, from constructed long
metrics tables with one seed and with several."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mirl_lib.core.names import INPUT
from mirl_lib.report import figures, means, stats
from mirl_lib.report.comparisons import branch_rounds, comparisons, read_optional
from mirl_lib.report.headline import answer, headline, headline_verdicts
from mirl_lib.report.means import point_means, seed_stats
from mirl_lib.report.reproduction import reproduction
from mirl_lib.report.summary import summary_markdown

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
                                 "dataset": "bundled", "image": image,
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


@pytest.mark.parametrize("gap, word", [(-0.5, "worse than"), (-0.02, "matches"),
                                       (0.6, "better than")])
def test_answer_is_chosen_by_the_verdict(gap: float, word: str) -> None:
    sentences = answer(comparisons(metrics((0, 1, 2), gap), n_boot=500))
    first = sentences[0]
    assert f"]: {word} the dense network" in first
    assert "64.0% of all parameters, trunk round 2" in first
    assert "margin ±0.25 dB; 3 seeds × 8 images, bootstrap over seeds and images" in first
    assert re.search(r"[-+]\d+\.\d\d dB \[[-+]\d+\.\d\d, [-+]\d+\.\d\d\]", first)


def test_answer_names_the_sparsest_matching_round_or_none() -> None:
    matching = answer(comparisons(metrics((0,), -0.5), n_boot=500))
    assert "The sparsest ticket that matches the dense network keeps 80.0% of all parameters "\
           "(trunk round 1)" in matching[1]
    assert "1 matches, 1 worse" in matching[1]
    assert "bootstrap over images only" in matching[0] and "1 seed × 8 images" in matching[0]
    noisy = metrics((0,), -0.5, noise=2.0)
    none = answer(comparisons(noisy, n_boot=500))
    assert none[1].startswith("No trunk round matches the dense network within ±0.25 dB")


def test_answer_compares_the_ticket_with_every_control_and_ablation_at_branch_rounds() -> None:
    sentences = answer(comparisons(metrics((0, 1), -0.05), n_boot=500))
    branch = [s for s in sentences if s.startswith("At 64.0% of all parameters (trunk round 2)")]
    assert len(branch) == 1  # labelled by the trunk's remaining, not the control's 65%
    text = branch[0]
    assert "against the controls: better than random re-init (+" in text
    assert "better than random mask (+" in text
    assert "against the ablations: better than one-shot (+" in text
    assert text.index("random re-init") < text.index("random mask")  # registry order


def test_comparisons_use_the_registry_and_pair_controls_with_their_own_count() -> None:
    comps = comparisons(metrics((0, 1), -0.05), n_boot=200)
    psnr = comps[(comps["metric"] == "psnr") & (comps["task"] == "all-in-one")]
    assert [(r.round, r.b) for r in psnr.itertuples()] == [
        (1, "dense"), (2, "dense"), (2, "oneshot"), (2, "reinit"), (2, "random_mask")]
    assert set(psnr["remaining"].round(2)) == {0.8, 0.64}
    assert branch_rounds(comps, "b") == [2]


def test_summary_has_intervals_verdicts_and_spread() -> None:
    text = summary_markdown(metrics((0, 1, 2), -0.5), "t", n_boot=500)
    answer_part = text.split("## Answer")[1].split("## Dense")[0]
    assert "worse than the dense network" in answer_part and "[" in answer_part
    assert "margin ±0.25 dB" in answer_part and "resampling the training seeds and" in answer_part
    assert re.search(r"\| all-in-one \| 20\.00 \| \d+\.\d\d ± \d\.\d\d \| \+\d\.\d\d ± \d\.\d\d "
                     r"\| 0\.5000 \| 0\.\d{4} ± 0\.\d{4} \|", text)
    table = text.split("## All-in-one PSNR")[1].split("## Ticket against")[0]
    assert "| 64.0 (2) |" in table and "| 100.0 (0) |" in table and "±" in table
    assert "65.0" not in table  # the control sits on the trunk's row
    per_round = text.split("## Ticket − X at 64.0% remaining (trunk round 2)")[1]
    assert "ticket − dense" in per_round and "ticket − random re-init" in per_round
    assert re.search(r"\| all-in-one \| -0\.\d\d \[-0\.\d\d, -0\.\d\d\] worse \|", per_round)
    vs_dense = text.split("## Ticket against the dense network at every trunk round")[1]
    assert "| 2 | 64.0 |" in vs_dense and "worse" in vs_dense
    assert "## Held-out photos" not in text and "## Layer collapse" not in text
    one_seed = summary_markdown(metrics((0,), -0.5), "t", n_boot=200)
    assert "±" not in one_seed.split("## All-in-one PSNR")[1].split("## Ticket against")[0]
    assert "images within each task only: one seed" in one_seed


def test_summary_heldout_section() -> None:
    data = metrics((0, 1), -0.5)
    held = metrics((0, 1), -1.5).query("strategy in ['dense', 'rewind']")
    held = held.assign(dataset="heldout", input_psnr=18.0)
    text = summary_markdown(data, "t", heldout=held, n_boot=300)
    section = text.split("## Held-out photos")[1]
    assert "ticket − dense at 64.0% (round 2)" in section
    assert "(round 1)" not in section  # branch rounds only
    assert re.search(r"\| all-in-one \| 18\.00 \| \d+\.\d\d ± \d\.\d\d \| \+\d\.\d\d ± \d\.\d\d "
                     r"\| -1\.\d\d \[-1\.\d\d, -1\.\d\d\] worse \|", section)


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


def test_summary_layer_collapse_section(tmp_path: Path) -> None:
    data = metrics((0, 1), -0.5)
    path = tmp_path / "catalog.csv"
    catalog().to_csv(path, index=False)  # as the run writes it (path_cut read back from text)
    text = summary_markdown(data, "t", points=read_optional(path), n_boot=200)
    section = text.split("## Layer collapse")[1]
    assert "| 2 | 64.0 | one-shot | 3–4 of 85 | 1 of 2 |" in section
    assert "| 1 | 80.0 | ticket (rewind to init) | 2 of 85 | 0 of 2 |" in section  # has empties
    assert "| 2 | 64.0 | random re-init | 0 of 85 | 0 of 2 |" in section  # a branch round
    assert "dense" not in section.split("|---|")[-1]
    without = summary_markdown(data, "t", points=catalog(False), n_boot=200)
    assert "## Layer collapse" not in without
    assert means.collapse_of(catalog(), "oneshot", 2) == {
        "empty_tensors": "3–4", "seeds": 2, "prunable_tensors": "85", "path_cut": 1}
    assert means.collapse_of(catalog(False), "oneshot", 2) is None


def test_headline_is_a_markdown_list_of_the_answer() -> None:
    data = metrics((0,), -0.5)
    text = headline(data, n_boot=300)
    lines = text.strip().splitlines()
    assert all(line.startswith("- ") for line in lines)
    assert [line[2:] for line in lines[:-1]] == answer(comparisons(data, n_boot=300,
                                                                   metric_names=("psnr",)))
    assert lines[-1] == ("- How often these verdicts replicate cannot be estimated from one seed "
                         "(`stats.replication` draws new seeds from the committed seeds' spread).")


def test_headline_and_summary_say_how_often_each_verdict_replicates() -> None:
    """With seeds, the headline ends with each stated verdict's share of simulated reruns that
    keep it; a verdict far from every boundary is kept by all of them, and the summary has the
    table of every all-in-one comparison."""
    data = metrics((0, 1, 2), -0.5)
    comps = comparisons(data, n_boot=300)
    table = stats.replications(data, comps, n_sims=100, n_boot=200)
    assert len(table) == len(comps[(comps["metric"] == "psnr")
                                   & (comps["task"] == "all-in-one")]) == 5
    last = headline(data, n_boot=300, replication=table).strip().splitlines()[-1]
    assert last.startswith("- How often a rerun keeps each verdict (the share of 400 simulated "
                           "runs of 3 new seeds, drawn from what these 3 leave uncertain")
    # the ticket is 1 dB above random re-init with 0.05 dB of noise: kept unless the simulation
    # draws a spread between seeds many times the committed one (3 seeds leave that possible)
    kept = re.search(r"vs random re-init: better (\d+)% \(3 seeds\)", last)
    assert kept and int(kept.group(1)) >= 90
    assert re.search(r"vs the dense network: worse \d+% \(\d+ seeds\)", last)
    assert re.search(r"Robust \(kept at least 90% of the time\): [^;]*vs random re-init[^;]*; a "
                     r"rerun may change the others\.$", last)
    page = summary_markdown(data, "t", comps=comps, n_boot=300, replication=table)
    section = page.split("## How often each verdict replicates")[1]
    assert re.search(r"\| 2 \| 64\.0% \| random re-init \| better \| (9\d|100)% \|", section)
    assert "| 1 | 80.0% | dense | " in section
    assert "## How often each verdict replicates" not in summary_markdown(data, "t", comps=comps,
                                                                         n_boot=300)


def test_reproduction_says_how_often_a_changed_headline_verdict_was_kept() -> None:
    reference = metrics((0, 1), -0.5)
    rerun = reference.copy()
    rerun.loc[(rerun["strategy"] == "reinit") & (rerun["task"] == "derain"), "psnr"] += 3.0
    table = stats.replications(reference, n_sims=100, n_boot=200)
    _, line = reproduction(rerun, reference, n_boot=300, replication=table)
    kept = table[table["round"] == 2].set_index("b")["survives"]
    expected = float((1 - kept).sum())
    robust = int((kept >= stats.REPLICATION_TARGET).sum())
    assert kept["reinit"] >= stats.REPLICATION_TARGET  # 1 dB ahead with 0.05 dB of noise
    assert (f"(round 2 vs reinit: better → worse, simulated reruns kept it "
            f"{100 * kept['reinit']:.0f}%; the simulated reruns expected {expected:.1f} of the "
            f"4 single comparisons among them to change, 1 did; of the {robust} robust ones "
            f"(kept at least 90% of the time) 1 changed: round 2 vs reinit)") in line
    # without the committed run's replication table the line says nothing of it
    assert "simulated" not in reproduction(rerun, reference, n_boot=300)[1]


def test_reproduction_of_an_identical_rerun() -> None:
    data = metrics((0, 1), -0.5)
    table, line = reproduction(data, data.copy(), n_boot=300)
    comps = table[table["kind"] == "comparison"]
    n = len(comps)
    assert n == 6 * 3  # (5 comparisons + the dense gain) × (2 tasks + all-in-one)
    assert set(comps["set"]) == {"test"}
    gains = comps[comps["b"] == INPUT]
    assert len(gains) == 3 and (gains["a"] == "dense").all()
    assert line == (f"reproduced within noise: all {n} rerun comparison means lie inside the "
                    f"committed 95% intervals, the headline's 6 verdicts unchanged, {n}/{n} "
                    f"verdicts unchanged (point means: max |ΔPSNR| = 0.000 dB).")
    assert comps["inside"].all() and comps["verdict_unchanged"].all()
    points = table[table["kind"] == "point"]
    assert len(points) == 2 * len(POINTS) * 3 and (points["difference"] == 0).all()
    for column in ("reference_difference", "reference_ci_low", "reference_ci_high",
                   "rerun_difference", "inside", "verdict_reference", "verdict_rerun"):
        assert column in table.columns


def test_headline_verdicts_are_the_verdicts_the_answer_states() -> None:
    comps = comparisons(metrics((0, 1), -0.5), n_boot=300, metric_names=("psnr",))
    found = headline_verdicts(comps)
    assert found == {"round 2 vs dense": "worse",
                     "sparsest trunk round that matches dense": "round 1",
                     "trunk rounds vs dense": "1 matches, 1 worse",
                     "round 2 vs oneshot": "matches", "round 2 vs reinit": "better",
                     "round 2 vs random_mask": "better"}
    sentences = " ".join(answer(comps))
    assert "worse than the dense network" in sentences and "1 matches, 1 worse" in sentences
    assert "better than random re-init" in sentences and "matches one-shot" in sentences
    assert headline_verdicts(comps.iloc[0:0]) == {}


def test_reproduction_allows_the_misses_chance_makes_and_names_them() -> None:
    """Two of 18 comparisons outside are no more than 18 95% intervals miss by chance (3):
    reproduced within noise, yet both are named, and so is the headline verdict that changed."""
    reference = metrics((0, 1), -0.5)
    rerun = reference.copy()
    moved = (rerun["strategy"] == "reinit") & (rerun["task"] == "derain")
    rerun.loc[moved, "psnr"] += 3.0
    rerun.loc[rerun["strategy"] == "dense", "psnr"] += 1e-4  # noise well inside
    table, line = reproduction(rerun, reference, n_boot=300)
    assert line.startswith("reproduced within noise: 2 of 18 comparisons outside the committed "
                           "intervals, no more than the 3 that 18 95% intervals miss by chance: "
                           "round 2 (64.0%), rewind vs reinit, derain: committed +")
    assert "rewind vs reinit, all-in-one" in line and ", rerun -" in line
    assert ("(1 of 6 headline verdicts changed (round 2 vs reinit: better → worse), 16/18 "
            "verdicts unchanged: round 2 (64.0%), rewind vs reinit, all-in-one better → "
            "worse; round 2 (64.0%), rewind vs reinit, derain better → worse; point means: "
            "max |ΔPSNR| = 3.000 dB)") in line
    outside = table[(table["kind"] == "comparison") & ~table["inside"].astype(bool)]
    assert set(outside["b"]) == {"reinit"}


def test_reproduction_names_the_comparisons_outside_when_more_than_chance() -> None:
    reference = metrics((0, 1), -0.5)
    rerun = reference.copy()
    moved = rerun["strategy"].isin(["reinit", "random_mask"]) & (rerun["task"] == "derain")
    rerun.loc[moved, "psnr"] += 3.0
    table, line = reproduction(rerun, reference, n_boot=300)
    assert line.startswith("NOT reproduced within noise: 4 of 18 comparisons outside the "
                           "committed intervals, more than the 3 that 18 95% intervals miss by "
                           "chance: round 2 (64.0%), rewind vs ")
    assert "; and 1 more (2 of 6 headline verdicts changed (round 2 vs reinit: better → worse; "\
           "round 2 vs random_mask: better → worse), 14/18 verdicts unchanged" in line
    outside = table[(table["kind"] == "comparison") & ~table["inside"].astype(bool)]
    assert set(outside["b"]) == {"reinit", "random_mask"} and len(outside) == 4


def test_reproduction_checks_the_dense_gain() -> None:
    """A rerun whose dense network gains 3 dB less over the degraded input is outside, though
    every ticket − X difference moved with it and stays inside."""
    reference = metrics((0, 1), -0.5)
    rerun = reference.assign(psnr=reference["psnr"] - 3.0)
    table, line = reproduction(rerun, reference, n_boot=300)
    assert line.startswith("reproduced within noise: 3 of 18 comparisons outside")
    assert "round 0 (100.0%), dense vs input, " in line
    outside = table[(table["kind"] == "comparison") & ~table["inside"].astype(bool)]
    assert set(outside["b"]) == {INPUT}
    assert outside["rerun_difference"].to_numpy() == pytest.approx(
        outside["reference_difference"].to_numpy() - 3.0)


def test_reproduction_covers_the_heldout_photos() -> None:
    """With both runs' held-out tables: their comparisons are counted apart (``set``), a
    held-out comparison outside and its changed verdict are named, and a dense network that no
    longer beats the input on a held-out task changes the bars' sentence."""
    reference, held = metrics((0, 1), -0.5), metrics((0, 1), -0.5)
    same, line = reproduction(reference.copy(), reference, n_boot=300,
                              heldout=(held.copy(), held))
    comps = same[same["kind"] == "comparison"]
    assert comps.groupby("set").size().to_dict() == {"heldout": 18, "test": 18}
    assert set(same.loc[same["kind"] == "point", "set"]) == {"heldout", "test"}
    assert line.startswith("reproduced within noise: all 36 rerun comparison means (18 on the "
                           "test photos, 18 on the held-out photos) lie inside the committed "
                           "95% intervals, the headline's 6 verdicts unchanged, 36/36 verdicts "
                           "unchanged")
    assert line.endswith("; the dense network's bars read as committed.")

    moved = held.copy()
    ticket = (moved["strategy"] == "rewind") & (moved["round"] == 2)
    moved.loc[ticket, "psnr"] += 3.0
    table, line = reproduction(reference.copy(), reference, n_boot=300, heldout=(moved, held))
    assert line.startswith("NOT reproduced within noise: 12 of 36 comparisons (18 on the test "
                           "photos, 18 on the held-out photos) outside the committed intervals, "
                           "more than the 4 that 36 95% intervals miss by chance: heldout: "
                           "round 2 (64.0%), rewind vs reinit, ")
    assert ("verdicts unchanged: heldout: round 2 (64.0%), rewind vs dense, all-in-one worse → "
            "better; ") in line
    outside = table[(table["kind"] == "comparison") & ~table["inside"].astype(bool)]
    assert set(outside["set"]) == {"heldout"}

    lost = held.copy()
    lost.loc[(lost["strategy"] == "dense") & (lost["task"] == "derain"), "psnr"] = 15.0
    _, line = reproduction(reference.copy(), reference, n_boot=300, heldout=(lost, held))
    assert ("the dense network's bars changed: committed \"" in line
            and "beats the degraded input on 2 of 2 tasks." in line
            and "beats the degraded input on 1 of 2 tasks (not on derain).\"." in line)


def test_keep_reference_copies_both_tables_once(tmp_path: Path) -> None:
    from mirl_lib.report.reproduction import keep_reference, reproduction_report
    data, held = metrics((0,), -0.5), metrics((0,), -0.5)
    data.to_csv(tmp_path / "metrics.csv", index=False)
    held.to_csv(tmp_path / "heldout.csv", index=False)
    stats.replications(data, n_sims=50, n_boot=100).to_csv(tmp_path / "replication.csv",
                                                          index=False)
    assert keep_reference(tmp_path) == tmp_path / "reference" / "metrics.csv"
    assert sorted(p.name for p in (tmp_path / "reference").iterdir()) == [
        "heldout.csv", "metrics.csv", "replication.csv"]
    held.assign(psnr=held["psnr"] + 5.0).to_csv(tmp_path / "heldout.csv", index=False)
    keep_reference(tmp_path)  # a resumed run: the committed copy stays
    assert pd.read_csv(tmp_path / "reference" / "heldout.csv")["psnr"].equals(held["psnr"])
    line = reproduction_report(tmp_path)
    # only the three held-out dense gains move (every ticket - X moved with its X): 3 of 36
    assert line.startswith("Against the committed results: reproduced within noise: 3 of 36 ")
    assert "on the held-out photos) outside" in line and "heldout: round 0 (100.0%), dense vs " \
        "input" in line


def test_reproduction_report_writes_the_csv(tmp_path: Path) -> None:
    from mirl_lib.report.reproduction import reproduction_report
    assert reproduction_report(tmp_path).startswith("No committed reference")
    data = metrics((0,), -0.5)
    (tmp_path / "reference").mkdir()
    data.to_csv(tmp_path / "reference" / "metrics.csv", index=False)
    data.to_csv(tmp_path / "metrics.csv", index=False)
    line = reproduction_report(tmp_path)
    assert "reproduced within noise" in line and "max |ΔPSNR| = 0.000 dB" in line
    assert "\n" not in line
    written = pd.read_csv(tmp_path / "reproduction.csv")
    assert set(written["kind"]) == {"point", "comparison"}


def test_margin_is_configurable_and_stated() -> None:
    data = metrics((0, 1), -0.5)
    wide = summary_markdown(data, "t", margin=1.0, n_boot=200)
    assert "margin ±1.00 dB" in wide and "]: matches the dense network" in wide
    assert stats.EQUIVALENCE_MARGIN_DB == 0.25


def test_seed_stats_keeps_its_columns() -> None:
    stats_ = seed_stats(point_means(metrics((0, 1), -0.5)))
    for column in ("strategy", "round", "task", "remaining_all", "psnr", "psnr_sd", "ssim",
                   "ssim_sd", "input_psnr", "seeds"):
        assert column in stats_.columns


def test_figures_are_written_for_several_seeds(tmp_path: Path) -> None:
    data = metrics((0, 1), -0.5)
    paths = [figures.psnr_vs_remaining(data, tmp_path / "psnr.png")]
    density = pd.DataFrame({"name": ["a.weight", "b.weight", "c.bias"],
                            "density": [0.5, 0.0, 1.0], "prunable": [True, True, False]})
    paths.append(figures.layer_density(
        pd.concat([density, density.assign(density=[0.4, 0.0, 1.0])]), tmp_path / "density.png",
        "t", collapse=means.collapse_of(catalog(), "oneshot", 2)))
    paths.append(figures.layer_density(density, tmp_path / "density_plain.png", "t"))
    paths.append(figures.comparison_forest(comparisons(data, n_boot=200),
                                           tmp_path / "comparisons.png"))
    paths.append(figures.comparison_forest(comparisons(data.iloc[:0]), tmp_path / "empty.png"))
    history = pd.DataFrame({"step": [1, 2] * 4, "loss": np.linspace(0.2, 0.1, 8),
                            "strategy": "rewind", "round": [1, 1, 2, 2] * 2,
                            "seed": [0] * 4 + [1] * 4})
    paths.append(figures.training_curves(history, tmp_path / "curves.png"))
    for path in paths:
        with Image.open(path) as image:
            assert image.width > 300 and np.asarray(image.convert("L")).std() > 5


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
    sentences = dense_bars(gains.reset_index(), gains.reset_index())
    assert DENSE_MIN_GAIN_DB == 3.0
    assert sentences[0].endswith("it does not yet learn every task (short on dehaze).")
    assert "≥ +3 dB on 2 of 3 tasks, SSIM above the input on 2 of 3" in sentences[0]
    assert sentences[1].endswith("beats the degraded input on 3 of 3 tasks.")


def test_reproduce_command_compares_two_files(tmp_path: Path, capsys) -> None:
    """``python -m mirl_lib reproduce RERUN REFERENCE -o CSV``: the verdict line and the table;
    a missing file or another study's metrics is one error line, exit 2, and writes nothing."""
    from mirl_lib.cli.main import main

    reference = metrics((0, 1), -0.5).assign(config_hash="abc")
    rerun = reference.copy()
    rerun.loc[(rerun["strategy"] == "reinit") & (rerun["task"] == "derain"), "psnr"] += 3.0
    reference.to_csv(tmp_path / "ref.csv", index=False)
    rerun.to_csv(tmp_path / "rerun.csv", index=False)
    out = tmp_path / "reproduction.csv"
    assert main(["reproduce", str(tmp_path / "rerun.csv"), str(tmp_path / "ref.csv"),
                 "-o", str(out)]) == 0
    assert capsys.readouterr().out.startswith("reproduced within noise: 2 of 18 comparisons")
    assert set(pd.read_csv(out)["kind"]) == {"point", "comparison"}
    out.unlink()
    for run in ("rerun", "ref"):  # run folders, each with its held-out table
        (tmp_path / run).mkdir()
        (rerun if run == "rerun" else reference).to_csv(tmp_path / run / "metrics.csv",
                                                        index=False)
        reference.to_csv(tmp_path / run / "heldout.csv", index=False)
    assert main(["reproduce", str(tmp_path / "rerun"), str(tmp_path / "ref")]) == 0
    assert capsys.readouterr().out.startswith(
        "reproduced within noise: 2 of 36 comparisons (18 on the test photos, 18 on the "
        "held-out photos) outside")
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
