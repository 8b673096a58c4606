"""``study.adopt``: a run takes another run's finished points of the same identity instead of
training them, and refuses what it cannot use."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mirl_lib.core.config import load_config
from mirl_lib.core.errors import ConfigError, DataError
from mirl_lib.core.names import DENSE, TRUNK
from mirl_lib.files.paths import CHECKOUT, POINT_FILE
from mirl_lib.study.adopt import ADOPTED, adopt
from mirl_lib.study.study import Study

pytestmark = pytest.mark.slow  # trains a smoke trunk

SMOKE = CHECKOUT / "params" / "smoke.yaml"
SHARED = {"study": {"seeds": [0, 1], "strategies": []}}


def make(root: Path, name: str, **study: object) -> Study:
    cfg = load_config(SMOKE, overrides={"study": {**SHARED["study"], "name": name, **study}})
    run = Study(cfg, root / name)
    run.prepare()
    return run


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Study:
    """A finished smoke trunk (two seeds), collected like a committed run."""
    run = make(tmp_path_factory.mktemp("runs"), "first")
    run.run_points([(DENSE, 0), *run.points(TRUNK)])
    run.collect()
    return run


def test_adopted_points_are_the_sources_and_the_study_trains_on_from_them(
        source: Study, tmp_path: Path) -> None:
    rounds = [r for _, r in source.points(TRUNK)]
    second = make(tmp_path, "second", strategies=["small_dense"])
    second.run_points([(DENSE, 0)], seeds=[0])  # done here: kept, not adopted
    done = adopt(second, source.run_dir, TRUNK)
    assert done == [second.point_dir(seed, TRUNK, r) for seed in (0, 1) for r in rounds]
    for seed in (0, 1):
        for r in rounds:
            ours, theirs = second.point_dir(seed, TRUNK, r), source.point_dir(seed, TRUNK, r)
            for name in ("metrics.csv", "heldout.csv", "history.csv", "mask_report.csv"):
                assert (ours / name).read_text() == (theirs / name).read_text(), name
            record = json.loads((ours / POINT_FILE).read_text())
            assert record[ADOPTED] == str(theirs)
            assert record["mean_psnr"] == json.loads((theirs / POINT_FILE).read_text())["mean_psnr"]
            assert not (ours / "final.pt").exists()  # scored and shown, not trained from
    assert not (second.point_dir(0, DENSE, 0) / POINT_FILE).read_text().count(ADOPTED)
    # the study goes on: the control needs no trunk weights; the tables collect as one run
    second.run_points([(DENSE, 0), ("small_dense", rounds[-1])])
    metrics = second.collect()
    assert set(zip(metrics["strategy"], metrics["round"], strict=True)) >= {
        (TRUNK, r) for r in rounds}
    assert adopt(second, source.run_dir, TRUNK) == []  # done points are left alone


def test_a_committed_run_without_markers_is_adopted_from_its_catalog(
        source: Study, tmp_path: Path) -> None:
    committed = tmp_path / "committed"
    shutil.copytree(source.run_dir, committed,
                    ignore=shutil.ignore_patterns("point.json", "*.pt"))  # what git keeps
    for path in committed.glob("seed_*/**/metrics.csv"):  # written before crops existed
        pd.read_csv(path).drop(columns="photo").to_csv(path, index=False)
    second = make(tmp_path, "second")
    adopt(second, committed, TRUNK, seeds=[1])
    folder = second.point_dir(1, TRUNK, 1)
    table = pd.read_csv(folder / "metrics.csv")
    assert (table["photo"] == table["image"]).all()
    assert table.drop(columns="photo").equals(
        pd.read_csv(source.point_dir(1, TRUNK, 1) / "metrics.csv").drop(columns="photo"))
    record = json.loads((folder / POINT_FILE).read_text())
    catalog = pd.read_csv(source.run_dir / "catalog.csv").query("seed == 1 and round == 1 and "
                                                                "strategy == @TRUNK").iloc[0]
    assert record["total"] == catalog["total"] and record["mean_psnr"] == catalog["mean_psnr"]
    assert record["ticket"] == "seed_1/rewind/round_01/ticket.mirl"
    assert not second.is_done(0, TRUNK, 1)


def test_what_cannot_be_adopted_is_refused_and_nothing_is_written(
        source: Study, tmp_path: Path) -> None:
    second = make(tmp_path, "second", strategies=["finetune"])
    with pytest.raises(ConfigError, match="finetune round .* trains from it"):
        adopt(second, source.run_dir, TRUNK)  # the fine-tuned branch reads the trunk's weights
    other = make(tmp_path, "other")
    (other.run_dir / "config.yaml").write_text(
        (other.run_dir / "config.yaml").read_text().replace("lr: 0.001", "lr: 0.002"))
    third = make(tmp_path, "third")
    with pytest.raises(ConfigError, match="config hash .* not this study's"):
        adopt(third, other.run_dir, TRUNK)
    partial = tmp_path / "partial"
    shutil.copytree(source.run_dir, partial)
    (partial / "catalog.csv").unlink()
    (partial / "seed_1" / TRUNK / "round_02" / POINT_FILE).unlink()
    with pytest.raises(DataError, match="round_02: the source run has not finished this point"):
        adopt(third, partial, TRUNK)
    with pytest.raises(ConfigError, match="seeds \\[5\\] are not seeds"):
        adopt(third, source.run_dir, TRUNK, seeds=[5])
    assert not list(third.run_dir.glob("seed_*"))  # checked before anything was written
    assert not list(second.run_dir.glob("seed_*"))


def test_the_command_adopts_and_a_bad_source_is_one_line(source: Study, tmp_path: Path) -> None:
    params = tmp_path / "second.yaml"
    cfg = load_config(SMOKE, overrides={"study": {**SHARED["study"], "name": "second"}})
    params.write_text(json.dumps(cfg.to_dict()))

    def stages(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mirl_lib", "stages", "adopt", str(params),
                               "--results", str(tmp_path), *args],
                              capture_output=True, text=True, cwd=CHECKOUT, timeout=300)

    done = stages("--from", str(source.run_dir), "--strategy", TRUNK)
    assert done.returncode == 0, done.stderr
    assert f"adopted 6 point(s) of {TRUNK}" in done.stdout
    bad = stages("--from", str(tmp_path / "nowhere"), "--strategy", TRUNK)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert bad.stderr.startswith("error: ") and "nowhere/config.yaml: no such file" in bad.stderr
