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
    for name in ("primary.csv", "confirmation.csv", "comparisons.csv", "summary.md"):
        (run / name).unlink()
    done = report(str(run), "--params", str(CHECKOUT / "params" / "full.yaml"))
    assert done.returncode == 0, done.stderr
    assert "6 primary comparisons" in done.stdout
    for name in ("primary.csv", "confirmation.csv", "comparisons.csv", "summary.md"):
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


def sizes(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mirl_lib", "sizes", *args],
                          capture_output=True, text=True, cwd=CHECKOUT, timeout=300)


def test_sizes_prints_the_block_and_refuses_a_speed_table_it_cannot_use(tmp_path: Path) -> None:
    import pandas as pd

    from mirl_lib.report.primary import visible_scores
    from mirl_lib.report.sizes import sizes_block, speed_rows

    done = sizes(str(COMMITTED))
    assert done.returncode == 0, done.stderr
    speed = pd.read_csv(CHECKOUT / "results" / "benchmarks" / "ticket_speed.csv")
    metrics, heldout = visible_scores(COMMITTED)  # a pending confirmation's seeds held back
    block = sizes_block(metrics, heldout, speed_rows(speed, "full.yaml"),
                        pd.read_csv(COMMITTED / "comparisons.csv"))
    assert done.stdout == f"<!-- sizes:full -->\n{block}<!-- /sizes -->\n"
    old = tmp_path / "old.csv"
    speed.drop(columns=["strategy"]).to_csv(old, index=False)
    for extra, message in ((["--speed", str(tmp_path / "none.csv")], "none.csv: no such file"),
                           (["--speed", str(old)], "old.csv: no column(s) ['strategy']"),
                           (["--params-file", "paper.yaml"], "no CPU rows for paper.yaml"),
                           (["--compact"], "--compact has no table")):
        done = sizes(str(COMMITTED), *extra)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith("error: ") and message in done.stderr, done.stderr


@pytest.mark.parametrize("argv", [["headline", "/nowhere"], ["reproduce", "/nowhere", "/nope"],
                                  ["sizes", str(COMMITTED), "--speed", "/nowhere.csv"]])
def test_a_refusal_comes_before_torch_is_imported(argv: list[str]) -> None:
    code = ("import sys\nfrom mirl_lib.cli.main import main\n"
            f"code = main({argv!r})\nprint(code, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=CHECKOUT, timeout=120)
    assert done.stdout.split() == ["2", "False"], (done.stdout, done.stderr)
    assert done.stderr.startswith("error: /nowhere") and done.stderr.count("\n") == 1
