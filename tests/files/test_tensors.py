"""``files.tensors.atomic_torch_save`` on a full disk: one ``DiskFullError`` naming the file."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from mirl_lib.core.errors import DiskFullError
from mirl_lib.files.tensors import atomic_torch_save


def _assert_disk_full(target: Path, numel: int) -> None:
    with pytest.raises(DiskFullError) as info:
        atomic_torch_save({"weight": torch.ones(numel)}, target)
    assert str(info.value).startswith(f"{target}: no space left on device"), info.value


@pytest.mark.parametrize("numel", [16, 1 << 18])
def test_a_full_disk_names_the_file_and_leaves_nothing(full_disk: Path, numel: int) -> None:
    _assert_disk_full(full_disk / "checkpoint.pt", numel)
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


def test_a_disk_that_fills_inside_torch_save_is_a_full_disk(
        small_disk: Callable[[str], Path]) -> None:
    """Torch reports the failed write as a RuntimeError ("unexpected pos"); with nothing left in
    the file's buffer that is all that reaches the caller, unless the OSError behind it is."""
    disk = small_disk("300k")
    previous = disk / "checkpoint.pt"
    atomic_torch_save({"weight": torch.zeros(4)}, previous)
    before = previous.read_bytes()
    _assert_disk_full(previous, 200_000)
    assert previous.read_bytes() == before and [p.name for p in disk.iterdir()] == [previous.name]


def test_other_failures_of_torch_save_are_not_called_a_full_disk(tmp_path: Path) -> None:
    with pytest.raises(Exception) as info:
        atomic_torch_save({"f": lambda: None}, tmp_path / "x.pt")  # not picklable
    assert not isinstance(info.value, DiskFullError)
    assert not list(tmp_path.iterdir())
