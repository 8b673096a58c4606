"""The typed config: YAML in, frozen dataclasses out, loud failures on bad keys or values."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mirl_lib.config import Config, load_config
from mirl_lib.errors import ConfigError

PARAMS = Path(__file__).resolve().parents[1] / "params"


@pytest.mark.parametrize("name", ["smoke.yaml", "default.yaml", "paper.yaml"])
def test_shipped_params_load(name: str) -> None:
    cfg = load_config(PARAMS / name)
    assert isinstance(cfg, Config)
    assert len(cfg.hash()) == 12
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.steps = 1  # type: ignore[misc]


def test_paper_params_are_the_published_setting() -> None:
    cfg = load_config(PARAMS / "paper.yaml")
    assert cfg.model.preset == "paper" and cfg.model.dim == 48
    assert (cfg.prune.rate, cfg.prune.rounds, cfg.prune.method) == (0.2, 15, "global")
    assert (cfg.train.batch_size, cfg.data.patch_size, cfg.train.lr) == (8, 64, 2e-4)
    assert cfg.data.source == "mirl"


@pytest.mark.parametrize("text, key", [
    ("train:\n  stepz: 3\n", "train: unknown key(s) ['stepz']"),
    ("trian:\n  steps: 3\n", "unknown section(s) ['trian']"),
    ("train:\n  steps: many\n", "train.steps: expected an integer"),
    ("train:\n  bf16: 1\n", "train.bf16: expected true/false"),
    ("prune:\n  rate: 1.5\n", "prune.rate: must be in (0, 1)"),
    ("model:\n  preset: huge\n", "model.preset: unknown preset 'huge'"),
    ("data:\n  tasks: [denoise_15, deblur]\n", "data.tasks: unknown task(s) ['deblur']"),
    ("study:\n  seeds: [0, 1, 0]\n", "study.seeds: lists a seed twice"),
    ("train: [1, 2]\n", "train: expected a mapping"),
])
def test_bad_keys_and_values_name_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and key in str(info.value)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")
    (tmp_path / "broken.yaml").write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(tmp_path / "broken.yaml")


def test_model_overrides_start_from_the_preset(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  preset: cpu\n  dim: 24\n")
    cfg = load_config(path)
    assert cfg.model.dim == 24 and cfg.model.num_blocks == (1, 1, 1, 1)


def test_hash_changes_with_any_value() -> None:
    a = load_config(PARAMS / "smoke.yaml")
    b = load_config(PARAMS / "smoke.yaml", overrides={"train": {"steps": 7}})
    assert a.hash() != b.hash() and b.train.steps == 7
