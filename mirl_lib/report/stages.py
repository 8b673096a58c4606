"""What the evaluation and figures stages compute, one call each, so their notebooks stay thin:
``evaluate_run`` gathers a finished study's tables and writes its comparisons, primary comparisons
and summary page; ``draw_figures`` writes its figures."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from mirl_lib.core.names import TRUNK
from mirl_lib.files.atomic import atomic_write_text
from mirl_lib.files.paths import (
    CATALOG_FILE,
    FIGURE_FILES,
    FIGURES_DIR,
    HELDOUT_FILE,
    MASK_REPORT_FILE,
    METRICS_FILE,
    PRIMARY_FILE,
)
from mirl_lib.report import figures
from mirl_lib.report.comparisons import (
    comparisons,
    load_comparisons,
    read_optional,
    trunk_curve,
    write_comparisons,
)
from mirl_lib.report.headline import deepest_round
from mirl_lib.report.means import collapse_of
from mirl_lib.report.primary import primary_table
from mirl_lib.report.summary import config_notes, write_summary
from mirl_lib.study.study import Study


def evaluate_run(study: Study) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    """Gather every point's scores (``Study.collect``: ``metrics.csv``, ``heldout.csv``,
    ``catalog.csv``), compare the ticket with every other network (``comparisons.csv``), test the
    primary comparisons (``primary.csv``) and write ``summary.md``. Returns the metrics, the
    primary table and the summary's path."""
    analysis = study.cfg.analysis
    metrics = study.collect()
    comps = comparisons(metrics, analysis.level)
    write_comparisons(study.run_dir, comps)
    primary = primary_table(metrics, analysis, deepest_round(metrics))
    atomic_write_text(primary.to_csv(index=False), study.run_dir / PRIMARY_FILE)
    summary = write_summary(study.run_dir, metrics, f"mirl study `{study.cfg.study.name}`",
                            analysis, config_notes(study.cfg),
                            heldout=read_optional(study.run_dir / HELDOUT_FILE),
                            points=read_optional(study.run_dir / CATALOG_FILE), comps=comps)
    return metrics, primary, summary


def draw_figures(study: Study) -> list[Path]:
    """The run's figures (``figures/``): PSNR against remaining parameters with the trunk curve,
    the comparisons at the branch rounds, the deepest ticket's per-layer density and the training
    curves."""
    analysis = study.cfg.analysis
    folder = study.run_dir / FIGURES_DIR
    metrics = pd.read_csv(study.run_dir / METRICS_FILE)
    last = max(r for _, r in study.points(TRUNK))
    seeds = list(study.cfg.study.seeds)
    report = study.point_table(TRUNK, last, MASK_REPORT_FILE)
    collapse = collapse_of(read_optional(study.run_dir / CATALOG_FILE), TRUNK, last)
    primary = read_optional(study.run_dir / PRIMARY_FILE)
    return [
        figures.psnr_vs_remaining(metrics, folder / FIGURE_FILES["psnr_vs_remaining"],
                                  trunk_curve(metrics, analysis.level)),
        figures.comparison_forest(load_comparisons(study.run_dir, metrics),
                                  folder / FIGURE_FILES["comparisons"], primary,
                                  analysis.margin_db),
        figures.layer_density(report, folder / FIGURE_FILES["layer_density"],
                              f"Final ticket (round {last}, seeds {seeds}): per-layer density",
                              collapse),
        figures.training_curves(study.histories(), folder / FIGURE_FILES["training_curves"]),
    ]
