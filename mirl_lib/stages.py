"""The study's stages as papermill notebooks, and the runner behind ``./run_all.sh``.

``python -m mirl_lib.stages run params/default.yaml [--results DIR] [--force STAGE ...]`` executes
every stage notebook in order, saving each executed notebook under ``<run>/notebooks/``. A stage
whose artifacts exist is skipped; ``--force`` moves a stage's points aside (nothing is deleted) and
runs it again. At the end the run's numbers are compared with the reference copy of the committed
results (``<run>/reference/metrics.csv`` and ``heldout.csv``, taken before the first stage
overwrote them), on the test photos and on the held-out photos.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

import nbformat

from mirl_lib.config import Config, TrainConfig, load_config
from mirl_lib.errors import ConfigError, MirlError
from mirl_lib.fileio import atomic_write_bytes, atomic_write_text
from mirl_lib.lottery import MOVED_ASIDE, Study
from mirl_lib.processes import Children, RunLock, kernel_env, kill_tree, module_command
from mirl_lib.report import reproduction, reproduction_inputs
from mirl_lib.strategies import REGISTRY

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"


@dataclass(frozen=True)
class Stage:
    """One notebook execution: its name, notebook file and injected parameters; the points it
    trains, for ``seeds`` (``None``: every seed of the study)."""

    name: str
    notebook: str
    parameters: dict = field(default_factory=dict)
    points: tuple[tuple[str, int], ...] = ()
    seeds: tuple[int, ...] | None = None


def open_study(params_file: str | Path, results_root: str | Path,
               overrides: dict | None = None) -> Study:
    """The study of a params file (with ``overrides``, a nested dict such as
    ``{"train": {"gpus": 2}}``, merged over it), in ``<results_root>/<study.name>``."""
    cfg = load_config(params_file, overrides)
    try:
        return Study(cfg, Path(results_root) / cfg.study.name)
    except ConfigError as exc:
        raise ConfigError(f"{params_file}: {exc}") from None


def stage_list(study: Study) -> list[Stage]:
    """Every stage: the data preview, one stage per group of points (as each strategy's
    ``stage(rnd)`` declares, in the registry's order), the evaluation and the figures.

    With several seeds, every group of points is one stage per seed (``round_03_seed1``, with
    the notebook parameter ``seeds=[1]``): seeds are independent replicates, so their chains run
    side by side with ``--jobs``. Listed group-major, so the trunk's stages of every seed come
    before the branches (the scheduler's priority)."""
    groups: dict[str, Stage] = {}
    for strategy, rnd in study.points():
        spec = REGISTRY[strategy].stage(rnd)
        stage = groups.get(spec.name) or Stage(spec.name, spec.notebook, dict(spec.parameters))
        groups[spec.name] = Stage(stage.name, stage.notebook, stage.parameters,
                                  (*stage.points, (strategy, rnd)))
    seeds = study.cfg.study.seeds
    trained = [Stage(f"{g.name}_seed{seed}", g.notebook, {**g.parameters, "seeds": [seed]},
                     g.points, (seed,)) for g in groups.values() for seed in seeds
               ] if len(seeds) > 1 else list(groups.values())
    return [Stage("data", "00_data_preview.ipynb"), *trained,
            Stage("evaluate", "04_evaluate.ipynb"), Stage("figures", "05_figures.ipynb")]


def stage_seeds(study: Study, stage: Stage) -> tuple[int, ...]:
    """The seeds a stage trains (all of the study's unless the stage names its own)."""
    return study.cfg.study.seeds if stage.seeds is None else stage.seeds


def stage_done(study: Study, stage: Stage) -> bool:
    """A stage with points is done when all of them are, for each of its seeds. The others (data
    preview, evaluation, figures) take seconds and always rerun, so a fresh clone redoes them."""
    return bool(stage.points) and all(study.is_done(seed, s, r)
                                      for seed in stage_seeds(study, stage)
                                      for s, r in stage.points)


def move_aside(study: Study, stage: Stage) -> list[Path]:
    """Rename a stage's point folders to ``<folder>.replaced-<time>`` so it reruns; returns them."""
    moved = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for seed in stage_seeds(study, stage):
        for strategy, rnd in stage.points:
            folder = study.point_dir(seed, strategy, rnd)
            if folder.exists():
                target = folder.with_name(f"{folder.name}{MOVED_ASIDE}{stamp}")
                folder.rename(target)
                moved.append(target)
    return moved


# What ``keep_reference`` copies, in this order: ``metrics.csv`` last, so that its presence in
# ``reference/`` means the copy is complete.
REFERENCE_FILES = ("heldout.csv", "replication.csv", "metrics.csv")


def keep_reference(study: Study) -> Path | None:
    """Copy the committed ``metrics.csv``, ``heldout.csv`` and ``replication.csv`` to
    ``reference/`` once, before this run replaces them.

    The copies are what ``reproduction_report`` compares the rerun with; they are taken only when
    no reference exists yet, so a run resumed or rerun later still compares with the committed
    run. Each file is written atomically; ``metrics.csv`` comes last.
    """
    reference = study.run_dir / "reference"
    if (study.run_dir / "metrics.csv").is_file() and not (reference / "metrics.csv").exists():
        for name in REFERENCE_FILES:
            if (study.run_dir / name).is_file():
                atomic_write_bytes((study.run_dir / name).read_bytes(), reference / name)
    return reference / "metrics.csv" if (reference / "metrics.csv").is_file() else None


def reproduction_report(study: Study) -> str:
    """Does this run reproduce the reference (committed) run within noise? One line.

    Every PSNR comparison of ``report.comparisons`` and every dense gain, on the test photos and,
    when both runs have a ``heldout.csv``, on the held-out photos, is computed on both runs: the
    rerun's differences are set against the committed 95% intervals (reproduced within noise when
    no more lie outside than chance allows, ``stats.chance_misses``), and the verdicts, the
    headline's among them, are compared.
    ``<run>/reproduction.csv`` gets the comparison rows and, per (set, seed, strategy, round,
    task), the raw PSNR differences (``report.reproduction``).
    """
    reference = study.run_dir / "reference" / "metrics.csv"
    current = study.run_dir / "metrics.csv"
    if not reference.is_file():
        return "No committed reference results to compare with (this run is the first)."
    if not current.is_file():
        return f"{current}: not written yet (the evaluation stage has not run); nothing to compare."
    rerun, committed, heldout, replication = reproduction_inputs(current, reference)
    table, line = reproduction(rerun, committed, heldout=heldout, replication=replication)
    atomic_write_text(table.to_csv(index=False), study.run_dir / "reproduction.csv")
    return f"Against the committed results: {line}"


def executed_notebook(stage: Stage, out_dir: Path) -> Path:
    """Where the executed copy of a stage's notebook is kept (its log beside it, ``.log``)."""
    suffix = "".join(f"_{v}" if isinstance(v, str) else
                     f"_seed{'-'.join(map(str, v))}" if isinstance(v, (list, tuple)) else
                     f"_{v:02d}" for v in stage.parameters.values())
    return out_dir / f"{Path(stage.notebook).stem}{suffix}.ipynb"


class StageFailed(MirlError):
    """A stage notebook failed; the message holds the notebook's own error and where to look."""


def execute(stage: Stage, params_file: Path, results_root: Path, out_dir: Path,
            children: Children, env: dict[str, str], overrides: dict | None = None) -> Path:
    """Run one stage notebook through papermill in a child process (``children``); the executed
    copy and a log go to ``out_dir``. Both are written to hidden temporary files and replace the
    previous ones only when complete, so an interrupted or full-disk run leaves the previous
    version, never a truncated file. Raises ``StageFailed`` with the notebook's own error."""
    output = executed_notebook(stage, out_dir)
    log = output.with_suffix(".log")
    partial_nb = out_dir / f".{output.stem}.partial.ipynb"
    partial_log = out_dir / f".{log.name}.partial"
    parameters = {"params_file": str(params_file), "results_root": str(results_root),
                  "overrides": overrides or {}, **stage.parameters}
    command = module_command("papermill", str(NOTEBOOKS / stage.notebook), str(partial_nb),
                             "--cwd", str(NOTEBOOKS), "--kernel", "python3", "--no-progress-bar",
                             "-y", json.dumps(parameters))
    with open(partial_log, "w") as stream:
        proc = children.start(command, stdout=stream, stderr=subprocess.STDOUT, env=env)
        try:
            code, failed = _wait_or_fail_early(proc, partial_nb)
        finally:
            children.finished(proc)
    log_text = partial_log.read_text(errors="replace")
    full = _disk_full(out_dir, log_text)
    stopped = code != 0 and children.stopping and failed is None  # stopped by the runner
    if failed is not None and not full:  # papermill was stopped right after the failing cell
        atomic_write_text(nbformat.writes(failed), output)
        partial_nb.unlink(missing_ok=True)
    else:
        _keep_if_complete(partial_nb, output,
                          complete=not (full or stopped) and _readable_notebook(partial_nb))
    _keep_if_complete(partial_log, log, complete=not (full or stopped))
    if code != 0:
        where = f"notebook {output}, log {log}" if not full else f"results folder {out_dir.parent}"
        raise StageFailed(f"stage {stage.name} failed: "
                          f"{failure_reason(output if output.exists() else None, log_text)} "
                          f"({where})")
    return output


def _wait_or_fail_early(proc: subprocess.Popen, notebook: Path, poll_s: float = 0.5
                        ) -> tuple[int, Any]:
    """Wait for papermill; return ``(exit code, None)``. Papermill rewrites the executed notebook
    after every cell, then spends seconds shutting its kernel down after an error: as soon as
    the notebook shows a cell's error, stop papermill and return ``(1, that notebook)``, so the
    runner reports the failure at once."""
    seen = None
    while True:
        try:
            return proc.wait(timeout=poll_s), None
        except subprocess.TimeoutExpired:
            pass
        try:
            stamp = notebook.stat().st_mtime_ns
        except FileNotFoundError:
            continue
        if stamp == seen:
            continue
        seen = stamp
        try:
            executed = nbformat.read(notebook, as_version=4)
        except Exception:  # caught mid-write: look again at the next change
            seen = None
            continue
        if any(out.get("output_type") == "error" for cell in executed.cells
               for out in cell.get("outputs", [])):
            kill_tree(proc)
            return 1, executed


def _keep_if_complete(partial: Path, final: Path, complete: bool) -> None:
    if complete and partial.exists():
        os.replace(partial, final)
    else:
        partial.unlink(missing_ok=True)


def _readable_notebook(path: Path) -> bool:
    try:
        nbformat.read(path, as_version=4)
        return True
    except Exception:  # missing, truncated or not JSON: not a notebook to keep
        return False


def _disk_full(folder: Path, log_text: str) -> bool:
    return ("no space left on device" in log_text.lower()
            or shutil.disk_usage(folder).free < 1 << 16)


_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit))\b:?\s*(.*)$")


def failure_reason(notebook: Path | None, log_text: str) -> str:
    """The failing cell's exception as one line (``Type: message``), from the executed notebook,
    else the last exception line of the log."""
    if notebook is not None:
        try:
            cells = nbformat.read(notebook, as_version=4).cells
        except Exception:  # unreadable notebook: fall back to the log
            cells = []
        for cell in cells:
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error":
                    message = (out.get("evalue") or "").strip().splitlines()
                    return f"{out.get('ename')}: {message[0] if message else ''}".rstrip(": ")
    lines = [ln.strip() for ln in log_text.splitlines() if _EXCEPTION_LINE.match(ln.strip())]
    if "no space left on device" in log_text.lower():
        full = [ln for ln in lines if "no space left on device" in ln.lower()]
        return full[-1] if full else "no space left on device"
    return lines[-1] if lines else "papermill stopped without an error message (see the log)"


def export_html(notebook: Path, target: Path) -> Path:
    """The executed notebook as a standalone HTML page (images embedded), readable without a kernel."""
    import nbconvert

    body, _ = nbconvert.HTMLExporter().from_notebook_node(nbformat.read(notebook, as_version=4))
    atomic_write_text(body, target)
    return target


def dependencies(study: Study, stages: list[Stage]) -> dict[str, set[str]]:
    """Which stages each stage waits for, derived from what each point ``requires``: a stage
    waits for every other stage that holds a point one of its points reads. The evaluation waits
    for every stage with points (and the data preview), the figures for the evaluation."""
    owner = {(seed, point): stage.name for stage in stages
             for seed in stage_seeds(study, stage) for point in stage.points}
    deps: dict[str, set[str]] = {}
    for stage in stages:
        needed = {(seed, req) for seed in stage_seeds(study, stage) for point in stage.points
                  for req in study.requires(*point)}
        missing = sorted(needed - set(owner))
        if missing:
            raise MirlError(f"stage {stage.name}: requires point(s) {missing} that no stage of "
                            f"this study runs")
        deps[stage.name] = {owner[req] for req in needed} - {stage.name}
    deps["evaluate"] = {s.name for s in stages if s.points} | {"data"}
    deps["figures"] = {"evaluate"}
    return deps


def schedule(deps: dict[str, set[str]], jobs: int, run_stage: Callable[[str], None],
             abort: Callable[[], None] = lambda: None) -> None:
    """Run every stage once the stages it depends on have finished, ``jobs`` at a time.

    ``graphlib.TopologicalSorter`` decides what is ready; among ready stages, a free slot goes to
    the one listed first in ``deps`` (stage order: the trunk before the branches, so the critical
    path never waits behind a long branch). On the first failure (or Ctrl-C) nothing new starts,
    ``abort()`` stops the stages still running, and the failure is raised.
    """
    priority = {name: i for i, name in enumerate(deps)}
    sorter = TopologicalSorter(deps)
    sorter.prepare()
    failure: BaseException | None = None
    ready: list[str] = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        running: dict[Future, str] = {}
        try:
            while failure is None and sorter.is_active():
                ready = sorted([*ready, *sorter.get_ready()], key=priority.__getitem__)
                while ready and len(running) < jobs:
                    name = ready.pop(0)
                    running[pool.submit(run_stage, name)] = name
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    name = running.pop(future)
                    if future.exception() is not None:
                        failure = failure or future.exception()
                    else:
                        sorter.done(name)
        except BaseException:  # Ctrl-C while waiting: stop the running stages before leaving
            abort()
            raise
        if failure is not None:
            abort()
    if failure is not None:
        raise failure


def claim(study: Study) -> RunLock:
    """Check that the run folder belongs to this config and hold its ``.lock`` (a warning about
    a stale lock goes to stderr); the caller releases it."""
    study.check_identity()
    lock = RunLock(study.run_dir)
    warning = lock.acquire()
    if warning:
        print(warning, file=sys.stderr, flush=True)
    return lock


def run(params_file: Path, results_root: Path, force: tuple[str, ...] = (), jobs: int = 1,
        overrides: dict | None = None) -> Study:
    """Run every stage of the study, skipping finished ones; ``jobs`` stages at a time.
    ``overrides`` (runtime settings such as ``{"train": {"gpus": 2}}``) reach every notebook.

    Holds ``<run>/.lock`` throughout. On the first failing stage nothing new starts, the stages
    still running are stopped (their training resumes from its last checkpoint next time) and
    ``StageFailed`` is raised with the failing cell's own error.
    """
    params_file, results_root = Path(params_file).resolve(), Path(results_root).resolve()
    study = open_study(params_file, results_root, overrides)
    stages = stage_list(study)
    unknown = sorted(set(force) - {s.name for s in stages})
    if unknown:
        raise MirlError(f"--force: unknown stage(s) {unknown}; stages: {[s.name for s in stages]}")
    lock = claim(study)
    children = Children()
    try:
        with tempfile.TemporaryDirectory(prefix="mirl-jupyter-") as jupyter:
            _run_stages(study, stages, params_file, results_root, force, jobs, children,
                        kernel_env(Path(jupyter)), overrides)
    finally:
        children.kill_all()
        lock.release()
    print(reproduction_report(study), flush=True)
    return study


def _run_stages(study: Study, stages: list[Stage], params_file: Path, results_root: Path,
                force: tuple[str, ...], jobs: int, children: Children, env: dict[str, str],
                overrides: dict | None) -> None:
    study.prepare()
    keep_reference(study)
    out_dir = study.run_dir / "notebooks"
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
        executed = execute(stage, params_file, results_root, out_dir, children, env, overrides)
        if name == "figures":
            print(f"{where}: report {export_html(executed, study.run_dir / 'report.html')}", flush=True)
        print(f"{where}: finished in {time.time() - t0:.0f} s "
              f"(total {(time.time() - started) / 60:.1f} min)", flush=True)

    schedule(deps, jobs, one, abort=children.kill_all)
    print(f"Study finished in {(time.time() - started) / 60:.1f} min: {study.run_dir}", flush=True)


def run_points_only(params_file: Path, results_root: Path, jobs: int = 1,
                    overrides: dict | None = None) -> Study:
    """Train and score every point of the study without notebooks (for a machine without Jupyter,
    such as a GPU image, and for reruns whose numbers alone matter): the same stages, the same
    dependencies and schedule as ``run``, each stage's points in a child process
    (``run_points``), ``jobs`` at a time. No data preview, evaluation or figures stage: the
    points' ``metrics.csv`` / ``heldout.csv`` are the results. Finished points are skipped.
    """
    params_file, results_root = Path(params_file).resolve(), Path(results_root).resolve()
    study = open_study(params_file, results_root, overrides)
    stages = [s for s in stage_list(study) if s.points]
    lock = claim(study)
    children = Children()
    started = time.time()
    by_name = {stage.name: stage for stage in stages}
    deps = {name: wait_for & set(by_name)
            for name, wait_for in dependencies(study, stages).items() if name in by_name}

    def one(name: str) -> None:
        stage, t0 = by_name[name], time.time()
        if stage_done(study, stage):
            print(f"{name}: done already, skipped", flush=True)
            return
        print(f"{name}: training {len(stage.points)} point(s) ...", flush=True)
        request = json.dumps({"params": str(params_file), "results": str(results_root),
                              "overrides": overrides, "points": stage.points,
                              "seeds": stage.seeds})
        proc = children.start(module_command("mirl_lib.stages", "points-stage", request))
        code = proc.wait()
        children.finished(proc)
        if code != 0:
            raise StageFailed(f"stage {name}: its process exited with code {code}")
        print(f"{name}: finished in {time.time() - t0:.0f} s "
              f"(total {(time.time() - started) / 60:.1f} min)", flush=True)

    try:
        study.prepare()
        schedule(deps, jobs, one, abort=children.kill_all)
    finally:
        children.kill_all()
        lock.release()
    print(f"Points finished in {(time.time() - started) / 60:.1f} min: {study.run_dir}", flush=True)
    return study


def _points_stage(request: str) -> None:
    """The child of ``run_points_only``: one stage's points."""
    spec = json.loads(request)
    study = open_study(spec["params"], spec["results"], spec["overrides"])
    seeds = spec["seeds"]
    study.run_points([tuple(p) for p in spec["points"]], None if seeds is None else tuple(seeds))


INTERRUPTED = ("interrupted: finished stages are kept and an interrupted training resumes from "
               "its last checkpoint; run the same command again to continue")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mirl_lib.stages", description=__doc__)
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
        p.add_argument("--results", type=Path, default=REPO / "results")
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
            _points_stage(args.request)
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


def loss_formula(t: TrainConfig) -> str:
    """The training loss in words: ``L1``, ``L1 + 0.01 (-PSNR)``, ``L1 + 0.5 (1 - SSIM)``..."""
    terms = ["L1"]
    if t.psnr_weight:
        terms.append(f"{t.psnr_weight:g} (-PSNR)")
    if t.ssim_weight:
        terms.append(f"{t.ssim_weight:g} (1 - SSIM)")
    return " + ".join(terms)


def config_notes(cfg: Config) -> str:
    """A few lines describing the setting, for the summary page."""
    m, t, p = cfg.model, cfg.train, cfg.prune
    duration = (f"{t.epochs} epochs (warmup {t.warmup_epochs})" if t.epochs
                else f"{t.steps} steps (warmup {t.warmup_steps})")
    return (f"Preset `{m.preset}` (dim {m.dim}, blocks {list(m.num_blocks)}), data "
            f"`{cfg.data.source}` patch {cfg.data.patch_size}, {duration} of batch "
            f"{t.batch_size} per round (lr {t.lr:g}, loss {loss_formula(t)}), "
            f"{p.rounds} rounds of {p.rate:.0%} "
            f"{p.method} pruning ({p.scope} scope), seeds {list(cfg.study.seeds)}, config hash "
            f"`{cfg.hash()}`.")


if __name__ == "__main__":
    sys.exit(main())
