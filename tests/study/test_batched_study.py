"""A study that batches its seeds (``train.batch_replicates: batched``): one stage per group of
points holds every seed, each seed's point files are a separate run's, its scores lie within the
seed spread of separate runs, and adding seeds trains only the new ones."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from smoke import smoke_study as smoke

from mirl_lib.core.names import DENSE, TRUNK
from mirl_lib.files.paths import CHECKOUT, POINT_FILE
from mirl_lib.study.graph import dependencies, stage_list, stage_seeds
from mirl_lib.study.study import Study, open_study

PARAMS = CHECKOUT / "params"
POINTS = [(DENSE, 0), (TRUNK, 1)]
SEEDS = [0, 1, 2]


def test_batched_stages_hold_every_seed_and_wait_for_their_groups() -> None:
    overrides = {"study": {"seeds": SEEDS, "branch_remaining": [0.5, 0.2, 0.1]}}
    batched = open_study(PARAMS / "default.yaml", "/nonexistent",
                         {**overrides, "train": {"batch_replicates": "batched"}})
    stages = stage_list(batched)
    names = [s.name for s in stages]
    assert names[:3] == ["data", "dense", "round_01"]
    assert not any("_seed" in n for n in names)
    by_name = {s.name: s for s in stages}
    assert by_name["round_03"].parameters == {"round": 3}
    assert stage_seeds(batched, by_name["round_03"]) == tuple(SEEDS)
    deps = dependencies(batched, stages)
    assert deps["round_05"] == {"dense", "round_04"}
    assert deps["branch_reinit_08"] == {"round_08"}
    # the same study with auto on the CPU (and with separate): one stage per seed
    for mode in ("auto", "separate"):
        study = open_study(PARAMS / "default.yaml", "/nonexistent",
                           {**overrides, "train": {"batch_replicates": mode}})
        assert "round_03_seed2" in {s.name for s in stage_list(study)}


def point_records(study: Study, seeds: list[int]) -> pd.DataFrame:
    return pd.DataFrame([json.loads((study.point_dir(seed, s, r) / POINT_FILE).read_text())
                         for seed in seeds for s, r in POINTS])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Study, Study]:
    root = tmp_path_factory.mktemp("runs")
    out = []
    for mode in ("batched", "separate"):
        study = smoke(root, study={"name": mode, "seeds": SEEDS},
                      train={"batch_replicates": mode})
        records = study.run_points(POINTS)
        assert list(zip(records["seed"], records["strategy"])) == [
            (seed, s) for seed in SEEDS for s, _ in POINTS]  # seed-major, as separate runs
        out.append(study)
    return out[0], out[1]


@pytest.mark.slow
def test_each_seed_writes_a_separate_runs_files(runs) -> None:
    batched, separate = runs
    records = point_records(batched, SEEDS)
    assert (records["batched_replicates"] == 3).all()
    assert "batched_replicates" not in point_records(separate, SEEDS)
    for seed in SEEDS:
        for strategy, rnd in POINTS:
            names = [sorted(p.name for p in s.point_dir(seed, strategy, rnd).iterdir())
                     for s in (batched, separate)]
            assert names[0] == names[1]
    phases = pd.DataFrame(list(records["phase_seconds"]))
    assert (phases["train"] > 0).all() and (phases["evaluate"] > 0).all()


@pytest.mark.slow
def test_batched_scores_lie_within_the_seed_spread_of_separate_runs(runs) -> None:
    batched, separate = runs
    a, b = (point_records(s, SEEDS).set_index(["seed", "strategy"])["mean_psnr"]
            for s in (batched, separate))
    for strategy, _ in POINTS:
        spread = b.xs(strategy, level="strategy")
        gap = (a - b).xs(strategy, level="strategy").abs()
        assert spread.max() - spread.min() > 0
        assert gap.max() < (spread.max() - spread.min()) / 10, (strategy, gap, spread)


@pytest.mark.slow
def test_added_seeds_train_alone_and_leave_finished_ones(runs, tmp_path: Path) -> None:
    batched, _ = runs
    stamps = {seed: [(batched.point_dir(seed, s, r) / POINT_FILE).stat().st_mtime_ns
                     for s, r in POINTS] for seed in SEEDS}
    study = smoke(batched.run_dir.parent, study={"name": "batched", "seeds": [*SEEDS, 3, 4]},
                  train={"batch_replicates": "batched"})
    records = study.run_points(POINTS).set_index("seed")
    assert (records.loc[[3, 4], "batched_replicates"] == 2).all()  # the new seeds, together
    assert stamps == {seed: [(batched.point_dir(seed, s, r) / POINT_FILE).stat().st_mtime_ns
                             for s, r in POINTS] for seed in SEEDS}
