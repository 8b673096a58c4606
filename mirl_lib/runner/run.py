"""The study's stages as papermill notebooks, and the runner behind ``./run_all.sh``.

``python -m mirl_lib stages run params/default.yaml [--results DIR] [--force STAGE ...]`` executes
every stage notebook in order, saving each executed notebook under ``<run>/notebooks/``. A stage
whose artifacts exist is skipped; ``--force`` moves a stage's points aside (nothing is deleted) and
runs it again. At the end the run's numbers are compared with the reference copy of the committed
results (``<run>/reference/metrics.csv`` and ``heldout.csv``, taken before the first stage
overwrote them), on the test photos and on the held-out photos.
"""
from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mirl_lib.core.errors import MirlError
from mirl_lib.core.processes import Children, Zygote, module_command
from mirl_lib.files.paths import NOTEBOOKS_DIR, REPORT_FILE
from mirl_lib.report.reproduction import keep_reference, reproduction_report
from mirl_lib.runner.papermill import (
    StageFailed,
    execute,
    executed_notebook,
    export_html,
    kernel_env,
    run_described,
)
from mirl_lib.runner.slurm import SlurmStages
from mirl_lib.study.graph import (
    FIGURES_STAGE,
    Stage,
    dependencies,
    move_aside,
    schedule,
    stage_done,
    stage_list,
)
from mirl_lib.study.lock import claim
from mirl_lib.study.study import Study, open_study

# What every stage process would import by itself, imported once by the warm zygote
# (``core.processes.Zygote``) that forks them: torch and its compiler stack (AdamW imports
# ``torch._dynamo``), the study, the report, papermill and the Jupyter kernel.
POINTS_PRELOAD = ("torch", "torch._dynamo", "mirl_lib.study.study", "mirl_lib.cli.main")
NOTEBOOK_PRELOAD = (*POINTS_PRELOAD, "mirl_lib.report.stages", "papermill", "nbformat",
                    "ipykernel.kernelapp", "IPython", "ipykernel_launcher")
# The first stages wait this long at most for the zygote's imports: started before it is ready,
# each would import the same modules itself, beside it, on the same cores.
WARM_WAIT_S = 60.0


def run(params_file: Path, results_root: Path, force: tuple[str, ...] = (),
        jobs: int | None = None, overrides: dict | None = None) -> Study:
    """Run every stage of the study, skipping finished ones; ``jobs`` stages at a time (default:
    2 on this machine, every stage the graph allows on a cluster). ``overrides`` (runtime settings
    such as ``{"train": {"gpus": 2}}`` or a ``cluster`` section) reach every stage.

    ``cluster.executor`` decides where a stage runs: ``local``, a papermill child of this process
    (forked from a warm zygote); ``slurm``, a Slurm job running the same notebook
    (``runner.slurm``). Holds ``<run>/.lock`` throughout. On the first failing stage nothing new
    starts, the stages still running are stopped (their training resumes from its last checkpoint
    next time) and ``StageFailed`` is raised with the failing cell's own error.
    """
    params_file, results_root = Path(params_file).resolve(), Path(results_root).resolve()
    study = open_study(params_file, results_root, overrides)
    stages = stage_list(study)
    unknown = sorted(set(force) - {s.name for s in stages})
    if unknown:
        raise MirlError(f"--force: unknown stage(s) {unknown}; stages: {[s.name for s in stages]}")
    out_dir = study.run_dir / NOTEBOOKS_DIR
    if study.cfg.cluster.executor == "slurm":
        def command(stage: Stage) -> list[str]:
            return module_command("mirl_lib", "stages", "stage", str(params_file), "--results",
                                  str(results_root), "--stage", stage.name, "--overrides",
                                  json.dumps(overrides or {}), "--described", stage.describe())

        cluster = SlurmStages(study.run_dir, study.cfg.cluster, command,
                              lambda stage: executed_notebook(stage, out_dir))
        cluster.check()  # before the lock, a folder or a job
        lock = claim(study)
        if lock.taken_over is not None:  # a driver that died: its finished jobs count
            cluster.adopt_since = float(lock.taken_over.get("create_time", 0.0)) - 1.0
        try:
            _run_stages(study, stages, force, jobs or len(stages), cluster.execute,
                        cluster.cancel_all)
        except BaseException:
            cluster.cancel_all()
            raise
        finally:
            lock.release()
    else:
        lock = claim(study)
        children = Children()
        try:
            with Zygote(NOTEBOOK_PRELOAD) as warm, \
                    tempfile.TemporaryDirectory(prefix="mirl-jupyter-") as jupyter:
                env = kernel_env(Path(jupyter))
                warm.wait_to_start(WARM_WAIT_S)

                def local(stage: Stage, where: str) -> None:
                    execute(stage, params_file, results_root, out_dir, children, env, overrides)

                _run_stages(study, stages, force, jobs or 2, local, children.kill_all)
        finally:
            children.kill_all()
            lock.release()
    print(reproduction_report(study.run_dir), flush=True)
    return study


def run_stage(params_file: Path, results_root: Path, name: str,
              overrides: dict | None = None) -> Path:
    """Run one stage of the study here, as the runner would: its notebook through papermill, the
    executed copy and log under ``<run>/notebooks/`` (``run_described``). Takes no lock (the
    runner that asked for it holds the folder's). Raises ``StageFailed``."""
    params_file, results_root = Path(params_file).resolve(), Path(results_root).resolve()
    stages = {stage.name: stage for stage in stage_list(open_study(params_file, results_root,
                                                                   overrides))}
    if name not in stages:
        raise MirlError(f"--stage: unknown stage {name!r}; stages: {list(stages)}")
    return run_described(params_file, results_root, stages[name], overrides)


def _run_stages(study: Study, stages: list[Stage], force: tuple[str, ...], jobs: int,
                execute_stage: Callable[[Stage, str], None], abort: Callable[[], None]) -> None:
    study.prepare()
    keep_reference(study.run_dir)
    out_dir = study.run_dir / NOTEBOOKS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    deps = dependencies(study, stages)
    started = time.time()
    by_name = {stage.name: stage for stage in stages}
    index = {stage.name: i for i, stage in enumerate(stages, start=1)}

    def one(name: str) -> None:
        stage = by_name[name]
        where = f"[{index[name]}/{len(stages)}] {name}"
        if name in force:
            for path in move_aside(study, stage):
                print(f"{where}: moved {path.name} aside", flush=True)
        elif stage_done(study, stage):
            if executed_notebook(stage, out_dir).exists():
                print(f"{where}: done already, skipped", flush=True)
                return
            # the points are done but the run that made them was stopped before the notebook
            # was complete: run it again (it trains nothing) so every stage has its notebook
            print(f"{where}: done already; running its notebook again to record it", flush=True)
        t0 = time.time()
        print(f"{where}: running {stage.notebook} ...", flush=True)
        execute_stage(stage, where)
        if name == FIGURES_STAGE:
            report = export_html(executed_notebook(stage, out_dir), study.run_dir / REPORT_FILE)
            print(f"{where}: report {report}", flush=True)
        print(f"{where}: finished in {time.time() - t0:.0f} s "
              f"(total {(time.time() - started) / 60:.1f} min)", flush=True)

    schedule(deps, jobs, one, abort=abort)
    print(f"Study finished in {(time.time() - started) / 60:.1f} min: {study.run_dir}", flush=True)


def run_points_only(params_file: Path, results_root: Path, jobs: int | None = None,
                    overrides: dict | None = None) -> Study:
    """Train and score every point of the study without notebooks (for a machine without Jupyter,
    such as a GPU image, and for reruns whose numbers alone matter): the same stages, the same
    dependencies and schedule as ``run``, each stage's points in a child process
    (``run_points``) or, with ``cluster.executor: slurm``, a Slurm job; ``jobs`` at a time. No data
    preview, evaluation or figures stage: the points' ``metrics.csv`` / ``heldout.csv`` are the
    results. Finished points are skipped.
    """
    params_file, results_root = Path(params_file).resolve(), Path(results_root).resolve()
    study = open_study(params_file, results_root, overrides)
    stages = [s for s in stage_list(study) if s.points]
    started = time.time()
    by_name = {stage.name: stage for stage in stages}
    deps = {name: wait_for & set(by_name)
            for name, wait_for in dependencies(study, stages).items() if name in by_name}

    def command(stage: Stage) -> list[str]:
        request = json.dumps({"params": str(params_file), "results": str(results_root),
                              "overrides": overrides, "points": stage.points,
                              "seeds": stage.seeds})
        return module_command("mirl_lib", "stages", "points-stage", request)

    children = Children()
    if study.cfg.cluster.executor == "slurm":
        cluster = SlurmStages(study.run_dir, study.cfg.cluster, command, lambda stage: None)
        cluster.check()
        execute_stage, abort, jobs = cluster.execute, cluster.cancel_all, jobs or len(stages)
    else:
        def execute_stage(stage: Stage, where: str) -> None:
            proc = children.start(command(stage))
            code = proc.wait()
            children.finished(proc)
            if code != 0:
                raise StageFailed(f"stage {where}: its process exited with code {code}")

        abort, jobs = children.kill_all, jobs or 2

    def one(name: str) -> None:
        stage, t0 = by_name[name], time.time()
        if stage_done(study, stage):
            print(f"{name}: done already, skipped", flush=True)
            return
        print(f"{name}: training {len(stage.points)} point(s) ...", flush=True)
        execute_stage(stage, name)
        print(f"{name}: finished in {time.time() - t0:.0f} s "
              f"(total {(time.time() - started) / 60:.1f} min)", flush=True)

    lock = claim(study)
    try:
        study.prepare()
        local = study.cfg.cluster.executor == "local"
        with Zygote(POINTS_PRELOAD) if local else contextlib.nullcontext() as warm:
            if warm is not None:  # (Slurm jobs start cold)
                warm.wait_to_start(WARM_WAIT_S)
            schedule(deps, jobs, one, abort=abort)
    except BaseException:
        abort()
        raise
    finally:
        children.kill_all()
        lock.release()
    print(f"Points finished in {(time.time() - started) / 60:.1f} min: {study.run_dir}", flush=True)
    return study


def points_stage(request: str) -> None:
    """The child of ``run_points_only``: one stage's points."""
    spec = json.loads(request)
    study = open_study(spec["params"], spec["results"], spec["overrides"])
    seeds = spec["seeds"]
    study.run_points([tuple(p) for p in spec["points"]], None if seeds is None else tuple(seeds))
