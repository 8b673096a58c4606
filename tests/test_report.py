"""Tables and figures from a long metrics table, with one seed and with several."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mirl_lib import figures
from mirl_lib.report import point_means, seed_stats, summary_markdown, verdict

TASKS = ("denoise_25", "derain")
POINTS = (("dense", 0, 1.0), ("rewind", 1, 0.8), ("rewind", 2, 0.64), ("reinit", 2, 0.64),
          ("random_mask", 2, 0.64), ("oneshot", 2, 0.64))


def metrics(seeds: tuple[int, ...], ticket_gap: float) -> pd.DataFrame:
    """Dense at 25 dB; the ticket ``ticket_gap`` dB off at round 2; controls 1 dB lower."""
    rows = []
    for seed in seeds:
        for strategy, rnd, rem in POINTS:
            base = {"dense": 25.0, "rewind": 25.0 + (ticket_gap if rnd == 2 else 0.0),
                    "reinit": 24.0, "random_mask": 24.0, "oneshot": 24.5}[strategy]
            for task in TASKS:
                for image in ("a", "b"):
                    rows.append({"seed": seed, "strategy": strategy, "round": rnd,
                                 "remaining_all": rem, "remaining_prunable": rem, "task": task,
                                 "dataset": "bundled", "image": image,
                                 "psnr": base + 0.1 * seed, "ssim": 0.8, "input_psnr": 20.0,
                                 "input_ssim": 0.5})
    return pd.DataFrame(rows)


def test_point_means_average_images_then_tasks() -> None:
    means = point_means(metrics((0,), -0.5))
    overall = means[(means["task"] == "all-in-one") & (means["strategy"] == "rewind")]
    assert overall.sort_values("round")["psnr"].tolist() == pytest.approx([25.0, 24.5])


@pytest.mark.parametrize("gap, word", [(-0.5, "does not match"), (-0.05, "matches")])
def test_verdict_says_whether_the_ticket_matches(gap: float, word: str) -> None:
    sentence = verdict(seed_stats(point_means(metrics((0,), gap))))
    assert f"so at this scale it {word} the dense network" in sentence
    assert "random re-init 24.00 dB" in sentence and "64.0% of all parameters" in sentence


def test_several_seeds_give_mean_and_spread_in_every_table() -> None:
    text = summary_markdown(metrics((0, 1, 2), -0.5), "t")
    assert "| all-in-one | 20.00 | 25.10 ± 0.10 |" in text
    table = text.split("## All-in-one PSNR")[1].split("## Per task")[0]
    assert "24.60 ± 0.10" in table and "25.10 ± 0.10" in table
    assert "±" not in summary_markdown(metrics((0,), -0.5), "t")


def test_figures_are_written_for_several_seeds(tmp_path: Path) -> None:
    data = metrics((0, 1), -0.5)
    paths = [figures.psnr_vs_remaining(data, tmp_path / "psnr.png")]
    report = pd.DataFrame({"name": ["a.weight", "b.weight", "c.bias"], "density": [0.5, 0.1, 1.0],
                           "prunable": [True, True, False]})
    paths.append(figures.layer_density(pd.concat([report, report.assign(density=[0.4, 0.2, 1.0])]),
                                       tmp_path / "density.png", "t"))
    history = pd.DataFrame({"step": [1, 2] * 4, "loss": np.linspace(0.2, 0.1, 8),
                            "strategy": "rewind", "round": [1, 1, 2, 2] * 2,
                            "seed": [0] * 4 + [1] * 4})
    paths.append(figures.training_curves(history, tmp_path / "curves.png"))
    for path in paths:
        with Image.open(path) as image:
            assert image.width > 300 and np.asarray(image.convert("L")).std() > 5
