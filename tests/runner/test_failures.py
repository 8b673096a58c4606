"""How ./run_all.sh fails: at once and on stderr, one study per folder, nothing half-written,
Ctrl-C, a full disk, bad params files (issue 10's catalogue)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

import nbformat
import psutil
import pytest
import yaml

from mirl_lib.cli.stages import INTERRUPTED
from mirl_lib.files.paths import CHECKOUT

pytestmark = pytest.mark.slow  # runs studies through ./run_all.sh and kills them

REPO = CHECKOUT
SMOKE = REPO / "params" / "smoke.yaml"


def params(tmp_path: Path, name: str, **sections: dict) -> Path:
    """The smoke params with ``sections`` merged in, written to ``tmp_path/<name>.yaml``."""
    spec = yaml.safe_load(SMOKE.read_text())
    for section, values in sections.items():
        spec.setdefault(section, {}).update(values)
    spec["study"]["name"] = name
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


_STARTED: list[subprocess.Popen] = []


def start(params_file: Path, results: Path, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen([str(REPO / "run_all.sh"), str(params_file), "--results",
                             str(results), *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    _STARTED.append(proc)
    return proc


@pytest.fixture(autouse=True)
def no_runner_outlives_its_test():
    """Whatever a test asserted or timed out on, no runner it started (nor a kernel or training
    under it) is left running to load the machine for the tests after it."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is not None:
            continue
        family = descendants(proc)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for child in family:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        proc.communicate()


def descendants(proc: subprocess.Popen) -> list[psutil.Process]:
    try:
        return psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def all_gone(processes: list[psutil.Process]) -> bool:
    alive = []
    for p in processes:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return not alive


# A long dense training (100,000 steps) beside a data preview that fails at once: the test crop
# of 8 px is smaller than the network's 16 px minimum.
# A dense training that outlasts the test; the branches all wait for the trunk, so nothing else
# trains beside it (small_dense, which needs no trunk round, would start at once and load the CPU)
LONG = {"train": {"steps": 100_000, "checkpoint_every": 20, "log_every": 50},
        "study": {"strategies": ["oneshot", "reinit", "random_mask"]}}


def test_failing_stage_is_reported_at_once_and_stops_the_others(tmp_path: Path) -> None:
    spec = params(tmp_path, "fail", data={"test_max_side": 8}, **LONG)
    proc = start(spec, tmp_path)
    out, err = proc.communicate(timeout=300)
    ended = time.time()
    assert proc.returncode == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    log = tmp_path / "fail" / "notebooks" / "00_data_preview.log"
    assert lines[0].startswith("error: stage data failed: DataError: skimage:astronaut: image of "
                               "size 8x8 is smaller than 16 pixels")
    assert str(log) in lines[0] and log.is_file()
    notebook = nbformat.read(log.with_suffix(".ipynb"), as_version=4)
    failed = [c for c in notebook.cells if c.metadata.get("papermill", {}).get("exception")]
    assert failed and any(o.get("ename") == "DataError" for o in failed[0].outputs)
    failed_at = datetime.fromisoformat(failed[0].metadata.papermill.end_time).timestamp()
    assert ended - failed_at < 5, f"reported {ended - failed_at:.1f} s after the cell failed"
    assert "dense: finished" not in out  # the long stage was stopped, not waited for
    state = tmp_path / "fail" / "seed_0" / "dense" / "state.pt"
    before = state.stat().st_mtime_ns if state.exists() else None
    time.sleep(2)
    assert (state.stat().st_mtime_ns if state.exists() else None) == before  # nobody writes on
    assert not (tmp_path / "fail" / ".lock").exists()
    assert not list((tmp_path / "fail" / "notebooks").glob(".*partial*"))


@pytest.mark.parametrize("text, problem", [
    ("", "the params file is empty"),
    ("- train\n- prune\n", "the top level must be a mapping"),
    ("train:\n  lr: 1e-3\n  lr: 2e-3\n", "train.lr: key written twice"),
])
def test_bad_params_files_are_refused_naming_the_file(tmp_path: Path, text: str,
                                                      problem: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    out = subprocess.run([str(REPO / "run_all.sh"), str(bad), "--results", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert out.stderr.startswith(f"error: {bad}: ") and problem in out.stderr
    assert not (tmp_path / "r").exists()


def test_one_study_per_folder_and_a_dead_holder_is_taken_over(tmp_path: Path) -> None:
    spec = params(tmp_path, "locked", **LONG)
    first = start(spec, tmp_path)
    lock = tmp_path / "locked" / ".lock"
    try:
        wait_for(lock.exists, 120, "the first runner's lock")
        wait_for(lambda: len(descendants(first)) >= 2, 120, "the first runner's stages")
        # refused at once; the generous timeout is for a loaded machine (imports take seconds)
        second = subprocess.run([str(REPO / "run_all.sh"), str(spec), "--results", str(tmp_path)],
                                capture_output=True, text=True, timeout=300, cwd=REPO)
        assert second.returncode == 2
        holder = json.loads(lock.read_text())
        assert holder["pid"] == first.pid
        assert f"another study is running in this folder (PID {first.pid} on " in second.stderr
        assert first.poll() is None  # the first run goes on
        kernels = descendants(first)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # kill -9 of the whole runner
        first.communicate()
    wait_for(lambda: all_gone(kernels), 3, "the dead runner's kernels to end with it")
    assert lock.exists()  # a killed runner cannot clean up: the next one takes over
    third = start(spec, tmp_path)
    try:
        wait_for(lambda: json.loads(lock.read_text()).get("pid") == third.pid, 120, "takeover")
    finally:
        os.killpg(third.pid, signal.SIGINT)
        _, err = third.communicate(timeout=120)
    assert f"warning: took over the lock of a run that is no longer running (PID {first.pid}" in err
    assert third.returncode == 130 and not lock.exists()


def test_ctrl_c_prints_one_line_stops_everything_and_exits_130(tmp_path: Path) -> None:
    proc = start(params(tmp_path, "ctrlc", **LONG), tmp_path)
    try:
        wait_for(lambda: any("dense" in " ".join(p.cmdline()) or "ipykernel" in " ".join(
            p.cmdline()) for p in descendants(proc)), 120, "a running stage")
        time.sleep(3)
        kernels = descendants(proc)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert err.strip() == INTERRUPTED and "Traceback" not in err
    wait_for(lambda: all_gone(kernels), 3, "the stages to stop")
    notebooks = tmp_path / "ctrlc" / "notebooks"
    assert not list(notebooks.glob(".*partial*"))
    for path in notebooks.glob("*.ipynb"):
        nbformat.read(path, as_version=4)  # complete notebooks only


def test_list_does_not_call_another_configs_stages_done(tmp_path: Path) -> None:
    from mirl_lib.study.study import open_study

    open_study(params(tmp_path, "listed"), tmp_path).prepare()
    other = tmp_path / "other.yaml"
    other.write_text(params(tmp_path, "listed", train={"steps": 7}).read_text())
    out = subprocess.run(["python", "-m", "mirl_lib", "stages", "list", str(other), "--results",
                          str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 2 and "made with another configuration" in out.stderr
    assert "train.steps: 6 -> 7" in out.stderr and "done" not in out.stdout


def _tmpfs(size: str) -> Path | None:
    if os.geteuid() != 0:
        return None
    mount = Path(tempfile.mkdtemp(prefix="mirl-full-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        mount.rmdir()
        return None
    return mount


def test_full_disk_is_named_on_stderr_and_leaves_no_truncated_file(tmp_path: Path) -> None:
    mount = _tmpfs("1500k")
    if mount is None:
        pytest.skip("needs root and a tmpfs mount to make a small full disk")
    try:
        proc = start(params(tmp_path, "full"), mount)
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 2, out + err
        line = err.strip().splitlines()[-1]
        assert line.startswith("error: ") and "no space left on device" in line.lower(), err
        assert str(mount) in line, line
        for path in mount.rglob("*.ipynb"):
            nbformat.read(path, as_version=4)  # the previous version or nothing, never truncated
        assert not list(mount.rglob(".*partial*")) and not list(mount.rglob(".*.tmp*"))
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        mount.rmdir()
