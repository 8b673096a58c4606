"""Session-wide fixtures: the working tree is left as found, and one smoke study through
``./run_all.sh`` (interrupted once and resumed) that every test reading a finished study shares.

The suite runs on two pytest-xdist workers (``./run_tests.sh``: ``-n 2 --dist loadscope
--no-loadscope-reorder``). A test module stays on one worker, so its module-scoped fixtures are
built once; the modules that take longest go first (``LONGEST_FIRST``), so the two workers finish
together. The smoke study is built once for both workers (a file lock in the workers' common
temporary folder), and torch in each worker uses one thread: two workers with two threads each on
two cores wait on each other."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from smoke import SMOKE, SmokeRun, run_all

from mirl_lib.core.config import load_config
from mirl_lib.core.names import TRUNK
from mirl_lib.files.paths import CHECKOUT, METRICS_FILE, SUMMARY_FILE
from mirl_lib.study.study import Study

# Test modules in the order the workers take them: the ones that take longest on the 2-core
# machine first (``./run_tests.sh --durations=0``); the rest follow in collection order.
LONGEST_FIRST = ("tests/runner/test_slurm.py", "tests/runner/test_slurm_requeue.py",
                 "tests/runner/test_run.py", "tests/runner/test_gpus.py",
                 "tests/runner/test_failures.py", "tests/study/test_study.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest modules first (a stable sort: the rest keep their order); tests marked ``gpu``
    are deselected (reported as such, not skipped) where torch sees no CUDA device."""
    if not torch.cuda.is_available():
        gpu = [item for item in items if item.get_closest_marker("gpu")]
        if gpu:
            config.hook.pytest_deselected(items=gpu)
            items[:] = [item for item in items if not item.get_closest_marker("gpu")]
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


@pytest.fixture(scope="session", autouse=True)
def one_thread_per_worker(worker_id: str) -> Iterator[None]:
    """Torch in a pytest-xdist worker uses one thread (the studies' own processes set theirs)."""
    if worker_id == "master":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> SmokeRun:
    """The smoke study through ``./run_all.sh``, killed once its first trunk round is done, then
    run again to the end: one per test run, shared by the xdist workers (tests that change it
    restore what they change). ``SmokeRun.metrics`` is a copy of its ``metrics.csv`` taken when it
    finished, for tests on another worker that compare against it."""
    if worker_id == "master":
        return make_smoke_run(tmp_path_factory.mktemp("smoke_results"))
    shared = tmp_path_factory.getbasetemp().parent  # the workers' common folder
    made = shared / "smoke_run.json"
    with FileLock(str(shared / "smoke_run.lock")):
        if not made.is_file():
            run = make_smoke_run(shared / "smoke_results")
            made.write_text(json.dumps({"run_dir": str(run.run_dir), "log": run.log,
                                        "metrics": str(run.metrics)}))
    record = json.loads(made.read_text())
    return SmokeRun(Path(record["run_dir"]), record["log"], Path(record["metrics"]))


def make_smoke_run(results: Path) -> SmokeRun:
    results.mkdir(parents=True, exist_ok=True)
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
    metrics = results / f"finished_{METRICS_FILE}"
    shutil.copy2(study.run_dir / METRICS_FILE, metrics)
    return SmokeRun(study.run_dir, second.stdout, metrics)


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


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mounts tmpfs file systems of a given size (``small_disk("64k")``), unmounted after the
    test (needs root and a working ``mount``; skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounts: list[Path] = []

    def mount(size: str) -> Path:
        mnt = tmp_path / f"small{len(mounts)}"
        mnt.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounts.append(mnt)
        return mnt

    try:
        yield mount
    finally:
        for mnt in mounts:
            subprocess.run(["umount", str(mnt)], check=True)


@pytest.fixture()
def full_disk(small_disk: Callable[[str], Path]) -> Path:
    """A 64 KiB tmpfs filled up (needs root and a working ``mount``; skipped otherwise)."""
    mnt = small_disk("64k")
    with open(mnt / "filler", "wb", buffering=0) as fh, pytest.raises(OSError):
        while True:
            fh.write(b"\0" * 4096)
    return mnt
