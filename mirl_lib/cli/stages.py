"""``python -m mirl_lib stages run|list|points PARAMS``: the runner behind ``./run_all.sh``."""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from mirl_lib.core.errors import MirlError
from mirl_lib.files.paths import RESULTS
from mirl_lib.runner.run import points_stage, run, run_points_only
from mirl_lib.study.graph import stage_done, stage_list
from mirl_lib.study.study import open_study

INTERRUPTED = ("interrupted: finished stages are kept and an interrupted training resumes from "
               "its last checkpoint; run the same command again to continue")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mirl_lib stages", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run every stage in order")
    list_p = sub.add_parser("list", help="list the stages and whether they are done")
    points_p = sub.add_parser("points", help="train and score every point without notebooks "
                                             "(no preview, evaluation or figures)")
    stage_p = sub.add_parser("points-stage", help=argparse.SUPPRESS)
    stage_p.add_argument("request")
    points_p.add_argument("--jobs", type=int, default=2)
    for p in (run_p, list_p, points_p):
        p.add_argument("params", type=Path)
        p.add_argument("--results", type=Path, default=RESULTS)
    run_p.add_argument("--force", action="append", default=[], metavar="STAGE")
    run_p.add_argument("--jobs", type=int, default=2,
                       help="stages run at once where dependencies allow (default 2)")
    run_p.add_argument("--gpus", type=int, default=None, metavar="N",
                       help="train every point under torchrun with N processes, one per GPU "
                            "(sets train.gpus; default: the params file's, one process)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # a plain kill stops like Ctrl-C
    # a runner started in the background (`nohup ./run_all.sh &`) inherits an ignored SIGINT;
    # restore Ctrl-C / kill -INT so it still stops the study the documented way
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if args.command == "points-stage":
            points_stage(args.request)
        elif args.command == "points":
            run_points_only(args.params, args.results, max(1, args.jobs))
        elif args.command == "list":
            study = open_study(args.params, args.results)
            study.check_identity()  # a folder of another config has no "done" stages for this one
            for stage in stage_list(study):
                print(f"{stage.name}\t{'done' if stage_done(study, stage) else 'todo'}")
        else:
            overrides = {"train": {"gpus": args.gpus}} if args.gpus is not None else None
            run(args.params, args.results, tuple(args.force), max(1, args.jobs), overrides)
    except MirlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    return 0
