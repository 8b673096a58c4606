"""Child processes of the stage runner that die with it, and the lock that keeps one study per
results folder.

Every stage runs as ``papermill`` in a child process, and papermill starts a Jupyter kernel in a
new session (so a Ctrl-C or a kill of the runner's process group would not reach it). Both are
started through ``python -m mirl_lib.processes MODULE ARGS...``, which asks Linux to kill the
process when its parent dies (``PR_SET_PDEATHSIG``) and then runs ``MODULE`` as ``__main__``:
runner -> papermill -> kernel die together, whatever ends the runner (an error, Ctrl-C,
``kill -9``). The kernel is started this way by a kernel spec named ``python3`` written to a
private Jupyter data folder (``kernel_env``), so executed notebooks still name the ordinary
``python3`` kernel. ``Children`` additionally kills whole process trees when the runner stops
on purpose.

``RunLock`` is ``<run>/.lock``: who holds the folder (PID, host, start time, command). A second
runner is refused with that message; a lock whose holder is dead is taken over with a warning.
"""
from __future__ import annotations

import ctypes
import json
import os
import runpy
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from mirl_lib.errors import MirlError
from mirl_lib.fileio import atomic_write_text

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Linux: receive SIGKILL when the parent process dies (elsewhere: nothing)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def module_command(module: str, *args: str) -> list[str]:
    """The command that runs ``python -m module args`` as a child dying with its parent."""
    return [sys.executable, "-m", "mirl_lib.processes", module, *args]


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
    # the kernel starts in notebooks/: make sure it imports this mirl_lib
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


class Children:
    """The runner's running child processes; ``kill_all`` ends each with all its descendants."""

    def __init__(self) -> None:
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self.stopping = False

    def start(self, command: list[str], **kwargs: Any) -> subprocess.Popen:
        with self._lock:
            if self.stopping:
                raise MirlError("the study is stopping; no new stage starts")
            proc = subprocess.Popen(command, **kwargs)
            self._procs.add(proc)
        return proc

    def finished(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(proc)

    def kill_all(self) -> None:
        """SIGKILL every running child and its descendants (kernels in their own sessions too);
        no child starts afterwards."""
        with self._lock:
            self.stopping = True
            procs = list(self._procs)
        for proc in procs:
            kill_tree(proc)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and all its descendants, and wait until they are gone."""
    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    for member in [*tree, proc]:
        try:
            member.kill()
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass
    proc.wait()
    deadline = time.time() + 5
    while any(_running(p) for p in tree) and time.time() < deadline:
        time.sleep(0.02)


def _running(process: psutil.Process) -> bool:
    """Alive and not a zombie (a killed orphan stays a zombie until its new parent reaps it)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class RunLock:
    """``<run_dir>/.lock``: one study per results folder at a time."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self.mine = {"pid": os.getpid(), "host": socket.gethostname(),
                     "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                     "create_time": psutil.Process().create_time(),
                     "command": " ".join(sys.argv)}

    def acquire(self) -> str | None:
        """Take the lock; returns a warning when a dead holder's lock was taken over. Raises
        ``MirlError`` naming the holder when a live run holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return self._take_over()
        with os.fdopen(fd, "w") as handle:
            json.dump(self.mine, handle)
        return None

    def _take_over(self) -> str:
        holder = self.holder()
        if holder and self._alive(holder):
            raise MirlError(
                f"{self.path.parent}: another study is running in this folder (PID "
                f"{holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}: "
                f"{holder.get('command')}); wait for it, stop it, or use another --results folder")
        atomic_write_text(json.dumps(self.mine), self.path)
        if holder is None:
            return f"warning: {self.path} was unreadable; took the lock over"
        return (f"warning: took over the lock of a run that is no longer running (PID "
                f"{holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}); "
                f"its finished stages are kept and its interrupted training resumes")

    def holder(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    @staticmethod
    def _alive(holder: dict) -> bool:
        if holder.get("host") != socket.gethostname():
            return True  # cannot tell from here: refuse rather than share the folder
        try:
            process = psutil.Process(int(holder["pid"]))
            return abs(process.create_time() - float(holder.get("create_time", 0))) < 1.0
        except (psutil.NoSuchProcess, KeyError, TypeError, ValueError):
            return False

    def release(self) -> None:
        if (self.holder() or {}).get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)


def launch_distributed(module: str, processes: int, *args: str) -> None:
    """Run ``python -m module args`` in ``processes`` ranks under ``torchrun --standalone``
    (the ranks and torchrun die with this process); raises ``MirlError`` if any rank fails."""
    command = module_command("torch.distributed.run", "--standalone",
                             f"--nproc_per_node={processes}", "-m", module, *args)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])])
    code = subprocess.run(command, env=env).returncode
    if code != 0:
        raise MirlError(f"torchrun with {processes} processes failed (exit {code}) running "
                        f"{module} {' '.join(args)}; its ranks' errors are printed above")


def main(argv: list[str]) -> None:
    """``python -m mirl_lib.processes MODULE ARGS...``: run MODULE as a child of this parent."""
    die_with_parent()
    sys.argv = list(argv)
    runpy.run_module(argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
