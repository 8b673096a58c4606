"""Mask rules: pure functions ``(weights, mask, rate) -> mask`` with exact counts.

Global and layer-wise magnitude pruning (``prune`` applies the study's ``PruneConfig``), one-shot
pruning to a target density, and a random mask with given per-layer counts. Ties are broken
deterministically; a rule never revives a pruned weight.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from mirl_lib.core.config import PruneConfig
from mirl_lib.core.errors import CheckpointError, ConfigError
from mirl_lib.pruning.masks import Mask


def round_half_up(x: float) -> int:
    """Round to the nearest integer, halves up (platform-independent, unlike banker's rounding)."""
    return int(math.floor(x + 0.5))


def global_magnitude(weights: Mapping[str, torch.Tensor], mask: Mask, rate: float) -> Mask:
    """Remove ``round(rate * alive)`` alive weights with one threshold over all masked tensors."""
    _check_rate(rate)
    return _global_count(weights, mask, round_half_up(rate * _alive(mask)))


def layerwise_magnitude(weights: Mapping[str, torch.Tensor], mask: Mask, rate: float,
                        output_rate_factor: float = 0.5,
                        output_name: str = "output.weight") -> Mask:
    """Each tensor loses ``round(rate * its alive)``; ``output_name`` uses ``rate * factor``."""
    _check_rate(rate)
    _check_rate(rate * output_rate_factor, "prune.output_rate_factor")
    rates = {n: rate * output_rate_factor if n == output_name else rate for n in mask}
    return {n: _prune_tensor(weights, mask, n, lambda alive, r=rates[n]: round_half_up(r * alive))
            for n in mask}


def prune(weights: Mapping[str, torch.Tensor], mask: Mask, cfg: PruneConfig) -> Mask:
    """One pruning round as ``cfg.method`` (``global`` or ``layerwise``) at ``cfg.rate``."""
    if cfg.method == "global":
        return global_magnitude(weights, mask, cfg.rate)
    if cfg.method == "layerwise":
        return layerwise_magnitude(weights, mask, cfg.rate, cfg.output_rate_factor)
    raise ConfigError(f"prune.method: unknown method {cfg.method!r}; "
                      "known: ['global', 'layerwise']")


def oneshot_mask(weights: Mapping[str, torch.Tensor], mask: Mask, remaining: float,
                 method: str = "global", output_rate_factor: float = 0.5,
                 output_name: str = "output.weight") -> Mask:
    """Prune straight to ``remaining`` (a fraction of the tensors' full sizes) in one step.

    ``global``: exactly ``round(remaining * prunable)`` weights stay, chosen by one threshold.
    ``layerwise``: each tensor keeps ``round(remaining * its size)``; ``output_name`` is pruned at
    ``(1 - remaining) * output_rate_factor`` instead, as in a layer-wise round.
    """
    if not 0.0 < remaining <= 1.0:
        raise ConfigError(f"study.branch_remaining: {remaining} is not in (0, 1]")
    if method == "global":
        target = round_half_up(remaining * sum(m.numel() for m in mask.values()))
        alive = _alive(mask)
        if target > alive:
            raise ConfigError(f"oneshot: target of {target} weights exceeds the {alive} alive")
        return _global_count(weights, mask, alive - target)
    if method != "layerwise":
        raise ConfigError(f"prune.method: unknown method {method!r}; "
                          "known: ['global', 'layerwise']")
    out = {}
    for name, keep in mask.items():
        pruned = (1.0 - remaining) * (output_rate_factor if name == output_name else 1.0)
        target, alive = round_half_up((1.0 - pruned) * keep.numel()), int(keep.sum())
        if target > alive:
            raise ConfigError(f"oneshot: {name} would keep {target} weights, only {alive} alive")
        out[name] = _prune_tensor(weights, mask, name, lambda n, drop=alive - target: drop)
    return out


def random_mask(reference_mask: Mask, seed: int) -> Mask:
    """A random mask with exactly the per-tensor kept counts of ``reference_mask`` (from
    ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, ref in reference_mask.items():
        keep = torch.zeros(ref.numel(), dtype=torch.bool)
        keep[torch.randperm(ref.numel(), generator=generator)[:int(ref.sum())]] = True
        out[name] = keep.reshape(ref.shape)
    return out


def _alive(mask: Mask) -> int:
    return sum(int(m.sum()) for m in mask.values())


def _global_count(weights: Mapping[str, torch.Tensor], mask: Mask, count: int) -> Mask:
    """Remove the ``count`` smallest alive weights over all masked tensors."""
    names = list(mask)
    magnitudes = torch.cat([_magnitude(weights, mask, n) for n in names])
    alive = torch.cat([mask[n].reshape(-1).cpu() for n in names])
    alive_index = alive.nonzero().squeeze(1)
    alive = alive.clone()
    alive[alive_index[_smallest(magnitudes[alive_index], count)]] = False
    return _split(alive, mask)


def _prune_tensor(weights: Mapping[str, torch.Tensor], mask: Mask, name: str,
                  count_for: Callable[[int], int]) -> torch.Tensor:
    """Remove ``count_for(alive)`` of the smallest alive weights of one tensor."""
    alive = mask[name].reshape(-1).cpu()
    alive_index = alive.nonzero().squeeze(1)
    drop = _smallest(_magnitude(weights, mask, name)[alive_index], count_for(alive_index.numel()))
    alive = alive.clone()
    alive[alive_index[drop]] = False
    return alive.reshape(mask[name].shape)


def _smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean selector of the ``k`` smallest values; ties go to the lower position."""
    if k <= 0:
        return torch.zeros(values.numel(), dtype=torch.bool)
    threshold = torch.kthvalue(values, k).values
    chosen = values < threshold
    need = k - int(chosen.sum())
    chosen[(values == threshold).nonzero().squeeze(1)[:need]] = True
    return chosen


def _magnitude(weights: Mapping[str, torch.Tensor], mask: Mask, name: str) -> torch.Tensor:
    if name not in weights:
        raise CheckpointError(f"weights: masked tensor {name!r} is missing")
    w = weights[name]
    if tuple(w.shape) != tuple(mask[name].shape):
        raise CheckpointError(f"weights: {name!r} has shape {tuple(w.shape)}, its mask "
                              f"{tuple(mask[name].shape)}")
    flat = w.detach().to("cpu", torch.float32).reshape(-1).abs()
    if not bool(torch.isfinite(flat).all()):
        raise CheckpointError(f"weights: {name!r} holds non-finite values")
    return flat


def _split(flat: torch.Tensor, like: Mask) -> Mask:
    out, start = {}, 0
    for name, m in like.items():
        out[name] = flat[start:start + m.numel()].reshape(m.shape).clone()
        start += m.numel()
    return out


def _check_rate(rate: float, key: str = "prune.rate") -> None:
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"{key}: pruning rate {rate} is not in [0, 1)")
