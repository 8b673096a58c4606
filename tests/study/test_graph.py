"""The stage graph derived from the registry: one stage per group of points (per seed), what each
waits for (from what its strategy requires) and the scheduler that runs them."""
from __future__ import annotations

import itertools
import random
import threading
import time
from pathlib import Path

import pytest
from smoke import smoke_study as smoke

from mirl_lib.core.config import PRESETS
from mirl_lib.core.errors import ConfigError
from mirl_lib.files.paths import CHECKOUT
from mirl_lib.runner.papermill import executed_notebook
from mirl_lib.study import strategies
from mirl_lib.study.graph import dependencies, schedule, stage_list
from mirl_lib.study.stage import Stage
from mirl_lib.study.study import Study, open_study

PARAMS = CHECKOUT / "params"
BRANCHES = strategies.optional_names()


def fake_stage_runner(study: Study, stages: list, log: list[str]):
    """A stand-in for one notebook: checks that every point its stage reads has finished."""
    by_name = {s.name: s for s in stages}
    done: set[tuple[str, int]] = set()
    lock = threading.Lock()
    rng = random.Random(0)

    def run_stage(name: str) -> None:
        stage = by_name[name]
        with lock:
            for point in stage.points:
                missing = [r for r in study.requires(*point) if r not in done and r not in
                           stage.points[:stage.points.index(point)]]
                assert not missing, f"{name} started before {missing} finished"
            if name == "evaluate":
                assert done == set(study.points()), "evaluate started before every point"
            log.append(name)
        time.sleep(rng.uniform(0, 0.001))  # stages finish in a random order
        with lock:
            done.update(stage.points)
    return run_stage




def test_default_study_dependencies_are_what_each_strategy_reads() -> None:
    study = open_study(PARAMS / "default.yaml", "/nonexistent",
                       {"study": {"seeds": [0], "branch_remaining": [0.5, 0.2, 0.1]}})
    deps = dependencies(study, stage_list(study))
    assert study.branch_rounds() == [3, 8, 12]
    assert deps["round_01"] == {"dense"} and deps["round_05"] == {"dense", "round_04"}
    # one stage per branch and round: it waits for what that round reads, nothing more
    for r in study.branch_rounds():
        trunk = f"round_{r:02d}"
        assert deps[f"branch_oneshot_{r:02d}"] == {"dense", trunk}
        assert deps[f"branch_random_mask_{r:02d}"] == {"dense", trunk}
        assert deps[f"branch_reinit_{r:02d}"] == {trunk}
        assert deps[f"branch_late_rewind_{r:02d}"] == {"dense", trunk}
        # fine-tuning starts from the trunk round before (round 2 for round 3, ...)
        assert deps[f"branch_finetune_{r:02d}"] == {"dense", trunk, f"round_{r - 1:02d}"}
        assert deps[f"branch_small_dense_{r:02d}"] == set()  # sized from exact counts
    chains = open_study(PARAMS / "default.yaml", "/nonexistent",
                        {"study": {"seeds": [0],
                                   "strategies": ["finetune_chain", "late_rewind_chain"]}})
    chain_deps = dependencies(chains, stage_list(chains))
    assert chain_deps["branch_finetune_chain_01"] == {"dense"}
    assert chain_deps["branch_finetune_chain_05"] == {"dense", "branch_finetune_chain_04"}
    assert chain_deps["branch_late_rewind_chain_02"] == {"dense", "branch_late_rewind_chain_01"}
    assert deps["figures"] == {"evaluate"} and "branch_reinit_12" in deps["evaluate"]


@pytest.fixture(scope="module")
def subset_studies(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, ...], Study]:
    """The smoke study with every subset of the optional strategies (built once for the module:
    the schedule is run on each at several ``jobs``)."""
    root = tmp_path_factory.mktemp("subsets")
    return {subset: smoke(root, study={"strategies": list(subset)})
            for size in range(len(BRANCHES) + 1)
            for subset in itertools.combinations(BRANCHES, size)}


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [1, 2, 3, 8])
def test_every_branch_subset_schedules_correctly(subset_studies: dict[tuple[str, ...], Study],
                                                 jobs: int) -> None:
    assert len(subset_studies) == 2 ** len(BRANCHES)
    for subset, study in subset_studies.items():
        stages = stage_list(study)
        log: list[str] = []
        schedule(dependencies(study, stages), jobs, fake_stage_runner(study, stages, log))
        assert sorted(log) == sorted(s.name for s in stages), subset
        assert log[-1] == "figures"


def test_schedule_stops_starting_stages_after_a_failure() -> None:
    started: list[str] = []

    def run_stage(name: str) -> None:
        started.append(name)
        if name == "b":
            raise ValueError("b broke")

    deps = {"a": set(), "b": {"a"}, "c": {"b"}, "d": {"a"}}
    with pytest.raises(ValueError, match="b broke"):
        schedule(deps, 1, run_stage)
    assert "c" not in started and started[:2] == ["a", "b"]


def test_trunk_goes_first_when_a_slot_frees() -> None:
    order: list[str] = []
    deps = {"dense": set(), "round_01": {"dense"}, "round_02": {"round_01"},
            "branch_x": {"dense"}, "branch_y": {"dense"}}
    schedule(deps, 1, order.append)
    assert order == ["dense", "round_01", "round_02", "branch_x", "branch_y"]


def test_planning_the_paper_study_builds_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    import mirl_lib.study.study as lottery

    monkeypatch.setattr(lottery, "build_model", lambda *a, **k: pytest.fail("built a network"))
    study = open_study(PARAMS / "paper.yaml", "/nonexistent")
    assert study.cfg.model == PRESETS["paper"]
    plan = study.plan()
    assert plan["remaining_all"].iloc[15] == pytest.approx(0.10006, abs=1e-5)
    assert study.branch_rounds() == [3, 9, 15]
    # data, dense, rounds, branches, eval+figs
    assert len(stage_list(study)) == 1 + 1 + 15 + 6 * 3 + 2


def test_several_seeds_run_as_independent_stages_that_wait_only_for_their_own_seed() -> None:
    study = open_study(PARAMS / "default.yaml", "/nonexistent",
                       {"study": {"seeds": [0, 1, 2], "branch_remaining": [0.5, 0.2, 0.1]}})
    stages = stage_list(study)
    names = [s.name for s in stages]
    assert names[:4] == ["data", "dense_seed0", "dense_seed1", "dense_seed2"]
    assert names[-2:] == ["evaluate", "figures"]
    by_name = {s.name: s for s in stages}
    assert by_name["round_03_seed1"].parameters == {"round": 3, "seeds": [1]}
    assert executed_notebook(by_name["round_03_seed1"], Path("/x")).name == (
        "02_prune_round_03_seed1.ipynb")
    deps = dependencies(study, stages)
    assert deps["round_01_seed2"] == {"dense_seed2"}
    assert deps["round_05_seed1"] == {"dense_seed1", "round_04_seed1"}
    assert deps["branch_reinit_08_seed0"] == {"round_08_seed0"}
    trained = {n for n in names if n.startswith(("dense", "round", "branch"))}
    assert deps["evaluate"] == trained | {"data"}
    # the trunk of every seed is listed before any branch: it is the critical path
    assert max(names.index(n) for n in names if n.startswith("round")) < min(
        names.index(n) for n in names if n.startswith("branch"))
    with pytest.raises(ConfigError, match=r"seeds \[7\] are not seeds of this study"):
        study.run_points([("dense", 0)], seeds=[7])


def test_a_stage_described_is_the_stage(tmp_path: Path) -> None:
    """What a stage's Slurm job gets (``Stage.describe``) reads back as the same stage, for every
    stage of a study with two seeds (seed lists, points and parameters included)."""
    study = smoke(tmp_path, study={"seeds": [0, 1]})
    stages = stage_list(study)
    assert any(stage.seeds for stage in stages) and any(stage.points for stage in stages)
    for stage in stages:
        assert Stage.described(stage.describe()) == stage
        assert executed_notebook(Stage.described(stage.describe()), tmp_path) == \
            executed_notebook(stage, tmp_path)
