"""The plan of a pruning study from tensor sizes alone: kept counts and remaining fractions per
round (``planned_kept``, ``plan_table``), without building a network or pruning anything.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping

import pandas as pd

from mirl_lib.core.config import ModelConfig, PruneConfig
from mirl_lib.core.errors import ConfigError
from mirl_lib.net.sizing import skeleton
from mirl_lib.pruning import masks
from mirl_lib.pruning.rules import round_half_up


def remaining_after(rounds: int, rate: float) -> float:
    """Nominal fraction of the prunable weights left after ``rounds`` rounds at ``rate``."""
    return (1.0 - rate) ** rounds


def alive_after(total: int, rounds: int, rate: float) -> int:
    """Exact number of weights left from ``total`` after ``rounds`` global rounds at ``rate``."""
    alive = total
    for _ in range(rounds):
        alive -= round_half_up(rate * alive)
    return alive


def planned_kept(sizes: Mapping[str, int], cfg: PruneConfig, rounds: int,
                 output_name: str = "output.weight") -> list[int]:
    """Kept prunable weights after 0, 1, .., ``rounds`` rounds of ``prune(.., cfg)``, from the
    tensor sizes alone: the counts ``prune`` keeps are exact and do not depend on the weights."""
    if cfg.method == "global":
        total = sum(sizes.values())
        return [alive_after(total, r, cfg.rate) for r in range(rounds + 1)]
    if cfg.method != "layerwise":
        raise ConfigError(f"prune.method: unknown method {cfg.method!r}; known: ['global', "
                          "'layerwise']")
    alive = dict(sizes)
    kept = [sum(alive.values())]
    for _ in range(rounds):
        for name, count in alive.items():
            rate = cfg.rate * (cfg.output_rate_factor if name == output_name else 1.0)
            alive[name] = count - round_half_up(rate * count)
        kept.append(sum(alive.values()))
    return kept


def rounds_for(target_remaining_all: float, rate: float, prunable_fraction: float = 1.0,
               max_rounds: int = 200) -> int:
    """Number of rounds whose remaining fraction of ALL parameters is nearest the target.

    ``prunable_fraction`` is prunable / all parameters (``sparsity(...)`` gives both counts).
    """
    if not 0.0 < target_remaining_all < 1.0:
        raise ConfigError(f"target remaining fraction {target_remaining_all} is not in (0, 1)")

    def remaining_all(n: int) -> float:
        return 1.0 - prunable_fraction * (1.0 - remaining_after(n, rate))
    return min(range(max_rounds + 1), key=lambda n: abs(remaining_all(n) - target_remaining_all))


@functools.lru_cache(maxsize=8)
def plan_table(model_cfg: ModelConfig, prune_cfg: PruneConfig) -> pd.DataFrame:
    """Kept counts and remaining fractions after each trunk round, from tensor sizes alone."""
    net = skeleton(model_cfg)
    params = dict(net.named_parameters())
    sizes = {n: params[n].numel() for n in masks.prunable_names(net, prune_cfg.scope)}
    prunable = sum(sizes.values())
    total = sum(p.numel() for p in params.values())
    rows = [{"round": rnd, "kept": kept, "prunable": prunable, "total": total,
             "remaining_prunable": kept / prunable if prunable else 1.0,
             "remaining_all": (total - prunable + kept) / total}
            for rnd, kept in enumerate(planned_kept(sizes, prune_cfg, prune_cfg.rounds))]
    return pd.DataFrame(rows)
