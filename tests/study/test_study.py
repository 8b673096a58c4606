"""Each strategy of the study starts from the weights and mask it claims to (smoke setting)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from mirl_lib.core.config import load_config
from mirl_lib.core.errors import ConfigError
from mirl_lib.files import tickets
from mirl_lib.files.paths import CHECKOUT, MOVED_ASIDE
from mirl_lib.net.checkpoints import load_model
from mirl_lib.net.promptir import build_model
from mirl_lib.pruning import masks, rules
from mirl_lib.study import strategies
from mirl_lib.study.strategies import RANDOM_MASK_SEED_OFFSET, REINIT_SEED_OFFSET
from mirl_lib.study.study import Study

pytestmark = pytest.mark.slow  # runs every strategy of a study

SMOKE = CHECKOUT / "params" / "smoke.yaml"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    # every registered branch, the chains included
    cfg = load_config(SMOKE, overrides={"study": {"name": "lottery",
                                                  "strategies": strategies.optional_names()}})
    run = Study(cfg, tmp_path_factory.mktemp("runs") / "lottery")
    for strategy, rnd in run.points():
        run.run_point(0, strategy, rnd)
    run.collect()
    return run


def state(study: Study, strategy: str, rnd: int, name: str = "final.pt") -> dict:
    return load_model(study.point_dir(0, strategy, rnd) / name)[0].state_dict()


def mask_of(study: Study, strategy: str, rnd: int) -> masks.Mask:
    return masks.load_mask(study.point_dir(0, strategy, rnd) / "mask.pt")


def start_of(study: Study, strategy: str, rnd: int) -> tuple[dict, masks.Mask, int, dict]:
    model, mask, step, extra = study.start(0, strategy, rnd)
    return model.state_dict(), mask, step, extra


def assert_masked_equal(a: dict, b: dict, mask: masks.Mask) -> None:
    for name, keep in mask.items():
        assert torch.equal(a[name] * keep, b[name] * keep), name


def test_trunk_masks_are_exact_global_rounds(study: Study) -> None:
    rate = study.cfg.prune.rate
    previous = masks.full_mask(build_model(study.cfg.model), study.cfg.prune.scope)
    for rnd in range(1, study.cfg.prune.rounds + 1):
        weights = state(study, "dense" if rnd == 1 else "rewind", 0 if rnd == 1 else rnd - 1)
        expected = rules.prune({n: weights[n] for n in previous}, previous, study.cfg.prune)
        mask = mask_of(study, "rewind", rnd)
        assert all(torch.equal(mask[n], expected[n]) for n in mask)
        alive = sum(int(m.sum()) for m in previous.values())
        assert sum(int(m.sum()) for m in mask.values()) == alive - round(rate * alive)
        previous = mask


def test_rewind_starts_from_the_original_initialization(study: Study) -> None:
    init = state(study, "dense", 0, "init.pt")
    for rnd in (1, 3):
        start, mask, step, _ = start_of(study, "rewind", rnd)
        assert step == 0
        assert_masked_equal(start, init, mask)


def test_pruned_weights_are_exactly_zero_after_training(study: Study) -> None:
    for strategy, rnd in study.points()[1:]:
        final = state(study, strategy, rnd)
        for name, keep in mask_of(study, strategy, rnd).items():
            assert not final[name][~keep].any(), (strategy, rnd, name)


@pytest.mark.parametrize("strategy", ["late_rewind", "late_rewind_chain"])
def test_late_rewind_starts_from_step_k_and_resumes_the_schedule(study: Study,
                                                                 strategy: str) -> None:
    k = study.cfg.prune.late_rewind_step
    rnd = study.points(strategy)[0][1]  # its first round: 1 for the chain, the branch round else
    snapshot = state(study, "dense", 0, f"weights_step{k}.pt")
    start, mask, step, extra = start_of(study, strategy, rnd)
    assert step == k and extra["rewind_step"] == k
    assert_masked_equal(start, snapshot, mask)
    assert not torch.equal(snapshot["output.weight"],
                           state(study, "dense", 0, "init.pt")["output.weight"])
    history = pd.read_csv(study.point_dir(0, strategy, rnd) / "history.csv")
    assert history["step"].min() > k


def test_branches_on_the_ticket_mask_train_exactly_the_tickets_mask(study: Study) -> None:
    for rnd in study.branch_rounds():
        trunk = mask_of(study, "rewind", rnd)
        for strategy in ("late_rewind", "finetune", "reinit"):
            mask = mask_of(study, strategy, rnd)
            assert all(torch.equal(mask[n], trunk[n]) for n in trunk), (strategy, rnd)


def test_late_rewind_chain_finds_its_own_masks(study: Study) -> None:
    weights = state(study, "late_rewind_chain", 1)
    previous = mask_of(study, "late_rewind_chain", 1)
    expected = rules.prune({n: weights[n] for n in previous}, previous, study.cfg.prune)
    mask = mask_of(study, "late_rewind_chain", 2)
    assert all(torch.equal(mask[n], expected[n]) for n in mask)


def test_finetune_keeps_trained_values(study: Study) -> None:
    # on the ticket's mask: the trunk's weights of the round before, no rewind
    start, mask, step, _ = start_of(study, "finetune", 2)
    assert step == 0
    assert_masked_equal(start, state(study, "rewind", 1), mask)
    start, mask, _, _ = start_of(study, "finetune", 1)
    assert_masked_equal(start, state(study, "dense", 0), mask)
    # its own chain: its own weights of the round before
    start, mask, _, _ = start_of(study, "finetune_chain", 2)
    assert_masked_equal(start, state(study, "finetune_chain", 1), mask)
    start, mask, _, _ = start_of(study, "finetune_chain", 1)
    assert_masked_equal(start, state(study, "dense", 0), mask)


def test_small_dense_has_the_tickets_parameter_count(study: Study) -> None:
    records = study.records().set_index(["strategy", "round"])
    for rnd in study.branch_rounds():
        ticket, small = records.loc[("rewind", rnd)], records.loc[("small_dense", rnd)]
        ticket_count = ticket["total"] - ticket["prunable"] + ticket["kept"]
        assert small["kept"] == small["prunable"]  # nothing pruned: a dense, narrower network
        assert small["total"] == pytest.approx(ticket_count, rel=0.05)
        assert small["remaining_all"] == pytest.approx(ticket["remaining_all"], rel=0.05)
        model, meta = load_model(study.point_dir(0, "small_dense", rnd) / "ticket.mirl")
        assert meta["model_config"] != study.cfg.model
        assert small["total"] < records.loc[("dense", 0)]["total"]
        assert sum(p.numel() for p in model.parameters()) == small["total"]
        assert small["init_seed"] == strategies.SMALL_DENSE_SEED_OFFSET


def test_every_point_records_what_computed_it(study: Study) -> None:
    from mirl_lib.core.device import arithmetic
    records = study.records()
    here = arithmetic(torch.device("cpu"), study.cfg.train.threads or torch.get_num_threads())
    for column, value in here.items():
        assert (records[column].fillna("") == value).all(), column
    assert here["cpu_capability"] == torch.backends.cpu.get_cpu_capability() != ""


def test_arithmetic_names_the_kernel_choosing_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from mirl_lib.core.device import KERNEL_ENV, arithmetic
    for name in KERNEL_ENV:
        monkeypatch.delenv(name, raising=False)
    assert arithmetic(torch.device("cpu"), 3)["kernel_env"] == ""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "SSE41")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    record = arithmetic(torch.device("cpu"), 3)
    assert record["kernel_env"] == "ONEDNN_MAX_CPU_ISA=SSE41 ATEN_CPU_CAPABILITY=default"
    assert record["threads"] == 3 and record["torch"] == torch.__version__


def test_every_point_records_collapse_and_is_scored_on_the_heldout_photos(study: Study) -> None:
    records = study.records()
    assert {"empty_tensors", "prunable_tensors", "path_cut"} <= set(records.columns)
    dense = records[records["strategy"] == "dense"].iloc[0]
    assert dense["empty_tensors"] == 0 and not dense["path_cut"]
    catalog = pd.read_csv(study.run_dir / "catalog.csv")
    assert {"empty_tensors", "path_cut"} <= set(catalog.columns) and len(catalog) == len(records)
    held = pd.read_csv(study.run_dir / "heldout.csv")
    assert set(held["dataset"]) == {"heldout"}
    assert len(held) == len(records) * len(study.heldout_items())


def test_oneshot_prunes_the_dense_network_to_the_trunk_sparsity(study: Study) -> None:
    model = build_model(study.cfg.model)
    for rnd in study.branch_rounds():
        one = mask_of(study, "oneshot", rnd)
        trunk = mask_of(study, "rewind", rnd)
        assert masks.sparsity(one, model)["kept"] == masks.sparsity(trunk, model)["kept"]
        dense = state(study, "dense", 0)
        kept = torch.cat([dense[n][m].abs() for n, m in one.items()])
        dropped = torch.cat([dense[n][~m].abs() for n, m in one.items()])
        assert kept.min() >= dropped.max()
        start, mask, _, _ = start_of(study, "oneshot", rnd)
        assert_masked_equal(start, state(study, "dense", 0, "init.pt"), mask)


def test_controls_use_their_own_recorded_seeds(study: Study) -> None:
    rnd = max(study.branch_rounds())
    trunk = mask_of(study, "rewind", rnd)
    assert all(torch.equal(trunk[n], m) for n, m in mask_of(study, "reinit", rnd).items())
    start, mask, _, extra = start_of(study, "reinit", rnd)
    assert extra["init_seed"] == REINIT_SEED_OFFSET
    assert_masked_equal(start, build_model(study.cfg.model, seed=REINIT_SEED_OFFSET).state_dict(),
                        mask)

    random = mask_of(study, "random_mask", rnd)
    assert ({n: int(m.sum()) for n, m in random.items()}
            == {n: int(m.sum()) for n, m in trunk.items()})
    assert any(not torch.equal(random[n], trunk[n]) for n in trunk)
    _, _, _, extra = start_of(study, "random_mask", rnd)
    assert extra["mask_seed"] == RANDOM_MASK_SEED_OFFSET + rnd


def test_tables_and_tickets_are_consistent(study: Study) -> None:
    metrics = pd.read_csv(study.run_dir / "metrics.csv")
    catalog = pd.read_csv(study.run_dir / "catalog.csv")
    points = study.points()
    assert len(catalog) == len(points)
    assert len(metrics) == len(points) * len(study.test_items())
    assert set(metrics["config_hash"]) == {study.cfg.hash()}
    for row in catalog.itertuples():
        weights, mask, meta = tickets.load_ticket(study.run_dir / row.ticket)
        assert meta["strategy"] == row.strategy and meta["round"] == row.round
        final = state(study, row.strategy, row.round)
        assert all(torch.equal(weights[n], final[n]) for n in final)
        mean = metrics[(metrics["strategy"] == row.strategy) & (metrics["round"] == row.round)]
        assert mean["psnr"].mean() == pytest.approx(row.mean_psnr)


def test_another_config_in_the_same_folder_is_refused(study: Study) -> None:
    other = load_config(SMOKE, overrides={"study": {"name": "lottery"}, "train": {"steps": 7}})
    with pytest.raises(ConfigError, match="made with another configuration"):
        Study(other, study.run_dir).prepare()


def test_stages_out_of_order_fail_clearly(tmp_path: Path) -> None:
    run = Study(load_config(SMOKE), tmp_path / "fresh")
    with pytest.raises(ConfigError, match="has not been run yet"):
        run.run_point(0, "rewind", 1)


def test_moved_aside_points_are_left_out_of_the_gathered_tables(study: Study) -> None:
    """A point folder renamed by ``--force`` (``<folder>.replaced-<time>``) is history: collecting
    again counts each point once, as before the copy was made."""
    before = pd.read_csv(study.run_dir / "metrics.csv")
    live = study.point_dir(0, "rewind", 1)
    aside = live.with_name(f"{live.name}{MOVED_ASIDE}20260101-000000")
    shutil.copytree(live, aside)
    try:
        assert all(MOVED_ASIDE not in str(p) for p in study.point_files("metrics.csv"))
        assert len(study.records()) == len(study.points())
        pd.testing.assert_frame_equal(study.collect(), before)
    finally:
        shutil.rmtree(aside)
        study.collect()


def test_every_point_records_where_its_time_went(study: Study) -> None:
    """``phase_seconds``: every phase of ``PHASES``, none negative, together within the point's
    own ``seconds``; a training that ran and scoring that ran take time."""
    from mirl_lib.study.study import PHASES

    for record in study.records().to_dict("records"):
        phases = record["phase_seconds"]
        assert tuple(phases) == PHASES, phases
        assert all(v >= 0 for v in phases.values()), phases
        assert sum(phases.values()) <= record["seconds"] + 1e-3, (phases, record["seconds"])
        assert sum(phases.values()) > 0.5 * record["seconds"], (phases, record["seconds"])
        assert min(phases["train"], phases["evaluate"], phases["heldout"]) > 0, phases
        assert phases["checkpoints"] > 0, phases  # state.pt and final.pt at least


def test_the_structured_ticket_is_a_narrower_network_rewound_to_initialization(
        study: Study) -> None:
    from mirl_lib.net import structured
    from mirl_lib.pruning import channels

    name = "channel_rewind"
    table = channels.groups(study.skeleton())
    shapes = {k: tuple(v.shape) for k, v in study.skeleton().state_dict().items()}
    init = state(study, "dense", 0, "init.pt")
    before = channels.empty_selection(table)
    rounds = [r for s, r in study.points() if s == name]
    assert rounds == list(range(1, max(study.schedule().branch_rounds) + 1))
    for rnd in rounds:
        removed = channels.load_selection(study.point_dir(0, name, rnd) / "channels.pt", table)
        assert all(bool((removed[n] | ~before[n]).all()) for n in removed)  # nested rounds
        assert sum(int(m.sum()) for m in removed.values()) > sum(
            int(m.sum()) for m in before.values())
        # as many parameters as the trunk's ticket of this round (a unit is coarse: 3%)
        target = strategies.REGISTRY[name].target(study.cfg, rnd)
        assert abs(channels.count(table, removed, shapes) - target) <= 0.03 * target
        start, mask, step, extra = start_of(study, name, rnd)
        assert step == 0 and extra["init_seed"] == 0
        expected = channels.prune_state(init, table, removed)
        assert all(torch.equal(start[k], expected[k]) for k in expected)  # rewound
        assert all(bool(m.all()) for m in mask.values())  # nothing masked: it is smaller
        model, meta = load_model(study.point_dir(0, name, rnd) / "ticket.mirl")
        assert meta[structured.STRUCTURED] and structured.is_structured(model)
        final = state(study, name, rnd)
        assert all(torch.equal(model.state_dict()[k], final[k]) for k in final)
        record = pd.read_csv(study.run_dir / "catalog.csv").query(
            "strategy == @name and round == @rnd").iloc[0]
        assert record.remaining_all == pytest.approx(
            sum(v.numel() for v in final.values()) / int(study.plan().at[0, "total"]))
        before = removed
