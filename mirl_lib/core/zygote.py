"""Warm starts: a process that imports the heavy libraries once and forks a child per command.

Every stage of a study is a fresh Python process (papermill, its Jupyter kernel, a point-training
process), and on a small CPU importing torch, its compiler stack (AdamW imports ``torch._dynamo``),
pandas, scikit-image and papermill would take seconds per stage before any work. A *zygote*
imports them once (7 s in ``results/benchmarks/study_profile.csv``, whose stages then start their
kernel in about 0.5 s and open the study in 0.03 s); each command then runs in a child forked
from it, which starts in milliseconds with those modules already loaded. The child
runs exactly the module and arguments it would have run (``runpy``), in the caller's folder and
environment, writing to the caller's standard streams, so what it computes is unchanged.

- ``python -m mirl_lib.core.zygote serve SOCKET MODULE...`` imports the modules, listens on a Unix
  socket and prints ``ready``. For each request it forks; the child takes the caller's stdin,
  stdout and stderr (passed over the socket), working folder, environment and ``sys.argv``, and
  runs the module as ``__main__``. When the child ends, its exit status goes back to the caller;
  when the caller goes away first (killed, Ctrl-C), the child's whole session is killed. The
  zygote dies with its parent (the runner) and its children with it.
- ``python -m mirl_lib.core.zygote run SOCKET MODULE ARGS...`` is the caller: a small process
  (standard library only) that stands in for the child: it forwards signals to it, waits for it and
  exits with its status (``-N`` for a child killed by signal N, as ``subprocess`` reports it).
  Without a reachable zygote (still importing, or gone) it runs the module itself, cold.

Fork safety: the zygote only imports (it runs no tensor operation, so no thread pool exists when it
forks) and is single-threaded (a ``selectors`` loop). Linux only (``fork``, ``SCM_RIGHTS``); the
runner uses it where ``os.fork`` exists.
"""
from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import runpy
import selectors
import signal
import socket
import struct
import sys
import traceback

from mirl_lib.core.imports import lean

ENV = "MIRL_ZYGOTE"  # the socket path a command's caller reaches the zygote on
_HEADER = struct.Struct("!I")
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
              signal.SIGUSR2)


def _die_with_parent() -> None:
    """Linux: receive SIGKILL when the parent dies (elsewhere: nothing)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


def _run_module(module: str, args: list[str]) -> int:
    """Run ``module`` as ``__main__`` with ``args``; its exit code (uncaught errors: 1)."""
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return int(exc.code or 0)
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001 - what the interpreter would print, then exit 1
        traceback.print_exc()
        return 1


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the other side closed the connection")
        data += chunk
    return data


# ----- the caller ---------------------------------------------------------------------------------

def run(path: str, module: str, args: list[str]) -> int:
    """Run ``module args`` in a child of the zygote at ``path`` and return its exit status (the
    module runs here, cold, when no zygote answers)."""
    _die_with_parent()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError:
        conn.close()
        return _run_module(module, args)
    child: list[int] = []  # the child's pid, once known
    pending: list[int] = []  # signals that came before it

    def forward(signum: int, frame: object) -> None:
        if not child:
            pending.append(signum)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(child[0], signum)

    for signum in _FORWARDED:
        signal.signal(signum, forward)
    request = json.dumps({"module": module, "args": args, "cwd": os.getcwd(),
                          "env": dict(os.environ)}).encode()
    socket.send_fds(conn, [_HEADER.pack(len(request))], [0, 1, 2])
    conn.sendall(request)
    stream = conn.makefile("r")
    child.append(int(json.loads(stream.readline())["pid"]))
    for signum in pending:
        forward(signum, None)
    line = stream.readline()
    if not line:  # the zygote died: its children died with it
        return 1
    status = int(json.loads(line)["status"])
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        if signum not in (signal.SIGKILL, signal.SIGSTOP):  # those keep their default anyway
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    return os.waitstatus_to_exitcode(status)


# ----- the zygote --------------------------------------------------------------------------------

def _child(conn: socket.socket, listener: socket.socket, fds: list[int], request: dict) -> None:
    """In the forked child: become the requested command, then exit with its status."""
    os.setsid()  # its own session: the zygote can kill it and everything it starts at once
    _die_with_parent()
    listener.close()
    conn.close()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    for signum in (*_FORWARDED, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    code = _run_module(request["module"], request["args"])
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def serve(path: str, preload: list[str]) -> None:
    """Import ``preload``, then fork one child per request on ``path`` until the parent dies."""
    _die_with_parent()
    # a Ctrl-C reaches the runner's whole process group: the runner stops the zygote itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    lean()
    for name in preload:
        importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)
    select = selectors.DefaultSelector()
    select.register(listener, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}
    while True:
        for key, _ in select.select(timeout=0.05):
            if key.fileobj is listener:
                conn, _ = listener.accept()
                try:
                    head, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
                    request = json.loads(_read_exactly(conn, _HEADER.unpack(head)[0]))
                except (OSError, ValueError, struct.error):
                    conn.close()
                    continue
                pid = os.fork()
                if pid == 0:
                    _child(conn, listener, fds, request)
                for fd in fds:
                    os.close(fd)
                children[pid] = conn
                conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
                select.register(conn, selectors.EVENT_READ, pid)
            elif not key.fileobj.recv(1):  # the caller is gone: so is its command
                for kill in (os.killpg, os.kill):  # its session, and itself before it has one
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        kill(key.data, signal.SIGKILL)
                select.unregister(key.fileobj)
        _reap(children, select)


def _reap(children: dict[int, socket.socket], select: selectors.BaseSelector) -> None:
    """Send each ended child's wait status to its caller."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps({"status": status}).encode() + b"\n")
        with contextlib.suppress(KeyError, ValueError):
            select.unregister(conn)
        conn.close()


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "serve":
        serve(argv[1], argv[2:])
        return 0
    if len(argv) >= 3 and argv[0] == "run":
        return run(argv[1], argv[2], argv[3:])
    print("usage: python -m mirl_lib.core.zygote serve SOCKET MODULE... | run SOCKET MODULE "
          "ARGS...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
