"""The study's stages as papermill notebooks, and the runner behind ``./run_all.sh``.

``python -m mirl_lib.stages run params/default.yaml [--results DIR] [--force STAGE ...]`` executes
every stage notebook in order, saving each executed notebook under ``<run>/notebooks/``. A stage
whose artifacts exist is skipped; ``--force`` moves a stage's points aside (nothing is deleted) and
runs it again. At the end the run's numbers are compared with the reference copy of the committed
results (``<run>/reference/metrics.csv``, taken before the first stage overwrote them).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from graphlib import TopologicalSorter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mirl_lib.fileio import atomic_write_text
from mirl_lib.config import Config, load_config
from mirl_lib.errors import ConfigError, MirlError
from mirl_lib.lottery import Study
from mirl_lib.strategies import REGISTRY
from mirl_lib.report import compare_with_reference

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"


@dataclass(frozen=True)
class Stage:
    """One notebook execution: its name, notebook file and injected parameters."""

    name: str
    notebook: str
    parameters: dict = field(default_factory=dict)
    points: tuple[tuple[str, int], ...] = ()


def open_study(params_file: str | Path, results_root: str | Path) -> Study:
    """The study of a params file, in ``<results_root>/<study.name>``."""
    cfg = load_config(params_file)
    try:
        return Study(cfg, Path(results_root) / cfg.study.name)
    except ConfigError as exc:
        raise ConfigError(f"{params_file}: {exc}") from None


def stage_list(study: Study) -> list[Stage]:
    """Every stage: the data preview, one stage per group of points (as each strategy's
    ``stage(rnd)`` declares, in the registry's order), the evaluation and the figures."""
    groups: dict[str, Stage] = {}
    for strategy, rnd in study.points():
        spec = REGISTRY[strategy].stage(rnd)
        stage = groups.get(spec.name) or Stage(spec.name, spec.notebook, dict(spec.parameters))
        groups[spec.name] = Stage(stage.name, stage.notebook, stage.parameters,
                                  (*stage.points, (strategy, rnd)))
    return [Stage("data", "00_data_preview.ipynb"), *groups.values(),
            Stage("evaluate", "04_evaluate.ipynb"), Stage("figures", "05_figures.ipynb")]


def stage_done(study: Study, stage: Stage) -> bool:
    """A stage with points is done when all of them are, for every seed. The others (data
    preview, evaluation, figures) take seconds and always rerun, so a fresh clone redoes them."""
    return bool(stage.points) and all(study.is_done(seed, s, r) for seed in study.cfg.study.seeds
                                      for s, r in stage.points)


def move_aside(study: Study, stage: Stage) -> list[Path]:
    """Rename a stage's point folders to ``<folder>.replaced-<time>`` so it reruns; returns them."""
    moved = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for seed in study.cfg.study.seeds:
        for strategy, rnd in stage.points:
            folder = study.point_dir(seed, strategy, rnd)
            if folder.exists():
                target = folder.with_name(f"{folder.name}.replaced-{stamp}")
                folder.rename(target)
                moved.append(target)
    return moved


def keep_reference(study: Study) -> Path | None:
    """Copy the committed ``metrics.csv`` to ``reference/`` once, before this run replaces it."""
    current = study.run_dir / "metrics.csv"
    reference = study.run_dir / "reference" / "metrics.csv"
    if current.is_file() and not reference.exists():
        reference.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(current, reference)
    return reference if reference.is_file() else None


def reproduction_report(study: Study) -> str:
    """How this run's PSNRs compare with the reference (committed) run."""
    reference = study.run_dir / "reference" / "metrics.csv"
    current = study.run_dir / "metrics.csv"
    if not reference.is_file():
        return "No committed reference results to compare with (this run is the first)."
    table = compare_with_reference(pd.read_csv(current), pd.read_csv(reference))
    atomic_write_text(table.to_csv(index=False), study.run_dir / "reproduction.csv")
    both = table.dropna(subset=["difference"])
    missing = int(table["difference"].isna().sum())
    diff = both["difference"].abs()
    return (f"Compared with the committed results on {len(both)} (point, task) means: "
            f"max |ΔPSNR| = {diff.max():.3f} dB, mean |ΔPSNR| = {diff.mean():.3f} dB"
            + (f"; {missing} rows present in only one of the two" if missing else "") + ".")


def execute(stage: Stage, params_file: Path, results_root: Path, out_dir: Path) -> Path:
    """Run one stage notebook through papermill in its own process; the executed copy and a log of
    the run go to ``out_dir``. Raises ``MirlError`` naming both when the notebook fails."""
    suffix = "".join(f"_{v}" if isinstance(v, str) else f"_{v:02d}" for v in stage.parameters.values())
    output = out_dir / f"{Path(stage.notebook).stem}{suffix}.ipynb"
    log = output.with_suffix(".log")
    parameters = {"params_file": str(params_file), "results_root": str(results_root),
                  **stage.parameters}
    command = [sys.executable, "-m", "papermill", str(NOTEBOOKS / stage.notebook), str(output),
               "--cwd", str(NOTEBOOKS), "--kernel", "python3", "--no-progress-bar",
               "-y", json.dumps(parameters)]
    with open(log, "w") as stream:
        code = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise MirlError(f"stage {stage.name} failed: see {output} (the failing cell) and {log}")
    return output


def export_html(notebook: Path, target: Path) -> Path:
    """The executed notebook as a standalone HTML page (images embedded), readable without a kernel."""
    import nbconvert
    import nbformat

    body, _ = nbconvert.HTMLExporter().from_notebook_node(nbformat.read(notebook, as_version=4))
    atomic_write_text(body, target)
    return target


def dependencies(study: Study, stages: list[Stage]) -> dict[str, set[str]]:
    """Which stages each stage waits for, derived from what each point ``requires``: a stage
    waits for every other stage that holds a point one of its points reads. The evaluation waits
    for every stage with points (and the data preview), the figures for the evaluation."""
    owner = {point: stage.name for stage in stages for point in stage.points}
    deps: dict[str, set[str]] = {}
    for stage in stages:
        needed = {req for point in stage.points for req in study.requires(*point)}
        missing = sorted(needed - set(owner))
        if missing:
            raise MirlError(f"stage {stage.name}: requires point(s) {missing} that no stage of "
                            f"this study runs")
        deps[stage.name] = {owner[req] for req in needed} - {stage.name}
    deps["evaluate"] = {s.name for s in stages if s.points} | {"data"}
    deps["figures"] = {"evaluate"}
    return deps


def schedule(deps: dict[str, set[str]], jobs: int, run_stage: Callable[[str], None]) -> None:
    """Run every stage once the stages it depends on have finished, ``jobs`` at a time.

    ``graphlib.TopologicalSorter`` decides what is ready; among ready stages, a free slot goes to
    the one listed first in ``deps`` (stage order: the trunk before the branches, so the critical
    path never waits behind a long branch). On the first failure nothing new starts; stages already
    running finish, then the failure is raised.
    """
    priority = {name: i for i, name in enumerate(deps)}
    sorter = TopologicalSorter(deps)
    sorter.prepare()
    failure: BaseException | None = None
    ready: list[str] = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        running: dict[Future, str] = {}
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
    if failure is not None:
        raise failure


def run(params_file: Path, results_root: Path, force: tuple[str, ...] = (), jobs: int = 1) -> Study:
    """Run every stage of the study, skipping finished ones; ``jobs`` stages at a time."""
    params_file, results_root = Path(params_file).resolve(), Path(results_root).resolve()
    study = open_study(params_file, results_root)
    stages = stage_list(study)
    unknown = sorted(set(force) - {s.name for s in stages})
    if unknown:
        raise MirlError(f"--force: unknown stage(s) {unknown}; stages: {[s.name for s in stages]}")
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
            print(f"{where}: done already, skipped", flush=True)
            return
        t0 = time.time()
        print(f"{where}: running {stage.notebook} ...", flush=True)
        executed = execute(stage, params_file, results_root, out_dir)
        if name == "figures":
            print(f"{where}: report {export_html(executed, study.run_dir / 'report.html')}", flush=True)
        print(f"{where}: finished in {time.time() - t0:.0f} s "
              f"(total {(time.time() - started) / 60:.1f} min)", flush=True)

    schedule(deps, jobs, one)
    print(reproduction_report(study), flush=True)
    print(f"Study finished in {(time.time() - started) / 60:.1f} min: {study.run_dir}", flush=True)
    return study


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mirl_lib.stages", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run every stage in order")
    list_p = sub.add_parser("list", help="list the stages and whether they are done")
    for p in (run_p, list_p):
        p.add_argument("params", type=Path)
        p.add_argument("--results", type=Path, default=REPO / "results")
    run_p.add_argument("--force", action="append", default=[], metavar="STAGE")
    run_p.add_argument("--jobs", type=int, default=2,
                       help="stages run at once where dependencies allow (default 2)")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            study = open_study(args.params, args.results)
            for stage in stage_list(study):
                print(f"{stage.name}\t{'done' if stage_done(study, stage) else 'todo'}")
        else:
            run(args.params, args.results, tuple(args.force), max(1, args.jobs))
    except MirlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def config_notes(cfg: Config) -> str:
    """A few lines describing the setting, for the summary page."""
    m, t, p = cfg.model, cfg.train, cfg.prune
    return (f"Preset `{m.preset}` (dim {m.dim}, blocks {list(m.num_blocks)}), data `{cfg.data.source}` "
            f"patch {cfg.data.patch_size}, {t.steps} steps of batch {t.batch_size} per round "
            f"(lr {t.lr:g}, warmup {t.warmup_steps}), {p.rounds} rounds of {p.rate:.0%} {p.method} "
            f"pruning ({p.scope} scope), seeds {list(cfg.study.seeds)}, config hash "
            f"`{cfg.hash()}`.")


if __name__ == "__main__":
    sys.exit(main())
