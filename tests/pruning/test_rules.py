"""Exact counts, tie-breaking and purity of the pruning strategies."""
from __future__ import annotations

import pytest
import torch

from mirl_lib.core.config import PruneConfig
from mirl_lib.core.errors import CheckpointError, ConfigError
from mirl_lib.net.promptir import build_model
from mirl_lib.pruning.masks import Mask, full_mask
from mirl_lib.pruning.plan import alive_after, remaining_after, rounds_for
from mirl_lib.pruning.rules import (
    global_magnitude,
    layerwise_magnitude,
    oneshot_mask,
    prune,
    random_mask,
    round_half_up,
)


def tiny_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    return build_model("tiny", seed=seed).state_dict()


def counts(mask: Mask) -> dict[str, int]:
    return {n: int(m.sum()) for n, m in mask.items()}


def assert_subset(new: Mask, old: Mask) -> None:
    assert all(not bool((new[n] & ~old[n]).any()) for n in old), "a pruned weight came back"


@pytest.mark.parametrize("scope", ["default", "reference"])
def test_global_rounds_remove_exact_counts(scope: str) -> None:
    weights = tiny_weights()
    mask = full_mask(build_model("tiny"), scope)
    total = sum(m.numel() for m in mask.values())
    for round_ in range(1, 6):
        new = global_magnitude(weights, mask, 0.2)
        assert sum(counts(new).values()) == alive_after(total, round_, 0.2)
        assert_subset(new, mask)
        removed = torch.cat([weights[n][mask[n] & ~new[n]].abs() for n in mask])
        kept = torch.cat([weights[n][new[n]].abs() for n in mask])
        assert removed.max() <= kept.min()  # one global threshold
        mask = new
    assert sum(counts(mask).values()) / total == pytest.approx(remaining_after(5, 0.2), abs=1e-4)


@pytest.mark.parametrize("scope", ["default", "reference"])
def test_layerwise_rounds_remove_exact_counts_per_tensor(scope: str) -> None:
    weights = tiny_weights()
    mask = full_mask(build_model("tiny"), scope)
    for _ in range(4):
        new = layerwise_magnitude(weights, mask, 0.2, output_rate_factor=0.5)
        for name, alive in counts(mask).items():
            rate = 0.1 if name == "output.weight" else 0.2
            assert int(new[name].sum()) == alive - round_half_up(rate * alive), name
            removed, kept = weights[name][mask[name] & ~new[name]], weights[name][new[name]]
            if removed.numel() and kept.numel():
                assert removed.abs().max() <= kept.abs().min(), name
        assert_subset(new, mask)
        mask = new
    assert int(mask["output.weight"].sum()) > 0.6 * mask["output.weight"].numel()


def test_ties_break_by_flat_index() -> None:
    weights = {"a": torch.ones(2, 5), "b": -torch.ones(10)}
    mask = {"a": torch.ones(2, 5, dtype=torch.bool), "b": torch.ones(10, dtype=torch.bool)}
    mask["a"][0, 1] = False
    new = global_magnitude(weights, mask, 0.3)  # 19 alive -> 6 removed, lowest indices first
    assert new["a"].reshape(-1).tolist() == [False] * 7 + [True] * 3
    assert new["b"].all()
    assert torch.equal(global_magnitude(weights, mask, 0.3)["a"], new["a"])
    mixed = {"a": torch.tensor([3.0, 1.0, 2.0, 1.0, 1.0]), "b": torch.tensor([1.0, 0.5])}
    full = {n: torch.ones_like(w, dtype=torch.bool) for n, w in mixed.items()}
    pruned = global_magnitude(mixed, full, 0.5)  # 7 alive -> 4 removed: 0.5, then three 1.0s
    assert pruned["a"].tolist() == [True, False, True, False, False]
    assert pruned["b"].tolist() == [True, False]


def test_pure_functions_do_not_mutate_inputs() -> None:
    weights = tiny_weights()
    mask = full_mask(build_model("tiny"))
    mask_copy = {n: m.clone() for n, m in mask.items()}
    weights_copy = {n: w.clone() for n, w in weights.items()}
    outputs = [global_magnitude(weights, mask, 0.5), layerwise_magnitude(weights, mask, 0.5),
               oneshot_mask(weights, mask, 0.3), random_mask(mask, 0)]
    assert all(torch.equal(mask[n], mask_copy[n]) for n in mask)
    assert all(torch.equal(weights[n], weights_copy[n]) for n in weights)
    for out in outputs:
        assert all(out[n].data_ptr() != mask[n].data_ptr() for n in mask)
        assert all(out[n].dtype == torch.bool and out[n].shape == mask[n].shape for n in mask)


def test_prune_dispatches_on_config() -> None:
    weights = tiny_weights()
    mask = full_mask(build_model("tiny"))
    layerwise = prune(weights, mask, PruneConfig(method="layerwise", rate=0.3,
                                                 output_rate_factor=0.2))
    assert counts(layerwise) == counts(layerwise_magnitude(weights, mask, 0.3, 0.2))
    global_ = prune(weights, mask, PruneConfig(method="global", rate=0.3))
    assert counts(global_) != counts(layerwise)
    total = sum(m.numel() for m in mask.values())
    assert sum(counts(global_).values()) == total - round_half_up(0.3 * total)


def test_random_mask_keeps_per_tensor_counts_and_is_reproducible() -> None:
    weights = tiny_weights()
    reference = layerwise_magnitude(weights, full_mask(build_model("tiny")), 0.7)
    first, again, other = (random_mask(reference, 5), random_mask(reference, 5),
                           random_mask(reference, 6))
    assert counts(first) == counts(reference)
    assert all(torch.equal(first[n], again[n]) for n in reference)
    assert any(not torch.equal(first[n], other[n]) for n in reference)
    assert any(not torch.equal(first[n], reference[n]) for n in reference)


@pytest.mark.parametrize("remaining", [0.5, 0.2, 0.1])
def test_oneshot_reaches_exact_targets(remaining: float) -> None:
    weights = tiny_weights()
    mask = full_mask(build_model("tiny"))
    total = sum(m.numel() for m in mask.values())
    assert sum(counts(oneshot_mask(weights, mask, remaining)).values()) == round_half_up(
        remaining * total)
    layerwise = oneshot_mask(weights, mask, remaining, method="layerwise", output_rate_factor=0.5)
    for name, keep in layerwise.items():
        pruned = (1 - remaining) * (0.5 if name == "output.weight" else 1.0)
        assert int(keep.sum()) == round_half_up((1 - pruned) * keep.numel()), name
    with pytest.raises(ConfigError, match="exceeds"):
        oneshot_mask(weights, oneshot_mask(weights, mask, 0.1), 0.5)


def test_bad_inputs_raise_mirl_errors() -> None:
    weights = tiny_weights()
    mask = full_mask(build_model("tiny"))
    name = next(iter(mask))
    with pytest.raises(ConfigError, match="prune.rate"):
        global_magnitude(weights, mask, 1.5)
    with pytest.raises(CheckpointError, match=name):
        global_magnitude({k: v for k, v in weights.items() if k != name}, mask, 0.2)
    broken = dict(weights, **{name: weights[name].clone().fill_(float("nan"))})
    with pytest.raises(CheckpointError, match="non-finite"):
        layerwise_magnitude(broken, mask, 0.2)


def test_round_schedule_helpers() -> None:
    assert remaining_after(15, 0.2) == pytest.approx(0.0352, abs=1e-4)
    assert alive_after(1000, 2, 0.2) == 640
    reference_fraction = 33_199_064 / 35_592_263  # paper preset, reference scope
    assert rounds_for(0.10, 0.2, reference_fraction) == 15
    assert rounds_for(0.5, 0.2) == 3
