"""Training and test data from three sources behind one interface (``DataConfig.source``).

- ``bundled``: colour photographs shipped inside installed packages (no download): a training set
  of ``BUNDLED_TRAIN_SETS`` (``DataConfig.bundled_train``) and the disjoint ``BUNDLED_TEST``; all
  tasks are synthesized.
- ``mirl``: the published MIR-L folder layout under ``DataConfig.root``: for each task family and
  split, the dataset folders the config lists (``DataConfig.denoise_train`` ...); noise is
  synthesized, rain and haze pairs are read from disk.
- ``folder``: any folder of clean photos under ``root``, split by a hash of each name; all tasks
  are synthesized.

``load_test_set`` returns seeded, cropped test items. ``build_train_source`` returns a
``TrainSource`` whose ``batch`` is a pure function of (seed, step, rank); it holds the list of
training entries only and reads images from disk per sample, through a small per-process cache.
``step_batches`` makes those batches in ``torch.utils.data.DataLoader`` worker processes.
``epoch_size`` counts the samples of one epoch. See ``docs/data.md``.
"""
from __future__ import annotations

import functools
import zlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import skimage.data
import torch
from scipy import ndimage
from torch.utils.data import DataLoader, Dataset

from mirl_lib.config import BUNDLED_TRAIN_SET_NAMES, TASK_FAMILIES, DataConfig, task_family
from mirl_lib.degrade import degrade, depth_prior, depth_prior_window, image_seed
from mirl_lib.errors import DataError
from mirl_lib.images import IMAGE_SUFFIXES, read_rgb, read_rgb_uint8, rgb_size
from mirl_lib.protocol import crop_to_multiple


# Photographs shipped inside installed packages (no download), as ``<package>:<name>``:
# ``skimage:<function of skimage.data>``, ``sklearn:<file of sklearn.datasets.load_sample_image>``,
# ``matplotlib:<path under matplotlib's data folder>`` (``bundled_photo`` reads them).
# The three classic natural test photographs are held out (``BUNDLED_TEST``). Training photos come
# in sets, chosen by ``data.bundled_train`` (a test checks that every set is disjoint from the
# test photos and from the held-out check's):
# - ``classic`` (the first embedded study's, and the default): scikit-image's larger colour
#   images, both motorcycle stereo views (one scene, so both on the same side; their disparity
#   gives real depth for haze), the rocket, and three that are not natural photographs: a
#   deep-field sky (mostly black), a microscopy stain and a fundus image (black border);
# - ``natural``: natural photographs only: the motorcycle views, the rocket and scikit-learn's
#   two sample photos (a temple in China, a flower).
# Left out: ``cat`` (same photo as ``chelsea``), ``colorwheel`` (a synthetic graphic), ``logo``
# (RGBA), every image that needs a download and every photo of the held-out check.
BUNDLED_TRAIN_SETS: dict[str, tuple[str, ...]] = {
    "classic": ("skimage:hubble_deep_field", "skimage:immunohistochemistry",
                "skimage:motorcycle_left", "skimage:motorcycle_right", "skimage:retina",
                "skimage:rocket"),
    "natural": ("skimage:motorcycle_left", "skimage:motorcycle_right", "skimage:rocket",
                "sklearn:china.jpg", "sklearn:flower.jpg"),
}
assert tuple(BUNDLED_TRAIN_SETS) == BUNDLED_TRAIN_SET_NAMES
BUNDLED_TEST: tuple[str, ...] = ("skimage:astronaut", "skimage:chelsea", "skimage:coffee")
_PACKAGES = ("skimage", "sklearn", "matplotlib")
BUNDLED_DATASET = "bundled"
FOLDER_DATASET = "folder"

# mirl layout: ``<root>/<split>/<family>/<dataset>/`` for every dataset that ``DataConfig``'s
# ``<family>_<split>`` field lists. Clean-image families (denoise) hold photos; paired families hold
# ``input/X<suffix>.*`` and ``target/X_gt.*``.
PAIRED_SUFFIX: dict[str, str] = {"derain": "_rainy", "dehaze": "_hazy"}
TARGET_SUFFIX = "_gt"

# ``data.sampling: published``: how many times each image of a task enters one epoch of the
# published all-in-one mixture (PromptIR's training set: noise x3 per sigma, Rain100L x120).
PUBLISHED_REPEATS: dict[str, int] = {"denoise_15": 3, "denoise_25": 3, "denoise_50": 3,
                                     "derain": 120, "dehaze": 1}
# Third seed word of the per-epoch shuffle of the published mixture, so that its generator
# ``default_rng([seed, epoch, _SHUFFLE_STREAM])`` is never a batch generator ``[seed, step, rank]``.
_SHUFFLE_STREAM = 0x53485546
# Batches each DataLoader worker keeps in flight.
PREFETCH = 2


@dataclass(frozen=True, eq=False)
class TestItem:
    """One test image: its degraded input and clean target, float32 (H, W, 3), H and W % 16 == 0."""

    __test__ = False  # not a pytest test class

    task: str
    dataset: str
    name: str
    degraded: np.ndarray
    clean: np.ndarray


@dataclass(frozen=True, slots=True)
class _Entry:
    """One (task, image) of a split; ``clean``/``degraded`` are paths or bundled photos
    (``<package>:<name>``)."""

    task: str
    dataset: str
    name: str
    clean: str
    degraded: str | None = None


@dataclass(frozen=True, slots=True)
class _Sample:
    """A training entry with the full size of its image, read from the file header."""

    entry: _Entry
    height: int
    width: int


# ---------------------------------------------------------------------------------------------
# Bundled images and depth


def photo_name(ref: str) -> str:
    """The image name of a bundled photo: ``sklearn:china.jpg`` -> ``china``."""
    return Path(ref.partition(":")[2]).stem


def is_bundled(ref: str) -> bool:
    return ref.partition(":")[0] in _PACKAGES and ":" in ref


def bundled_photo(ref: str) -> np.ndarray:
    """A photograph shipped inside a package (``<package>:<name>``, see ``BUNDLED_TRAIN_SETS``) as
    uint8 (H, W, 3); grey ones are replicated to three channels, an alpha channel is dropped."""
    package, _, name = ref.partition(":")
    if package == "skimage":
        if name.startswith("motorcycle_"):
            left, right, _ = skimage.data.stereo_motorcycle()
            array = left if name == "motorcycle_left" else right
        else:
            array = getattr(skimage.data, name)()
    elif package == "sklearn":
        from sklearn.datasets import load_sample_image
        array = load_sample_image(name)
    elif package == "matplotlib":
        import matplotlib
        path = Path(matplotlib.get_data_path()) / name
        if not path.is_file():
            raise DataError(f"{path}: bundled photo {ref!r} is missing from matplotlib")
        array = read_rgb_uint8(path)
    else:
        raise DataError(f"{ref}: not a bundled photo (expected one of "
                        f"{', '.join(p + ':' for p in _PACKAGES)})")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    return np.ascontiguousarray(array[..., :3])


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


def _measured_depth(ref: str) -> bool:
    """Whether ``ref`` has measured depth (the motorcycle views' disparity)."""
    return ref.startswith("skimage:motorcycle_")


def _depth(ref: str, name: str, shape: tuple[int, int]) -> np.ndarray:
    """Measured depth for the motorcycle views, else ``depth_prior`` seeded by the image name."""
    if _measured_depth(ref):
        return _motorcycle_depth(ref.removeprefix("skimage:"))
    return depth_prior(shape[0], shape[1], np.random.default_rng(image_seed(name, "depth", 0)))


def _load_uint8(ref: str) -> np.ndarray:
    """An image as uint8 (H, W, 3): bundled by name, else read strictly from disk."""
    if is_bundled(ref):
        return bundled_photo(ref)
    return read_rgb_uint8(ref)


@functools.lru_cache(maxsize=None)
def _bundled_size(ref: str) -> tuple[int, int]:
    return bundled_photo(ref).shape[:2]


def _image_size(ref: str) -> tuple[int, int]:
    """(height, width): bundled by name, else from the file header (``images.rgb_size``: the file
    is checked to be 8-bit RGB, its pixels are not decoded)."""
    if is_bundled(ref):
        return _bundled_size(ref)
    return rgb_size(ref)


# ---------------------------------------------------------------------------------------------
# Catalogues: which (task, image) entries a split holds


def _synthetic(tasks: tuple[str, ...], dataset: str, images: list[tuple[str, str]]
               ) -> list[_Entry]:
    return [_Entry(task, dataset, name, ref) for task in tasks for name, ref in images]


def _bundled_entries(cfg: DataConfig, split: str) -> list[_Entry]:
    refs = BUNDLED_TRAIN_SETS[cfg.bundled_train] if split == "train" else BUNDLED_TEST
    return _synthetic(cfg.tasks, BUNDLED_DATASET, [(photo_name(r), r) for r in refs])


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


# A relative ``data.root`` is read from the checkout (where ./run_all.sh runs), whatever the
# current folder of the process: stage notebooks run in notebooks/, the CLI anywhere.
CHECKOUT = Path(__file__).resolve().parents[1]


def data_root(cfg: DataConfig) -> Path:
    """``cfg.root`` as an absolute folder (relative roots are inside the mirl checkout)."""
    root = Path(cfg.root).expanduser()
    return root if root.is_absolute() else CHECKOUT / root


def mirl_datasets(cfg: DataConfig, family: str, split: str) -> tuple[str, ...]:
    """The dataset folders of a task family (``denoise``, ``derain``, ``dehaze``) and split that
    the ``mirl`` source reads: ``cfg.<family>_<split>``."""
    return getattr(cfg, f"{family}_{split}")


def _dataset_folder(cfg: DataConfig, split: str, family: str, dataset: str) -> Path:
    """``<root>/<split>/<family>/<dataset>``; a missing one names the config key and the folders
    that are there."""
    folder = data_root(cfg) / split / family / dataset
    if not folder.is_dir():
        parent = folder.parent
        there = sorted(p.name for p in parent.iterdir() if p.is_dir() and not
                       p.name.startswith(".")) if parent.is_dir() else []
        found = f"folders in {parent}: {', '.join(there)}" if there else f"{parent} has no folders"
        raise DataError(f"{folder}: folder not found (data.{family}_{split} lists {dataset!r}; "
                        f"{found})")
    return folder


def _mirl_entries(cfg: DataConfig, split: str) -> list[_Entry]:
    entries: list[_Entry] = []
    for family in TASK_FAMILIES:
        tasks = tuple(t for t in cfg.tasks if task_family(t) == family)
        for dataset in mirl_datasets(cfg, family, split) if tasks else ():
            folder = _dataset_folder(cfg, split, family, dataset)
            try:
                if family in PAIRED_SUFFIX:
                    entries += [_Entry(task, dataset, key, str(target), str(inp))
                                for key, inp, target in _pairs(folder, PAIRED_SUFFIX[family])
                                for task in tasks]
                else:
                    images = [(p.stem, str(p)) for p in _images_in(folder)]
                    entries += _synthetic(tasks, dataset, images)
            except DataError as exc:
                raise DataError(f"{exc} (data.{family}_{split} lists {dataset!r})") from None
    return entries


def _folder_side(name: str, test_fraction: float) -> str:
    """``test`` when the CRC32 of the name falls below ``test_fraction`` of the 32-bit range."""
    return "test" if zlib.crc32(f"split:{name}".encode()) < test_fraction * 2**32 else "train"


def _folder_entries(cfg: DataConfig, split: str) -> list[_Entry]:
    root = data_root(cfg)
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


class _Cache:
    """A least-recently-used cache of arrays, bounded by their total bytes (the newest array is
    kept even when it alone is larger)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()

    def get(self, key: Hashable, make: Callable[[], np.ndarray]) -> np.ndarray:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = make()
        self._items[key] = value
        self.bytes += value.nbytes
        while self.bytes > self.max_bytes and len(self._items) > 1:
            _, dropped = self._items.popitem(last=False)
            self.bytes -= dropped.nbytes
        return value


def _epoch_size(tasks: list[str], sampling: str) -> int:
    return sum(PUBLISHED_REPEATS[t] for t in tasks) if sampling == "published" else len(tasks)


def task_cycle(weights: tuple[int, ...]) -> tuple[int, ...]:
    """The task ids of one cycle of balanced sampling: task ``t`` ``weights[t]`` times, spread out
    round by round (``(1, 2, 3)`` -> ``(0, 1, 2, 1, 2, 2)``), so consecutive samples, and so each
    batch, mix the tasks."""
    return tuple(t for r in range(max(weights)) for t, w in enumerate(weights) if w > r)


class TrainSource:
    """Random training patches, a pure function of (seed, step, rank), read from disk per sample.

    It holds the training entries only (paths, names and full sizes); each process decodes images
    (and computes depth maps) as samples need them and keeps at most ``cache_mb`` megabytes of them
    in a least-recently-used cache, so no process ever holds the whole training set. ``tasks``
    lists the tasks in ``DataConfig.tasks`` order; ``batch`` returns task ids that index it.
    ``epoch_size`` counts the samples of one epoch (``data.epoch_size``); ``workers`` is how many
    DataLoader processes ``mirl_lib.train.train`` makes batches in.
    """

    def __init__(self, samples: list[_Sample], tasks: tuple[str, ...], patch_size: int,
                 seed: int, sampling: str = "balanced", workers: int = 0,
                 cache_mb: int = 256, task_weights: tuple[int, ...] = (),
                 haze_depth: str = "fixed") -> None:
        self.tasks: tuple[str, ...] = tuple(tasks)
        self.haze_depth = haze_depth
        # balanced: sample g takes task _cycle[g % len(_cycle)]; each task as often as its weight
        self._cycle = task_cycle(task_weights or (1,) * len(self.tasks))
        self.patch_size = patch_size
        self.seed = seed
        self.sampling = sampling
        self.workers = workers
        self.cache_mb = cache_mb
        self._samples = tuple(samples)
        self._pools = {task: [s for s in samples if s.entry.task == task] for task in self.tasks}
        empty = [task for task, pool in self._pools.items() if not pool]
        if empty:
            raise DataError(f"no training images for task(s) {empty}")
        self._task_ids = {task: i for i, task in enumerate(self.tasks)}
        self.epoch_size = _epoch_size([s.entry.task for s in samples], sampling)
        # published: mixture position -> sample index, each sample repeated as its task says
        self._mixture = np.repeat(np.arange(len(samples)),
                                  [PUBLISHED_REPEATS[s.entry.task] for s in samples]) \
            if sampling == "published" else None
        self._reset()

    def _reset(self) -> None:
        self._cache = _Cache(self.cache_mb * 2**20)
        self._shuffles: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Sent to a worker process without the decoded images of this one."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_cache", "_shuffles")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def batch(self, step: int, batch_size: int, rank: int = 0, world_size: int = 1
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(degraded, clean) float32 (B, 3, P, P) in [0, 1] and task ids (B,) long.

        Sample ``i`` has global index ``g = step * batch_size * world_size + rank * batch_size +
        i``; the generator is ``np.random.default_rng([seed, step, rank])``. With ``balanced``
        sampling the task is ``tasks[g % len(tasks)]`` (balanced across the whole world) and the
        generator picks the image; with ``published`` sampling ``g`` is position
        ``g % epoch_size`` of epoch ``g // epoch_size``'s shuffle of the mixture. Then the
        generator picks the crop, one of the 8 flips/rotations (applied to the clean crop and its
        pair or depth alike), with ``haze_depth: per_sample`` a fresh depth map for synthesized
        haze, and the synthetic degradation of the augmented clean crop.
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
            ids[i], sample = self._pick(first + i, rng)
            task = self.tasks[ids[i]]
            y, x = rng.integers(sample.height - p + 1), rng.integers(sample.width - p + 1)
            rotations, flip = int(rng.integers(4)), bool(rng.integers(2))
            clean, paired, depth = self._arrays(sample)
            fresh = depth is not None and self.haze_depth == "per_sample" \
                and not _measured_depth(sample.entry.clean)
            crop = [_augment(a[y:y + p, x:x + p], rotations, flip)
                    for a in (clean, paired, None if fresh else depth) if a is not None]
            if fresh:  # this sample's own depth map of the whole photo, its window cut alike
                crop.append(_augment(depth_prior_window(sample.height, sample.width, y, x, p,
                                                        rng), rotations, flip))
            clean_out[i] = crop[0] / np.float32(255.0)
            if paired is not None:
                degraded_out[i] = crop[1] / np.float32(255.0)
            else:
                depth_crop = crop[1] if depth is not None else None
                degraded_out[i] = degrade(clean_out[i], task, rng, depth_crop)
        return _to_batch(degraded_out), _to_batch(clean_out), torch.from_numpy(ids)

    def _pick(self, g: int, rng: np.random.Generator) -> tuple[int, _Sample]:
        """The task id and sample of global index ``g`` (draws from ``rng`` when balanced)."""
        if self._mixture is None:
            task_id = self._cycle[g % len(self._cycle)]
            pool = self._pools[self.tasks[task_id]]
            return task_id, pool[rng.integers(len(pool))]
        epoch, position = divmod(g, len(self._mixture))
        sample = self._samples[self._mixture[self._shuffle(epoch)[position]]]
        return self._task_ids[sample.entry.task], sample

    def _shuffle(self, epoch: int) -> np.ndarray:
        """The order of the mixture in ``epoch`` (the last two are kept)."""
        if epoch not in self._shuffles:
            if len(self._shuffles) >= 2:
                del self._shuffles[min(self._shuffles)]
            rng = np.random.default_rng([self.seed, epoch, _SHUFFLE_STREAM])
            self._shuffles[epoch] = rng.permutation(len(self._mixture))
        return self._shuffles[epoch]

    def _arrays(self, sample: _Sample
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """The clean image (uint8), its degraded pair (uint8) or, for synthesized haze, its depth
        (float32), through the cache."""
        e = sample.entry
        clean = self._cache.get(("image", e.clean), lambda: self._decode(e.clean, sample))
        if e.degraded is not None:
            return clean, self._cache.get(("image", e.degraded),
                                          lambda: self._decode(e.degraded, sample)), None
        if e.task != "dehaze":
            return clean, None, None
        shape = (sample.height, sample.width)
        return clean, None, self._cache.get(("depth", e.clean, e.name),
                                            lambda: _depth(e.clean, e.name, shape))

    @staticmethod
    def _decode(ref: str, sample: _Sample) -> np.ndarray:
        image = _load_uint8(ref)
        if image.shape[:2] != (sample.height, sample.width):
            raise DataError(f"{ref}: decoded size {image.shape[1]}x{image.shape[0]} differs from "
                            f"the {sample.width}x{sample.height} its header gave when training "
                            f"started; was the file replaced?")
        return image


def build_train_source(cfg: DataConfig, seed: int) -> TrainSource:
    """The training source of ``cfg``, its files listed and checked, none decoded.

    Checked here, from the file lists and each file's header: missing or empty dataset folders,
    unpaired files or wrong suffixes, files that are not 8-bit RGB (mode and header), images
    smaller than ``patch_size`` and pairs of different sizes. Pixel data is read per sample; a file
    truncated or corrupt inside its pixels fails then, with a ``DataError`` naming it too.
    """
    sizes: dict[str, tuple[int, int]] = {}

    def size(ref: str) -> tuple[int, int]:
        if ref not in sizes:
            height, width = _image_size(ref)
            if min(height, width) < cfg.patch_size:
                raise DataError(f"{ref}: image is {width}x{height}, smaller than "
                                f"data.patch_size={cfg.patch_size}")
            sizes[ref] = (height, width)
        return sizes[ref]

    samples = []
    for e in _entries(cfg, "train"):
        height, width = size(e.clean)
        if e.degraded is not None and size(e.degraded) != (height, width):
            h, w = size(e.degraded)
            raise DataError(f"{e.degraded}: size {w}x{h} differs from its target {e.clean} "
                            f"({width}x{height})")
        samples.append(_Sample(e, height, width))
    return TrainSource(samples, cfg.tasks, cfg.patch_size, seed, cfg.sampling, cfg.workers,
                       cfg.cache_mb, cfg.task_weights, cfg.haze_depth)


def epoch_size(cfg: DataConfig) -> int:
    """Training samples in one epoch of ``cfg``'s data as found on disk (file lists only).

    ``balanced``: the number of (task, image) entries (every noise image once per sigma, every
    pair once). ``published``: the published mixture, each entry counted ``PUBLISHED_REPEATS``
    times (noise images 3 times per sigma, rain pairs 120 times, haze pairs once).
    """
    return _epoch_size([e.task for e in _entries(cfg, "train")], cfg.sampling)


class BatchSource(Protocol):
    """What ``step_batches`` and ``mirl_lib.train.train`` need from a data source."""

    def batch(self, step: int, batch_size: int, rank: int = 0, world_size: int = 1
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


@dataclass(frozen=True)
class _Failure:
    """A ``DataError`` met in a worker process, carried back as a value."""

    message: str


class _StepBatches(Dataset):
    """Item ``k``: the batch of step ``k`` for one rank, ``source.batch(k, batch_size, rank,
    world_size)``. A ``DataError`` comes back as a ``_Failure`` so the training process raises it
    with its own one-line message (DataLoader would wrap it in a worker traceback)."""

    def __init__(self, source: BatchSource, batch_size: int, rank: int, world_size: int) -> None:
        self.source, self.batch_size, self.rank, self.world_size = (source, batch_size, rank,
                                                                    world_size)

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | _Failure:
        try:
            return self.source.batch(step, self.batch_size, self.rank, self.world_size)
        except DataError as exc:
            return _Failure(str(exc))


def step_batches(source: BatchSource, steps: range, batch_size: int, rank: int = 0,
                 world_size: int = 1, workers: int = 0, pin_memory: bool = False
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The batches of ``steps``, in order: ``source.batch(step, batch_size, rank, world_size)``.

    A ``torch.utils.data.DataLoader`` over the steps (its item is a whole batch, so any number of
    ``workers`` gives the same batches; 0 makes them here, one at a time as asked) with ``PREFETCH``
    batches in flight per worker and, with ``pin_memory``, in pinned memory for fast copies to a
    GPU. Its own generator is seeded, so the global torch generator is not touched. Close the
    iterator (or exhaust it) to stop the workers.
    """
    loader = DataLoader(_StepBatches(source, batch_size, rank, world_size), batch_size=None,
                        sampler=steps, num_workers=workers, pin_memory=pin_memory,
                        prefetch_factor=PREFETCH if workers > 0 else None,
                        generator=torch.Generator().manual_seed(0))
    for item in loader:
        if isinstance(item, _Failure):
            raise DataError(item.message)
        degraded, clean, ids = item
        yield degraded, clean, ids


def dataset_summary(cfg: DataConfig) -> pd.DataFrame:
    """One row per (split, task, image): split, task, dataset, name, height, width (full size)."""
    rows = []
    for split in ("train", "test"):
        for e in _entries(cfg, split):
            height, width = _image_size(e.clean)
            rows.append({"split": split, "task": e.task, "dataset": e.dataset, "name": e.name,
                         "height": height, "width": width})
    return pd.DataFrame(rows, columns=["split", "task", "dataset", "name", "height", "width"])
