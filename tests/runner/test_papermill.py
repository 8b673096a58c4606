"""``runner.papermill.execute``: a kernel that died at its start because another process took
its port is started again; any other failure is reported at once, not retried."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mirl_lib.core.processes import Children
from mirl_lib.runner import papermill as pm
from mirl_lib.study.stage import Stage

# What papermill prints when its kernel lost the port race (abridged from a real CI log)
RACE = ("zmq.error.ZMQError: Address already in use (addr='tcp://127.0.0.1:55251')\n"
        "RuntimeError: Kernel died before replying to kernel_info\n")
NOTEBOOK = ('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')

FAKE = '''
import sys
from pathlib import Path
count = Path(sys.argv[1])
failures, message = int(sys.argv[2]), sys.argv[3]
runs = int(count.read_text()) + 1 if count.exists() else 1
count.write_text(str(runs))
if runs <= failures:
    print(message, flush=True)
    sys.exit(1)
Path(sys.argv[4]).write_text(sys.argv[5])
'''


@pytest.fixture
def fake_papermill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``execute`` runs a stand-in for papermill that fails its first ``failures`` runs with
    ``message``, then writes the executed notebook; returns a setter and the run counter."""
    script = tmp_path / "fake_papermill.py"
    script.write_text(FAKE)
    counter = tmp_path / "runs"
    setting = {}

    def command(module: str, template: str, output: str, *rest: str) -> list[str]:
        assert module == "papermill"
        return [sys.executable, str(script), str(counter), str(setting["failures"]),
                setting["message"], output, NOTEBOOK]

    monkeypatch.setattr(pm, "module_command", command)

    def configure(failures: int, message: str) -> None:
        setting.update(failures=failures, message=message)

    return configure, counter


def run(tmp_path: Path) -> Path:
    stage = Stage("dense", "01_dense.ipynb", {"seed": [0]})
    return pm.execute(stage, tmp_path / "p.yaml", tmp_path / "results", tmp_path / "notebooks",
                      Children(), {})


def test_a_kernel_that_lost_its_port_is_started_again(tmp_path: Path, fake_papermill) -> None:
    configure, counter = fake_papermill
    (tmp_path / "notebooks").mkdir()
    configure(2, RACE)
    output = run(tmp_path)
    assert output.read_text() == NOTEBOOK and counter.read_text() == "3"
    log = output.with_suffix(".log").read_text()
    assert log.count("starting papermill again") == 2 and "attempt 3 of 3" in log
    assert pm.kernel_start_race(RACE) and not pm.kernel_start_race("RuntimeError: boom\n")


def test_the_race_is_retried_a_bounded_number_of_times(tmp_path: Path, fake_papermill) -> None:
    configure, counter = fake_papermill
    (tmp_path / "notebooks").mkdir()
    configure(pm.KERNEL_START_TRIES, RACE)
    with pytest.raises(pm.StageFailed, match="RuntimeError: Kernel died before replying"):
        run(tmp_path)
    assert counter.read_text() == str(pm.KERNEL_START_TRIES)


def test_any_other_failure_is_not_retried(tmp_path: Path, fake_papermill) -> None:
    configure, counter = fake_papermill
    (tmp_path / "notebooks").mkdir()
    configure(1, "ValueError: the stage itself failed")
    with pytest.raises(pm.StageFailed, match="ValueError: the stage itself failed"):
        run(tmp_path)
    assert counter.read_text() == "1"


def test_a_full_disk_is_named_when_the_log_could_not_say_so(
        tmp_path: Path, fake_papermill, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a full disk papermill's log (on that disk) can stay empty: the reason still names the
    full disk and the results folder, not 'stopped without an error message'."""
    configure, _ = fake_papermill
    (tmp_path / "notebooks").mkdir()
    configure(1, "")
    usage = pm.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(pm.shutil, "disk_usage", lambda _: usage._replace(free=4096))
    with pytest.raises(pm.StageFailed) as failed:
        run(tmp_path)
    message = str(failed.value)
    assert message.startswith("stage dense failed: no space left on device"), message
    assert f"(results folder {tmp_path})" in message and "without an error" not in message
    assert not list((tmp_path / "notebooks").iterdir())  # nothing partial kept


def test_the_reason_on_a_full_disk_keeps_the_logged_error() -> None:
    log = "Traceback\nOSError: [Errno 28] No space left on device: 'x'\nValueError: later\n"
    assert pm.failure_reason(None, log) == "OSError: [Errno 28] No space left on device: 'x'"
    assert pm.failure_reason(None, "ValueError: boom\n", disk_full=True) == (
        "no space left on device (ValueError: boom)")
    assert pm.failure_reason(None, "ValueError: boom\n") == "ValueError: boom"
    assert pm.failure_reason(None, "write: No space left on device\n") == "no space left on device"
