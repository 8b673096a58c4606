"""Synthetic datasets in the published MIR-L folder layout and plain photo folders, for trying the
``mirl`` and ``folder`` sources without the published data (the tests and
``benchmarks/data_loader.py`` use them).

``make_mirl(root, cfg)`` writes every dataset folder that ``cfg`` lists (by default the published
names) with ``count`` images each; paired inputs are their target plus ``OFFSET`` 8-bit levels, so a
check can see that pairs stay aligned. Pixels are a pure function of the file's place in the layout.
``make_folder`` writes a folder of blocky random photos.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from mirl_lib.core.config import DataConfig
from mirl_lib.core.names import TASK_FAMILIES
from mirl_lib.data.catalogs import PAIRED_SUFFIX, TARGET_SUFFIX, mirl_datasets

OFFSET = 100  # paired inputs are their target plus this many 8-bit levels


def save(path: Path, pixels: np.ndarray, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **options)


def pixels(key: str, h: int = 40, w: int = 36, high: int = 150) -> np.ndarray:
    """Random 8-bit RGB pixels in [0, high), seeded by ``key``."""
    rng = np.random.default_rng(list(key.encode()))
    return rng.integers(0, high, (h, w, 3), dtype=np.uint8)


def make_mirl(root: Path, cfg: DataConfig = DataConfig(), count: int = 2,
              size: tuple[int, int] = (40, 36), sizes: dict[str, tuple[int, int]] | None = None,
              suffixes: dict[str, str] | None = None,
              content: Callable[[str, int, int], np.ndarray] = pixels) -> Path:
    """The ``mirl`` layout of the datasets ``cfg`` lists under ``root``: ``count`` clean images per
    denoise folder, ``count`` pairs per paired folder, of ``size`` (height, width) or, per dataset
    name, ``sizes[name]``; files are PNG or, per dataset name, ``suffixes[name]`` (``.jpg``, ...).
    ``content(key, h, w)`` makes the pixels of each clean image or target."""
    for split in ("train", "test"):
        for family in TASK_FAMILIES:
            for dataset in mirl_datasets(cfg, family, split):
                folder = root / split / family / dataset
                h, w = (sizes or {}).get(dataset, size)
                suffix = (suffixes or {}).get(dataset, ".png")
                for k in range(count):
                    if family not in PAIRED_SUFFIX:
                        save(folder / f"{dataset}_{k}{suffix}",
                             content(f"{split}{dataset}{k}", h, w))
                        continue
                    target = content(f"{split}{family}/{dataset}{k}", h, w)
                    save(folder / "target" / f"im{k}{TARGET_SUFFIX}{suffix}", target)
                    save(folder / "input" / f"im{k}{PAIRED_SUFFIX[family]}{suffix}",
                         target + OFFSET)
    return root


def make_folder(root: Path, count: int, size: int, block: int = 8) -> Path:
    """``count`` photos of ``size`` x ``size`` px under ``root`` (blocky random pixels, so they
    compress and write quickly)."""
    root.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        coarse = pixels(f"photo{k}", size // block, size // block, high=256)
        Image.fromarray(np.kron(coarse, np.ones((block, block, 1), np.uint8))).save(
            root / f"p{k:05d}.png", compress_level=1)
    return root
