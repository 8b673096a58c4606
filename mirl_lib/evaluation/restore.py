"""Restore images of any size with bounded memory: reflect padding and overlapping, blended tiles.

The image is padded (reflect) to a multiple of ``SIZE_MULTIPLE`` and cropped back afterwards.
An image larger than ``tile`` is cut into ``tile`` x ``tile`` windows overlapping by ``overlap``
pixels; each window's output is weighted by a ramp that falls towards its edges and the weighted
outputs are averaged, so seams are smooth and the network only ever sees one tile. PromptIR's
attention and prompts pool over their whole input, so a tiled result is close to, not equal to,
the untiled one (tests/test_restore.py states the measured gap).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mirl_lib.core.config import SIZE_MULTIPLE
from mirl_lib.core.device import resolve_device
from mirl_lib.core.errors import ConfigError, DataError


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad a (1, C, H, W) tensor at the bottom/right so H and W are multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def _starts(size: int, tile: int, stride: int) -> list[int]:
    """Starts of windows of ``tile`` covering ``size``; the last window ends at ``size``."""
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def _ramp(n: int, overlap: int) -> torch.Tensor:
    """Weights 1 in the middle, falling linearly (staying > 0) over ``overlap`` pixels per end."""
    if overlap == 0:
        return torch.ones(n)
    i = torch.arange(n, dtype=torch.float32) + 0.5
    return torch.clamp(torch.minimum(i, n - i) / overlap, max=1.0)


# How torch words an allocation failure: CUDA/MPS ("out of memory") and the CPU allocator.
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for an allocation failure on any device (torch's OOM errors, numpy's MemoryError)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MESSAGES)


def check_tiling(tile: int, overlap: int) -> None:
    """Refuse a ``tile`` that is not 0 or a positive multiple of ``SIZE_MULTIPLE``, or an
    ``overlap`` outside ``[0, tile/2]`` (``ConfigError``)."""
    if tile < 0 or tile % SIZE_MULTIPLE:
        raise ConfigError(f"tile={tile}: must be 0 (no tiling) or a positive multiple of "
                          f"{SIZE_MULTIPLE}")
    if tile and not 0 <= overlap <= tile // 2:
        raise ConfigError(f"overlap={overlap}: must be in [0, tile/2] for tile={tile}")


def _check_args(img: np.ndarray, tile: int, overlap: int) -> None:
    if img.ndim != 3 or img.shape[2] != 3 or min(img.shape[:2]) == 0:
        raise DataError(f"image must be a non-empty (H, W, 3) array, got shape {img.shape}")
    check_tiling(tile, overlap)


@torch.inference_mode()
def restore_image(model: nn.Module, img: np.ndarray, device: str | torch.device = "cpu",
                  tile: int = 256, overlap: int = 32) -> np.ndarray:
    """Run ``model`` on an RGB float image (H, W, 3) in [0, 1]; returns float32 (H, W, 3) in [0, 1].

    ``tile=0`` runs the whole (padded) image at once. The model is put in eval mode on ``device``.
    """
    _check_args(img, tile, overlap)
    dev = resolve_device(device)
    model.eval().to(dev)
    h, w = img.shape[:2]
    x = _pad_to_multiple(torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
                         .permute(2, 0, 1)[None], SIZE_MULTIPLE)
    hp, wp = x.shape[-2:]
    if tile == 0 or (hp <= tile and wp <= tile):
        out = model(x.to(dev)).float().cpu()[0]
    else:
        th, tw = min(tile, hp), min(tile, wp)
        weight = _ramp(th, overlap)[:, None] * _ramp(tw, overlap)[None, :]
        acc = torch.zeros(3, hp, wp)
        norm = torch.zeros(hp, wp)
        for top in _starts(hp, th, th - overlap):
            for left in _starts(wp, tw, tw - overlap):
                patch = x[..., top:top + th, left:left + tw].to(dev)
                acc[:, top:top + th, left:left + tw] += model(patch).float().cpu()[0] * weight
                norm[top:top + th, left:left + tw] += weight
        out = acc / norm
    return out[:, :h, :w].clamp_(0.0, 1.0).permute(1, 2, 0).numpy().copy()
