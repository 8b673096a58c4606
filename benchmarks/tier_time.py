"""What a tier's trainings cost on the machine that ran them, read from a run folder: one row per
run (or per sitting of a run) in ``results/benchmarks/tier_time.csv``::

    python benchmarks/tier_time.py RUN_DIR --label TEXT [--log RUNNER_LOG] [--since TIME]
        [--until TIME] [--malloc system|tuned] [--note TEXT] [--out CSV]

Every point's ``point.json`` gives its training's seconds (``phase_seconds.train``), its whole
point's seconds (``seconds``: start, training, scoring, ticket), the machine, its CPU capability
(torch's vector level, ``AVX2``, ``AVX512``, ...: one machine name has covered CPUs with and
without AVX-512) and torch threads that computed it and, where the point records it, the allocator
(``malloc``; ``--malloc`` stands in for points without it: those trained before ``train.malloc``
existed had glibc's allocator as it comes, ``system``). The file's time says when the point
finished; ``--since`` / ``--until`` (``YYYY-MM-DDTHH:MM``, UTC) keep the points that finished in
that window, one sitting of a run that was resumed. Point folders that ``--force`` moved aside
(``round_NN.replaced-...``) count too: they were trained, and renaming keeps their time.

A row: ``points``, ``seeds``, the median and the 10th / 90th percentiles of the training seconds,
the median point seconds, ``wall_min`` and ``seeds_per_hour``. With ``--log`` (the runner's
console output of the run) ``wall_min`` is its ``Study finished in N min`` and ``seeds_per_hour``
the seeds over it; without, ``wall_min`` is the span from the first point's start (its finish
less its seconds) to the last point's finish, and ``seeds_per_hour`` is left empty (the span of a
sitting holds parts of seeds). A rerun with the same ``--label`` replaces its row.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchrows import NOT_RECORDED, merge_rows  # noqa: E402

from mirl_lib.core.allocator import SYSTEM, TUNED  # noqa: E402
from mirl_lib.core.errors import ConfigError, MirlError  # noqa: E402
from mirl_lib.files.atomic import atomic_write_text  # noqa: E402
from mirl_lib.files.paths import BENCHMARK_RESULTS, POINT_FILE, point_files  # noqa: E402

COLUMNS = ["measured", "label", "run", "machine", "cpu_capability", "threads", "malloc", "points",
           "seeds", "train_s_median", "train_s_p10", "train_s_p90", "point_s_median", "wall_min",
           "seeds_per_hour", "note"]
KEY = ["label"]
LATER = {"cpu_capability": NOT_RECORDED}  # rows written before the column
_FINISHED = re.compile(r"^Study finished in ([0-9.]+) min", re.M)


def _when(text: str, flag: str) -> float:
    try:
        moment = datetime.strptime(text, "%Y-%m-%dT%H:%M").replace(tzinfo=timezone.utc)
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: not a time YYYY-MM-DDTHH:MM (UTC)") from None
    return moment.timestamp()


def points(run_dir: Path, since: float | None = None, until: float | None = None) -> pd.DataFrame:
    """One row per ``point.json`` under ``run_dir`` that finished in the window: seed, training
    and point seconds, machine, CPU capability and allocator (empty where not recorded), threads,
    finish time."""
    rows = []
    for path in point_files(run_dir, POINT_FILE, moved_aside=True):
        finished = path.stat().st_mtime
        if (since is not None and finished < since) or (until is not None and finished > until):
            continue
        try:
            record = json.loads(path.read_text())
            rows.append({"seed": int(record["seed"]),
                         "train_s": float(record["phase_seconds"]["train"]),
                         "point_s": float(record["seconds"]), "machine": record["machine"],
                         "cpu_capability": record.get("cpu_capability", ""),
                         "threads": int(record["threads"]), "malloc": record.get("malloc", ""),
                         "finished": finished})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise MirlError(f"{path}: not a point record ({type(exc).__name__}: {exc})") from None
    return pd.DataFrame(rows, columns=["seed", "train_s", "point_s", "machine", "cpu_capability",
                                       "threads", "malloc", "finished"])


def tier_row(table: pd.DataFrame, label: str, run_dir: Path, log_text: str | None,
             malloc: str | None, note: str = "") -> dict:
    """The CSV row of ``points``' table (see the module doc)."""
    if table.empty:
        raise ConfigError(f"{run_dir}: no finished point in the given window")
    recorded = set(table["malloc"]) - {""}
    if len(recorded) > 1 or (recorded and malloc and recorded != {malloc}):
        raise ConfigError(f"{run_dir}: its points record the allocator(s) {sorted(recorded)}"
                          + (f", not --malloc {malloc}" if malloc else ""))
    if not recorded and not malloc:
        raise ConfigError(f"{run_dir}: its points do not record their allocator; give --malloc "
                          f"({SYSTEM} for points trained before train.malloc existed)")
    seeds = table["seed"].nunique()
    wall = (table["finished"].max() - (table["finished"] - table["point_s"]).min()) / 60
    per_hour = float("nan")
    if log_text is not None:
        found = _FINISHED.findall(log_text)
        if not found:
            raise ConfigError("--log: no 'Study finished in N min' line (the run did not end)")
        wall = float(found[-1])
        per_hour = round(seeds / (wall / 60), 2)
    train = table["train_s"]
    return {"measured": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "label": label,
            "run": str(run_dir), "machine": " / ".join(sorted(set(table["machine"]))),
            "cpu_capability": " / ".join(sorted(set(table["cpu_capability"]) - {""}))
            or NOT_RECORDED,
            "threads": " / ".join(str(t) for t in sorted(set(table["threads"]))),
            "malloc": recorded.pop() if recorded else malloc, "points": len(table),
            "seeds": seeds, "train_s_median": round(train.median(), 1),
            "train_s_p10": round(train.quantile(0.1), 1),
            "train_s_p90": round(train.quantile(0.9), 1),
            "point_s_median": round(table["point_s"].median(), 1), "wall_min": round(wall, 1),
            "seeds_per_hour": per_hour, "note": note}


def main(argv: list[str] | None = None) -> int:
    """Read, merge the row into the CSV, print it; 2 with one ``error:`` line on bad input."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run folder (holds seed_*/)")
    parser.add_argument("--label", required=True, help="the row's name (its key in the CSV)")
    parser.add_argument("--log", type=Path, help="the runner's console output of the run")
    parser.add_argument("--since", help="keep points finished at or after (UTC)")
    parser.add_argument("--until", help="keep points finished at or before (UTC)")
    parser.add_argument("--malloc", choices=(SYSTEM, TUNED),
                        help="the allocator of points that do not record it")
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path, default=BENCHMARK_RESULTS / "tier_time.csv")
    args = parser.parse_args(argv)
    try:
        if not args.run_dir.is_dir():
            raise ConfigError(f"{args.run_dir}: no such run folder")
        since = _when(args.since, "--since") if args.since else None
        until = _when(args.until, "--until") if args.until else None
        log_text = None
        if args.log is not None:
            try:
                log_text = args.log.read_text(errors="replace")
            except OSError as exc:
                raise ConfigError(f"--log {args.log}: cannot read it ({exc.strerror})") from None
        row = pd.DataFrame([tier_row(points(args.run_dir, since, until), args.label,
                                     args.run_dir, log_text, args.malloc, args.note)],
                           columns=COLUMNS)
        table = merge_rows(row, args.out, KEY, COLUMNS, "tier_time", LATER)
        atomic_write_text(table.to_csv(index=False), args.out)
    except MirlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(row.drop(columns=["run", "note"]).to_string(index=False))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
