"""Session-wide fixtures: the working tree is left as found, and one smoke study through
``./run_all.sh`` (interrupted once and resumed) that every test reading a finished study shares."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from smoke import SMOKE, SmokeRun, run_all

from mirl_lib.core.config import load_config
from mirl_lib.core.names import TRUNK
from mirl_lib.files.paths import CHECKOUT, SUMMARY_FILE
from mirl_lib.study.study import Study


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> SmokeRun:
    """The smoke study through ``./run_all.sh``, killed once its first trunk round is done, then
    run again to the end (one per test session; tests that change it restore what they change)."""
    results = tmp_path_factory.mktemp("smoke_results")
    study = Study(load_config(SMOKE), results / "smoke")
    proc = subprocess.Popen([str(CHECKOUT / "run_all.sh"), str(SMOKE), "--results", str(results),
                             "--jobs", "1"], cwd=CHECKOUT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 400
    while not study.is_done(0, TRUNK, 1) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert study.is_done(0, TRUNK, 1), "the first run never finished round 1"
    assert not (study.run_dir / SUMMARY_FILE).exists()
    second = run_all(SMOKE, results)
    assert second.returncode == 0, second.stdout + second.stderr
    return SmokeRun(study.run_dir, second.stdout)


@pytest.fixture(scope="session", autouse=True)
def tests_leave_the_working_tree_as_found() -> Iterator[None]:
    """Fail the session if a test changed tracked files or left untracked ones in the checkout."""
    repo = Path(__file__).resolve().parents[1]

    def status() -> str | None:
        try:
            return subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True,
                                  text=True, timeout=60, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            return None  # not a git checkout: nothing to compare

    before = status()
    yield
    after = status()
    assert before is None or after == before, f"tests changed the working tree:\n{after}"
