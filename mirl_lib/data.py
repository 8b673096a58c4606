"""Training and test data from three sources behind one interface (``DataConfig.source``).

- ``bundled``: the colour photographs shipped inside scikit-image (no download), split into the
  disjoint ``BUNDLED_TRAIN`` / ``BUNDLED_TEST`` lists; all tasks are synthesized.
- ``mirl``: the published MIR-L folder layout under ``DataConfig.root`` (see ``MIRL_CLEAN`` and
  ``MIRL_PAIRED``); noise is synthesized, rain and haze pairs are read from disk.
- ``folder``: any folder of clean photos under ``root``, split by a hash of each name; all tasks
  are synthesized.

``load_test_set`` returns seeded, cropped test items; ``build_train_source`` returns a
``TrainSource`` whose ``batch`` is a pure function of (seed, step, rank). See ``docs/data.md``.
"""
from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import skimage.data
import torch
from PIL import Image
from scipy import ndimage

from mirl_lib.config import DataConfig
from mirl_lib.degrade import degrade, depth_prior, image_seed
from mirl_lib.errors import DataError
from mirl_lib.images import IMAGE_SUFFIXES, read_rgb
from mirl_lib.protocol import crop_to_multiple


# Colour photographs in scikit-image 0.26 that load without network access. The three classic
# natural test photographs are held out; training keeps the larger, more varied images, including
# both motorcycle stereo views (one scene, so both on the same side) whose disparity gives real
# depth for haze. Left out: ``cat`` (same photo as ``chelsea``), ``colorwheel`` (a synthetic
# graphic), ``logo`` (RGBA) and every image that needs a download.
BUNDLED_TRAIN: tuple[str, ...] = ("hubble_deep_field", "immunohistochemistry", "motorcycle_left",
                                  "motorcycle_right", "retina", "rocket")
BUNDLED_TEST: tuple[str, ...] = ("astronaut", "chelsea", "coffee")
BUNDLED_DATASET = "bundled"
FOLDER_DATASET = "folder"

# mirl layout: clean-image datasets (noise synthesized) and paired folders (input/, target/) with
# the file-name suffix that marks degraded inputs; targets end in ``_gt``.
MIRL_CLEAN: dict[str, tuple[str, ...]] = {"train": ("WED", "BSD400"), "test": ("BSD68", "Urban100")}
MIRL_PAIRED: dict[tuple[str, str], tuple[str, str]] = {
    ("train", "derain"): ("derain/Rain100L", "_rainy"),
    ("train", "dehaze"): ("dehaze/OTS", "_hazy"),
    ("test", "derain"): ("derain/Rain100L", "_rainy"),
    ("test", "dehaze"): ("dehaze/SOTS", "_hazy"),
}
TARGET_SUFFIX = "_gt"
_BUNDLED_PREFIX = "skimage:"


@dataclass(frozen=True, eq=False)
class TestItem:
    """One test image: its degraded input and clean target, float32 (H, W, 3), H and W % 16 == 0."""

    __test__ = False  # not a pytest test class

    task: str
    dataset: str
    name: str
    degraded: np.ndarray
    clean: np.ndarray


@dataclass(frozen=True)
class _Entry:
    """One (task, image) of a split; ``clean``/``degraded`` are paths or ``skimage:<name>``."""

    task: str
    dataset: str
    name: str
    clean: str
    degraded: str | None = None


@dataclass(frozen=True, eq=False)
class _TrainImage:
    """A cached training image (uint8), with its degraded pair or its depth (float32) if used."""

    clean: np.ndarray
    degraded: np.ndarray | None
    depth: np.ndarray | None


# ---------------------------------------------------------------------------------------------
# Bundled images and depth


def _bundled_uint8(name: str) -> np.ndarray:
    if name.startswith("motorcycle_"):
        left, right, _ = skimage.data.stereo_motorcycle()
        return left if name == "motorcycle_left" else right
    return getattr(skimage.data, name)()


@functools.lru_cache(maxsize=None)
def _motorcycle_depth(view: str) -> np.ndarray:
    """Depth in [0, 1] (1 = far) of a motorcycle view from the bundled left-view disparity.

    The right view's disparity is the left one forward-warped (``x_right = x_left - d``, nearer
    surfaces win). Invalid or occluded pixels take the nearest valid disparity; depth = 1 / d,
    min-max normalized.
    """
    _, _, disp = skimage.data.stereo_motorcycle()
    disp = np.where(np.isfinite(disp) & (disp > 0), disp, 0.0).astype(np.float64)
    if view == "motorcycle_right":
        warped = np.zeros_like(disp)
        ys, xs = np.nonzero(disp)
        xr = np.round(xs - disp[ys, xs]).astype(int)
        inside = xr >= 0
        np.maximum.at(warped, (ys[inside], xr[inside]), disp[ys[inside], xs[inside]])
        disp = warped
    invalid = disp <= 0
    nearest = ndimage.distance_transform_edt(invalid, return_distances=False, return_indices=True)
    depth = 1.0 / disp[tuple(nearest)]
    return ((depth - depth.min()) / np.ptp(depth)).astype(np.float32)


def _depth(ref: str, name: str, shape: tuple[int, int]) -> np.ndarray:
    """Measured depth for the motorcycle views, else ``depth_prior`` seeded by the image name."""
    key = ref.removeprefix(_BUNDLED_PREFIX)
    if ref.startswith(_BUNDLED_PREFIX) and key.startswith("motorcycle_"):
        return _motorcycle_depth(key)
    return depth_prior(shape[0], shape[1], np.random.default_rng(image_seed(name, "depth", 0)))


def _load_uint8(ref: str) -> np.ndarray:
    """An image as uint8 (H, W, 3): bundled by name, else read strictly from disk."""
    if ref.startswith(_BUNDLED_PREFIX):
        return _bundled_uint8(ref.removeprefix(_BUNDLED_PREFIX))
    return np.round(read_rgb(ref) * 255.0).astype(np.uint8)


def _image_size(ref: str) -> tuple[int, int]:
    if ref.startswith(_BUNDLED_PREFIX):
        return _bundled_uint8(ref.removeprefix(_BUNDLED_PREFIX)).shape[:2]
    try:
        with Image.open(ref) as image:
            return image.height, image.width
    except OSError as exc:
        raise DataError(f"{ref}: not a readable image file ({exc})") from None


# ---------------------------------------------------------------------------------------------
# Catalogues: which (task, image) entries a split holds


def _synthetic(tasks: tuple[str, ...], dataset: str, images: list[tuple[str, str]]
               ) -> list[_Entry]:
    return [_Entry(task, dataset, name, ref) for task in tasks for name, ref in images]


def _bundled_entries(cfg: DataConfig, split: str) -> list[_Entry]:
    names = BUNDLED_TRAIN if split == "train" else BUNDLED_TEST
    return _synthetic(cfg.tasks, BUNDLED_DATASET, [(n, _BUNDLED_PREFIX + n) for n in names])


def _images_in(folder: Path, recursive: bool = False) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    found = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return files


def _keyed(files: list[Path], suffix: str, folder: Path) -> dict[str, Path]:
    """Map ``stem minus suffix`` to file; a missing suffix or a repeated key is an error."""
    keyed: dict[str, Path] = {}
    for path in files:
        if not path.stem.endswith(suffix):
            raise DataError(f"{path}: file name must end with '{suffix}' (before the extension) "
                            f"in {folder}")
        key = path.stem[: -len(suffix)]
        if key in keyed:
            raise DataError(f"{path}: same name as {keyed[key]}; keep one of them")
        keyed[key] = path
    return keyed


def _pairs(folder: Path, input_suffix: str) -> list[tuple[str, Path, Path]]:
    """(name, input, target) of ``folder/input/X{input_suffix}.*`` and ``folder/target/X_gt.*``."""
    inputs = _keyed(_images_in(folder / "input"), input_suffix, folder / "input")
    targets = _keyed(_images_in(folder / "target"), TARGET_SUFFIX, folder / "target")
    for key, path in inputs.items():
        if key not in targets:
            raise DataError(f"{path}: no target '{key}{TARGET_SUFFIX}.*' in {folder / 'target'}")
    for key, path in targets.items():
        if key not in inputs:
            raise DataError(f"{path}: no input '{key}{input_suffix}.*' in {folder / 'input'}")
    return [(key, inputs[key], targets[key]) for key in sorted(inputs)]


def _mirl_entries(cfg: DataConfig, split: str) -> list[_Entry]:
    base = Path(cfg.root) / split
    entries: list[_Entry] = []
    noise_tasks = tuple(t for t in cfg.tasks if t.startswith("denoise"))
    if noise_tasks:
        for dataset in MIRL_CLEAN[split]:
            images = [(p.stem, str(p)) for p in _images_in(base / "denoise" / dataset)]
            entries += _synthetic(noise_tasks, dataset, images)
    for task in ("derain", "dehaze"):
        if task in cfg.tasks:
            sub, suffix = MIRL_PAIRED[(split, task)]
            folder = base / sub
            entries += [_Entry(task, folder.name, key, str(target), str(inp))
                        for key, inp, target in _pairs(folder, suffix)]
    return entries


def _folder_side(name: str, test_fraction: float) -> str:
    """``test`` when the CRC32 of the name falls below ``test_fraction`` of the 32-bit range."""
    return "test" if zlib.crc32(f"split:{name}".encode()) < test_fraction * 2**32 else "train"


def _folder_entries(cfg: DataConfig, split: str) -> list[_Entry]:
    root = Path(cfg.root)
    files = _images_in(root, recursive=True)
    named: dict[str, Path] = {}
    for path in files:
        name = path.relative_to(root).with_suffix("").as_posix()
        if name in named:
            raise DataError(f"{path}: same name as {named[name]}; keep one of them")
        named[name] = path
    chosen = [(n, str(p)) for n, p in named.items()
              if _folder_side(n, cfg.folder_test_fraction) == split]
    if not chosen:
        raise DataError(f"{root}: the {split} split is empty ({len(named)} images, "
                        f"data.folder_test_fraction={cfg.folder_test_fraction}); add images")
    return _synthetic(cfg.tasks, FOLDER_DATASET, chosen)


_CATALOGUES: dict[str, Callable[[DataConfig, str], list[_Entry]]] = {
    "bundled": _bundled_entries, "mirl": _mirl_entries, "folder": _folder_entries}


def _entries(cfg: DataConfig, split: str) -> list[_Entry]:
    return sorted(_CATALOGUES[cfg.source](cfg, split), key=lambda e: (e.task, e.dataset, e.name))


# ---------------------------------------------------------------------------------------------
# Test set


def _test_crop(arrays: list[np.ndarray], max_side: int, label: str) -> list[np.ndarray]:
    """Centre-crop same-sized arrays alike: to ``max_side`` (if > 0), then to a multiple of 16."""
    h, w = arrays[0].shape[:2]
    nh, nw = (min(h, max_side), min(w, max_side)) if max_side > 0 else (h, w)
    top, left = (h - nh) // 2, (w - nw) // 2
    try:
        return [crop_to_multiple(a[top:top + nh, left:left + nw]).copy() for a in arrays]
    except ValueError as exc:
        raise DataError(f"{label}: {exc}") from None


def _limit_per_task(entries: list[_Entry], per_task: int) -> list[_Entry]:
    if per_task <= 0:
        return entries
    kept: list[_Entry] = []
    for task in dict.fromkeys(e.task for e in entries):
        kept += sorted((e for e in entries if e.task == task), key=lambda e: (e.name, e.dataset)
                       )[:per_task]
    return sorted(kept, key=lambda e: (e.task, e.dataset, e.name))


def load_test_set(cfg: DataConfig, seed: int) -> list[TestItem]:
    """The test items of ``cfg``, sorted by (task, dataset, name).

    Synthetic degradations use ``image_seed(f"{dataset}/{name}", task, seed)``, so they depend on
    the image's name and ``seed`` (pass ``cfg.test_seed``), never on file order. Each clean image
    (and its pair or depth) is centre-cropped to at most ``cfg.test_max_side`` when that is > 0 (a
    CPU shortcut; 0 keeps full size), then to a multiple of 16, before it is degraded.
    """
    cache: dict[str, np.ndarray] = {}
    items = []
    for e in _limit_per_task(_entries(cfg, "test"), cfg.test_per_task):
        if e.clean not in cache:
            cache[e.clean] = _load_uint8(e.clean).astype(np.float32) / 255.0
        clean = cache[e.clean]
        if e.degraded is None:
            layers = [clean] + ([_depth(e.clean, e.name, clean.shape[:2])]
                                if e.task == "dehaze" else [])
            cropped = _test_crop(layers, cfg.test_max_side, e.clean)
            depth = cropped[1] if len(cropped) > 1 else None
            seed_ = image_seed(f"{e.dataset}/{e.name}", e.task, seed)
            clean_c, degraded = cropped[0], degrade(cropped[0], e.task, seed_, depth)
        else:
            pair = read_rgb(e.degraded)
            _check_pair(pair, clean, e)
            clean_c, degraded = _test_crop([clean, pair], cfg.test_max_side, e.clean)
        items.append(TestItem(e.task, e.dataset, e.name, degraded, clean_c))
    return items


def _check_pair(degraded: np.ndarray, clean: np.ndarray, e: _Entry) -> None:
    if degraded.shape != clean.shape:
        raise DataError(f"{e.degraded}: size {degraded.shape[1]}x{degraded.shape[0]} differs from "
                        f"its target {e.clean} ({clean.shape[1]}x{clean.shape[0]})")


# ---------------------------------------------------------------------------------------------
# Training batches


def _augment(array: np.ndarray, rotations: int, flip: bool) -> np.ndarray:
    array = np.rot90(array, rotations, axes=(0, 1))
    return array[:, ::-1] if flip else array


def _to_batch(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))


class TrainSource:
    """Random training patches, a pure function of (seed, step, rank).

    ``tasks`` lists the tasks in ``DataConfig.tasks`` order; ``batch`` returns task ids that index
    it. Clean images (and degraded pairs) are cached as uint8, depth maps as float32.
    """

    def __init__(self, pools: dict[str, list[_TrainImage]], patch_size: int, seed: int) -> None:
        self.tasks: tuple[str, ...] = tuple(pools)
        self.patch_size = patch_size
        self.seed = seed
        self._pools = pools

    def batch(self, step: int, batch_size: int, rank: int = 0, world_size: int = 1
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(degraded, clean) float32 (B, 3, P, P) in [0, 1] and task ids (B,) long.

        Sample ``i`` has global index ``g = step * batch_size * world_size + rank * batch_size + i``
        and task ``tasks[g % len(tasks)]``, so tasks are balanced across the whole world. The
        generator is ``np.random.default_rng([seed, step, rank])``; it picks the image, the crop,
        one of the 8 flips/rotations (applied to the clean crop and its pair or depth alike) and
        then the synthetic degradation of the augmented clean crop.
        """
        if step < 0 or batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad batch request: step={step}, batch_size={batch_size}, "
                             f"rank={rank}, world_size={world_size}")
        rng = np.random.default_rng([self.seed, step, rank])
        p = self.patch_size
        first = step * batch_size * world_size + rank * batch_size
        degraded_out = np.empty((batch_size, p, p, 3), np.float32)
        clean_out = np.empty((batch_size, p, p, 3), np.float32)
        ids = np.empty(batch_size, np.int64)
        for i in range(batch_size):
            ids[i] = (first + i) % len(self.tasks)
            task = self.tasks[ids[i]]
            pool = self._pools[task]
            image = pool[rng.integers(len(pool))]
            h, w = image.clean.shape[:2]
            y, x = rng.integers(h - p + 1), rng.integers(w - p + 1)
            rotations, flip = int(rng.integers(4)), bool(rng.integers(2))
            crop = [_augment(a[y:y + p, x:x + p], rotations, flip)
                    for a in (image.clean, image.degraded, image.depth) if a is not None]
            clean_out[i] = crop[0] / np.float32(255.0)
            if image.degraded is not None:
                degraded_out[i] = crop[1] / np.float32(255.0)
            else:
                depth = crop[1] if image.depth is not None else None
                degraded_out[i] = degrade(clean_out[i], task, rng, depth)
        return _to_batch(degraded_out), _to_batch(clean_out), torch.from_numpy(ids)


def build_train_source(cfg: DataConfig, seed: int) -> TrainSource:
    """Load and cache every training image of ``cfg`` once; images smaller than the patch fail."""
    cache: dict[str, np.ndarray] = {}
    pools: dict[str, list[_TrainImage]] = {task: [] for task in cfg.tasks}

    def load(ref: str) -> np.ndarray:
        if ref not in cache:
            image = _load_uint8(ref)
            if min(image.shape[:2]) < cfg.patch_size:
                raise DataError(f"{ref}: image is {image.shape[1]}x{image.shape[0]}, smaller than "
                                f"data.patch_size={cfg.patch_size}")
            cache[ref] = image
        return cache[ref]

    for e in _entries(cfg, "train"):
        clean = load(e.clean)
        degraded = load(e.degraded) if e.degraded is not None else None
        if degraded is not None:
            _check_pair(degraded, clean, e)
        depth = _depth(e.clean, e.name, clean.shape[:2]) \
            if e.task == "dehaze" and degraded is None else None
        pools[e.task].append(_TrainImage(clean, degraded, depth))
    return TrainSource(pools, cfg.patch_size, seed)


def dataset_summary(cfg: DataConfig) -> pd.DataFrame:
    """One row per (split, task, image): split, task, dataset, name, height, width (full size)."""
    rows = []
    for split in ("train", "test"):
        for e in _entries(cfg, split):
            height, width = _image_size(e.clean)
            rows.append({"split": split, "task": e.task, "dataset": e.dataset, "name": e.name,
                         "height": height, "width": width})
    return pd.DataFrame(rows, columns=["split", "task", "dataset", "name", "height", "width"])
