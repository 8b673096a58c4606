"""``RunLock`` is ``<run>/.lock``: one study per results folder. Who holds the folder (PID, host,
start time, command); a second runner is refused with that message; a lock whose holder is dead is
taken over with a warning.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import psutil

from mirl_lib.core.errors import MirlError
from mirl_lib.files.atomic import atomic_write_text
from mirl_lib.study.study import Study


class RunLock:
    """``<run_dir>/.lock``: one study per results folder at a time."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self.mine = {"pid": os.getpid(), "host": socket.gethostname(),
                     "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                     "create_time": psutil.Process().create_time(),
                     "command": " ".join(sys.argv)}
        self.taken_over: dict | None = None  # the dead holder's record, once taken over

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
        self.taken_over = holder
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


def claim(study: Study) -> RunLock:
    """Check that the run folder belongs to this config and hold its ``.lock`` (a warning about
    a stale lock goes to stderr); the caller releases it."""
    study.check_identity()
    lock = RunLock(study.run_dir)
    warning = lock.acquire()
    if warning:
        print(warning, file=sys.stderr, flush=True)
    return lock
