"""Where everything of a study lives: the checkout's folders, the run folder's layout and every file
name in it. No other module spells a point folder or a file name of a run.

A run folder (``<results>/<study.name>``)::

    config.yaml  metrics.csv  heldout.csv  catalog.csv  comparisons.csv  primary.csv  summary.md
    confirmation.csv (a declared confirmation)  report.html
    figures/*.png  notebooks/*.ipynb  reference/ (the committed tables, kept before a rerun)
    seed_<s>/dense/                    round 0: init.pt, weights_step<k>.pt, final.pt, ...
    seed_<s>/<strategy>/round_<rr>/    mask.pt, mask_report.csv, final.pt, history.csv,
                                       metrics.csv, heldout.csv, ticket.mirl, point.json

Seeds are path components (``seed_<s>``), never part of a run's identity. No torch.
"""
from __future__ import annotations

import os
from pathlib import Path

from mirl_lib.core.names import DENSE

# ----- the checkout ------------------------------------------------------------------------------
CHECKOUT = Path(__file__).resolve().parents[2]
NOTEBOOKS = CHECKOUT / "notebooks"
RESULTS = CHECKOUT / "results"
BENCHMARK_RESULTS = RESULTS / "benchmarks"
TICKET_SPEED_FILE = "ticket_speed.csv"  # benchmarks/ticket_speed.py; the README's sizes table
# the columns of it that report.sizes reads
TICKET_SPEED_COLUMNS: tuple[str, ...] = (
    "params_file", "device_type", "side", "strategy", "round", "threads", "forward_ms",
    "forward_speedup", "train_speedup")


def importable(env: dict[str, str]) -> dict[str, str]:
    """A copy of ``env`` with this checkout first on ``PYTHONPATH``, so a child process (a torchrun
    rank, a Jupyter kernel started in ``notebooks/``) imports this ``mirl_lib``."""
    return {**env, "PYTHONPATH": os.pathsep.join(
        [str(CHECKOUT), *filter(None, [env.get("PYTHONPATH")])])}

# ----- the run folder ----------------------------------------------------------------------------
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.csv"
HELDOUT_FILE = "heldout.csv"
CATALOG_FILE = "catalog.csv"
COMPARISONS_FILE = "comparisons.csv"
PRIMARY_FILE = "primary.csv"
CONFIRMATION_FILE = "confirmation.csv"  # the declared confirmation (analysis.confirm_seeds)
REPRODUCTION_FILE = "reproduction.csv"
SUMMARY_FILE = "summary.md"
REPORT_FILE = "report.html"
DATA_PREVIEW_FILE = "data_preview.png"
LOCK_FILE = ".lock"
FIGURES_DIR = "figures"
NOTEBOOKS_DIR = "notebooks"
REFERENCE_DIR = "reference"
JOBS_DIR = "jobs"              # on a cluster: each stage's job (<stage>.json) and every submission
SUBMISSIONS_FILE = "submissions.csv"
TIMINGS_FILE = "timings.csv"       # per finished job: submitted, started, ended, seen, overhead
SLURM_DIR = "slurm"            # submitit's folder: a job's submission, result and Slurm logs
# a point folder renamed to <folder>.replaced-<time> so that its stage reruns (``--force``)
MOVED_ASIDE = ".replaced-"

# The notebooks of the stages that train nothing (the registry names those that train).
DATA_PREVIEW_NOTEBOOK = "00_data_preview.ipynb"
EVALUATE_NOTEBOOK = "04_evaluate.ipynb"
FIGURES_NOTEBOOK = "05_figures.ipynb"

# The figures of a run (``FIGURES_DIR``).
FIGURE_FILES = {"psnr_vs_remaining": "psnr_vs_remaining.png", "comparisons": "comparisons.png",
                "layer_density": "layer_density.png", "training_curves": "training_curves.png"}

# catalog.csv: one row per point; the viewer needs the first seven columns.
CATALOG_COLUMNS: tuple[str, ...] = (
    "seed", "strategy", "round", "remaining_all", "remaining_prunable", "ticket", "mean_psnr",
    "total", "empty_tensors", "prunable_tensors", "path_cut")
VIEWER_COLUMNS: tuple[str, ...] = CATALOG_COLUMNS[:7]

# ----- a point folder -----------------------------------------------------------------------------
POINT_FILE = "point.json"      # written last: the point is done
MASK_FILE = "mask.pt"
MASK_REPORT_FILE = "mask_report.csv"
INIT_FILE = "init.pt"          # the dense network's initialization, what rewinding returns to
STATE_FILE = "state.pt"        # everything a training needs to resume
FINAL_FILE = "final.pt"        # the trained weights (a mirl weights file), written last
HISTORY_FILE = "history.csv"
TICKET_FILE = "ticket.mirl"
CHANNELS_FILE = "channels.pt"  # a structured ticket's removed channel units (pruning.channels)


def snapshot_file(step: int) -> str:
    """The dense network's weights after ``step`` training steps."""
    return f"weights_step{step}.pt"


def run_dir(results_root: str | Path, study_name: str) -> Path:
    """A study's run folder: ``<results>/<study.name>``."""
    return Path(results_root) / study_name


def seed_dir(run_dir: Path, seed: int) -> Path:
    return Path(run_dir) / f"seed_{seed}"


def point_dir(run_dir: Path, seed: int, strategy: str, rnd: int) -> Path:
    """``<run>/seed_<s>/dense`` for the dense network, else
    ``<run>/seed_<s>/<strategy>/round_<rr>``."""
    base = seed_dir(run_dir, seed)
    return base / DENSE if strategy == DENSE else base / strategy / f"round_{rnd:02d}"


def point_files(run_dir: Path, name: str, moved_aside: bool = False) -> list[Path]:
    """Every live point's ``name`` file, sorted; folders moved aside by ``--force``
    (``<folder>{MOVED_ASIDE}<time>``) are history, not results, and are left out unless
    ``moved_aside`` (what the run trained, as ``benchmarks/tier_time.py`` counts it)."""
    run_dir = Path(run_dir)
    return [p for p in sorted(run_dir.glob(f"seed_*/**/{name}"))
            if moved_aside or not any(MOVED_ASIDE in part for part in p.relative_to(run_dir).parts)]


def mask_report_file(mask_path: Path) -> Path:
    """The density report saved beside a mask: ``mask.pt`` -> ``mask_report.csv``."""
    return mask_path.with_name(f"{mask_path.stem}_report.csv")
