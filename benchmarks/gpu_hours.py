"""GPU-hours that ``params/paper.yaml`` needs, from a measured training throughput.

Reads the CUDA rows of ``results/benchmarks/train_throughput.csv``
(``benchmarks/train_throughput.py`` on a GPU), counts the trainings the paper study runs
(``Study.points()``: dense, 15 trunk rounds, every branch of ``study.branches`` at the branch
rounds; the small-dense control is counted at the full network's throughput, an overestimate)
and the images each one sees (120 epochs of the published mixture), and writes
``results/benchmarks/gpu_hours.csv``::

    python benchmarks/gpu_hours.py [--throughput CSV] [--params params/paper.yaml] [--option NAME]

Rows with several ``replicates`` count the images of all of them (several seeds trained at once
on one GPU). Training only: evaluation, checkpointing and data loading stalls are not counted
(the data loader benchmark shows the loader is not the bottleneck). One epoch of the published
mixture, as the paper states its data: 3 sigmas x 3 repeats x (WED 4,744 + BSD400 400) clean images,
Rain100L 200 pairs x 120 repeats, and 72,135 OTS pairs.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mirl_lib.files.atomic import atomic_write_text  # noqa: E402
from mirl_lib.study.study import open_study  # noqa: E402

PUBLISHED_EPOCH = 3 * 3 * (4_744 + 400) + 200 * 120 + 72_135  # 142,431 samples


def estimate(throughput: pd.DataFrame, params: Path, option: str | None) -> pd.DataFrame:
    """One row per measured CUDA option (or the chosen one): images/s and the study's GPU-hours."""
    study = open_study(params, REPO / "results")
    cfg = study.cfg
    if not cfg.train.epochs:
        raise SystemExit(f"{params}: train.epochs is not set; this estimate counts epochs")
    steps = cfg.train.epochs * math.ceil(PUBLISHED_EPOCH / cfg.train.batch_size)
    images = steps * cfg.train.batch_size
    trainings = len(study.points()) * len(cfg.study.seeds)
    rows = throughput[(throughput["device"] == "cuda") & (throughput["preset"] == cfg.model.preset)
                      & throughput["images_per_s"].notna()]
    if option:
        rows = rows[rows["option"] == option]
    if rows.empty:
        raise SystemExit("no CUDA rows for the preset in the throughput CSV: run "
                         "benchmarks/train_throughput.py on a GPU first")
    out = rows[["device_name", "option", "replicates", "images_per_s"]].copy()
    out["replicates"] = out["replicates"].fillna(1).astype(int)  # images/s over all replicates
    out["trainings"] = trainings
    out["steps_per_training"] = steps
    out["images_per_training"] = images
    out["hours_per_training"] = images / out["images_per_s"] / 3600
    out["gpu_hours_total"] = out["hours_per_training"] * trainings
    # the MIR-L trunk alone (dense + every pruning round), without the ablations and controls
    out["gpu_hours_trunk"] = (out["hours_per_training"] * (1 + cfg.prune.rounds)
                              * len(cfg.study.seeds))
    return out.sort_values("gpu_hours_total").reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--throughput", type=Path,
                        default=REPO / "results" / "benchmarks" / "train_throughput.csv")
    parser.add_argument("--params", type=Path, default=REPO / "params" / "paper.yaml")
    parser.add_argument("--option", default=None, help="one throughput option (default: all)")
    parser.add_argument("--out", type=Path,
                        default=REPO / "results" / "benchmarks" / "gpu_hours.csv")
    args = parser.parse_args()
    table = estimate(pd.read_csv(args.throughput), args.params, args.option)
    atomic_write_text(table.to_csv(index=False), args.out)
    print(table.to_string(index=False, float_format=lambda v: f"{v:,.1f}"))


if __name__ == "__main__":
    main()
