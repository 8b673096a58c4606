"""Small-dense controls: ``narrowed`` finds a PromptIR of a given parameter count."""
from __future__ import annotations

import dataclasses
import json
import time

import pytest
import torch

from mirl_lib.core.config import PRESETS, ModelConfig, model_config
from mirl_lib.net.promptir import PromptIR, count_parameters
from mirl_lib.net.sizing import count_params, narrowed

CPU = PRESETS["cpu"]
DEPTH = ("num_blocks", "num_refinement_blocks", "prompt_len", "prompt_sizes", "bias",
         "layernorm_type", "unused_convs", "preset")


def _same_depth(small: ModelConfig, big: ModelConfig) -> None:
    for name in DEPTH:
        assert getattr(small, name) == getattr(big, name), name
    assert small.dim % 2 == 0 and small.dim <= big.dim
    assert all(p >= 1 for p in small.prompt_dims)


def test_count_params_matches_a_real_build_and_leaves_the_rng() -> None:
    state = torch.random.get_rng_state()
    for cfg in (PRESETS["tiny"], CPU, dataclasses.replace(CPU, dim=6, prompt_dims=(8, 12, 24))):
        assert count_params(cfg) == count_parameters(PromptIR(cfg))
    torch.random.set_rng_state(state)
    count_params.cache_clear()
    count_params(dataclasses.replace(CPU, dim=10, prompt_dims=(12, 20, 40)))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert count_params(PRESETS["paper"]) == 35_592_263


@pytest.mark.parametrize("fraction", [0.8, 0.5, 0.2, 0.1, 0.05])
def test_cpu_preset_narrowed_within_five_percent(fraction: float) -> None:
    target = round(fraction * count_params(CPU))
    small = narrowed(CPU, target)
    assert abs(count_params(small) - target) <= 0.05 * target
    _same_depth(small, CPU)
    assert small.heads == CPU.heads  # (1, 2, 4, 8) divides every even width
    model = PromptIR(small)  # a real CPU build: its own count and a forward pass
    assert count_parameters(model) == count_params(small)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert model(x).shape == x.shape


def test_paper_preset_at_ten_percent_on_meta_only() -> None:
    paper = PRESETS["paper"]
    target = round(0.1 * count_params(paper))
    started = time.perf_counter()
    small = narrowed(paper, target)
    assert time.perf_counter() - started < 30  # a handful of meta builds, never a real one
    assert abs(count_params(small) - target) <= 0.05 * target
    _same_depth(small, paper)
    assert small.ffn_expansion_factor == paper.ffn_expansion_factor  # width alone sufficed


def test_full_count_gives_the_config_back() -> None:
    assert narrowed(CPU, count_params(CPU)) == CPU
    assert narrowed(CPU, round(count_params(CPU) * 1.02)) == CPU


def test_impossible_targets_name_target_and_nearest_count() -> None:
    with pytest.raises(ValueError, match=r"target 1,000 .*nearest count is [\d,]+"):
        narrowed(CPU, 1000)
    with pytest.raises(ValueError, match=r"2,000,000 .*nearest count is 1,288,150"):
        narrowed(CPU, 2_000_000)
    with pytest.raises(ValueError, match="positive"):
        narrowed(CPU, 0)
    with pytest.raises(ValueError, match="tolerance"):
        narrowed(CPU, 10_000, tolerance=1.5)


def test_tight_tolerance_tunes_the_ffn_expansion() -> None:
    target = round(0.3 * count_params(CPU))
    small = narrowed(CPU, target, tolerance=0.001)
    assert abs(count_params(small) - target) <= 0.001 * target
    assert small.ffn_expansion_factor != CPU.ffn_expansion_factor
    assert round(small.ffn_expansion_factor * 1000) == small.ffn_expansion_factor * 1000


def test_asdict_round_trip_rebuilds_the_narrowed_config() -> None:
    for fraction in (0.5, 0.05):
        small = narrowed(CPU, round(fraction * count_params(CPU)))
        assert model_config(dataclasses.asdict(small)) == small
        # as a ticket or weights file records it: plain JSON values, lists for tuples
        stored = json.loads(json.dumps(dataclasses.asdict(small)))
        assert model_config(stored) == small


def test_deterministic() -> None:
    target = round(0.193 * count_params(CPU))
    first = narrowed(CPU, target)
    count_params.cache_clear()
    assert narrowed(CPU, target) == first
    assert repr(narrowed(CPU, target)) == repr(first)


def test_heads_that_stop_dividing_are_reduced() -> None:
    cfg = ModelConfig(preset="cpu", dim=24, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1,
                      heads=(3, 6, 12, 24), prompt_dims=(24, 48, 96), prompt_len=3,
                      prompt_sizes=(8, 4, 2), unused_convs=False)
    target = round(0.45 * count_params(cfg))
    small = narrowed(cfg, target)
    assert small.dim == 16 and small.heads == (2, 4, 8, 16)  # 3, 6, 12, 24 do not divide 16 .. 128
    assert abs(count_params(small) - target) <= 0.05 * target
    assert model_config(dataclasses.asdict(small)) == small
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert PromptIR(small)(x).shape == x.shape
