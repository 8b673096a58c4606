"""The typed config: YAML in, frozen dataclasses out, loud failures on bad keys or values."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from mirl_lib.core.config import Config, TrainConfig, identity_changes, load_config, read_yaml
from mirl_lib.core.errors import ConfigError
from mirl_lib.files.paths import CHECKOUT

PARAMS = CHECKOUT / "params"


@pytest.mark.parametrize("name", ["smoke.yaml", "default.yaml", "full.yaml", "paper.yaml"])
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
    assert cfg.data.source == "mirl" and cfg.data.sampling == "published"
    # 120 and 15 epochs as the paper states them; the steps are derived from the data found
    assert (cfg.train.epochs, cfg.train.warmup_epochs, cfg.train.steps) == (120, 15, 0)
    assert (cfg.data.denoise_train, cfg.data.denoise_test) == (("WED", "BSD400"),
                                                               ("BSD68", "Urban100"))
    assert (cfg.data.derain_train, cfg.data.dehaze_train, cfg.data.dehaze_test) == (
        ("Rain100L",), ("OTS",), ("SOTS",))


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
    ("train:\n  epochs: 10\n  steps: 100\n",
     "train.epochs and train.steps: give durations in epochs (epochs, warmup_epochs) or in steps"),
    ("train:\n  warmup_epochs: 2\n  steps: 100\n", "train.warmup_epochs and train.steps: give"),
    ("train:\n  epochs: 10\n  warmup_steps: 5\n", "train.epochs and train.warmup_steps: give"),
    ("train:\n  warmup_epochs: 2\n", "train.warmup_epochs: needs train.epochs"),
    ("train:\n  epochs: 10\n  warmup_epochs: 10\n", "train.warmup_epochs: must be in [0, epochs)"),
    ("train:\n  epochs: 2.5\n", "train.epochs: expected an integer"),
    ("data:\n  sampling: random\n", "data.sampling: must be one of 'balanced', 'published'"),
    ("data:\n  denoise_test: [BSD68, ../x]\n", "data.denoise_test: ['../x'] are not folder names"),
    ("data:\n  derain_train: []\n", "data.derain_train: lists no dataset, but data.tasks has"),
    ("data:\n  dehaze_test: [SOTS, SOTS]\n", "data.dehaze_test: lists a dataset twice"),
    ("data:\n  workers: -1\n", "data.workers: must be >= 0"),
    ("model:\n  preset: cpu\n  dim: 15\n", "model.dim: must be a positive even number, got 15"),
    ("train:\n  ssim_weight: -0.5\n", "train.ssim_weight: must be >= 0"),
    # a renamed key names its new name
    ("study:\n  branches: [reinit]\n", "study.branches: renamed study.strategies"),
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


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_params_file_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: the params file is empty")


@pytest.mark.parametrize("text, kind", [("- train\n- prune\n", "list"), ("smoke\n", "str"),
                                        ("3\n", "int")])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    path = tmp_path / "flat.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: the top level must be a mapping of sections")
    assert message.endswith(f"got {kind}")


@pytest.mark.parametrize("text, key, lines", [
    ("train:\n  steps: 3\nprune:\n  rate: 0.5\ntrain:\n  steps: 4\n", "train", (1, 5)),
    ("train:\n  lr: 0.001\n  steps: 3\n  lr: 0.002\n", "train.lr", (2, 4)),
    ("model:\n  preset: cpu\n  heads: [1, 2, 4, 8]\n  preset: tiny\n", "model.preset", (2, 4)),
])
def test_key_written_twice_is_refused(tmp_path: Path, text: str, key: str,
                                      lines: tuple[int, int]) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (f"{path}: {key}: key written twice (lines {lines[0]} and "
                               f"{lines[1]}); keep one")


def test_same_key_in_different_sections_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  preset: tiny\ntrain:\n  steps: 5\n  warmup_steps: 1\n"
                    "prune:\n  rounds: 5\n")
    cfg = load_config(path)
    assert (cfg.train.steps, cfg.prune.rounds) == (5, 5)


@pytest.mark.parametrize("written, value", [("1e-3", 1e-3), ("5E-4", 5e-4), ("1e+2", 100.0),
                                            ("2e4", 2e4), ("-1.5e-3", -1.5e-3), ("1.0e3", 1e3),
                                            ("0.0002", 2e-4)])
def test_exponent_floats_are_numbers(tmp_path: Path, written: str, value: float) -> None:
    path = tmp_path / "lr.yaml"
    path.write_text(f"train:\n  weight_decay: {written}\n")
    data = read_yaml(path)
    assert type(data["train"]["weight_decay"]) is float and data["train"]["weight_decay"] == value
    assert load_config(path).train.weight_decay == value
    path.write_text(f"train:\n  lr: {written.lstrip('-')}\n")
    assert load_config(path).train.lr == abs(value)


def test_other_scalars_resolve_as_before(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("a: 12\nb: e5\nc: 1e\nd: '1e-3'\ne: 1_000\nf: .inf\n")
    assert read_yaml(path) == {"a": 12, "b": "e5", "c": "1e", "d": "1e-3", "e": 1000,
                               "f": float("inf")}


def test_written_config_reads_back_identical(tmp_path: Path) -> None:
    cfg = load_config(PARAMS / "smoke.yaml", overrides={
        "train": {"lr": 1e-3, "min_lr": 1e-6, "weight_decay": 1e20, "grad_clip": 5e-324}})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    back = load_config(path)
    assert (back.train.lr, back.train.min_lr) == (1e-3, 1e-6)
    assert back == cfg and back.hash() == cfg.hash()


def test_recorded_run_config_is_read_with_the_same_rules(tmp_path: Path) -> None:
    from mirl_lib.study.study import Study

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("train:\n  lr: 1e-3\n  lr: 1e-3\n")
    with pytest.raises(ConfigError, match=r"config\.yaml: train\.lr: key written twice"):
        Study(load_config(PARAMS / "smoke.yaml"), run).prepare()


def test_durations_in_epochs_leave_the_steps_to_the_data(tmp_path: Path) -> None:
    path = tmp_path / "epochs.yaml"
    path.write_text("train:\n  epochs: 4\n  warmup_epochs: 1\n")
    cfg = load_config(path)
    assert (cfg.train.epochs, cfg.train.warmup_epochs) == (4, 1)
    assert (cfg.train.steps, cfg.train.warmup_steps) == (0, 0)  # derived when training starts
    recorded = tmp_path / "config.yaml"  # a run folder's record holds both kinds, steps at 0
    recorded.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    assert load_config(recorded) == cfg and load_config(recorded).hash() == cfg.hash()
    resolved = dataclasses.replace(cfg.train, steps=400, warmup_steps=100)  # 100 steps an epoch
    assert resolved.steps == 400
    with pytest.raises(ConfigError, match=r"train\.steps: 1000 steps and 100 warmup steps are not "
                                          r"train\.epochs=120"):
        TrainConfig(epochs=120)  # the default step counts are no derivation of 120 epochs
    with pytest.raises(ConfigError, match="train.steps"):
        dataclasses.replace(cfg.train, steps=400, warmup_steps=50)
    in_steps = load_config(path, overrides={"train": {"epochs": 0, "warmup_epochs": 0, "steps": 9,
                                                      "warmup_steps": 3}})  # 0 = not given
    assert (in_steps.train.epochs, in_steps.train.steps, in_steps.train.warmup_steps) == (0, 9, 3)


def test_new_fields_at_their_default_keep_every_hash() -> None:
    """Fields added later (sampling, dataset lists, epochs) are out of the identity while they hold
    their default, so existing run folders keep their config hash; runtime fields never count."""
    assert Config().hash() == "1bdb665632f4"  # the default config's hash before those fields
    smoke = load_config(PARAMS / "smoke.yaml")
    assert "sampling" not in smoke.identity()["data"] and "epochs" not in smoke.identity()["train"]
    faster = load_config(PARAMS / "smoke.yaml", overrides={"data": {"workers": 4, "cache_mb": 1}})
    assert faster.hash() == smoke.hash()
    published = load_config(PARAMS / "smoke.yaml", overrides={"data": {"sampling": "published"}})
    assert published.hash() != smoke.hash()
    assert identity_changes(smoke, published) == ["data.sampling: 'balanced' -> 'published'"]
    renamed = load_config(PARAMS / "smoke.yaml", overrides={"data": {"denoise_test": ["CBSD68"]}})
    assert identity_changes(smoke, renamed) == [
        "data.denoise_test: ['BSD68', 'Urban100'] -> ['CBSD68']"]


@pytest.mark.parametrize("name", ["default", "full"])
def test_committed_runs_are_the_runs_of_their_params_files(name: str) -> None:
    """The committed tier results come from today's params file: one config hash, the file's."""
    import pandas as pd

    metrics = PARAMS.parent / "results" / name / "metrics.csv"
    hashes = set(pd.read_csv(metrics)["config_hash"])
    assert hashes == {load_config(PARAMS / f"{name}.yaml").hash()}, (
        f"results/{name} was made with {hashes}; rerun ./run_all.sh params/{name}.yaml")
