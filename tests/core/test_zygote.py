"""Warm starts: a command forked from the zygote behaves as the same command started fresh (its
streams, folder, environment, arguments and exit status), dies with its caller, and a command
runs cold when no zygote answers."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mirl_lib.core import zygote
from mirl_lib.core.processes import Zygote, module_command
from mirl_lib.files.paths import CHECKOUT

PROBE = '''
import os, signal, sys, time
mode = sys.argv[1]
print("argv", sys.argv[1:], "cwd", os.getcwd(), "env", os.environ.get("PROBE_VALUE"), flush=True)
print("to stderr", file=sys.stderr, flush=True)
if mode == "sleep":
    open(sys.argv[2], "w").write(str(os.getpid()))
    try:
        time.sleep(60)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
if mode == "die":
    os.kill(os.getpid(), signal.SIGKILL)
sys.exit(int(sys.argv[2]) if mode == "exit" else 0)
'''


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A module ``zygote_probe`` (a script: it runs when imported) that the zygote's children and
    a fresh interpreter find on their path."""
    folder = tmp_path / "modules"
    folder.mkdir()
    (folder / "zygote_probe.py").write_text(PROBE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), str(CHECKOUT)]))
    return folder


def run(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=60,
                          env={**os.environ, **env})


def test_a_forked_command_is_the_command(probe: Path, tmp_path: Path) -> None:
    cold = run(module_command("zygote_probe", "exit", "3"), tmp_path, PROBE_VALUE="a")
    with Zygote(("json",)) as warm:
        assert warm.wait_ready(60) and os.environ[zygote.ENV]
        command = module_command("zygote_probe", "exit", "3")
        assert command[2:4] == ["mirl_lib.core.zygote", "run"]
        forked = run(command, tmp_path, PROBE_VALUE="a")
    assert zygote.ENV not in os.environ and warm.proc is None  # stopped and cleaned up
    assert forked.returncode == cold.returncode == 3
    assert forked.stdout == cold.stdout == (f"argv ['exit', '3'] cwd {tmp_path} env a\n")
    assert forked.stderr == cold.stderr == "to stderr\n"


def test_the_caller_reports_how_the_command_ended(probe: Path, tmp_path: Path) -> None:
    with Zygote(("json",)) as warm:
        assert warm.wait_ready(60)
        killed = run(module_command("zygote_probe", "die"), tmp_path)
        pid_file = tmp_path / "pid"
        caller = subprocess.Popen(module_command("zygote_probe", "sleep", str(pid_file)),
                                  stdout=subprocess.PIPE, text=True, cwd=tmp_path)
        wait_for(pid_file.exists)
        caller.send_signal(signal.SIGINT)  # forwarded to the command
        out, _ = caller.communicate(timeout=30)
    assert killed.returncode == -signal.SIGKILL
    assert caller.returncode == 130 and out.endswith("interrupted\n")


def test_a_command_dies_with_its_caller(probe: Path, tmp_path: Path) -> None:
    with Zygote(("json",)) as warm:
        assert warm.wait_ready(60)
        pid_file = tmp_path / "pid"
        caller = subprocess.Popen(module_command("zygote_probe", "sleep", str(pid_file)),
                                  stdout=subprocess.DEVNULL, cwd=tmp_path)
        wait_for(pid_file.exists)
        child = int(pid_file.read_text())
        assert alive(child)
        caller.kill()
        caller.wait()
        wait_for(lambda: not alive(child))


def test_without_a_zygote_the_command_runs_cold(probe: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "mirl_lib.core.zygote", "run", str(tmp_path / "absent"),
               "zygote_probe", "exit", "4"]
    done = run(command, tmp_path, PROBE_VALUE="b")
    assert done.returncode == 4 and done.stdout == f"argv ['exit', '4'] cwd {tmp_path} env b\n"


def test_a_zygote_that_cannot_start_leaves_cold_commands(probe: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture
                                                               ) -> None:
    with Zygote(("no_such_module_anywhere",)) as warm:
        assert not warm.wait_ready(60) and warm.proc.wait(60) != 0
        # the caller finds no zygote and runs the command itself
        done = run(module_command("zygote_probe", "exit", "5"), tmp_path, PROBE_VALUE="c")
        assert done.returncode == 5 and done.stdout.endswith("env c\n")
        time.sleep(0.2)  # the watcher's warning
    assert "warning: the warm start did not come up" in capsys.readouterr().err


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:  # gone between the signal and the read
        return False
    return status != "Z"  # a zombie has ended


def test_the_first_commands_can_wait_for_the_warm_start(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    """``wait_to_start`` returns once the imports are done and says how long they took; a slow
    import past the wait is named, and commands meanwhile start cold (the runner waits before its
    first stage)."""
    slow = tmp_path / "modules"
    slow.mkdir()
    (slow / "slow_import.py").write_text("import time\ntime.sleep(30)\n")
    with Zygote(("json",)) as warm:
        warm.wait_to_start(60)
        assert warm.ready.is_set()
    assert re.fullmatch(r"warm start: imported in \d+ s\n", capsys.readouterr().out)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(slow), str(CHECKOUT)])}
    with Zygote(("slow_import",), env=env) as warm:
        t0 = time.time()
        warm.wait_to_start(0.5)
        assert 0.5 <= time.time() - t0 < 10 and not warm.ready.is_set()
    assert capsys.readouterr().out == ("warm start: not ready after 0 s; stages start fresh "
                                       "interpreters until it is\n")
