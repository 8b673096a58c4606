"""Child processes that die with their parent, and killing whole process trees.

Every stage runs as ``papermill`` in a child process, and papermill starts a Jupyter kernel in a
new session (so a Ctrl-C or a kill of the runner's process group would not reach it). Both are
started through ``python -m mirl_lib.core.processes MODULE ARGS...``, which asks Linux to kill the
process when its parent dies (``PR_SET_PDEATHSIG``) and then runs ``MODULE`` as ``__main__``:
runner -> papermill -> kernel die together, whatever ends the runner (an error, Ctrl-C,
``kill -9``). ``Children`` additionally kills whole process trees when the runner stops on
purpose. No torch.
"""
from __future__ import annotations

import ctypes
import os
import runpy
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import psutil

from mirl_lib.core import zygote
from mirl_lib.core.errors import MirlError
from mirl_lib.core.imports import lean

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
    """The command that runs ``python -m module args`` as a child dying with its parent: while a
    warm zygote runs (``Zygote``), its small caller, which has the child forked from the zygote
    (or runs the module itself while the zygote is still importing); else a fresh interpreter."""
    path = os.environ.get(zygote.ENV)
    if path:
        return [sys.executable, "-m", "mirl_lib.core.zygote", "run", path, module, *args]
    return [sys.executable, "-m", "mirl_lib.core.processes", module, *args]


class Zygote:
    """A warm zygote (``mirl_lib.core.zygote``) for the commands of ``module_command`` while the
    ``with`` block runs: it imports ``preload`` once, then every command (papermill, a Jupyter
    kernel, a point-training process, a torchrun rank) is a child forked from it instead of a fresh
    interpreter. Its socket path is in the environment (``zygote.ENV``) that children inherit.
    Until it has imported everything, commands start fresh interpreters as before
    (``wait_to_start`` lets the first commands wait for it instead). Where it cannot start (no
    ``os.fork``, an import failing) they always do, after one warning on stderr."""

    def __init__(self, preload: tuple[str, ...], env: dict[str, str] | None = None) -> None:
        self.preload, self.env = preload, env
        self.proc: subprocess.Popen | None = None
        self.ready = threading.Event()
        self._folder: tempfile.TemporaryDirectory | None = None
        self._before: str | None = None
        self._set = False

    def __enter__(self) -> Zygote:
        if not hasattr(os, "fork") or not hasattr(socket, "send_fds"):
            return self
        self._folder = tempfile.TemporaryDirectory(prefix="mirl-zygote-")
        path = os.path.join(self._folder.name, "socket")
        self.proc = proc = subprocess.Popen(
            [sys.executable, "-m", "mirl_lib.core.zygote", "serve", path, *self.preload],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            env=self.env if self.env is not None else os.environ)

        def watch() -> None:
            if proc.stdout.readline() == "ready\n":
                self.ready.set()
            elif self._set:
                print(f"warning: the warm start did not come up (exit {proc.wait()}); every "
                      f"stage starts a fresh interpreter", file=sys.stderr, flush=True)

        threading.Thread(target=watch, daemon=True).start()
        self._before, self._set = os.environ.get(zygote.ENV), True
        os.environ[zygote.ENV] = path
        return self

    def wait_ready(self, timeout: float) -> bool:
        """Whether the zygote has imported everything within ``timeout`` seconds (False at once
        when it has ended)."""
        deadline = time.time() + timeout
        while not self.ready.wait(0.05):
            if self.proc is None or self.proc.poll() is not None or time.time() > deadline:
                return self.ready.is_set()
        return True

    def wait_to_start(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the imports (commands started meanwhile would import
        the same modules themselves, beside it, on the same cores), then say on stdout how long
        the warm start took, or that commands start fresh interpreters until it is ready."""
        if self.proc is None:
            return
        t0 = time.time()
        if self.wait_ready(timeout):
            print(f"warm start: imported in {time.time() - t0:.0f} s", flush=True)
        elif self.proc.poll() is None:
            print(f"warm start: not ready after {timeout:.0f} s; stages start fresh interpreters "
                  f"until it is", flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._set and self._before is None:
            os.environ.pop(zygote.ENV, None)
        elif self._set:
            os.environ[zygote.ENV] = self._before
        self._set = False
        if self.proc is not None and self.proc.poll() is None:
            kill_tree(self.proc)
        if self._folder is not None:
            self._folder.cleanup()
        self.proc = self._folder = None


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


def main(argv: list[str]) -> None:
    """``python -m mirl_lib.core.processes MODULE ARGS...``: run MODULE as a child of this
    parent."""
    die_with_parent()
    lean()
    sys.argv = list(argv)
    runpy.run_module(argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
