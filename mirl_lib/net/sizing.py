"""Small-dense controls: a narrowed PromptIR with a given number of parameters.

A lottery ticket at a remaining fraction ``f`` keeps about ``f`` of the network's parameters. The
small-dense control asks whether a *dense* network of the same size does as well: same depth (block
counts, refinement blocks, heads, prompt length, FFN expansion, bias, LayerNorm kind, unused
convolutions), narrower widths. ``narrowed(cfg, target)`` finds such a ``ModelConfig``;
``count_params(cfg)`` counts the parameters of ``PromptIR(cfg)`` without allocating them.

How the width is chosen (all deterministic, see ``narrowed``):

1. the base width ``dim`` (each level is ``dim * (1, 2, 4, 8)`` wide) is searched over the even
   values ``2 .. cfg.dim`` (an odd ``dim`` passes ``ModelConfig``'s checks but not the forward pass:
   the first downsampling halves ``dim`` channels before its pixel-unshuffle);
2. ``prompt_dims`` scale with ``dim / cfg.dim`` (rounded to the nearest width that keeps every
   prompt block divisible by its heads, at least 1); ``prompt_sizes`` and ``prompt_len`` stay;
3. the heads of each level stay as in ``cfg`` when they divide the level's width, else they become
   the largest divisor of that width below them;
4. the ``dim`` whose count is nearest ``target`` wins; when even that one is off by more than
   ``tolerance``, ``ffn_expansion_factor`` (a multiple of 0.001) is tuned at each of the two widths
   around ``target`` so the count lands as close to it as that grid allows, and of those within
   tolerance the one whose factor moved least (in ratio) from ``cfg``'s wins.

The narrowed config keeps ``cfg.preset``: every field is recorded, so
``model_config(dataclasses.asdict(narrowed_cfg))`` (how tickets and weight files are read back)
rebuilds exactly the narrowed config, whatever the preset's own widths.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from fractions import Fraction

import torch

from mirl_lib.core.config import ModelConfig
from mirl_lib.core.errors import ConfigError
from mirl_lib.net.promptir import PromptIR

# Width multiple of each of the four levels, and of the feature maps the three prompt blocks join.
LEVEL_WIDTHS: tuple[int, ...] = (1, 2, 4, 8)
PROMPT_WIDTHS: tuple[int, ...] = (2, 4, 8)


# ``ffn_expansion_factor`` is tuned on this grid (0.001 steps).
FFN_GRID = 1000


# How far the tuned ``ffn_expansion_factor`` may rise above the starting config's.
FFN_MAX_GROWTH = 4.0


@functools.lru_cache(maxsize=4096)
def count_params(cfg: ModelConfig) -> int:
    """Total parameters of ``PromptIR(cfg)``, built on the meta device (no memory, no RNG use)."""

    with torch.device("meta"):
        model = PromptIR(cfg)
    return sum(p.numel() for p in model.parameters())


@functools.lru_cache(maxsize=256)  # a study asks for the same widths at every point
def narrowed(cfg: ModelConfig, target: int, tolerance: float = 0.05) -> ModelConfig:
    """A PromptIR as deep as ``cfg`` but narrower, with ``count_params`` within ``tolerance`` of
    ``target`` (relative) and as close to it as the search allows.

    ``dim`` (even, at most ``cfg.dim``) is chosen first with ``prompt_dims`` scaled along and
    ``ffn_expansion_factor`` kept; only when no such width is within ``tolerance`` is
    ``ffn_expansion_factor`` tuned (see the module docstring). A ``target`` at or above
    ``count_params(cfg)`` returns ``cfg`` when it is within tolerance. Deterministic; the
    narrowed config keeps ``cfg.preset``.

    Raises ``ValueError`` naming ``target`` and the nearest reachable count when no network in the
    family is within tolerance (a target below the smallest one, or above ``cfg``'s own count).
    """
    if isinstance(target, bool) or not isinstance(target, int) or target <= 0:
        raise ValueError(f"narrowed: target must be a positive parameter count, got {target!r}")
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(f"narrowed: tolerance must be in [0, 1), got {tolerance!r}")
    top = cfg.dim - cfg.dim % 2
    if top < 2:
        raise ValueError(f"narrowed: {cfg.preset!r} has dim {cfg.dim}; no even width to narrow to")
    full = count_params(cfg)
    if target >= full:
        if _within(full, target, tolerance):
            return cfg
        raise ValueError(f"narrowed: target {target:,} parameters is more than {cfg.preset!r} "
                         f"(dim {cfg.dim}) itself has: the nearest count is {full:,}")

    low, high = _bracket(cfg, target, top)
    by_dim = [_at(cfg, d) for d in (low, high) if d is not None]
    best = min(by_dim, key=lambda c: _rank(c, target))
    if _within(count_params(best), target, tolerance):
        return best
    # No width alone is close enough: tune the FFN expansion at the two widths around the target
    # and keep the one that changes it least (the shape stays nearest cfg's).
    tuned = [_tune_ffn(c, cfg, target) for c in by_dim]
    hits = [c for c in tuned if _within(count_params(c), target, tolerance)]
    if hits:
        return min(hits, key=lambda c: (abs(math.log(c.ffn_expansion_factor
                                                     / cfg.ffn_expansion_factor)),
                                        *_rank(c, target)))
    best = min(tuned + [best], key=lambda c: _rank(c, target))
    raise ValueError(
        f"narrowed: target {target:,} parameters is out of reach: no narrowed {cfg.preset!r} "
        f"PromptIR is within ±{tolerance:.1%} of it; the nearest count is "
        f"{count_params(best):,} (dim {best.dim}, ffn_expansion_factor "
        f"{best.ffn_expansion_factor:g}, prompt_dims {list(best.prompt_dims)})")


def _within(count: int, target: int, tolerance: float) -> bool:
    return abs(count - target) <= tolerance * target


def _rank(c: ModelConfig, target: int) -> tuple[int, int]:
    """Nearest count first; on a tie the wider network (deterministic)."""
    return abs(count_params(c) - target), -c.dim


def _bracket(cfg: ModelConfig, target: int, top: int) -> tuple[int | None, int | None]:
    """The widest even ``dim`` whose count is at most ``target`` and the next one up (either may
    be ``None`` at the ends). Starts at the quadratic estimate and walks; the count grows with
    ``dim`` (roughly as its square), so a few builds suffice."""
    estimate = cfg.dim * math.sqrt(target / count_params(cfg))
    d = min(top, max(2, 2 * round(estimate / 2)))
    if count_params(_at(cfg, d)) <= target:
        while d + 2 <= top and count_params(_at(cfg, d + 2)) <= target:
            d += 2
        return d, (d + 2 if d + 2 <= top else None)
    while d - 2 >= 2 and count_params(_at(cfg, d - 2)) > target:
        d -= 2
    return (d - 2 if d - 2 >= 2 else None), d


def _at(cfg: ModelConfig, dim: int) -> ModelConfig:
    """``cfg`` at base width ``dim``: heads kept where they divide, prompt widths scaled."""
    heads = tuple(h if (dim * m) % h == 0 else _largest_divisor(dim * m, h)
                  for m, h in zip(LEVEL_WIDTHS, cfg.heads))
    prompt_heads = heads[2]  # the prompt blocks use the third level's heads
    prompts = tuple(_prompt_width(Fraction(p * dim, cfg.dim), dim * m, prompt_heads)
                    for m, p in zip(PROMPT_WIDTHS, cfg.prompt_dims))
    try:
        return dataclasses.replace(cfg, dim=dim, heads=heads, prompt_dims=prompts)
    except ConfigError as exc:  # a constraint this module does not know of
        raise ValueError(f"narrowed: width {dim} of {cfg.preset!r} is not a valid config: "
                         f"{exc}") from None


def _largest_divisor(n: int, at_most: int) -> int:
    return max(k for k in range(1, min(n, at_most) + 1) if n % k == 0)


def _prompt_width(ideal: Fraction, features: int, heads: int) -> int:
    """The width >= 1 nearest ``ideal`` (ties up) with ``features + width`` divisible by
    ``heads``."""
    first = (-features) % heads or heads
    steps = max(0, math.floor((ideal - first) / heads + Fraction(1, 2)))
    return first + steps * heads


def _with_ffn(c: ModelConfig, k: int) -> ModelConfig:
    return dataclasses.replace(c, ffn_expansion_factor=k / FFN_GRID)


def _tune_ffn(c: ModelConfig, cfg: ModelConfig, target: int) -> ModelConfig:
    """``c`` with ``ffn_expansion_factor`` on the 0.001 grid giving the count nearest ``target``.

    The count never falls as the factor rises (every hidden width is ``int(width * factor)``) and
    is close to linear in it, so a secant guess followed by a galloping search finds the first grid
    point at or above ``target`` in a few builds; it or the point below wins. The factor keeps
    every hidden width at least 1 and rises at most ``FFN_MAX_GROWTH`` times above ``cfg``'s."""
    lo = math.ceil(FFN_GRID / c.dim)
    while int(c.dim * (lo / FFN_GRID)) < 1:
        lo += 1
    hi = max(lo, math.ceil(FFN_MAX_GROWTH * cfg.ffn_expansion_factor * FFN_GRID))

    def count(k: int) -> int:
        return count_params(_with_ffn(c, k))

    start = min(hi, max(lo, round(c.ffn_expansion_factor * FFN_GRID)))
    other = lo if count(start) > target else hi
    if other == start or (count(other) - target) * (count(start) - target) > 0:
        return min((_with_ffn(c, start), _with_ffn(c, other)), key=lambda x: _rank(x, target))
    slope = (count(other) - count(start)) / (other - start)
    guess = min(hi, max(lo, start + round((target - count(start)) / slope))) if slope else start
    k = _first_at_least(count, target, lo, hi, guess)
    return min((_with_ffn(c, j) for j in (k - 1, k) if lo <= j <= hi),
               key=lambda x: _rank(x, target))


def _first_at_least(count, target: int, lo: int, hi: int, guess: int) -> int:
    """The smallest ``k`` in ``[lo, hi]`` with ``count(k) >= target`` (``count`` nondecreasing and
    ``count(hi) >= target``), galloping out from ``guess`` and then bisecting."""
    step = 1
    if count(guess) >= target:  # the answer is at or below guess
        b, a = guess, guess - 1
        while a >= lo and count(a) >= target:
            b, step = a, step * 2
            a = b - step
        a = max(a, lo - 1)  # count(a) < target, or a == lo - 1
    else:
        a, b = guess, guess + 1
        while count(b) < target:  # terminates: count(hi) >= target
            a, step = b, step * 2
            b = min(hi, a + step)
    while b - a > 1:
        mid = (a + b) // 2
        if count(mid) >= target:
            b = mid
        else:
            a = mid
    return b


# ----- counts of the study's networks, from shapes alone ---------------------------------------

@functools.lru_cache(maxsize=8)
def skeleton(cfg: ModelConfig) -> PromptIR:
    """The network of ``cfg`` on the meta device: names, shapes and module types, no memory."""
    with torch.device("meta"):
        return PromptIR(cfg)
