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

from mirl_lib.cli.main import main
from mirl_lib.core.errors import ConfigError, DataError
from mirl_lib.evaluation.restore import restore_image
from mirl_lib.files.images import read_rgb, write_rgb
from mirl_lib.files.paths import CHECKOUT
from mirl_lib.net.checkpoints import save_weights
from mirl_lib.net.promptir import build_model

ROOT = CHECKOUT


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


@pytest.mark.slow
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


def run_main(argv: list[str]) -> int:
    """``main(argv)``; a ``KeyboardInterrupt`` escaping it fails this test, not the session."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main()")


def one_error_line(err: str) -> str:
    """The single ``error:`` line a failed command printed (asserts there is exactly one)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("tile, used, hint", [
    (0, "in one piece (--tile 0)", "--tile 256 (or smaller)"),
    (64, "in 64 x 64 tiles (--tile 64)", "--tile 32 --overlap 8"),
])
def test_cli_out_of_memory_names_size_and_tile(
        tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], tile: int, used: str, hint: str) -> None:

    def no_memory(*args: object, **kwargs: object) -> np.ndarray:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: "
                           "can't allocate memory: you tried to allocate 14400000000 bytes. "
                           "Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr("mirl_lib.evaluation.restore.restore_image", no_memory)
    write_rgb(tmp_path / "photo.png", image(30, 40))
    argv = ["restore", str(tmp_path / "photo.png"), "-o", str(tmp_path / "out.png"),
            "--checkpoint", str(checkpoint), "--device", "cpu", "--tile", str(tile)]
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{tmp_path / 'photo.png'}: out of memory on cpu restoring" in line
    assert line.endswith(f"40 x 30 image {used}; run again with {hint}")
    assert not (tmp_path / "out.png").exists()


def test_cli_other_runtime_errors_are_not_called_memory(
        tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:

    def broken(*args: object, **kwargs: object) -> np.ndarray:
        raise RuntimeError("a bug, not memory")

    monkeypatch.setattr("mirl_lib.evaluation.restore.restore_image", broken)
    write_rgb(tmp_path / "a.png", image(16, 16))
    with pytest.raises(RuntimeError, match="a bug"):
        main(["restore", str(tmp_path / "a.png"), "-o", str(tmp_path / "b.png"),
              "--checkpoint", str(checkpoint)])


def test_cli_disk_full_is_one_line(tmp_path: Path, checkpoint: Path, full_disk: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    write_rgb(tmp_path / "a.png", image(64, 64))
    out = full_disk / "out.png"
    argv = ["restore", str(tmp_path / "a.png"), "-o", str(out), "--checkpoint", str(checkpoint),
            "--device", "cpu"]
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{out}: no space left on device" in line
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


@pytest.mark.parametrize("name, problem", [
    ("x.tif", "x.tif: cannot write .tif; use one of"),
    ("noext", "noext: cannot write a file without extension"),
    ("blocker/x.png", "blocker: cannot be the output folder, it is a file"),
    ("blocker/deeper/x.png", "blocker/deeper: cannot be the output folder, "),
])
def test_cli_output_checked_before_the_checkpoint_is_read(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, problem: str) -> None:
    write_rgb(tmp_path / "a.png", image(16, 16))
    (tmp_path / "blocker").write_bytes(b"a file")
    argv = ["restore", str(tmp_path / "a.png"), "-o", str(tmp_path / name), "--checkpoint",
            str(tmp_path / "absent.pt")]
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert problem in line and "absent.pt" not in line


def test_cli_unwritable_output_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    write_rgb(tmp_path / "a.png", image(16, 16))
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access  # root may write anywhere, so the refusal is simulated for it too
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: (
        Path(path) != locked and real_access(path, mode, **kw)))
    assert main(["restore", str(tmp_path / "a.png"), "-o", str(locked / "new" / "x.png"),
                 "--checkpoint", str(tmp_path / "absent.pt")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == f"error: {locked}: output folder is not writable"


def test_cli_creates_missing_output_folders(tmp_path: Path, checkpoint: Path) -> None:
    write_rgb(tmp_path / "a.png", image(16, 16))
    out = tmp_path / "new" / "deeper" / "a.jpg"
    assert main(["restore", str(tmp_path / "a.png"), "-o", str(out), "--checkpoint",
                 str(checkpoint)]) == 0
    assert read_rgb(out).shape == (16, 16, 3)


@pytest.mark.parametrize("umask", [0o022, 0o007])
def test_cli_outputs_get_umask_permissions(tmp_path: Path, checkpoint: Path, umask: int) -> None:
    write_rgb(tmp_path / "in" / "a.png", image(16, 16))
    write_rgb(tmp_path / "in" / "b.png", image(16, 16, seed=1))
    previous = os.umask(umask)
    try:
        assert main(["restore", str(tmp_path / "in" / "a.png"), "-o", str(tmp_path / "a.png"),
                     "--checkpoint", str(checkpoint)]) == 0
        assert main(["restore", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                     "--checkpoint", str(checkpoint)]) == 0
    finally:
        os.umask(previous)
    for path in (tmp_path / "a.png", tmp_path / "out" / "a.png", tmp_path / "out" / "b.png"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


def test_cli_ctrl_c_is_one_line_and_resumes(
        tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import mirl_lib.evaluation.restore

    for i, name in enumerate(("a.png", "b.png", "c.png")):
        write_rgb(tmp_path / "in" / name, image(16, 16, seed=i))
    real, calls = mirl_lib.evaluation.restore.restore_image, []

    def stop_at_second(*args: object, **kwargs: object) -> np.ndarray:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr("mirl_lib.evaluation.restore.restore_image", stop_at_second)
    argv = ["restore", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--checkpoint",
            str(checkpoint), "--device", "cpu"]
    assert run_main(argv) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.strip().splitlines()[-1] == (
        "interrupted: 1 of 3 images written; rerun the same command to continue (existing "
        "outputs are kept unless --overwrite)")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png"]
    first = (tmp_path / "out" / "a.png").stat().st_mtime_ns
    monkeypatch.setattr("mirl_lib.evaluation.restore.restore_image", real)
    assert main(argv) == 0
    assert "kept 1 existing output(s)" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png", "c.png"]
    assert (tmp_path / "out" / "a.png").stat().st_mtime_ns == first


def test_cli_ctrl_c_before_any_image(tmp_path: Path, checkpoint: Path,
                                     monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("mirl_lib.net.checkpoints.load_model", interrupted)
    write_rgb(tmp_path / "a.png", image(16, 16))
    assert run_main(["restore", str(tmp_path / "a.png"), "-o", str(tmp_path / "b.png"),
                     "--checkpoint", str(checkpoint)]) == 130
    assert capsys.readouterr().err.strip().startswith("interrupted: 0 of 1 images written; ")


def test_cli_tile_help_and_check_agree(tmp_path: Path, checkpoint: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from mirl_lib.cli.main import _parser
    from mirl_lib.core.config import SIZE_MULTIPLE

    restore_help = _parser()._subparsers._group_actions[0].choices["restore"].format_help()
    assert f"multiple of {SIZE_MULTIPLE}" in " ".join(restore_help.split())
    write_rgb(tmp_path / "a.png", image(40, 40))
    base = ["restore", str(tmp_path / "a.png"), "--checkpoint", str(checkpoint), "--overlap", "4"]
    assert main([*base, "-o", str(tmp_path / "ok.png"), "--tile", str(3 * SIZE_MULTIPLE)]) == 0
    assert main([*base, "-o", str(tmp_path / "bad.png"), "--tile", "20", "--checkpoint",
                 str(tmp_path / "absent.pt")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"tile=20: must be 0 (no tiling) or a positive multiple of {SIZE_MULTIPLE}" in line
    assert not (tmp_path / "bad.png").exists()
