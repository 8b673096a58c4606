"""Tiled restoration of any image size, and the ``python -m mirl_lib restore`` command line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mirl_lib.__main__ import main
from mirl_lib.checkpoints import save_weights
from mirl_lib.errors import ConfigError, DataError
from mirl_lib.images import read_rgb, write_rgb
from mirl_lib.model import build_model
from mirl_lib.restore import restore_image

ROOT = Path(__file__).resolve().parents[1]


class Pointwise(nn.Module):
    """A per-pixel colour mix that records the largest input it saw (tiling is exact for it)."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Conv2d(3, 3, 1)
        self.largest = (0, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.largest = max(self.largest, tuple(x.shape[-2:]))
        return torch.sigmoid(self.mix(x))


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    return build_model("tiny", seed=0)


def test_odd_sizes_keep_their_shape(tiny: nn.Module) -> None:
    img = image(37, 53)
    for tile in (0, 32):
        out = restore_image(tiny, img, tile=tile, overlap=8)
        assert out.shape == img.shape and out.dtype == np.float32
        assert 0.0 <= out.min() and out.max() <= 1.0
    assert restore_image(tiny, image(5, 3), tile=0).shape == (5, 3, 3)


def test_tiles_blend_exactly_and_bound_the_input() -> None:
    model = Pointwise()
    img = image(70, 101)
    whole = restore_image(model, img, tile=0)
    assert model.largest == (72, 104)
    model.largest = (0, 0)
    tiled = restore_image(model, img, tile=32, overlap=8)
    assert model.largest == (32, 32)
    assert np.abs(tiled - whole).max() < 1e-6


def test_promptir_tiled_close_to_whole(tiny: nn.Module) -> None:
    # PromptIR's channel attention and prompts pool over the whole input, so tiles change the
    # result a little everywhere; measured on this image: max 0.027, mean 0.0031 (tile 64).
    img = image(64, 88)
    whole = restore_image(tiny, img, tile=0)
    diff = np.abs(restore_image(tiny, img, tile=64, overlap=16) - whole)
    assert diff.mean() < 0.006 and diff.max() < 0.06
    assert np.array_equal(restore_image(tiny, img, tile=96, overlap=16), whole)


def test_bad_arguments(tiny: nn.Module) -> None:
    with pytest.raises(ConfigError, match="tile=20"):
        restore_image(tiny, image(8, 8), tile=20)
    with pytest.raises(ConfigError, match="overlap=20"):
        restore_image(tiny, image(8, 8), tile=32, overlap=20)
    with pytest.raises(DataError, match="shape"):
        restore_image(tiny, np.zeros((8, 8), np.float32))


@pytest.fixture()
def checkpoint(tmp_path: Path, tiny: nn.Module) -> Path:
    path = tmp_path / "tiny.pt"
    save_weights(tiny, path)
    return path


def test_cli_file_and_folder(tmp_path: Path, checkpoint: Path, tiny: nn.Module) -> None:
    src = tmp_path / "in"
    write_rgb(src / "a.png", image(21, 30))
    write_rgb(src / "b.jpg", image(16, 16, seed=1))
    args = ["--checkpoint", str(checkpoint), "--device", "cpu", "--tile", "16", "--overlap", "4"]
    assert main(["restore", str(src / "a.png"), "-o", str(tmp_path / "a_out.png"), *args]) == 0
    expected = restore_image(tiny, read_rgb(src / "a.png"), tile=16, overlap=4)
    assert np.abs(read_rgb(tmp_path / "a_out.png") - expected).max() <= 1 / 255 + 1e-6
    assert main(["restore", str(src), "-o", str(tmp_path / "out"), *args]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.jpg"]
    assert read_rgb(tmp_path / "out" / "b.jpg").shape == (16, 16, 3)


def test_cli_refuses_to_overwrite(tmp_path: Path, checkpoint: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    write_rgb(tmp_path / "a.png", image(16, 16))
    out = tmp_path / "done.png"
    out.write_bytes(b"keep me")
    argv = ["restore", str(tmp_path / "a.png"), "-o", str(out), "--checkpoint", str(checkpoint)]
    assert main(argv) == 2
    assert str(out) in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert main([*argv, "--overwrite"]) == 0
    assert read_rgb(out).shape == (16, 16, 3)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "mirl_lib", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)


def test_cli_errors_are_one_line(tmp_path: Path, checkpoint: Path) -> None:
    write_rgb(tmp_path / "a.png", image(16, 16))
    out = tmp_path / "out.png"
    write_rgb(out, image(16, 16, seed=5))
    before = out.read_bytes()
    (tmp_path / "broken.pt").write_bytes(checkpoint.read_bytes()[:300])
    cases = [
        (["restore", str(tmp_path / "nope.png"), "-o", str(tmp_path / "x.png"), "--checkpoint",
          str(checkpoint)], "nope.png"),
        (["restore", str(tmp_path / "a.png"), "-o", str(out), "--overwrite", "--checkpoint",
          str(tmp_path / "broken.pt")], "broken.pt"),
        (["restore", str(tmp_path / "a.png"), "-o", str(out), "--overwrite", "--checkpoint",
          str(checkpoint), "--preset", "cpu"], "tiny.pt"),
    ]
    for argv, named in cases:
        done = cli(*argv)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert lines[0].startswith("error: ") and named in lines[0]
    assert out.read_bytes() == before and not (tmp_path / "x.png").exists()
    done = cli("restore", str(tmp_path / "a.png"), "-o", str(tmp_path / "ok.png"), "--checkpoint",
               str(checkpoint))
    assert done.returncode == 0, done.stderr
    assert read_rgb(tmp_path / "ok.png").shape == (16, 16, 3)
