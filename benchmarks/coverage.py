"""How often the study's intervals hold the true difference: simulated runs from the variance
components a committed run measured, at several seed counts, for the crossed intervals the study
reports (``mirl_lib.report.intervals``) and for the percentile bootstrap it reported before.

    python benchmarks/coverage.py [--run results/full] [--sims 4000] [--out CSV]

For every primary comparison of the run (``analysis.primary`` of its ``config.yaml``, the ticket at
the deepest branch round against X, all-in-one PSNR) the components are estimated from its
``metrics.csv`` (``intervals.Components.of``); each simulated run draws seeds, photos (as many as
the run has), their interaction, task and crop terms from them, and its interval is checked
against the model's true difference. Writes one row per (comparison, method, seeds, level) with the
coverage and its Monte Carlo standard error to ``results/benchmarks/coverage.csv`` (rows of other
runs are kept).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchrows import merge_rows  # noqa: E402

from mirl_lib.core.config import load_config  # noqa: E402
from mirl_lib.core.names import DENSE, TRUNK  # noqa: E402
from mirl_lib.files.atomic import atomic_write_text  # noqa: E402
from mirl_lib.files.paths import BENCHMARK_RESULTS, CONFIG_FILE  # noqa: E402
from mirl_lib.report import intervals  # noqa: E402
from mirl_lib.report.headline import deepest_round  # noqa: E402
from mirl_lib.report.primary import visible_scores  # noqa: E402

COLUMNS = ["run", "vs", "method", "seeds", "photos", "crops", "level", "coverage", "mc_se",
           "sims", "var_seed", "var_photo", "var_inter", "var_task", "var_crop"]
KEY = ["run", "vs", "method", "seeds", "level"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "results" / "full")
    parser.add_argument("--sims", type=int, default=4000)
    parser.add_argument("--bootstrap-sims", type=int, default=600)
    parser.add_argument("--seeds", type=int, nargs="+", default=[2, 3, 5, 10])
    parser.add_argument("--out", type=Path, default=BENCHMARK_RESULTS / "coverage.csv")
    args = parser.parse_args(argv)
    metrics, _ = visible_scores(args.run)  # a pending confirmation's seeds held back
    analysis = load_config(args.run / CONFIG_FILE).analysis
    rnd = deepest_round(metrics)
    rng = np.random.default_rng(0)
    rows = []
    for vs, _ in analysis.comparisons():
        diffs = intervals.pairs(metrics, "psnr", (TRUNK, rnd), (DENSE, 0) if vs == DENSE
                                else (vs, rnd))
        if diffs.empty:
            continue
        model = intervals.Components.of(diffs)
        photos = diffs["photo"].nunique()
        crops = max(1, int(diffs.groupby(["seed", "task", "photo"]).size().max()))
        for seeds in args.seeds:
            for method, sims, levels in (("crossed t", args.sims, (0.95, 0.90)),
                                         ("percentile bootstrap", args.bootstrap_sims, (0.95,))):
                if method != "crossed t" and seeds > 3:
                    continue
                for level in levels:
                    t0 = time.time()
                    cover = intervals.coverage(model, seeds, photos, level, sims, rng,
                                               "crossed" if method == "crossed t" else
                                               "bootstrap", crops)
                    rows.append({"run": args.run.name, "vs": vs, "method": method,
                                 "seeds": seeds, "photos": photos, "crops": crops,
                                 "level": level, "coverage": cover,
                                 "mc_se": float(np.sqrt(cover * (1 - cover) / sims)),
                                 "sims": sims, "var_seed": model.var_seed,
                                 "var_photo": model.var_photo, "var_inter": model.var_inter,
                                 "var_task": model.var_task, "var_crop": model.var_crop})
                    print(f"{vs:12s} {method:20s} {seeds:2d} seeds {level:.2f}: "
                          f"{100 * cover:.1f}% ({time.time() - t0:.1f} s)", flush=True)
    table = merge_rows(pd.DataFrame(rows, columns=COLUMNS), args.out, KEY, COLUMNS, "coverage")
    atomic_write_text(table.to_csv(index=False), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
