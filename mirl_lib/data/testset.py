"""The test set: seeded degradations of crops of the test photos (``load_test_set``).

Each test photo is cut to ``data.test_max_side`` pixels: its centre crop, or with
``data.test_crop_grid: n`` an ``n x n`` grid of disjoint crops centred in it (``test_crops``). A
crop is one test image, named ``<photo>@<row><col>`` (the centre crop keeps the photo's name), with
its own degradation seed; its ``photo`` says which photo it comes from, so the statistics can treat
the photo, not the crop, as the unit of replication.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mirl_lib.core.config import DataConfig
from mirl_lib.core.errors import DataError
from mirl_lib.core.protocol import SIZE_BASE, crop_to_multiple
from mirl_lib.data.catalogs import Entry, entries
from mirl_lib.data.degrade import degrade, image_seed
from mirl_lib.data.photos import depth_of, load_uint8
from mirl_lib.files.images import read_rgb


@dataclass(frozen=True, eq=False)
class TestItem:
    """One test image: its degraded input and clean target, float32 (H, W, 3), H and W % 16 == 0;
    ``photo`` names the photo it was cut from (``name`` itself when it is the whole photo or its
    centre crop)."""

    __test__ = False  # not a pytest test class

    task: str
    dataset: str
    name: str
    degraded: np.ndarray
    clean: np.ndarray
    photo: str = ""

    def __post_init__(self) -> None:
        if not self.photo:
            object.__setattr__(self, "photo", self.name)


# ---------------------------------------------------------------------------------------------
# Test set


def test_crop(arrays: list[np.ndarray], max_side: int, label: str) -> list[np.ndarray]:
    """Centre-crop same-sized arrays alike: to ``max_side`` (if > 0), then to a multiple of 16."""
    h, w = arrays[0].shape[:2]
    nh, nw = (min(h, max_side), min(w, max_side)) if max_side > 0 else (h, w)
    top, left = (h - nh) // 2, (w - nw) // 2
    try:
        return [crop_to_multiple(a[top:top + nh, left:left + nw]).copy() for a in arrays]
    except ValueError as exc:
        raise DataError(f"{label}: {exc}") from None


def test_crops(arrays: list[np.ndarray], max_side: int, grid: int, label: str
               ) -> list[tuple[str, list[np.ndarray]]]:
    """``(suffix, crops)`` for each crop of same-sized arrays, cut alike: with ``grid`` 1 the centre
    crop (``test_crop``, suffix ``""``); else a ``grid x grid`` grid of disjoint ``max_side``
    squares centred in the arrays, row by row, suffixes ``@00``, ``@01``, ... A photo smaller than
    the grid is a ``DataError`` naming it."""
    if grid == 1:
        return [("", test_crop(arrays, max_side, label))]
    h, w = arrays[0].shape[:2]
    side = max_side - max_side % SIZE_BASE
    if min(h, w) < grid * side:
        raise DataError(f"{label}: {w}x{h} is too small for a {grid} x {grid} grid of {side}-pixel "
                        f"test crops (data.test_crop_grid, data.test_max_side)")
    top, left = (h - grid * side) // 2, (w - grid * side) // 2
    return [(f"@{r}{c}", [a[top + r * side:top + (r + 1) * side,
                            left + c * side:left + (c + 1) * side].copy() for a in arrays])
            for r in range(grid) for c in range(grid)]


def _limit_per_task(entries: list[Entry], per_task: int) -> list[Entry]:
    if per_task <= 0:
        return entries
    kept: list[Entry] = []
    for task in dict.fromkeys(e.task for e in entries):
        kept += sorted((e for e in entries if e.task == task), key=lambda e: (e.name, e.dataset)
                       )[:per_task]
    return sorted(kept, key=lambda e: (e.task, e.dataset, e.name))


def load_test_set(cfg: DataConfig, seed: int) -> list[TestItem]:
    """The test items of ``cfg``, sorted by (task, dataset, name).

    Synthetic degradations use ``image_seed(f"{dataset}/{name}", task, seed)`` (``name`` the
    crop's), so they depend on the crop's name and ``seed`` (pass ``cfg.test_seed``), never on file
    order. Each clean image (and its pair or depth) is cut to ``cfg.test_max_side`` when that is > 0
    (the centre crop, or ``cfg.test_crop_grid`` squared crops: ``test_crops``; 0 keeps full size),
    then to a multiple of 16, before it is degraded.
    """
    cache: dict[str, np.ndarray] = {}
    items = []
    for e in _limit_per_task(entries(cfg, "test"), cfg.test_per_task):
        if e.clean not in cache:
            cache[e.clean] = load_uint8(e.clean).astype(np.float32) / 255.0
        clean = cache[e.clean]
        if e.degraded is None:
            layers = [clean] + ([depth_of(e.clean, e.name, clean.shape[:2])]
                                if e.task == "dehaze" else [])
        else:
            layers = [clean, read_rgb(e.degraded)]
            _check_pair(layers[1], clean, e)
        for suffix, cropped in test_crops(layers, cfg.test_max_side, cfg.test_crop_grid, e.clean):
            name = f"{e.name}{suffix}"
            if e.degraded is None:
                depth = cropped[1] if len(cropped) > 1 else None
                seed_ = image_seed(f"{e.dataset}/{name}", e.task, seed)
                degraded = degrade(cropped[0], e.task, seed_, depth)
            else:
                degraded = cropped[1]
            items.append(TestItem(e.task, e.dataset, name, degraded, cropped[0], e.name))
    return sorted(items, key=lambda i: (i.task, i.dataset, i.name))


def _check_pair(degraded: np.ndarray, clean: np.ndarray, e: Entry) -> None:
    if degraded.shape != clean.shape:
        raise DataError(f"{e.degraded}: size {degraded.shape[1]}x{degraded.shape[0]} differs from "
                        f"its target {e.clean} ({clean.shape[1]}x{clean.shape[0]})")
