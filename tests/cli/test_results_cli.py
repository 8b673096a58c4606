"""``python -m mirl_lib report RUN``: a finished run's statistics derived again from its tables."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mirl_lib.files.paths import CHECKOUT

pytestmark = pytest.mark.slow  # a subprocess and the power simulation

COMMITTED = CHECKOUT / "results" / "full"


def report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mirl_lib", "report", *args],
                          capture_output=True, text=True, cwd=CHECKOUT, timeout=300)


def test_report_of_the_committed_full_tier_gives_its_committed_tables(tmp_path: Path) -> None:
    run = tmp_path / "full"
    shutil.copytree(COMMITTED, run, ignore=shutil.ignore_patterns("rerun_*", "notebooks"))
    for name in ("primary.csv", "comparisons.csv", "summary.md"):
        (run / name).unlink()
    done = report(str(run), "--params", str(CHECKOUT / "params" / "full.yaml"))
    assert done.returncode == 0, done.stderr
    assert "6 primary comparisons" in done.stdout
    for name in ("primary.csv", "comparisons.csv", "summary.md"):
        assert (run / name).read_text() == (COMMITTED / name).read_text(), name


def test_report_refuses_a_params_file_of_another_run(tmp_path: Path) -> None:
    run = tmp_path / "full"
    shutil.copytree(COMMITTED, run, ignore=shutil.ignore_patterns("rerun_*", "notebooks"))
    before = (run / "summary.md").read_text()
    done = report(str(run), "--params", str(CHECKOUT / "params" / "default.yaml"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: {run / 'metrics.csv'}: scored by config ca54e10c82c2")
    assert (run / "summary.md").read_text() == before  # nothing overwritten
    missing = report(str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
