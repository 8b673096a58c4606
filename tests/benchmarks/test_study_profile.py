"""``benchmarks/study_profile.py``: per stage, the runner's, papermill's and each point's times of
a finished run (read from the session's smoke study), and bad input refused before any study
runs."""
from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType

import pytest
from script_loader import script_fixture
from smoke import SMOKE, SmokeRun

from mirl_lib.core.config import load_config
from mirl_lib.files.paths import CHECKOUT
from mirl_lib.study.graph import stage_list
from mirl_lib.study.study import PHASES, Study

SCRIPT = CHECKOUT / "benchmarks" / "study_profile.py"
bench = script_fixture(SCRIPT, "study_profile_bench")

pytestmark = pytest.mark.slow  # reads the smoke study


def test_rows_of_a_finished_run_account_for_its_stages(bench: ModuleType,
                                                       smoke_run: SmokeRun) -> None:
    study = Study(load_config(SMOKE), smoke_run.run_dir)
    rows = bench.profile_rows(study, smoke_run.log).set_index("stage")
    stages = stage_list(study)
    assert list(rows.index) == [bench.WARM, *(s.name for s in stages)]
    assert rows.loc[bench.WARM, "runner_s"] >= 0
    for stage in stages:
        row = rows.loc[stage.name]
        # the run that was killed finished round_01's point, maybe before its notebook was saved:
        # then the resumed run's notebook only read it
        trained = (0, 1) if stage.name == "round_01" else (len(stage.points),)
        assert row["points"] in trained, row
        assert 0 < row["kernel_s"] < row["notebook_s"], row
        assert row["open_study_s"] > 0
        phases = sum(row[f"{p}_s"] for p in PHASES)
        assert phases <= row["points_s"] + 1e-3 <= row["notebook_s"] + 1e-3, row
        assert math.isclose(row["other_s"], row["notebook_s"] - row["kernel_s"]
                            - row["open_study_s"] - row["points_s"], abs_tol=1e-9)
        if row["points"]:
            assert row["train_s"] > 0 and row["heldout_s"] > 0, row
    # the resumed run skipped what the first one finished: no runner time for those
    assert math.isnan(rows.loc["dense", "runner_s"])
    assert rows.loc["figures", "runner_s"] >= 0 and rows.loc["figures", "points"] == 0


def test_bad_input_is_refused_before_a_study_runs(bench: ModuleType, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "profile.csv"
    out.write_text("not,a\nprofile,csv\n")
    assert bench.main(["--params", str(SMOKE), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out}: not a study profile CSV") and err.count("\n") == 1
    assert out.read_text() == "not,a\nprofile,csv\n"  # nothing overwritten
    assert bench.main(["--params", str(SMOKE), "--strategy", "nonesuch", "--out",
                       str(tmp_path / "new.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nonesuch" in err and err.count("\n") == 1
    assert not (tmp_path / "new.csv").exists()
