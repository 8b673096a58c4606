"""``--batch-replicates batched`` on the command line: the stage list holds one stage per group
of points for every seed, and ``stages points`` trains each point's seeds together; ``--seeds``
sets the study's seeds."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mirl_lib.files.paths import CHECKOUT, POINT_FILE

SMOKE = CHECKOUT / "params" / "smoke.yaml"


def two_seeds(tmp_path: Path) -> Path:
    spec = yaml.safe_load(SMOKE.read_text())
    spec["study"].update(name="pair", seeds=[0, 1])
    path = tmp_path / "pair.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def stages(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mirl_lib", "stages", *args],
                          capture_output=True, text=True, timeout=900, cwd=CHECKOUT)


def test_the_stage_list_follows_the_switch(tmp_path: Path) -> None:
    params = two_seeds(tmp_path)
    listed = {mode: stages("list", str(params), "--results", str(tmp_path),
                           *(("--batch-replicates", mode) if mode else ()))
              for mode in (None, "batched")}
    assert all(out.returncode == 0 for out in listed.values()), listed
    separate = [line.split("\t")[0] for line in listed[None].stdout.splitlines()]
    batched = [line.split("\t")[0] for line in listed["batched"].stdout.splitlines()]
    assert "dense_seed0" in separate and "dense_seed1" in separate  # auto on the CPU: per seed
    assert "dense" in batched and not any("_seed" in name for name in batched)
    assert len(separate) - len(batched) == (len(batched) - 3)  # data, evaluate, figures shared
    bad = stages("list", str(params), "--results", str(tmp_path), "--batch-replicates", "on")
    assert bad.returncode == 2 and "invalid choice: 'on'" in bad.stderr


@pytest.mark.slow
def test_stages_points_trains_each_points_seeds_together(tmp_path: Path) -> None:
    params = two_seeds(tmp_path)
    done = stages("points", str(params), "--results", str(tmp_path), "--batch-replicates",
                  "batched")
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "pair").glob(
        f"seed_*/*/**/{POINT_FILE}"))]
    assert {r["seed"] for r in records} == {0, 1}
    trained = [r for r in records if "adopted_from" not in r]
    assert len(trained) == len(records) >= 2 * 4  # dense and 3 trunk rounds at least, per seed
    assert all(r["batched_replicates"] == 2 for r in trained), [
        (r["seed"], r["strategy"], r["round"], r.get("batched_replicates")) for r in trained]
    assert "(2 replicates)" in done.stderr  # one progress bar per point for both seeds


def test_seeds_from_the_command_line(tmp_path: Path) -> None:
    params = two_seeds(tmp_path)
    listed = stages("list", str(params), "--results", str(tmp_path), "--seeds", "0", "1", "3")
    assert listed.returncode == 0, listed.stderr
    names = [line.split("\t")[0] for line in listed.stdout.splitlines()]
    assert {"dense_seed0", "dense_seed1", "dense_seed3"} <= set(names)
    assert not any(name.endswith("_seed2") for name in names)
    batched = stages("list", str(params), "--results", str(tmp_path), "--seeds", "5", "6",
                     "--batch-replicates", "batched")
    assert batched.returncode == 0 and "dense" in batched.stdout.split()
    twice = stages("list", str(params), "--results", str(tmp_path), "--seeds", "1", "1")
    assert twice.returncode == 2
    assert twice.stderr.strip().splitlines() == [
        f"error: {params}: study.seeds: lists a seed twice"], twice.stderr
    assert not (tmp_path / "pair").exists()  # listing writes nothing
