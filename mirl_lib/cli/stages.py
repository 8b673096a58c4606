"""``python -m mirl_lib stages run|list|points|stage|forecast|adopt PARAMS``: the runner behind
``./run_all.sh``.

``adopt`` takes one strategy's finished points from another run of the same identity
(``mirl_lib.study.adopt``). ``run`` runs every stage (``--executor slurm`` and the cluster options
put each stage in a Slurm job; they set the params file's ``cluster`` section, a runtime one),
``points`` trains every point without notebooks, ``list`` shows each stage, whether it is done and,
on a cluster, its job and the job's state, ``stage`` runs one stage here (what a stage's Slurm job
runs), ``forecast`` prices the study's wall-clock on a number of GPUs from its stage graph and the
hours one training takes.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from mirl_lib.core.config import load_config
from mirl_lib.core.errors import MirlError
from mirl_lib.files.paths import JOBS_DIR, RESULTS, run_dir

INTERRUPTED = ("interrupted: finished stages are kept and an interrupted training resumes from "
               "its last checkpoint; run the same command again to continue")
# --flag -> cluster.<key> (the params file's cluster section, overridden for this run)
CLUSTER_FLAGS = {"executor": str, "partition": str, "gpus_per_stage": int, "cpus_per_stage": int,
                 "time": str, "account": str, "qos": str, "constraint": str, "mem": str,
                 "max_timeouts": int, "poll_seconds": float}


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _cluster_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster (the params file's cluster section, for this run)")
    group.add_argument("--executor", choices=("local", "slurm"),
                       help="where the stages run (default: the params file's, local)")
    for key, kind in CLUSTER_FLAGS.items():
        if key != "executor":
            group.add_argument(f"--{key.replace('_', '-')}", type=kind, dest=key)
    group.add_argument("--sbatch", action="append", default=None, metavar="KEY=VALUE",
                       help="a further sbatch option, e.g. --sbatch exclusive (repeatable)")


def overrides_of(args: argparse.Namespace) -> dict | None:
    """The settings the command line sets, none of them part of a run's identity:
    ``study.seeds``, ``train.gpus``, ``train.batch_replicates`` and the cluster options."""
    out: dict = {}
    if getattr(args, "study_seeds", None) is not None:
        out["study"] = {"seeds": list(args.study_seeds)}
    if getattr(args, "gpus", None) is not None:
        out["train"] = {"gpus": args.gpus}
    if getattr(args, "batch_replicates", None) is not None:
        out.setdefault("train", {})["batch_replicates"] = args.batch_replicates
    cluster = {key: getattr(args, key) for key in CLUSTER_FLAGS
               if getattr(args, key, None) is not None}
    if getattr(args, "sbatch", None):
        cluster["sbatch"] = list(args.sbatch)
    if cluster.get("gpus_per_stage", 0) > 1:  # the stage's GPUs train it together
        out.setdefault("train", {}).setdefault("gpus", cluster["gpus_per_stage"])
    if cluster:
        out["cluster"] = cluster
    return out or None


def list_stages(params: Path, results: Path, overrides: dict | None) -> None:
    from mirl_lib.runner.slurm import SlurmStages
    from mirl_lib.study.graph import stage_done, stage_list
    from mirl_lib.study.study import open_study

    study = open_study(params, results, overrides)
    study.check_identity()  # a folder of another config has no "done" stages for this one
    slurm = None
    if study.cfg.cluster.executor == "slurm" or (study.run_dir / JOBS_DIR).is_dir():
        slurm = SlurmStages(study.run_dir, study.cfg.cluster, lambda s: [], lambda s: None)
    for stage in stage_list(study):
        line = f"{stage.name}\t{'done' if stage_done(study, stage) else 'todo'}"
        if slurm is not None:
            line += "\t" + "\t".join(slurm.state(stage.name))
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mirl_lib stages", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run every stage in order")
    list_p = sub.add_parser("list", help="list the stages, whether they are done and their jobs")
    points_p = sub.add_parser("points", help="train and score every point without notebooks "
                                             "(no preview, evaluation or figures)")
    one_p = sub.add_parser("stage", help="run one stage here (what its Slurm job runs)")
    forecast_p = sub.add_parser("forecast", help="the study's wall-clock on N GPUs from its stage "
                                                 "graph and the hours one training takes")
    adopt_p = sub.add_parser("adopt", help="take one strategy's finished points from another run "
                                           "of the same identity instead of training them")
    request_p = sub.add_parser("points-stage", help=argparse.SUPPRESS)
    request_p.add_argument("request")
    for p in (run_p, list_p, points_p, one_p, forecast_p, adopt_p):
        p.add_argument("params", type=Path)
        p.add_argument("--results", type=Path, default=RESULTS)
    for p in (run_p, points_p):
        p.add_argument("--jobs", type=int, default=None,
                       help="stages at once where dependencies allow (default: 2 here, every "
                            "stage the graph allows on a cluster)")
        _cluster_options(p)
    _cluster_options(list_p)
    one_p.add_argument("--stage", required=True)
    adopt_p.add_argument("--from", dest="source", type=Path, required=True,
                         help="the run folder to adopt from, e.g. results/full")
    adopt_p.add_argument("--strategy", required=True, help="the strategy whose points to adopt")
    adopt_p.add_argument("--seeds", type=int, nargs="+", default=None,
                         help="the seeds to adopt (default: every seed of the study)")
    forecast_p.add_argument("--hours-per-training", type=float, required=True,
                            help="hours one training takes on one GPU (e.g. from "
                                 "results/benchmarks/gpu_hours.csv)")
    forecast_p.add_argument("--gpus", type=int, nargs="+", required=True,
                            help="GPUs the study may hold at once (one or several counts)")
    forecast_p.add_argument("--gpus-per-stage", type=int, default=1)
    forecast_p.add_argument("--scaling", type=float, default=1.0,
                            help="data-parallel efficiency of a stage's GPUs (1.0: ideal)")
    one_p.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    one_p.add_argument("--described", default=None, help=argparse.SUPPRESS)  # Stage.describe()
    run_p.add_argument("--force", action="append", default=[], metavar="STAGE")
    run_p.add_argument("--gpus", type=int, default=None, metavar="N",
                       help="train every point under torchrun with N processes, one per GPU "
                            "(sets train.gpus; default: the params file's, one process)")
    for p in (run_p, list_p, points_p):
        p.add_argument("--seeds", dest="study_seeds", type=int, nargs="+", default=None,
                       metavar="S", help="the study's seeds (sets study.seeds; default: the "
                                         "params file's): more seeds for a finished study train "
                                         "the new seeds only")
        p.add_argument("--batch-replicates", choices=("auto", "batched", "separate"),
                       default=None,
                       help="train the seeds of each point as one batched computation "
                            "(sets train.batch_replicates; auto: on CUDA with the local "
                            "executor and train.step_graph: eager only)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # a plain kill stops like Ctrl-C
    # a runner started in the background (`nohup ./run_all.sh &`) inherits an ignored SIGINT;
    # restore Ctrl-C / kill -INT so it still stops the study the documented way
    signal.signal(signal.SIGINT, signal.default_int_handler)
    jobs = max(1, args.jobs) if getattr(args, "jobs", None) is not None else None
    try:
        if args.command == "stage" and args.described:  # a Slurm job: no torch in this process
            from mirl_lib.runner.papermill import run_described
            from mirl_lib.study.stage import Stage

            run_described(args.params, args.results, Stage.described(args.described),
                          json.loads(args.overrides) or None)
            return 0
        if args.command in ("run", "points", "list"):  # a bad params file or option: one line,
            cfg = load_config(args.params, overrides_of(args))  # before torch is imported
            if cfg.cluster.executor == "slurm" and args.command != "list":
                from mirl_lib.runner.slurm import SlurmStages

                SlurmStages(run_dir(args.results, cfg.study.name), cfg.cluster, lambda stage: [],
                            lambda stage: None).check()  # options Slurm refuses
        from mirl_lib.runner.run import points_stage, run, run_points_only, run_stage
        from mirl_lib.study.forecast import forecast, forecast_text
        from mirl_lib.study.study import open_study

        if args.command == "points-stage":
            points_stage(args.request)
        elif args.command == "stage":
            run_stage(args.params, args.results, args.stage, json.loads(args.overrides) or None)
        elif args.command == "points":
            run_points_only(args.params, args.results, jobs, overrides_of(args))
        elif args.command == "forecast":
            study = open_study(args.params, args.results, None)
            for gpus in args.gpus:
                print(forecast_text(forecast(study, args.hours_per_training, gpus,
                                             args.gpus_per_stage, args.scaling)))
        elif args.command == "adopt":
            from mirl_lib.study.adopt import adopt

            study = open_study(args.params, args.results, None)
            study.prepare()
            done = adopt(study, args.source, args.strategy, args.seeds)
            print(f"adopted {len(done)} point(s) of {args.strategy} from {args.source} into "
                  f"{study.run_dir}")
        elif args.command == "list":
            list_stages(args.params, args.results, overrides_of(args))
        else:
            run(args.params, args.results, tuple(args.force), jobs, overrides_of(args))
    except MirlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    return 0
