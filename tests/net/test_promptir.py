"""The `paper` preset is the published PromptIR: names, shapes, order and a float64 fingerprint."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mirl_lib.core.config import PRESETS, ModelConfig
from mirl_lib.core.errors import ConfigError
from mirl_lib.files.paths import CHECKOUT
from mirl_lib.net.promptir import UNUSED_PARAMETER_PREFIXES, build_model, count_parameters

# Facts about the published network (parameter table, float64 forward fingerprint), kept with the
# tests so every clone checks against them; tests/data/REFERENCE.md describes both files.
REFERENCE = CHECKOUT / "tests" / "reference"


def reference_rows() -> list[tuple[str, str, int, str]]:
    path = REFERENCE / "promptir_paper_parameters.tsv"
    lines = [ln.rstrip("\n") for ln in path.read_text().splitlines()
             if ln and not ln.startswith("#")]
    return [tuple(ln.split("\t")) for ln in lines[1:]]


def fill_fingerprint(model: torch.nn.Module) -> None:
    """Fill parameters as the reference README prescribes."""
    with torch.no_grad():
        for k, (name, t) in enumerate(model.state_dict().items()):
            f = t[0].numel() if t.dim() > 1 else 1
            v = torch.sin(0.37 * torch.arange(t.numel(), dtype=torch.float64) + k) / np.sqrt(f)
            if name.endswith(("norm1.body.weight", "norm2.body.weight")):
                v = 1 + 0.1 * v
            t.copy_(v.reshape(t.shape))


def test_paper_parameters_match_reference_table() -> None:
    rows = reference_rows()
    model = build_model("paper")
    state = model.state_dict()
    assert [n for n, *_ in rows] == list(state)
    for name, shape, numel, _ in rows:
        assert "x".join(map(str, state[name].shape)) == shape, name
        assert state[name].numel() == int(numel), name
    assert count_parameters(model) == 35_592_263
    assert not list(model.buffers())


def test_paper_gradients_match_reference_table() -> None:
    rows = reference_rows()
    model = build_model("paper")
    model(torch.rand(1, 3, 16, 16)).mean().backward()
    for name, _, _, gets_grad in rows:
        param = dict(model.named_parameters())[name]
        assert (param.grad is not None) == (gets_grad == "yes"), name
    unused = [n for n, *_, g in rows if g == "no"]
    assert all(n.startswith(UNUSED_PARAMETER_PREFIXES) for n in unused) and len(unused) == 6


@pytest.mark.slow  # the paper-size network
def test_paper_forward_fingerprint_float64() -> None:
    ref = np.load(REFERENCE / "promptir_paper_forward.npz")
    model = build_model("paper").double().eval()
    fill_fingerprint(model)
    with torch.no_grad():
        out = model(torch.from_numpy(ref["input"]))
    assert np.abs(out.numpy() - ref["output"]).max() < 1e-8


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_build_and_keep_shape(preset: str) -> None:
    model = build_model(preset, seed=0)
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        assert model(x).shape == x.shape


def test_widths_derive_from_config() -> None:
    cfg = ModelConfig(preset="custom", dim=24, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1,
                      heads=(1, 2, 4, 8), prompt_dims=(32, 64, 96), prompt_sizes=(8, 4, 2))
    model = build_model(cfg)
    assert model.patch_embed.proj.weight.shape == (24, 3, 3, 3)
    assert model.noise_level3.attn.qkv.weight.shape[1] == 8 * 24 + 96
    assert model.prompt1.linear_layer.weight.shape == (5, 48)
    assert not hasattr(model, "chnl_reduce1") or cfg.unused_convs
    with torch.no_grad():
        assert model(torch.rand(1, 3, 24, 24)).shape == (1, 3, 24, 24)


def test_seeded_build_is_reproducible_and_leaves_global_rng() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = build_model("tiny", seed=7)
    assert torch.equal(torch.rand(1), expected_next)
    b = build_model("tiny", seed=7)
    c = build_model("tiny", seed=8)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(x, y)
                   for x, y in zip(a.state_dict().values(), c.state_dict().values()))


def test_unknown_preset_and_bad_widths_fail_loudly() -> None:
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        build_model("huge")
    with pytest.raises(ConfigError, match="model.heads"):
        build_model({"preset": "tiny", "heads": [3, 1, 1, 1]})
