"""The strategy registry and what derives from it: points, what a strategy may read, the run
identity (seeds are replicates), planning from counts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from smoke import SMOKE
from smoke import smoke_study as smoke

from mirl_lib.core.config import load_config
from mirl_lib.core.errors import ConfigError
from mirl_lib.core.names import TRUNK
from mirl_lib.files.paths import CHECKOUT
from mirl_lib.net.promptir import build_model
from mirl_lib.pruning import masks, rules
from mirl_lib.pruning.plan import plan_table
from mirl_lib.study import strategies
from mirl_lib.study.graph import dependencies, stage_list
from mirl_lib.study.strategies import DENSE_POINT as DENSE
from mirl_lib.study.strategies import REGISTRY, PointContext, Strategy
from mirl_lib.study.study import open_study

PARAMS = CHECKOUT / "params"
BRANCHES = strategies.optional_names()


# ----- the registry ---------------------------------------------------------------------------

def test_registry_declares_every_strategy_once() -> None:
    assert list(REGISTRY) == ["dense", "rewind", "late_rewind", "finetune", "oneshot", "reinit",
                              "random_mask", "small_dense", "late_rewind_chain", "finetune_chain",
                              "channel_rewind"]
    assert len({s.order for s in REGISTRY.values()}) == len(REGISTRY)
    assert strategies.with_role("dense") == ["dense"] and strategies.with_role("trunk") == [TRUNK]
    assert set(BRANCHES) == set(REGISTRY) - {"dense", TRUNK}
    for strategy in REGISTRY.values():
        assert strategy.label and strategy.description and strategy.role in strategies.ROLES


def test_unknown_branch_is_refused_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("study:\n  strategies: [finetune, lottery]\n")
    with pytest.raises(ConfigError) as info:
        open_study(bad, tmp_path)
    assert (str(bad) in str(info.value)
            and "study.strategies: unknown strategy(ies) ['lottery']" in str(info.value)
            and "random_mask" in str(info.value))


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


@pytest.mark.slow
def test_adding_a_strategy_is_one_class(registered, tmp_path: Path) -> None:
    registered(_HalfRewind)
    assert ("half" in strategies.optional_names()
            and strategies.labels()["half"] == "half-way rewind")
    study = smoke(tmp_path, study={"strategies": ["half"]})
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


@pytest.mark.slow
def test_a_strategy_cannot_read_what_it_does_not_declare(registered, tmp_path: Path) -> None:
    registered(_Undeclared)
    study = smoke(tmp_path, study={"strategies": ["sneaky"]})
    for strategy, rnd in [DENSE, (TRUNK, 1), (TRUNK, 2)]:
        study.run_point(0, strategy, rnd)
    with pytest.raises(RuntimeError, match=r"reads \('rewind', 2\), which its requires\(\) does "
                                           "not declare"):
        study.run_point(0, "sneaky", 2)


# ----- the schedule -----------------------------------------------------------------------------

# ----- identity: seeds are replicates, runtime settings are not identity ------------------------

@pytest.mark.slow
def test_extending_a_finished_study_with_a_seed_reruns_nothing(tmp_path: Path) -> None:
    one = smoke(tmp_path, prune={"rounds": 1}, study={"strategies": [], "branch_remaining": [0.8]})
    for strategy, rnd in one.points():
        one.run_point(0, strategy, rnd)
    stamps = {p: p.stat().st_mtime_ns for p in one.run_dir.glob("seed_0/**/*") if p.is_file()}
    two = smoke(tmp_path, prune={"rounds": 1},
                study={"seeds": [0, 1], "strategies": [], "branch_remaining": [0.8]})
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
            mask = rules.prune(proxy, mask, cfg.prune)
        expected.append(masks.sparsity(mask, model)["kept"])
    plan = plan_table(cfg.model, cfg.prune)
    assert plan["kept"].tolist() == expected
