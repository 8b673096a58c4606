"""What running the study through Slurm costs: the smoke study run locally and through
``--executor slurm`` on the same machine, one after the other, each in a fresh results folder.

    python benchmarks/slurm_overhead.py [--params params/smoke.yaml] [--out CSV]

Needs a running Slurm (``scripts/slurm_local.sh start`` gives a one-node one). Writes, to
``results/benchmarks/slurm_overhead.csv`` (rows of other hosts and params files kept): per executor
the study's wall-clock seconds and stage count, and for Slurm the per-stage overhead from the run's
``jobs/timings.csv`` (a stage's time from submission until the driver saw it end, less its command's
own time: queue wait, job start, result file, polling), median and maximum, and the cluster's poll
interval. Both runs end by checking that their ``metrics.csv`` are identical.
"""
from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchrows import merge_rows  # noqa: E402

from mirl_lib.core.config import load_config  # noqa: E402
from mirl_lib.core.errors import MirlError  # noqa: E402
from mirl_lib.files.atomic import atomic_write_text  # noqa: E402
from mirl_lib.files.paths import (  # noqa: E402
    BENCHMARK_RESULTS,
    JOBS_DIR,
    METRICS_FILE,
    TIMINGS_FILE,
)

COLUMNS = ["host", "params", "executor", "jobs", "stages", "wall_s", "overhead_median_s",
           "overhead_max_s", "command_s_total", "poll_seconds", "metrics_identical"]
KEY = ["host", "params", "executor"]


def run(params: Path, results: Path, *args: str) -> float:
    """Seconds ``./run_all.sh`` takes for the whole study; a failure is a ``MirlError``."""
    started = time.time()
    done = subprocess.run([str(ROOT / "run_all.sh"), str(params), "--results", str(results),
                           *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise MirlError(f"{params} {' '.join(args)}: exit {done.returncode}: "
                        f"{done.stderr.strip()[-500:]}")
    return time.time() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params" / "smoke.yaml")
    parser.add_argument("--jobs", type=int, default=2, help="local --jobs (default: 2, the CPUs "
                                                           "Slurm may use side by side here)")
    parser.add_argument("--out", type=Path, default=BENCHMARK_RESULTS / "slurm_overhead.csv")
    args = parser.parse_args(argv)
    cfg = load_config(args.params)
    if subprocess.run(["sinfo"], capture_output=True).returncode != 0:
        print("error: no Slurm answers (sinfo); start one: scripts/slurm_local.sh start",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mirl-slurm-bench-") as tmp:
        local, slurm = Path(tmp) / "local", Path(tmp) / "slurm"
        local_s = run(args.params, local, "--jobs", str(args.jobs))
        print(f"local ({args.jobs} jobs): {local_s:.1f} s", flush=True)
        slurm_s = run(args.params, slurm, "--executor", "slurm")
        print(f"slurm: {slurm_s:.1f} s", flush=True)
        name = cfg.study.name
        timings = pd.read_csv(slurm / name / JOBS_DIR / TIMINGS_FILE)
        same = pd.read_csv(local / name / METRICS_FILE).equals(
            pd.read_csv(slurm / name / METRICS_FILE))
    host = platform.node()
    common = {"host": host, "params": args.params.name, "stages": len(timings),
              "metrics_identical": same, "poll_seconds": cfg.cluster.poll_seconds}
    rows = [{**common, "executor": "local", "jobs": args.jobs, "wall_s": round(local_s, 1)},
            {**common, "executor": "slurm", "jobs": "", "wall_s": round(slurm_s, 1),
             "overhead_median_s": round(float(timings["overhead_s"].median()), 2),
             "overhead_max_s": round(float(timings["overhead_s"].max()), 2),
             "command_s_total": round(float(timings["command_s"].sum()), 1)}]
    table = merge_rows(pd.DataFrame(rows, columns=COLUMNS), args.out, KEY, COLUMNS,
                       "Slurm overhead")
    atomic_write_text(table.to_csv(index=False), args.out)
    print(f"overhead per stage: median {rows[1]['overhead_median_s']} s, max "
          f"{rows[1]['overhead_max_s']} s; metrics identical: {same}; wrote {args.out}")
    return 0 if same else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MirlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
