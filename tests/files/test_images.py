"""Strict image reading, atomic writing and tensor conversion."""
from __future__ import annotations

import errno
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mirl_lib.core.errors import DataError, DiskFullError
from mirl_lib.files.images import output_format, read_rgb, to_image, to_tensor, to_uint8, write_rgb


def _rgb8(h: int = 12, w: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write_png16_rgb(path: Path, array: np.ndarray) -> None:
    """A 16-bit RGB PNG written by hand (Pillow cannot write one)."""
    h, w, _ = array.shape
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def test_png_round_trip_is_exact(tmp_path: Path) -> None:
    pixels = _rgb8()
    write_rgb(tmp_path / "a.png", pixels.astype(np.float32) / 255)
    back = read_rgb(tmp_path / "a.png")
    assert back.dtype == np.float32 and back.shape == (12, 10, 3)
    np.testing.assert_array_equal(to_uint8(back), pixels)
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]  # no temp file left behind


def test_write_rounds_and_clips(tmp_path: Path) -> None:
    image = np.array([[[-0.2, 0.5 / 255, 1.7 / 255]]], np.float32).repeat(2, 0).repeat(2, 1)
    write_rgb(tmp_path / "r.png", image)
    assert tuple(np.asarray(Image.open(tmp_path / "r.png"))[0, 0]) == (0, 0, 2)


def test_jpeg_write_reads_back_close(tmp_path: Path) -> None:
    image = np.full((16, 16, 3), 0.5, np.float32)
    write_rgb(tmp_path / "a.jpg", image)
    assert np.abs(read_rgb(tmp_path / "a.jpg") - 0.5).max() < 3 / 255


def test_write_rejects_unknown_extension_and_bad_shape(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="a.gif"):
        write_rgb(tmp_path / "a.gif", np.zeros((4, 4, 3)))
    with pytest.raises(DataError, match="b.png.*shape"):
        write_rgb(tmp_path / "b.png", np.zeros((4, 4)))


@pytest.mark.parametrize("make, problem", [
    (lambda p: Image.fromarray(_rgb8()[..., 0]).save(p), "grayscale"),
    (lambda p: Image.fromarray(np.dstack([_rgb8(), _rgb8()[..., :1]])).save(p), "alpha"),
    (lambda p: Image.fromarray(_rgb8()).convert("P").save(p), "palette"),
    (lambda p: Image.fromarray(_rgb8()[..., 0].astype(np.uint16) * 257).save(p), "16-bit"),
    (lambda p: _write_png16_rgb(p, _rgb8().astype(np.uint16) * 257), "16-bit"),
    (lambda p: p.write_bytes(b"this is not an image"), "not a readable image"),
])
def test_read_rejects_non_rgb8(tmp_path: Path, make, problem: str) -> None:
    path = tmp_path / "photo.png"
    make(path)
    with pytest.raises(DataError, match=problem) as info:
        read_rgb(path)
    assert "photo.png" in str(info.value)


def test_read_rejects_truncated_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "cut.png"
    Image.fromarray(_rgb8(64, 64)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="cut.png.*(truncated|corrupt)"):
        read_rgb(path)
    with pytest.raises(DataError, match="gone.png.*not found"):
        read_rgb(tmp_path / "gone.png")


def test_tensor_round_trip() -> None:
    image = np.random.default_rng(1).random((5, 7, 3), dtype=np.float32)
    tensor = to_tensor(image)
    assert tensor.shape == (1, 3, 5, 7) and tensor.dtype == torch.float32
    assert float(tensor[0, 2, 4, 6]) == float(image[4, 6, 2])
    np.testing.assert_array_equal(to_image(tensor), image)
    np.testing.assert_array_equal(to_image(tensor[0]), image)


def test_output_format_is_the_check_write_rgb_makes(tmp_path: Path) -> None:
    assert [output_format(tmp_path / n) for n in ("a.png", "b.JPG", "c.jpeg")] == [
        "PNG", "JPEG", "JPEG"]
    with pytest.raises(DataError, match=r"x\.tif: cannot write \.tif; use one of"):
        output_format(tmp_path / "x.tif")
    assert not list(tmp_path.iterdir())


def test_disk_full_while_saving_stays_a_disk_full_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "out.png"
    write_rgb(path, _rgb8().astype(np.float32) / 255)
    before = path.read_bytes()

    def full(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        Path(fp).write_bytes(b"half")  # type: ignore[arg-type]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    with pytest.raises(DiskFullError) as info:
        write_rgb(path, np.zeros((4, 4, 3)))
    assert str(info.value).startswith(f"{path}: no space left on device")
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_read_rejects_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "huge.png"
    Image.fromarray(_rgb8(64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DataError, match=r"huge\.png: Image size \(4096 pixels\) exceeds limit"):
        read_rgb(path)
