"""Where a study's time goes, stage by stage: ``./run_all.sh`` on a params file cut to one seed,
its first trunk rounds and one branch (every kind of stage), one stage at a time, then per stage:

- ``runner_s``: the stage as the runner timed it (its log's ``finished in N s``, whole seconds);
- ``notebook_s``: papermill's time for the notebook, of which ``kernel_s`` starting its kernel and
  ``open_study_s`` the cell that imports the library and opens the study;
- per phase, summed over the stage's points (``phase_seconds`` of each ``point.json``, see
  ``mirl_lib.study.study.PHASES``): ``start_s`` (mask and starting weights), ``train_s`` (the
  training loop less its checkpoint writes), ``checkpoints_s``, ``evaluate_s`` (test photos),
  ``heldout_s`` (held-out photos), ``collapse_s``, ``ticket_s``; ``points_s`` their points'
  own seconds;
- ``other_s``: the rest of the notebook (gathering tables, drawing figures, the data preview, and
  for a point stage what lies between its cells and its points).

A row ``warm start`` holds the runner's wait for its zygote's imports, a row ``study`` the whole
command. Rows go to ``results/benchmarks/study_profile.csv`` (rows of other devices and params
files kept)::

    python benchmarks/study_profile.py [--params params/default.yaml] [--rounds 2]
        [--strategy random_mask] [--out CSV]
"""
from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchrows import merge_rows  # noqa: E402

from mirl_lib.core.config import Config, load_config  # noqa: E402
from mirl_lib.core.device import device_name, resolve_device  # noqa: E402
from mirl_lib.core.errors import MirlError  # noqa: E402
from mirl_lib.files.atomic import atomic_write_text  # noqa: E402
from mirl_lib.files.paths import BENCHMARK_RESULTS, NOTEBOOKS_DIR, POINT_FILE  # noqa: E402
from mirl_lib.runner.papermill import executed_notebook  # noqa: E402
from mirl_lib.study.graph import stage_list, stage_seeds  # noqa: E402
from mirl_lib.study.study import PHASES, Study  # noqa: E402

PHASE_COLUMNS = [f"{p}_s" for p in PHASES]
COLUMNS = ["date", "device", "threads", "params", "rounds", "strategy", "config_hash", "stage",
           "points", "runner_s", "notebook_s", "kernel_s", "open_study_s", "points_s",
           *PHASE_COLUMNS, "other_s"]
KEY = ["device", "params", "stage"]
WARM, STUDY = "warm start", "study"
_FINISHED = re.compile(r"^(?:\[\d+/\d+\] )?(\S+): finished in (\d+) s", re.M)
_WARM = re.compile(r"^warm start: imported in (\d+) s$", re.M)


def _time(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp).timestamp()


def notebook_times(path: Path) -> dict[str, float]:
    """papermill's times in an executed notebook: the whole (``notebook_s``), its kernel's start
    (from the notebook's start to its first cell's) and the cell that opens the study."""
    nb = nbformat.read(path, as_version=4)
    meta = nb.metadata.get("papermill", {})
    if not meta.get("duration") or not nb.cells:
        raise MirlError(f"{path}: not a notebook papermill finished (no duration)")
    first = nb.cells[0].metadata.get("papermill", {}).get("start_time")
    opening = [c for c in nb.cells if c.cell_type == "code" and "open_study(" in c.source]
    return {"started": _time(meta["start_time"]), "notebook_s": float(meta["duration"]),
            "kernel_s": _time(first) - _time(meta["start_time"]) if first else float("nan"),
            "open_study_s": float(opening[0].metadata.papermill.duration) if opening else 0.0}


def profile_rows(study: Study, log: str) -> pd.DataFrame:
    """One row per stage of a finished local run (its executed notebooks and the points each
    trained), the runner's times read from ``log`` (its standard output; a stage it skipped has
    none), and a row for the warm start when the log has one."""
    finished = {name: float(s) for name, s in _FINISHED.findall(log)}
    rows = []
    for stage in stage_list(study):
        row: dict = {"stage": stage.name, "runner_s": finished.get(stage.name, float("nan")),
                     **notebook_times(executed_notebook(stage, study.run_dir / NOTEBOOKS_DIR))}
        files = [study.point_dir(seed, s, r) / POINT_FILE
                 for seed in stage_seeds(study, stage) for s, r in stage.points]
        # the points this notebook trained (a point an earlier, interrupted run finished was
        # only read by it)
        started = row.pop("started")
        records = [json.loads(f.read_text()) for f in files
                   if f.is_file() and f.stat().st_mtime >= started]
        row["points"] = len(records)
        row["points_s"] = sum(r["seconds"] for r in records)
        for phase in PHASES:
            row[f"{phase}_s"] = sum(r["phase_seconds"][phase] for r in records)
        row["other_s"] = row["notebook_s"] - row["kernel_s"] - row["open_study_s"] - row["points_s"]
        rows.append(row)
    warm = _WARM.search(log)
    if warm:
        rows.insert(0, {"stage": WARM, "runner_s": float(warm.group(1)), "points": 0})
    return pd.DataFrame(rows)


def cut_params(params: Path, rounds: int, strategy: str, folder: Path) -> tuple[Path, Config]:
    """``params`` with one seed, ``rounds`` trunk rounds and ``strategy`` branching at the last of
    them, written into ``folder``; the file and its config."""
    cfg = load_config(params)
    spec = yaml.safe_load(params.read_text())
    remaining = (1 - cfg.prune.rate) ** rounds
    spec.setdefault("prune", {})["rounds"] = rounds
    spec.setdefault("study", {}).update(seeds=[cfg.study.seeds[0]], strategies=[strategy],
                                        branch_remaining=[round(remaining, 6)],
                                        name=f"{cfg.study.name}_profile")
    path = folder / params.name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path, load_config(path)  # a strategy or round count the params cannot take fails here


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params" / "default.yaml")
    parser.add_argument("--rounds", type=int, default=2, help="trunk rounds (default: 2)")
    parser.add_argument("--strategy", default="random_mask",
                        help="the branch at the last round (default: random_mask)")
    parser.add_argument("--out", type=Path, default=BENCHMARK_RESULTS / "study_profile.csv")
    args = parser.parse_args(argv)
    try:
        merge_rows(pd.DataFrame(columns=COLUMNS), args.out, KEY, COLUMNS, "study profile")
        with tempfile.TemporaryDirectory(prefix="mirl-profile-") as tmp:
            params, cfg = cut_params(args.params, args.rounds, args.strategy, Path(tmp))
            study = Study(cfg, Path(tmp) / "results" / cfg.study.name)
            started = time.time()
            done = subprocess.run([str(ROOT / "run_all.sh"), str(params), "--results",
                                   str(Path(tmp) / "results"), "--jobs", "1"], cwd=ROOT,
                                  capture_output=True, text=True)
            wall = time.time() - started
            if done.returncode != 0:
                raise MirlError(f"{params}: ./run_all.sh exit {done.returncode}: "
                                f"{done.stderr.strip()[-500:]}")
            rows = profile_rows(study, done.stdout)
    except MirlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    total = {**rows.drop(columns=["stage"]).sum(numeric_only=True).to_dict(),
             "stage": STUDY, "runner_s": wall}  # the whole command, its start included
    rows = pd.concat([rows, pd.DataFrame([total])], ignore_index=True)
    rows["points"] = rows["points"].astype(int)
    rows["date"] = datetime.date.today().isoformat()
    rows["device"] = device_name(resolve_device(cfg.train.device))
    rows["threads"] = cfg.train.threads
    rows["params"] = str(args.params.resolve().relative_to(ROOT)
                         if args.params.resolve().is_relative_to(ROOT) else args.params)
    rows["rounds"], rows["strategy"], rows["config_hash"] = args.rounds, args.strategy, cfg.hash()
    rows = rows.reindex(columns=COLUMNS)
    seconds = COLUMNS[COLUMNS.index("runner_s"):]
    rows[seconds] = rows[seconds].astype(float).round(2)
    out = merge_rows(rows, args.out, KEY, COLUMNS, "study profile")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.to_csv(index=False), args.out)
    print(rows.drop(columns=["date", "device", "params", "config_hash"]).to_string(index=False))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
