"""Layer collapse: empty mask tensors and whether the image still reaches the output."""
from __future__ import annotations

import pytest
import torch

from mirl_lib.core.errors import CheckpointError
from mirl_lib.net.promptir import build_model
from mirl_lib.pruning.collapse import collapse
from mirl_lib.pruning.masks import Mask, full_mask

SIDE = 16  # the tiny preset's smallest comfortable input; keeps the float64 confirmations short


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_model("tiny", seed=0)


def _emptied(mask: Mask, *names: str) -> Mask:
    return {n: torch.zeros_like(k) if n in names else k for n, k in mask.items()}


def test_full_mask_keeps_the_path(model: torch.nn.Module) -> None:
    mask = full_mask(model)
    result = collapse(model, mask, probe_side=SIDE)
    assert result == {"prunable_tensors": len(mask), "empty_tensors": 0, "empty_names": [],
                      "path_cut": False}


def test_empty_output_projection_cuts_the_path(model: torch.nn.Module) -> None:
    # ``output`` is the last convolution before ``+ image``: without it the body adds nothing.
    result = collapse(model, _emptied(full_mask(model), "output.weight"), probe_side=SIDE)
    assert result["empty_names"] == ["output.weight"] and result["empty_tensors"] == 1
    assert result["path_cut"] is True


def test_empty_patch_embedding_cuts_the_path(model: torch.nn.Module) -> None:
    # The other end: the body still outputs something (prompts, biases), but not from the image.
    result = collapse(model, _emptied(full_mask(model), "patch_embed.proj.weight"),
                      probe_side=SIDE)
    assert result["empty_names"] == ["patch_embed.proj.weight"] and result["path_cut"] is True


def test_empty_tensor_bypassed_by_a_residual_keeps_the_path(model: torch.nn.Module) -> None:
    names = ["encoder_level1.0.attn.project_out.weight", "latent.0.ffn.project_out.weight"]
    for name in names:
        result = collapse(model, _emptied(full_mask(model), name), probe_side=SIDE)
        assert result["empty_names"] == [name] and result["empty_tensors"] == 1
        assert result["path_cut"] is False, name
    result = collapse(model, _emptied(full_mask(model), *names), probe_side=SIDE)
    assert result["empty_tensors"] == 2 and result["path_cut"] is False


def test_random_half_mask_keeps_the_path(model: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(0)
    mask = {n: torch.rand(k.shape, generator=gen) < 0.5 for n, k in full_mask(model).items()}
    result = collapse(model, mask, probe_side=SIDE)
    assert result["path_cut"] is False and result["empty_tensors"] == 0


def test_everything_pruned_cuts_the_path(model: torch.nn.Module) -> None:
    mask = full_mask(model)
    result = collapse(model, _emptied(mask, *mask), probe_side=SIDE)
    assert result["empty_tensors"] == result["prunable_tensors"] == len(mask)
    assert result["empty_names"] == list(mask) and result["path_cut"] is True


def test_tiny_but_live_path_is_not_a_cut() -> None:
    # A residual cancellation ``g + r - r`` would round this body gradient (~1e-30) away; the
    # body's gradient is read on its own copy of the image, so it is seen.
    model = build_model("tiny", seed=0)
    with torch.no_grad():
        model.output.weight.mul_(1e-30)
    assert collapse(model, full_mask(model), probe_side=SIDE)["path_cut"] is False
    # Weights below float32's range: the float32 probe sees exact zeros, the float64
    # confirmation (on the model's own float64 weights) sees the live path.
    model = build_model("tiny", seed=0).double()
    with torch.no_grad():
        model.output.weight.mul_(1e-60)
    assert collapse(model, full_mask(model), probe_side=SIDE)["path_cut"] is False
    assert model.output.weight.dtype == torch.float64 and bool(model.output.weight.abs().max() > 0)


def test_given_model_is_left_as_it_was() -> None:
    model = build_model("tiny", seed=0).train()
    model.output.weight.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    threads = torch.get_num_threads()
    mask = _emptied(full_mask(model), "output.weight", "encoder_level1.0.ffn.project_in.weight")
    gen = torch.Generator().manual_seed(1)
    mask = {n: k & (torch.rand(k.shape, generator=gen) < 0.5) for n, k in mask.items()}
    assert collapse(model, mask, probe_side=SIDE)["path_cut"] is True
    after = model.state_dict()
    assert all(torch.equal(before[n], after[n]) and after[n].dtype == before[n].dtype
               for n in before)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert model.training and all(p.grad is None for p in model.parameters())
    assert not any(m._forward_pre_hooks for m in model.modules())
    assert torch.get_num_threads() == threads


def test_mask_that_does_not_fit_is_refused(model: torch.nn.Module) -> None:
    with pytest.raises(CheckpointError, match="not a parameter"):
        collapse(model, {"nope.weight": torch.ones(3, dtype=torch.bool)})


def test_cpu_preset_probe_is_quick() -> None:
    model = build_model("cpu", seed=0)
    mask = full_mask(model)
    collapse(model, mask)  # warm-up (first convolutions initialise their kernels)
    result = collapse(model, mask)
    assert result["path_cut"] is False and result["prunable_tensors"] == len(mask)
