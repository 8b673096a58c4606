"""What the evaluation and figures stages compute, one call each, so their notebooks stay thin:
``evaluate_run`` gathers a finished study's tables and writes its comparisons, primary comparisons
and summary page (``analyse_run``, which needs only the tables); ``draw_figures`` writes its figures
(``draw_statistics``: the two drawn from the statistics alone)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from mirl_lib.core.config import AnalysisConfig, Config
from mirl_lib.core.names import TRUNK
from mirl_lib.files.atomic import atomic_write_text
from mirl_lib.files.paths import (
    CATALOG_FILE,
    CONFIRMATION_FILE,
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
from mirl_lib.report.primary import (
    blinded,
    confirmation_table,
    decided,
    held_back,
    primary_table,
)
from mirl_lib.report.summary import config_notes, write_summary
from mirl_lib.study.study import Study


def evaluate_run(study: Study) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    """Gather every point's scores (``Study.collect``: ``metrics.csv``, ``heldout.csv``,
    ``catalog.csv``), then ``analyse_run``. Returns the metrics, the primary table and the
    summary's path."""
    metrics = study.collect()
    primary, summary = analyse_run(study.run_dir, study.cfg, metrics)
    return metrics, primary, summary


def analyse_run(run_dir: Path, cfg: Config, metrics: pd.DataFrame | None = None
                ) -> tuple[pd.DataFrame, Path]:
    """The statistics of a run whose scores are gathered (``metrics.csv``, and ``heldout.csv`` and
    ``catalog.csv`` when there): compare the ticket with every other network
    (``comparisons.csv``), test the primary comparisons of ``cfg.analysis`` (``primary.csv``; a
    declared confirmation: ``confirmation.csv``) and
    write ``summary.md``. Reads only those tables, never a network, so a finished run (one
    copied back from a cluster, or a committed one) can be analysed again. While the
    confirmation is pending, the seeds of it already scored count only in ``confirmation.csv``
    (``primary.held_back``). Returns the primary table and the summary's path."""
    run_dir = Path(run_dir)
    analysis = cfg.analysis
    if metrics is None:
        metrics = pd.read_csv(run_dir / METRICS_FILE)
    rnd = deepest_round(metrics)
    confirm = confirmation_table(metrics, analysis, rnd)
    if analysis.confirm_seeds:
        atomic_write_text(confirm.to_csv(index=False), run_dir / CONFIRMATION_FILE)
    # a pending confirmation's scored seeds are left out of everything else
    visible = blinded(metrics, held_back(metrics, analysis))
    comps = comparisons(visible, analysis.level)
    write_comparisons(run_dir, comps)
    primary = primary_table(visible, analysis, rnd)
    atomic_write_text(primary.to_csv(index=False), run_dir / PRIMARY_FILE)
    summary = write_summary(run_dir, metrics, f"mirl study `{cfg.study.name}`",
                            analysis, config_notes(cfg),
                            heldout=read_optional(run_dir / HELDOUT_FILE),
                            points=read_optional(run_dir / CATALOG_FILE), comps=comps,
                            primary=primary, confirm=confirm)
    return primary, summary


def draw_statistics(run_dir: Path, analysis: AnalysisConfig) -> list[Path]:
    """The two figures drawn from the run's statistics alone (``metrics.csv``,
    ``comparisons.csv``, ``primary.csv``, ``confirmation.csv``): PSNR against remaining parameters
    with the trunk curve, and the comparisons at the branch rounds, coloured by the declared
    decisions (a decided confirmation's, else the primary table's)."""
    run_dir = Path(run_dir)
    folder = run_dir / FIGURES_DIR
    metrics = pd.read_csv(run_dir / METRICS_FILE)
    metrics = blinded(metrics, held_back(metrics, analysis))
    decisions, decided_by = read_optional(run_dir / PRIMARY_FILE), "primary"
    confirm = read_optional(run_dir / CONFIRMATION_FILE)
    if decided(confirm):
        # a decided confirmation is what the run's claims rest on: its decisions colour the plot
        decisions, decided_by = confirm, "confirmation"
    return [
        figures.psnr_vs_remaining(metrics, folder / FIGURE_FILES["psnr_vs_remaining"],
                                  trunk_curve(metrics, analysis.level)),
        figures.comparison_forest(load_comparisons(run_dir, metrics),
                                  folder / FIGURE_FILES["comparisons"], decisions,
                                  analysis.margin_db, decided_by=decided_by),
    ]


def draw_figures(study: Study) -> list[Path]:
    """The run's figures (``figures/``): PSNR against remaining parameters with the trunk curve,
    the comparisons at the branch rounds, the deepest ticket's per-layer density and the training
    curves."""
    folder = study.run_dir / FIGURES_DIR
    last = max(r for _, r in study.points(TRUNK))
    seeds = list(study.cfg.study.seeds)
    report = study.point_table(TRUNK, last, MASK_REPORT_FILE)
    held = held_back(pd.read_csv(study.run_dir / METRICS_FILE), study.cfg.analysis)
    collapse = collapse_of(blinded(read_optional(study.run_dir / CATALOG_FILE), held), TRUNK,
                           last)
    return [
        *draw_statistics(study.run_dir, study.cfg.analysis),
        figures.layer_density(report, folder / FIGURE_FILES["layer_density"],
                              f"Final ticket (round {last}, seeds {seeds}): per-layer density",
                              collapse),
        figures.training_curves(blinded(study.histories(), held),
                                folder / FIGURE_FILES["training_curves"]),
    ]
