"""One stage as a papermill notebook in a child process (``execute``): its executed copy and log,
its failing cell's error reported at once, and a Jupyter kernel that dies with the runner
(``kernel_env``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from mirl_lib.core.imports import lean

lean()  # before nbformat: see core/imports.py
import nbformat  # noqa: E402

from mirl_lib.core.config import load_config  # noqa: E402
from mirl_lib.core.errors import MirlError  # noqa: E402
from mirl_lib.core.processes import Children, kill_tree, module_command  # noqa: E402
from mirl_lib.files.atomic import atomic_write_text  # noqa: E402
from mirl_lib.files.paths import NOTEBOOKS, NOTEBOOKS_DIR, importable, run_dir  # noqa: E402
from mirl_lib.study.stage import Stage  # noqa: E402


def executed_notebook(stage: Stage, out_dir: Path) -> Path:
    """Where the executed copy of a stage's notebook is kept (its log beside it, ``.log``)."""
    suffix = "".join(f"_{v}" if isinstance(v, str) else
                     f"_seed{'-'.join(map(str, v))}" if isinstance(v, (list, tuple)) else
                     f"_{v:02d}" for v in stage.parameters.values())
    return out_dir / f"{Path(stage.notebook).stem}{suffix}.ipynb"


class StageFailed(MirlError):
    """A stage notebook failed; the message holds the notebook's own error and where to look."""


def run_described(params_file: Path, results_root: Path, stage: Stage,
                  overrides: dict | None = None) -> Path:
    """Run one stage here from its description (``Stage.describe``): what a stage's Slurm job
    runs. Its notebook through papermill (``execute``), the executed copy and log under
    ``<run>/notebooks/``; this process imports neither torch nor the study (the kernel does).
    Takes no lock (the runner that asked for it holds the folder's). Raises ``StageFailed``."""
    cfg = load_config(params_file, overrides)
    out_dir = run_dir(results_root, cfg.study.name) / NOTEBOOKS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    children = Children()
    try:
        with tempfile.TemporaryDirectory(prefix="mirl-jupyter-") as jupyter:
            return execute(stage, params_file, results_root, out_dir, children,
                           kernel_env(Path(jupyter)), overrides)
    finally:
        children.kill_all()


# A kernel's ports are chosen free by the client and bound by the kernel a moment later; another
# kernel starting at that moment (a second job on the node) can take one first. No cell has run
# then, so papermill is started again, at most this many times.
KERNEL_START_TRIES = 3


def kernel_start_race(log_text: str) -> bool:
    """Whether papermill stopped because its kernel could not bind a port another process took
    before it (the kernel died before it replied, nothing ran)."""
    return ("Kernel died before replying to kernel_info" in log_text
            and "Address already in use" in log_text)


def execute(stage: Stage, params_file: Path, results_root: Path, out_dir: Path,
            children: Children, env: dict[str, str], overrides: dict | None = None) -> Path:
    """Run one stage notebook through papermill in a child process (``children``); the executed
    copy and a log go to ``out_dir``. Both are written to hidden temporary files and replace the
    previous ones only when complete, so an interrupted or full-disk run leaves the previous
    version, never a truncated file. A kernel that died at its start on a port taken meanwhile
    (``kernel_start_race``) is started again (``KERNEL_START_TRIES``), the log saying so. Raises
    ``StageFailed`` with the notebook's own error."""
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
        for attempt in range(1, KERNEL_START_TRIES + 1):
            start = stream.tell()
            proc = children.start(command, stdout=stream, stderr=subprocess.STDOUT, env=env)
            try:
                code, failed = _wait_or_fail_early(proc, partial_nb)
            finally:
                children.finished(proc)
            stream.flush()
            with open(partial_log, errors="replace") as attempt_log:
                attempt_log.seek(start)
                raced = kernel_start_race(attempt_log.read())
            if not (code != 0 and failed is None and not children.stopping and raced
                    and attempt < KERNEL_START_TRIES):
                break
            stream.write(f"\n[mirl] the kernel could not bind a port another process took; "
                         f"starting papermill again (attempt {attempt + 1} of "
                         f"{KERNEL_START_TRIES})\n\n")
            stream.flush()
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
                          f"{failure_reason(output if output.exists() else None, log_text, full)} "
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


def failure_reason(notebook: Path | None, log_text: str, disk_full: bool = False) -> str:
    """The failing cell's exception as one line (``Type: message``), from the executed notebook,
    else the last exception line of the log. ``disk_full``: the stage's disk was found full, so
    the reason names it even when the log (on that disk) could not record papermill's error."""
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
    logged = "no space left on device" in log_text.lower()
    if disk_full or logged:
        full = [ln for ln in lines if "no space left on device" in ln.lower()]
        if full:
            return full[-1]
        if lines:
            return f"no space left on device ({lines[-1]})"
        return "no space left on device" + (
            "" if logged else " (papermill's log could not record its error)")
    return lines[-1] if lines else "papermill stopped without an error message (see the log)"


def export_html(notebook: Path, target: Path) -> Path:
    """The executed notebook as a standalone HTML page (images embedded), readable without a
    kernel."""
    import nbconvert

    body, _ = nbconvert.HTMLExporter().from_notebook_node(nbformat.read(notebook, as_version=4))
    atomic_write_text(body, target)
    return target


def kernel_env(folder: Path) -> dict[str, str]:
    """Environment for papermill whose ``python3`` kernel dies with papermill.

    Writes ``<folder>/kernels/python3/kernel.json`` and puts ``folder`` first on ``JUPYTER_PATH``.
    """
    spec = {"argv": module_command("ipykernel_launcher", "-f", "{connection_file}"),
            "display_name": "Python 3 (ipykernel)", "language": "python",
            "metadata": {"debugger": False}}
    atomic_write_text(json.dumps(spec, indent=1), folder / "kernels" / "python3" / "kernel.json")
    env = dict(os.environ)
    env["JUPYTER_PATH"] = os.pathsep.join(
        [str(folder), *filter(None, [os.environ.get("JUPYTER_PATH")])])
    return importable(env)  # the kernel starts in notebooks/: it imports this mirl_lib
