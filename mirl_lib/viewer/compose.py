"""What the viewer draws: the wipe between two images, the zoomed pair, PNG bytes and download
links."""
from __future__ import annotations

import base64
import html
import io

import numpy as np
from PIL import Image

from mirl_lib.files import images

ZOOM_FACTORS: tuple[int, ...] = (1, 2, 4, 8)
ZOOM_GAP = 4
PREVIEW_MAX_SIDE = 1024


def png_bytes(img: np.ndarray) -> bytes:
    """PNG encoding of a float [0, 1] or uint8 (H, W, 3) image."""
    arr = img if img.dtype == np.uint8 else images.to_uint8(img)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def compose_wipe(restored: np.ndarray, before: np.ndarray, wipe: int) -> np.ndarray:
    """Restored image on the left ``wipe`` percent of the columns, ``before`` on the rest.

    A one-pixel white divider marks the split when both parts are visible.
    """
    width = restored.shape[1]
    split = int(round(width * wipe / 100.0))
    out = before.copy()
    out[:, :split] = restored[:, :split]
    if 0 < split < width:
        out[:, split] = 1.0
    return out


def zoom_box(shape: tuple[int, ...], x: int, y: int, zoom: int) -> tuple[int, int, int]:
    """(top, left, side) of the square crop around (x, y) shown at ``zoom``x, kept inside."""
    h, w = shape[:2]
    side = max(1, min(h, w) // zoom)
    top = min(max(y - side // 2, 0), h - side)
    left = min(max(x - side // 2, 0), w - side)
    return top, left, side


def zoom_pair(before: np.ndarray, restored: np.ndarray, box: tuple[int, int, int],
              zoom: int) -> np.ndarray:
    """``before`` and ``restored`` crops side by side, upscaled ``zoom``x (nearest neighbour)."""
    top, left, side = box

    def crop(img: np.ndarray) -> np.ndarray:
        part = img[top:top + side, left:left + side]
        return np.repeat(np.repeat(part, zoom, axis=0), zoom, axis=1)

    a, b = crop(before), crop(restored)
    gap = np.ones((a.shape[0], ZOOM_GAP, 3), dtype=a.dtype)
    return np.concatenate([a, gap, b], axis=1)


def download_link(img: np.ndarray, filename: str) -> str:
    """An HTML anchor downloading ``img`` as a PNG from a ``data:`` URI (works in exported HTML)."""
    payload = base64.b64encode(png_bytes(img)).decode("ascii")
    return (f'<a download="{html.escape(filename)}" href="data:image/png;base64,{payload}">'
            f"Download {html.escape(filename)}</a>")


def preview(img: np.ndarray) -> np.ndarray:
    """A uint8 copy no larger than ``PREVIEW_MAX_SIDE`` on a side, for display only."""
    pil = Image.fromarray(images.to_uint8(img))
    pil.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE), Image.Resampling.LANCZOS)
    return np.asarray(pil)
