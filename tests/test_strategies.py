"""The strategy registry and what derives from it: points, stages, dependencies, the schedule,
the run identity (seeds are replicates), planning from counts, and the import layering."""
from __future__ import annotations

import ast
import itertools
import json
import random
import subprocess
import sys
import threading
import time
from graphlib import TopologicalSorter
from pathlib import Path

import pytest
import torch

from mirl_lib import masks, pruning, strategies
from mirl_lib.config import PRESETS, load_config
from mirl_lib.errors import ConfigError
from mirl_lib.lottery import Study, plan_table
from mirl_lib.model import build_model
from mirl_lib.stages import dependencies, executed_notebook, open_study, schedule, stage_list
from mirl_lib.strategies import DENSE, REGISTRY, TRUNK, PointContext, Strategy

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params"
SMOKE = PARAMS / "smoke.yaml"
BRANCHES = strategies.branch_names()


def smoke(tmp_path: Path, **overrides) -> Study:
    cfg = load_config(SMOKE, overrides=overrides)
    return Study(cfg, tmp_path / cfg.study.name)


# ----- the registry ---------------------------------------------------------------------------

def test_registry_declares_every_strategy_once() -> None:
    assert list(REGISTRY) == ["dense", "rewind", "late_rewind", "finetune", "oneshot", "reinit",
                              "random_mask", "small_dense", "late_rewind_chain", "finetune_chain"]
    assert len({s.order for s in REGISTRY.values()}) == len(REGISTRY)
    assert strategies.with_role("dense") == ["dense"] and strategies.with_role("trunk") == [TRUNK]
    assert set(BRANCHES) == set(REGISTRY) - {"dense", TRUNK}
    for strategy in REGISTRY.values():
        assert strategy.label and strategy.description and strategy.role in strategies.ROLES


def test_default_study_dependencies_are_what_each_strategy_reads() -> None:
    study = open_study(PARAMS / "default.yaml", "/nonexistent",
                       {"study": {"seeds": [0], "branch_remaining": [0.5, 0.2, 0.1]}})
    deps = dependencies(study, stage_list(study))
    rounds = [f"round_{r:02d}" for r in study.branch_rounds()]
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
                        {"study": {"seeds": [0], "branches": ["finetune_chain", "late_rewind_chain"]}})
    chain_deps = dependencies(chains, stage_list(chains))
    assert chain_deps["branch_finetune_chain_01"] == {"dense"}
    assert chain_deps["branch_finetune_chain_05"] == {"dense", "branch_finetune_chain_04"}
    assert chain_deps["branch_late_rewind_chain_02"] == {"dense", "branch_late_rewind_chain_01"}
    assert deps["figures"] == {"evaluate"} and "branch_reinit_12" in deps["evaluate"]


def test_unknown_branch_is_refused_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("study:\n  branches: [finetune, lottery]\n")
    with pytest.raises(ConfigError) as info:
        open_study(bad, tmp_path)
    assert str(bad) in str(info.value) and "study.branches: unknown branch(es) ['lottery']" in str(
        info.value) and "random_mask" in str(info.value)


class _Undeclared(Strategy):
    name, label, order, role, placement = "sneaky", "sneaky", 99, "ablation", "branch_rounds"
    description = "reads the trunk without declaring it"

    def requires(self, rnd: int) -> tuple:
        return (DENSE,)

    def mask(self, ctx: PointContext, rnd: int) -> masks.Mask:
        return ctx.mask_of((TRUNK, rnd))

    def start(self, ctx: PointContext, rnd: int) -> strategies.Start:
        return strategies.Start(ctx.initial())


class _HalfRewind(Strategy):
    """A new strategy added by one class: the trunk's mask, rewound to half-way weights."""

    name, label, order, role, placement = "half", "half-way rewind", 50, "ablation", "branch_rounds"
    description = "test strategy"

    def requires(self, rnd: int) -> tuple:
        return (DENSE, (TRUNK, rnd))

    def mask(self, ctx: PointContext, rnd: int) -> masks.Mask:
        return ctx.mask_of((TRUNK, rnd))

    def start(self, ctx: PointContext, rnd: int) -> strategies.Start:
        step = ctx.cfg.train.steps // 2
        return strategies.Start(ctx.snapshot(step), step, {"rewind_step": step})

    def reads_dense_steps(self, cfg) -> tuple[int, ...]:
        return (cfg.train.steps // 2,)


@pytest.fixture
def registered():
    """Register test strategies for one test, then restore the registry."""
    before = dict(REGISTRY)
    yield strategies.register
    REGISTRY.clear()
    REGISTRY.update(before)


def test_adding_a_strategy_is_one_class(registered, tmp_path: Path) -> None:
    registered(_HalfRewind)
    assert "half" in strategies.branch_names() and strategies.labels()["half"] == "half-way rewind"
    study = smoke(tmp_path, study={"branches": ["half"]})
    assert study.points("half") == [("half", r) for r in study.branch_rounds()]
    stages = stage_list(study)
    half = [f"branch_half_{r:02d}" for r in study.branch_rounds()]
    assert [s.name for s in stages][-2 - len(half):] == [*half, "evaluate", "figures"]
    for r, name in zip(study.branch_rounds(), half):
        assert dependencies(study, stages)[name] == {"dense", f"round_{r:02d}"}
    # the dense run keeps the snapshot the new strategy reads, and the point trains
    for strategy, rnd in study.points():
        study.run_point(0, strategy, rnd)
    record = json.loads((study.point_dir(0, "half", 2) / "point.json").read_text())
    assert record["rewind_step"] == study.cfg.train.steps // 2 and record["strategy"] == "half"


def test_a_strategy_cannot_read_what_it_does_not_declare(registered, tmp_path: Path) -> None:
    registered(_Undeclared)
    study = smoke(tmp_path, study={"branches": ["sneaky"]})
    for strategy, rnd in [DENSE, (TRUNK, 1), (TRUNK, 2)]:
        study.run_point(0, strategy, rnd)
    with pytest.raises(RuntimeError, match=r"reads \('rewind', 2\), which its requires\(\) does "
                                           "not declare"):
        study.run_point(0, "sneaky", 2)


# ----- the schedule -----------------------------------------------------------------------------

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
        time.sleep(rng.uniform(0, 0.003))
        with lock:
            done.update(stage.points)
    return run_stage


@pytest.mark.parametrize("jobs", [1, 2, 3, 8])
def test_every_branch_subset_schedules_correctly(tmp_path: Path, jobs: int) -> None:
    for size in range(len(BRANCHES) + 1):
        for subset in itertools.combinations(BRANCHES, size):
            study = smoke(tmp_path, study={"branches": list(subset)})
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


# ----- identity: seeds are replicates, runtime settings are not identity ------------------------

def test_extending_a_finished_study_with_a_seed_reruns_nothing(tmp_path: Path) -> None:
    one = smoke(tmp_path, prune={"rounds": 1}, study={"branches": [], "branch_remaining": [0.8]})
    for strategy, rnd in one.points():
        one.run_point(0, strategy, rnd)
    stamps = {p: p.stat().st_mtime_ns for p in one.run_dir.glob("seed_0/**/*") if p.is_file()}
    two = smoke(tmp_path, prune={"rounds": 1},
                study={"seeds": [0, 1], "branches": [], "branch_remaining": [0.8]})
    assert two.run_dir == one.run_dir and two.cfg.hash() == one.cfg.hash()
    records = two.run_points(two.points())
    assert sorted(set(records["seed"])) == [0, 1]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing of seed 0 rewritten
    assert all(two.is_done(1, s, r) for s, r in two.points())
    assert load_config(two.run_dir / "config.yaml").study.seeds == (0, 1)


@pytest.mark.parametrize("change", [{"threads": 2}, {"log_every": 1}, {"checkpoint_every": 1},
                                    {"device": "auto"}])
def test_runtime_settings_do_not_refuse_a_folder(tmp_path: Path, change: dict) -> None:
    smoke(tmp_path).prepare()
    smoke(tmp_path, train=change).prepare()


@pytest.mark.parametrize("section, change, named", [
    ("train", {"steps": 7}, "train.steps: 6 -> 7"),
    ("model", {"dim": 16}, "model.dim: 8 -> 16"),
    ("data", {"patch_size": 24}, "data.patch_size: 16 -> 24"),
    ("prune", {"rate": 0.3}, "prune.rate: 0.2 -> 0.3"),
])
def test_a_result_changing_config_is_refused_naming_the_key(tmp_path: Path, section: str,
                                                             change: dict, named: str) -> None:
    smoke(tmp_path).prepare()
    with pytest.raises(ConfigError, match="made with another configuration") as info:
        smoke(tmp_path, **{section: change}).prepare()
    assert named in str(info.value)


def test_one_identity_for_folder_and_resume() -> None:
    cfg = load_config(SMOKE)
    assert set(cfg.identity()) == {"model", "data", "train", "prune"}
    assert not {"threads", "log_every", "checkpoint_every", "device"} & set(cfg.identity()["train"])
    assert cfg.identity()["train"] == cfg.train.identity()
    same = load_config(SMOKE, overrides={"study": {"seeds": [3, 4]}, "train": {"threads": 2}})
    assert same.hash() == cfg.hash()


# ----- planning from counts -------------------------------------------------------------------

@pytest.mark.parametrize("method", ["global", "layerwise"])
def test_plan_from_counts_equals_pruning_real_tensors(method: str) -> None:
    cfg = load_config(SMOKE, overrides={"prune": {"method": method, "rounds": 6}})
    model = build_model(cfg.model)
    mask = masks.full_mask(model, cfg.prune.scope)
    proxy = {n: torch.arange(1, m.numel() + 1, dtype=torch.float32).reshape(m.shape)
             for n, m in mask.items()}
    expected = []
    for rnd in range(cfg.prune.rounds + 1):
        if rnd:
            mask = pruning.prune(proxy, mask, cfg.prune)
        expected.append(masks.sparsity(mask, model)["kept"])
    plan = plan_table(cfg.model, cfg.prune)
    assert plan["kept"].tolist() == expected


def test_planning_the_paper_study_builds_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    import mirl_lib.lottery as lottery

    monkeypatch.setattr(lottery, "build_model", lambda *a, **k: pytest.fail("built a network"))
    study = open_study(PARAMS / "paper.yaml", "/nonexistent")
    assert study.cfg.model == PRESETS["paper"]
    plan = study.plan()
    assert plan["remaining_all"].iloc[15] == pytest.approx(0.10006, abs=1e-5)
    assert study.branch_rounds() == [3, 9, 15]
    assert len(stage_list(study)) == 1 + 1 + 15 + 6 * 3 + 2  # data, dense, rounds, branches, eval+figs


# ----- import layering ----------------------------------------------------------------------------

def _imports(path: Path) -> set[str]:
    """mirl_lib modules imported anywhere in ``path`` (function bodies too), except under
    ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
            and getattr(node.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mirl_lib"):
            names = [f"{node.module}.{a.name}" for a in node.names]
            found |= {n if n.removeprefix("mirl_lib.") in MODULES else node.module for n in names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mirl_lib.")}
    return {m.removeprefix("mirl_lib.") for m in found} - {"mirl_lib", ""}


MODULES = {p.stem for p in (REPO / "mirl_lib").glob("*.py")} - {"__init__", "__main__"}


def test_no_import_cycles() -> None:
    graph = {m: _imports(REPO / "mirl_lib" / f"{m}.py") - {m} for m in MODULES}
    order = list(TopologicalSorter(graph).static_order())  # raises CycleError on a cycle
    assert set(order) >= MODULES
    assert graph["fileio"] <= {"errors"} and graph["errors"] == set()
    assert graph["tensorio"] <= {"errors", "fileio"}
    assert "model" not in graph["config"] and "tickets" not in graph["tensorio"]
    assert "checkpoints" not in graph["tickets"] and "checkpoints" not in graph["masks"]
    assert "checkpoints" not in graph["report"] and "checkpoints" not in graph["figures"]


def test_ground_floor_imports_no_torch() -> None:
    code = ("import sys, mirl_lib.fileio, mirl_lib.errors; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


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
