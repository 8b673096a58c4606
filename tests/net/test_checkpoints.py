"""Atomic writes and checkpoint loading: every supported format, and every bad input named."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mirl_lib.core.config import PRESETS
from mirl_lib.core.errors import CheckpointError
from mirl_lib.files.atomic import atomic_write, atomic_write_text
from mirl_lib.files.tensors import atomic_torch_save
from mirl_lib.net.checkpoints import load_into, load_model, save_weights
from mirl_lib.net.promptir import build_model


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    return build_model("tiny", seed=3)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_atomic_write_failure_leaves_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    atomic_write_text("old", target)
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_text("half-writ")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_torch_save_unpicklable_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "w.pt"
    atomic_torch_save({"a": torch.ones(2)}, target)
    with pytest.raises(Exception):
        atomic_torch_save({"f": lambda: 0}, target)
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["w.pt"]


def test_mirl_weights_round_trip(tmp_path: Path, tiny: torch.nn.Module) -> None:
    path = tmp_path / "final.pt"
    save_weights(tiny, path, {"step": 7})
    model, meta = load_model(path)
    assert_same_weights(model, tiny)
    assert meta["format"] == "mirl-weights" and meta["step"] == 7
    assert meta["model_config"] == PRESETS["tiny"]
    assert not model.training
    other = build_model("tiny", seed=99)
    assert load_into(other, path)["step"] == 7
    assert_same_weights(other, tiny)


def test_plain_and_lightning_state_dicts(tmp_path: Path, tiny: torch.nn.Module) -> None:
    plain, lightning = tmp_path / "plain.pth", tmp_path / "model.ckpt"
    torch.save(tiny.state_dict(), plain)
    torch.save({"epoch": 3, "global_step": 10, "pytorch-lightning_version": "2.1.0",
                "state_dict": {f"net.{k}": v for k, v in tiny.state_dict().items()}}, lightning)
    for path, fmt in ((plain, "state_dict"), (lightning, "lightning")):
        model, meta = load_model(path, expected=PRESETS["tiny"])
        assert meta["format"] == fmt
        assert_same_weights(model, tiny)


def test_other_preset_is_named(tmp_path: Path, tiny: torch.nn.Module) -> None:
    plain, weights = tmp_path / "tiny_plain.pth", tmp_path / "tiny_weights.pt"
    torch.save(tiny.state_dict(), plain)
    save_weights(tiny, weights)
    with pytest.raises(CheckpointError, match=r"tiny_plain\.pth.*'paper'.*shape.*preset 'tiny'"):
        load_model(plain)
    with pytest.raises(CheckpointError, match=r"tiny_plain\.pth.*'cpu'.*preset 'tiny'"):
        load_model(plain, expected=PRESETS["cpu"])
    with pytest.raises(CheckpointError, match=r"tiny_weights\.pt.*'tiny' model but a 'cpu'.*dim"):
        load_model(weights, expected=PRESETS["cpu"])
    with pytest.raises(CheckpointError, match=r"tiny_plain\.pth.*looks like preset 'tiny'"):
        load_into(build_model("cpu"), plain)


def test_missing_and_unexpected_keys(tmp_path: Path, tiny: torch.nn.Module) -> None:
    state = dict(tiny.state_dict())
    dropped = state.pop("output.weight")
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing\.pth.*1 missing key.*output\.weight"):
        load_model(tmp_path / "missing.pth", expected=PRESETS["tiny"])
    state["output.weight"], state["extra.weight"] = dropped, torch.zeros(1)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"extra\.pth.*unexpected key.*extra\.weight"):
        load_model(tmp_path / "extra.pth", expected=PRESETS["tiny"])


def test_corrupt_truncated_and_foreign_files(tmp_path: Path, tiny: torch.nn.Module) -> None:
    good = tmp_path / "good.pt"
    save_weights(tiny, good)
    blob = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "noise.pt").write_bytes(bytes(range(256)) * 8)
    torch.save({"format": "something-else"}, tmp_path / "fmt.pt")
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    torch.save({"optimizer": {"lr": 1.0}}, tmp_path / "dict.pt")
    torch.save({"x": Path("/")}, tmp_path / "pickled.pt")
    cases = {"trunc.pt": "not a readable checkpoint", "noise.pt": "not a readable checkpoint",
             "fmt.pt": "unknown checkpoint format 'something-else'",
             "list.pt": "unknown checkpoint format", "dict.pt": "unknown checkpoint format",
             "pickled.pt": "weights_only", "absent.pt": "not found"}
    for name, problem in cases.items():
        with pytest.raises(CheckpointError) as err:
            load_model(tmp_path / name, expected=PRESETS["tiny"])
        assert str(tmp_path / name) in str(err.value) and problem in str(err.value), name
        assert "weights_only=False" not in str(err.value) and "\n" not in str(err.value), name
    assert load_model(good)[1]["format"] == "mirl-weights"


def test_sparse_ticket(tmp_path: Path, tiny: torch.nn.Module) -> None:
    import dataclasses

    from mirl_lib.files.tickets import export_ticket

    state = tiny.state_dict()
    mask = {"output.weight": torch.rand(state["output.weight"].shape) > 0.5}
    path = export_ticket(state, mask, tmp_path / "t.mirl",
                         {"model_config": dataclasses.asdict(PRESETS["tiny"]), "round": 2})
    model, meta = load_model(path, expected=PRESETS["tiny"])
    assert meta["format"] == "ticket" and meta["round"] == 2
    assert torch.equal(meta["mask"]["output.weight"], mask["output.weight"])
    assert torch.equal(model.output.weight, state["output.weight"] * mask["output.weight"])
    with pytest.raises(CheckpointError, match=r"t\.mirl.*'tiny' model but a 'cpu'"):
        load_model(path, expected=PRESETS["cpu"])


class _RunsCode:
    """Unpickling this would run ``os.system``; the weights-only loader must refuse it."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, ("echo pwned",)


@pytest.mark.parametrize("payload, held", [({"x": Path("/")}, "pathlib.PosixPath"),
                                           ({"x": _RunsCode()}, f"{os.system.__module__}.system")])
def test_refused_pickle_names_what_and_never_suggests_unsafe_load(
        tmp_path: Path, payload: object, held: str) -> None:
    path = tmp_path / "evil.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    message = str(err.value)
    assert message.startswith(f"{path}: not a readable checkpoint")
    assert (f"it holds Python objects other than tensors and plain containers ({held}), which "
            f"mirl never unpickles") in message
    assert "weights_only=False" not in message and "set to `False`" not in message
    assert "\x1b" not in message and "\n" not in message
