"""Prunable scopes, density accounting, mask files and MaskEnforcer under AdamW."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from mirl_lib.core.errors import CheckpointError, ConfigError
from mirl_lib.files.paths import CHECKOUT
from mirl_lib.net.promptir import build_model
from mirl_lib.pruning.masks import (
    MaskEnforcer,
    density_report,
    full_mask,
    load_mask,
    prunable_names,
    save_mask,
    sparsity,
)
from mirl_lib.pruning.plan import alive_after
from mirl_lib.pruning.rules import oneshot_mask, random_mask

# The published network's parameter table, kept with the tests (tests/data/REFERENCE.md).
TABLE = CHECKOUT / "tests" / "reference" / "promptir_paper_parameters.tsv"


@pytest.fixture(scope="module")
def paper() -> torch.nn.Module:
    return build_model("paper", seed=0)


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return pd.read_csv(TABLE, sep="\t", comment="#")


def test_scopes_on_paper_match_reference_table(paper: torch.nn.Module, table: pd.DataFrame) -> None:
    reference = table[table["name"].str.contains("weight")]
    default = reference[(reference["gets_grad"] == "yes")
                        & ~reference["name"].str.endswith(".body.weight")]
    assert prunable_names(paper, "reference") == reference["name"].tolist()
    assert prunable_names(paper, "default") == default["name"].tolist()
    assert (len(reference), int(reference["numel"].sum())) == (401, 33_199_064)
    assert (len(default), int(default["numel"].sum())) == (301, 32_966_424)


def test_default_scope_excludes_non_conv_linear(paper: torch.nn.Module) -> None:
    names = prunable_names(paper, "default")
    assert not [n for n in names if n.endswith(("bias", "temperature", "prompt_param",
                                                "body.weight"))]
    assert not [n for n in names if n.startswith(("chnl_reduce", "reduce_noise_channel_"))]
    assert "output.weight" in names and "prompt1.linear_layer.weight" in names


@pytest.mark.slow  # the paper-size network
def test_fifteen_rounds_leave_ten_percent_of_all(paper: torch.nn.Module) -> None:
    mask = full_mask(paper, "reference")
    prunable = sum(m.numel() for m in mask.values())
    kept = alive_after(prunable, 15, 0.2)
    pruned = oneshot_mask(paper.state_dict(), mask, kept / prunable)
    stats = sparsity(pruned, paper)
    assert stats["kept"] == kept
    assert stats["remaining_all"] == pytest.approx(0.1000, abs=5e-4)
    assert stats["remaining_prunable"] == pytest.approx(0.8 ** 15, rel=1e-6)


def test_density_report_and_sparsity() -> None:
    model = build_model("tiny", seed=0)
    mask = random_mask({n: torch.rand(m.shape) < 0.3 for n, m in full_mask(model).items()}, 1)
    report = density_report(mask, model)
    assert list(report.columns) == ["name", "shape", "kept", "total", "density", "prunable"]
    assert len(report) == len(list(model.parameters()))
    assert set(report.loc[report["prunable"], "name"]) == set(mask)
    stats = sparsity(mask, model)
    assert report["kept"].sum() / report["total"].sum() == pytest.approx(stats["remaining_all"])
    masked = report[report["prunable"]]
    assert (masked["kept"].sum() / masked["total"].sum()
            == pytest.approx(stats["remaining_prunable"]))
    assert len(density_report(mask)) == len(mask)


def test_unknown_scope_is_config_error() -> None:
    with pytest.raises(ConfigError, match="prune.scope"):
        prunable_names(build_model("tiny"), "everything")


def test_save_load_round_trip_writes_report(tmp_path: Path) -> None:
    model = build_model("tiny", seed=0)
    mask = {n: torch.rand(m.shape) < 0.5 for n, m in full_mask(model).items()}
    path = save_mask(mask, tmp_path / "round_03.pt", model)
    loaded = load_mask(path)
    assert list(loaded) == list(mask)
    assert all(torch.equal(loaded[n], mask[n]) for n in mask)
    report = pd.read_csv(tmp_path / "round_03_report.csv")
    assert int(report["kept"].sum()) == sparsity(mask, model)["kept"] + sum(
        p.numel() for n, p in model.named_parameters() if n not in mask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round_03.pt", "round_03_report.csv"]


@pytest.mark.parametrize("content", [b"not a checkpoint", None, {"a": torch.ones(2)}, [1, 2]])
def test_bad_mask_files(tmp_path: Path, content: object) -> None:
    path = tmp_path / "mask.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match="mask.pt"):
        load_mask(path)


def test_enforcer_rejects_mask_that_does_not_fit() -> None:
    model = build_model("tiny")
    mask = full_mask(model)
    name = next(iter(mask))
    with pytest.raises(CheckpointError, match=name):
        MaskEnforcer(model, {name: torch.ones(3, dtype=torch.bool)})
    with pytest.raises(CheckpointError, match="not a parameter"):
        MaskEnforcer(model, {"nope.weight": mask[name]})


def test_enforcer_keeps_pruned_weights_exactly_zero_under_adamw() -> None:
    torch.manual_seed(0)
    model = build_model("tiny", seed=0)
    mask = {n: torch.rand(m.shape) < 0.4 for n, m in full_mask(model, "reference").items()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5)
    x = torch.rand(1, 3, 16, 16)

    def step() -> None:
        optimizer.zero_grad()
        (model(x) - x.flip(-1)).abs().mean().backward()
        optimizer.step()

    with MaskEnforcer(model, mask):
        params = dict(model.named_parameters())
        for _ in range(15):
            step()
            for n, keep in mask.items():
                assert torch.count_nonzero(params[n].detach()[~keep]) == 0, n
                grad = params[n].grad  # None for the unused 1x1 convolutions
                assert grad is None or torch.count_nonzero(grad[~keep]) == 0, n
    trained = [n for n in mask if params[n].grad is not None]
    assert len(trained) == len(mask) - 6
    assert all(not torch.equal(params[n][mask[n]], before[n][mask[n]]) for n in trained)
    step()  # hooks removed: pruned weights now receive gradients again
    assert sum(int(torch.count_nonzero(params[n].detach()[~k])) for n, k in mask.items()) > 0
