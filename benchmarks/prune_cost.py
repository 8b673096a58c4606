"""Time one pruning round (global, layer-wise), the random-mask control and ticket export/load.

Run ``python benchmarks/prune_cost.py [--preset paper] [--repeats 3]``; writes
``results/benchmarks/prune_cost.csv`` (median and minimum over the repeats).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mirl_lib.files.atomic import atomic_write_text  # noqa: E402
from mirl_lib.files.tickets import export_ticket, load_ticket  # noqa: E402
from mirl_lib.net.promptir import build_model, count_parameters  # noqa: E402
from mirl_lib.pruning.masks import full_mask  # noqa: E402
from mirl_lib.pruning.rules import global_magnitude, layerwise_magnitude, random_mask  # noqa: E402


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median, min) wall seconds of ``fn`` over ``repeats`` runs after one warm-up run."""
    fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), min(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--scope", default="default", choices=["default", "reference"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "results" / "benchmarks" / "prune_cost.csv")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    model = build_model(args.preset, seed=0)
    weights = model.state_dict()
    mask = full_mask(model, args.scope)
    ticket_mask = global_magnitude(weights, mask, 0.9)
    with tempfile.TemporaryDirectory() as tmp:
        ticket = Path(tmp) / "ticket.mirl"
        operations: dict[str, Callable[[], object]] = {
            "global_round": lambda: global_magnitude(weights, mask, 0.2),
            "layerwise_round": lambda: layerwise_magnitude(weights, mask, 0.2),
            "random_mask": lambda: random_mask(ticket_mask, 0),
            "ticket_export_10pct": lambda: export_ticket(weights, ticket_mask, ticket, {}),
            "ticket_load_10pct": lambda: load_ticket(ticket),
        }
        rows = []
        for name, fn in operations.items():
            median, fastest = timed(fn, args.repeats)
            rows.append({"operation": name, "preset": args.preset,
                         "params": count_parameters(model),
                         "seconds_median": round(median, 4), "seconds_min": round(fastest, 4),
                         "repeats": args.repeats, "threads": torch.get_num_threads(),
                         "torch_version": torch.__version__})
            print(f"{name:22s} median {median:.3f} s  min {fastest:.3f} s", flush=True)
        dense = Path(tmp) / "dense.pt"
        torch.save(weights, dense)
        print(f"ticket at 10% of prunable: {ticket.stat().st_size / dense.stat().st_size:.1%} "
              "of the dense state_dict file")
    table = pd.DataFrame(rows)
    atomic_write_text(table.to_csv(index=False), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
