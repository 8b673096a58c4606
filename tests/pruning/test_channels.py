"""Structured pruning: PromptIR's coupled channel groups, removing them, and what they leave."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from mirl_lib.core.config import model_config
from mirl_lib.core.errors import CheckpointError, ConfigError
from mirl_lib.net import structured
from mirl_lib.net.promptir import UNUSED_PARAMETER_PREFIXES, build_model
from mirl_lib.pruning import channels

# the cpu preset, and a variant with biases everywhere, bias-free LayerNorms and the unused convs
CONFIGS = {
    "cpu": model_config("cpu"),
    "bias": dataclasses.replace(model_config("tiny"), bias=True, layernorm_type="BiasFree"),
}


def fixed_dim(name: str, dim: int, shape: tuple[int, ...]) -> bool:
    """Dimensions no channel group may touch: image channels, kernels, a depthwise filter's single
    input, the prompt's length and size, the prompt weights' outputs, the head temperature's
    broadcast dimensions."""
    if name.startswith(UNUSED_PARAMETER_PREFIXES):
        return True
    if name == "patch_embed.proj.weight" and dim == 1 or name.startswith("output.") and dim == 0:
        return True
    if "prompt_param" in name:
        return dim != 2
    if "linear_layer" in name:
        return dim == 0
    if name.endswith("temperature"):
        return dim > 0
    return len(shape) == 4 and (dim >= 2 or dim == 1 and shape[1] == 1)


@pytest.fixture(scope="module", params=list(CONFIGS))
def net(request: pytest.FixtureRequest) -> torch.nn.Module:
    model = build_model(CONFIGS[request.param], seed=0).eval()
    with torch.no_grad():  # give the LayerNorms and biases values other than their 1 / 0 start
        for p in model.parameters():
            if p.dim() <= 1:
                p.add_(0.2 * torch.randn(p.shape,
                                         generator=torch.Generator().manual_seed(p.numel())))
    return model


def shapes_of(net: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def test_groups_cover_every_prunable_dimension_exactly_once(net: torch.nn.Module) -> None:
    table = channels.groups(net)
    shapes = shapes_of(net)
    covered: dict[tuple[str, int], list[int]] = {}
    for g in table:
        assert g.kind in channels.KINDS and g.units >= 1
        for unit in range(g.units):
            for key, idx in g.indices(unit).items():
                covered.setdefault(key, []).extend(idx)
    for name, shape in shapes.items():
        for dim, size in enumerate(shape):
            if fixed_dim(name, dim, shape):
                assert (name, dim) not in covered, (name, dim)
            else:
                assert sorted(covered[(name, dim)]) == list(range(size)), (name, dim)


def test_removing_a_unit_of_every_group_leaves_a_valid_smaller_network(
        net: torch.nn.Module) -> None:
    """One unit out of every group at once (the first, then the middle one): each group's
    coupling is exercised, and a wrong one would break the forward pass."""
    table = channels.groups(net)
    shapes, state = shapes_of(net), net.state_dict()
    x = torch.rand(1, 3, 16, 16)
    for pick in (lambda g: 0, lambda g: g.units // 2):
        removed = channels.empty_selection(table)
        for g in table:
            if g.units > 1:
                removed[g.name][pick(g)] = True
        small = channels.prune_state(state, table, removed)
        assert structured.misfit(net.config, small) is None
        lost: dict[tuple[str, int], int] = {}  # every touched dimension loses its units' indices
        for g in table:
            for s in g.slices:
                lost[(s.name, s.dim)] = lost.get((s.name, s.dim), 0) + s.width * (g.units > 1)
        for (name, dim), n in lost.items():
            assert small[name].shape[dim] == shapes[name][dim] - n, (name, dim)
        assert sum(v.numel() for v in small.values()) == channels.count(table, removed, shapes)
        assert channels.pruned_shapes(table, removed, shapes) == {
            k: tuple(v.shape) for k, v in small.items()}
        with torch.no_grad():
            out = structured.build(net.config, small).eval()(x)
        assert out.shape == x.shape and bool(torch.isfinite(out).all())


def zeroed(state: dict, table: list[channels.Group], removed: channels.Selection) -> dict:
    """The full network with the removed units' weights set to zero."""
    out = {k: v.clone() for k, v in state.items()}
    for g in table:
        for unit in torch.nonzero(removed[g.name]).flatten().tolist():
            for (name, dim), idx in g.indices(unit).items():
                out[name].index_fill_(dim, torch.tensor(idx), 0.0)
    return out


@pytest.mark.parametrize("kind", ["ffn", "heads"])
def test_removing_hidden_channels_and_heads_equals_zeroing_them(net: torch.nn.Module,
                                                                kind: str) -> None:
    table = channels.groups(net)
    state = net.state_dict()
    removed = channels.empty_selection(table)
    touched = 0
    for g in table:
        if g.kind == kind and g.units > 1:
            removed[g.name][torch.arange(g.units) % 2 == 1] = True
            touched += 1
    assert touched
    x = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        small = structured.build(net.config, channels.prune_state(state, table, removed)).eval()
        masked = build_model(net.config).eval()
        masked.load_state_dict(zeroed(state, table, removed))
        torch.testing.assert_close(small(x), masked(x), rtol=0, atol=2e-6)


def test_a_stream_channel_is_not_a_zeroed_channel(net: torch.nn.Module) -> None:
    """The LayerNorms average over the channels they see: a narrower stream is a network of its
    own, which is why the structured ticket trains the narrower network itself."""
    table = channels.groups(net)
    state = net.state_dict()
    removed = channels.empty_selection(table)
    removed["stream:encoder1"][0] = True
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        small = structured.build(net.config, channels.prune_state(state, table, removed)).eval()
        masked = build_model(net.config).eval()
        masked.load_state_dict(zeroed(state, table, removed))
        assert (small(x) - masked(x)).abs().max() > 1e-4


def test_prune_and_expand_are_inverse(net: torch.nn.Module) -> None:
    table = channels.groups(net)
    shapes, state = shapes_of(net), net.state_dict()
    removed = channels.cut(state, table, channels.empty_selection(table),
                           sum(v.numel() for v in state.values()) // 3)
    small = channels.prune_state(state, table, removed)
    back = channels.expand_state(small, table, removed, shapes)
    assert {k: tuple(v.shape) for k, v in back.items()} == shapes
    for k, v in channels.prune_state(back, table, removed).items():
        assert torch.equal(v, small[k]), k
    expected = zeroed(state, table, removed)
    for k in state:
        assert torch.equal(back[k], expected[k]), k


@pytest.mark.parametrize("method", channels.METHODS)
def test_select_reaches_the_target_count_and_removes_the_least_important_first(
        net: torch.nn.Module, method: str) -> None:
    table = channels.groups(net)
    shapes, state = shapes_of(net), {k: v.clone() for k, v in net.state_dict().items()}
    ffn = next(g for g in table if g.kind == "ffn")
    for (name, dim), idx in ffn.indices(3).items():  # one hidden channel worth nothing
        state[name].index_fill_(dim, torch.tensor(idx), 0.0)
    none = channels.empty_selection(table)
    scores = channels.importance(state, table, none)
    assert float(scores[ffn.name][3]) == 0.0
    total = sum(v.numel() for v in state.values())
    previous = none
    for fraction in (0.5, 0.2):
        target = int(fraction * total)
        removed = channels.select(scores, table, previous, shapes, target, method)
        got = channels.count(table, removed, shapes)
        assert abs(got - target) / target < 0.03, (fraction, got, target)  # a unit is coarse
        assert bool(removed[ffn.name][3])
        assert all(bool((removed[n] | ~previous[n]).all()) for n in removed)  # nested rounds
        assert all(int((~m).sum()) >= 1 for m in removed.values())  # every group keeps a unit
        previous = removed
        scores = channels.importance(channels.expand_state(
            channels.prune_state(state, table, removed), table, removed, shapes),
            table, removed)
        assert all(bool(torch.isinf(scores[n][removed[n]]).all()) for n in removed)


def test_an_unreachable_target_and_unknown_settings_are_refused(net: torch.nn.Module) -> None:
    table = channels.groups(net)
    shapes, state = shapes_of(net), net.state_dict()
    none = channels.empty_selection(table)
    scores = channels.importance(state, table, none)
    with pytest.raises(ConfigError, match="cannot reach 10 parameters"):
        channels.select(scores, table, none, shapes, 10)
    with pytest.raises(ConfigError, match="prune.channel_method"):
        channels.select(scores, table, none, shapes, 1000, "random")
    with pytest.raises(ConfigError, match="prune.channel_importance"):
        channels.importance(state, table, none, "l3")


def test_a_selection_round_trips_and_another_networks_is_refused(net: torch.nn.Module,
                                                                 tmp_path: Path) -> None:
    table = channels.groups(net)
    removed = channels.empty_selection(table)
    removed[table[0].name][0] = True
    channels.save_selection(removed, tmp_path / "channels.pt")
    back = channels.load_selection(tmp_path / "channels.pt", table)
    assert all(torch.equal(back[n], removed[n]) for n in removed)
    other = channels.groups(build_model("tiny" if net.config.preset == "cpu" else "cpu"))
    with pytest.raises(CheckpointError, match="channels.pt: its groups do not match"):
        channels.load_selection(tmp_path / "channels.pt", other)
    (tmp_path / "junk.pt").write_bytes(b"not a file")
    with pytest.raises(CheckpointError, match="junk.pt"):
        channels.load_selection(tmp_path / "junk.pt", table)
