"""Sparse tickets: exact round trip, size, and errors on bad files."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mirl_lib.core.errors import CheckpointError
from mirl_lib.files.tickets import export_ticket, load_ticket
from mirl_lib.net.promptir import build_model
from mirl_lib.pruning.masks import full_mask
from mirl_lib.pruning.rules import oneshot_mask

META = {"model": {"preset": "tiny", "num_blocks": [1, 1, 1, 1]}, "strategy": "rewind", "round": 3,
        "remaining_prunable": 0.512, "seed": 0, "config_hash": "abc123def456", "note": None}


def ticket_of(preset: str, remaining: float, scope: str = "default"):
    model = build_model(preset, seed=0)
    state = model.state_dict()
    return state, oneshot_mask(state, full_mask(model, scope), remaining)


@pytest.mark.parametrize("scope", ["default", "reference"])
def test_round_trip_is_exact(tmp_path: Path, scope: str) -> None:
    state, mask = ticket_of("tiny", 0.3, scope)
    path = export_ticket(state, mask, tmp_path / "ticket.mirl", META)
    restored, loaded_mask, meta = load_ticket(path)
    assert list(restored) == list(state)
    assert meta == META
    assert list(loaded_mask) == list(mask)
    for name, tensor in state.items():
        expected = tensor * mask[name] if name in mask else tensor
        assert torch.equal(restored[name], expected), name
        assert restored[name].dtype == tensor.dtype
    assert all(torch.equal(loaded_mask[n], mask[n]) for n in mask)
    model = build_model("tiny")
    model.load_state_dict(restored, strict=True)
    assert [p.name for p in tmp_path.iterdir()] == ["ticket.mirl"]  # no temp file left


def test_the_same_ticket_is_the_same_bytes(tmp_path: Path) -> None:
    """Written twice (each through its own random temporary file), a ticket is one file, byte for
    byte: a retrained ticket can be checked with a hash."""
    state, mask = ticket_of("tiny", 0.3)
    first = export_ticket(state, mask, tmp_path / "a" / "ticket.mirl", META).read_bytes()
    assert export_ticket(state, mask, tmp_path / "b" / "ticket.mirl", META).read_bytes() == first


def test_round_trip_keeps_bfloat16(tmp_path: Path) -> None:
    state, mask = ticket_of("tiny", 0.5)
    state = {n: t.to(torch.bfloat16) for n, t in state.items()}
    restored, _, _ = load_ticket(export_ticket(state, mask, tmp_path / "t.mirl", {}))
    assert all(torch.equal(restored[n], state[n] * mask[n] if n in mask else state[n])
               for n in state)


def test_ticket_at_ten_percent_is_small(tmp_path: Path) -> None:
    state, mask = ticket_of("cpu", 0.1)
    torch.save(state, tmp_path / "dense.pt")
    ticket = export_ticket(state, mask, tmp_path / "ticket.mirl", META)
    ratio = ticket.stat().st_size / (tmp_path / "dense.pt").stat().st_size
    assert ratio <= 0.15, ratio


@pytest.mark.slow  # the paper-size network
def test_paper_ticket_at_ten_percent_of_all_parameters_is_small(tmp_path: Path) -> None:
    """The published sparsity: 15 rounds of 20% (reference scope) leave 10.0% of all parameters."""
    from mirl_lib.net.promptir import build_model
    from mirl_lib.pruning.masks import full_mask, sparsity
    from mirl_lib.pruning.plan import remaining_after
    from mirl_lib.pruning.rules import oneshot_mask

    model = build_model("paper", seed=0)
    state = model.state_dict()
    full = full_mask(model, "reference")
    mask = oneshot_mask({n: state[n] for n in full}, full, remaining_after(15, 0.2))
    assert abs(sparsity(mask, model)["remaining_all"] - 0.10) < 0.001
    torch.save(state, tmp_path / "dense.pt")
    ticket = export_ticket(state, mask, tmp_path / "ticket.mirl", META)
    ratio = ticket.stat().st_size / (tmp_path / "dense.pt").stat().st_size
    assert ratio <= 0.15, ratio


def test_bad_meta_is_rejected(tmp_path: Path) -> None:
    state, mask = ticket_of("tiny", 0.5)
    with pytest.raises(CheckpointError, match=r"meta.model.shape\[1\]"):
        export_ticket(state, mask, tmp_path / "t.mirl", {"model": {"shape": [1, Path("x")]}})
    with pytest.raises(CheckpointError, match="bad.weight"):
        export_ticket(state, {"bad.weight": torch.ones(2, dtype=torch.bool)}, tmp_path / "t.mirl",
                      {})
    assert not list(tmp_path.iterdir())


def test_bad_files_raise_checkpoint_error(tmp_path: Path) -> None:
    state, mask = ticket_of("tiny", 0.5)
    good = export_ticket(state, mask, tmp_path / "good.mirl", META)
    (tmp_path / "garbage.mirl").write_bytes(b"\x00not a zip file")
    (tmp_path / "truncated.mirl").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    torch.save(state, tmp_path / "dense.mirl")
    damaged = torch.load(good, weights_only=True)
    damaged["values"] = damaged["values"][:-1]
    torch.save(damaged, tmp_path / "damaged.mirl")
    for name in ["missing.mirl", "garbage.mirl", "truncated.mirl", "dense.mirl", "damaged.mirl"]:
        with pytest.raises(CheckpointError, match=name):
            load_ticket(tmp_path / name)
