"""Training batches streamed from disk: a pure function of (seed, step, rank).

``build_train_source`` returns a ``TrainSource`` whose ``batch`` is a pure function of (seed,
step, rank); it holds the list of training entries only and reads images from disk per sample,
through a small per-process cache. ``step_batches`` makes those batches in
``torch.utils.data.DataLoader`` worker processes. ``epoch_size`` counts the samples of one epoch.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mirl_lib.core.config import DataConfig
from mirl_lib.core.errors import DataError
from mirl_lib.data.catalogs import Entry, entries
from mirl_lib.data.degrade import degrade, depth_prior_window
from mirl_lib.data.photos import depth_of, image_size, load_uint8, measured_depth

# ``data.sampling: published``: how many times each image of a task enters one epoch of the
# published all-in-one mixture (PromptIR's training set: noise x3 per sigma, Rain100L x120).
PUBLISHED_REPEATS: dict[str, int] = {"denoise_15": 3, "denoise_25": 3, "denoise_50": 3,
                                     "derain": 120, "dehaze": 1}


# Third seed word of the per-epoch shuffle of the published mixture, so that its generator
# ``default_rng([seed, epoch, _SHUFFLE_STREAM])`` is never a batch generator ``[seed, step, rank]``.
_SHUFFLE_STREAM = 0x53485546


# Batches each DataLoader worker keeps in flight.
PREFETCH = 2


@dataclass(frozen=True, slots=True)
class _Sample:
    """A training entry with the full size of its image, read from the file header."""

    entry: Entry
    height: int
    width: int


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
    ``epoch_size`` counts the samples of one epoch (``epoch_size``); ``workers`` is how many
    DataLoader processes ``mirl_lib.training.loop.train`` makes batches in.
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
                and not measured_depth(sample.entry.clean)
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
                                            lambda: depth_of(e.clean, e.name, shape))

    @staticmethod
    def _decode(ref: str, sample: _Sample) -> np.ndarray:
        image = load_uint8(ref)
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
            height, width = image_size(ref)
            if min(height, width) < cfg.patch_size:
                raise DataError(f"{ref}: image is {width}x{height}, smaller than "
                                f"data.patch_size={cfg.patch_size}")
            sizes[ref] = (height, width)
        return sizes[ref]

    samples = []
    for e in entries(cfg, "train"):
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
    return _epoch_size([e.task for e in entries(cfg, "train")], cfg.sampling)


class BatchSource(Protocol):
    """What ``step_batches`` and ``mirl_lib.training.loop.train`` need from a data source."""

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
