"""Strict 8-bit RGB image input/output and numpy <-> torch conversion.

``read_rgb`` accepts only 8-bit, three-channel images without alpha, so no silent conversion changes
what a study measures: grayscale, alpha, palette, 16-bit, float and CMYK files are rejected with a
``ImageError`` (a ``DataError``) naming the file and the fix.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mirl_lib.core.errors import DataError
from mirl_lib.files.atomic import atomic_write

# Image files mirl reads (data folders, the restore command) and the ones it writes.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
_MODE_PROBLEMS = {
    "1": "image is black-and-white (1-bit); convert it to 8-bit RGB",
    "L": "image is grayscale; convert it to 8-bit RGB",
    "LA": "image is grayscale with an alpha channel; convert it to 8-bit RGB without alpha",
    "La": "image is grayscale with an alpha channel; convert it to 8-bit RGB without alpha",
    "P": "image uses a colour palette; convert it to 8-bit RGB",
    "PA": "image uses a colour palette with alpha; convert it to 8-bit RGB without alpha",
    "RGBA": "image has an alpha channel (RGBA); convert it to 8-bit RGB without alpha",
    "RGBa": "image has an alpha channel (RGBA); convert it to 8-bit RGB without alpha",
    "I;16": "image is 16-bit; convert it to 8-bit RGB",
    "I;16B": "image is 16-bit; convert it to 8-bit RGB",
    "I;16L": "image is 16-bit; convert it to 8-bit RGB",
    "I": "image is 32-bit integer; convert it to 8-bit RGB",
    "F": "image is 32-bit float; convert it to 8-bit RGB",
}


class ImageError(DataError):
    """An image file is missing, unreadable or not 8-bit RGB."""


def _tile_is_16bit(image: Image.Image) -> bool:
    """True when the undecoded tiles carry 16 bits per sample (Pillow reads such RGB as 8-bit)."""
    for tile in image.tile:
        raw = tile.args if isinstance(tile.args, str) else (tile.args or ("",))[0]
        if isinstance(raw, str) and (";16" in raw or ";48" in raw):
            return True
    return False


@contextmanager
def _open_rgb(path: Path) -> Iterator[Image.Image]:
    """The opened (not yet decoded) image at ``path`` once its mode is 8-bit RGB; every Pillow
    failure inside the block becomes an ``ImageError`` naming the file."""
    if not path.is_file():
        raise ImageError(f"{path}: image file not found")
    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode in _MODE_PROBLEMS:
                raise ImageError(f"{path}: {_MODE_PROBLEMS[mode]}")
            if mode != "RGB":
                raise ImageError(f"{path}: image mode {mode} is not supported; convert it to "
                                 f"8-bit RGB")
            if _tile_is_16bit(image):
                raise ImageError(f"{path}: image is 16-bit; convert it to 8-bit RGB")
            yield image
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not a readable image file (corrupt or unknown format)") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: image file is truncated or corrupt ({exc})") from None


def read_rgb_uint8(path: str | Path) -> np.ndarray:
    """Read 8-bit RGB as uint8 (H, W, 3); anything else raises ``ImageError``."""
    path = Path(path)
    with _open_rgb(path) as image:
        image.load()
        array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ImageError(f"{path}: decoded to {array.dtype} {array.shape}, expected 8-bit RGB")
    return array


def read_rgb(path: str | Path) -> np.ndarray:
    """Read 8-bit RGB as float32 (H, W, 3) in [0, 1]; anything else raises ``ImageError``."""
    return read_rgb_uint8(path).astype(np.float32) / 255.0


def rgb_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an 8-bit RGB image from its header, without decoding the pixels.

    Everything ``read_rgb`` checks before decoding is checked (missing, unreadable header, mode,
    16-bit samples); a file truncated inside its pixel data only fails when it is read.
    """
    path = Path(path)
    with _open_rgb(path) as image:
        return image.height, image.width


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] to uint8 by ``round(clip(x, 0, 1) * 255)``."""
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def output_format(path: str | Path) -> str:
    """The Pillow format ``write_rgb`` uses for ``path`` (by extension); ``ImageError`` if none."""
    path = Path(path)
    fmt = WRITE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ImageError(f"{path}: cannot write {path.suffix or 'a file without extension'}; "
                         f"use one of {sorted(WRITE_FORMATS)}")
    return fmt


def write_rgb(path: str | Path, image: np.ndarray, quality: int = 95) -> None:
    """Write a float (H, W, 3) image in [0, 1] as 8-bit PNG or JPEG, atomically.

    A full disk raises ``DiskFullError`` naming ``path`` (from ``atomic_write``); the previous file,
    if any, is kept.
    """
    path = Path(path)
    fmt = output_format(path)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"{path}: expected an (H, W, 3) image, got shape {image.shape}")
    options = {"quality": quality} if fmt == "JPEG" else {}
    with atomic_write(path) as tmp:
        Image.fromarray(to_uint8(image)).save(tmp, format=fmt, **options)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) numpy image to a float32 (1, 3, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]


def to_image(tensor: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) or (3, H, W) tensor to a float32 (H, W, 3) numpy image (not clipped)."""
    if tensor.ndim == 4:
        if tensor.shape[0] != 1:
            raise ValueError(f"to_image expects one image, got a batch of {tensor.shape[0]}")
        tensor = tensor[0]
    return tensor.detach().to("cpu", torch.float32).permute(1, 2, 0).contiguous().numpy()
