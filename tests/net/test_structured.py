"""A structured ticket is a physically smaller PromptIR: saved, loaded and refused like any
other."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mirl_lib.core.errors import CheckpointError
from mirl_lib.files import tickets
from mirl_lib.net import structured
from mirl_lib.net.checkpoints import load_into, load_model, save_weights
from mirl_lib.net.promptir import build_model
from mirl_lib.pruning import channels, masks


@pytest.fixture(scope="module")
def narrow() -> torch.nn.Module:
    """The cpu preset cut to about a fifth of its parameters by importance."""
    net = build_model("cpu", seed=3)
    table = channels.groups(net)
    state = net.state_dict()
    removed = channels.cut(state, table, channels.empty_selection(table),
                           sum(v.numel() for v in state.values()) // 5)
    return structured.build(net.config, channels.prune_state(state, table, removed)).eval()


def same_output(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_a_narrow_network_knows_it_is_one(narrow: torch.nn.Module) -> None:
    assert structured.is_structured(narrow)
    assert not structured.is_structured(build_model("cpu"))
    assert sum(p.numel() for p in narrow.parameters()) < 0.21 * sum(
        p.numel() for p in build_model("cpu").parameters())
    heads = [m.heads for m in narrow.modules() if hasattr(m, "temperature")]
    assert heads == [m.temperature.shape[0] for m in narrow.modules() if hasattr(m, "temperature")]


def test_weights_file_round_trip(narrow: torch.nn.Module, tmp_path: Path) -> None:
    save_weights(narrow, tmp_path / "w.pt", {"round": 3})
    model, meta = load_model(tmp_path / "w.pt", expected=narrow.config)
    assert meta[structured.STRUCTURED] is True and meta["round"] == 3
    assert same_output(model, narrow)
    into = structured.shaped(narrow.config, {k: v.shape for k, v in narrow.state_dict().items()})
    load_into(into, tmp_path / "w.pt")  # a training resuming in a network of these widths
    assert same_output(into, narrow)


def test_ticket_round_trip_is_a_plain_smaller_network(narrow: torch.nn.Module,
                                                       tmp_path: Path) -> None:
    state = narrow.state_dict()
    tickets.export_ticket(state, masks.full_mask(narrow), tmp_path / "t.mirl",
                          {"model_config": {**narrow.config.__dict__},
                           structured.STRUCTURED: True})
    model, meta = load_model(tmp_path / "t.mirl")
    assert meta["format"] == "ticket" and meta[structured.STRUCTURED]
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in state.items()}
    assert same_output(model, narrow)
    assert not any(isinstance(b, torch.nn.utils.parametrize.ParametrizationList)
                   for b in model.modules())


def test_a_checkpoint_of_the_wrong_shape_is_refused(narrow: torch.nn.Module,
                                                    tmp_path: Path) -> None:
    state = {k: v.clone() for k, v in narrow.state_dict().items()}
    state["encoder_level2.0.ffn.project_out.weight"] = state[
        "encoder_level2.0.ffn.project_out.weight"][:, :-1]  # one column fewer than project_in
    torch.save({"format": "mirl-weights", "model_config": dict(narrow.config.__dict__),
                "state_dict": state, "meta": {structured.STRUCTURED: True}}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad.pt: not a structured 'cpu' network: its "
                                              r"layer widths do not join up"):
        load_model(tmp_path / "bad.pt")
    wide = {k: v.clone() for k, v in build_model("cpu").state_dict().items()}
    wide["output.weight"] = torch.zeros(3, 40, 3, 3)  # wider than the network it came from
    torch.save({"format": "mirl-weights", "model_config": dict(narrow.config.__dict__),
                "state_dict": wide, "meta": {structured.STRUCTURED: True}}, tmp_path / "wide.pt")
    with pytest.raises(CheckpointError, match="wide.pt: .*output.weight is .*wider than"):
        load_model(tmp_path / "wide.pt")
    save_weights(narrow, tmp_path / "narrow.pt")
    with pytest.raises(CheckpointError, match="narrow.pt: .*the network it is loaded into has"):
        load_into(build_model("cpu"), tmp_path / "narrow.pt")
    # an unmarked file with narrow tensors is checked against the config, as before
    torch.save(narrow.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="plain.pt: checkpoint does not fit the 'cpu' model"):
        load_model(tmp_path / "plain.pt", expected=narrow.config)
