"""The held-out check: photographs the training never saw, degraded with parameters it never drew.

The embedded study trains on a set of ``photos.BUNDLED_TRAIN_SETS`` and scores on
``photos.BUNDLED_TEST``, both
degraded with the ranges of ``mirl_lib.data.degrade``. A network that only memorized those photos,
or only the exact streak and haze statistics it was trained on, would still look good there. This
set asks the harder question: five more photographs (one colour portrait shipped with matplotlib,
four grey photographs shipped with scikit-image, replicated to three channels), with

- rain streaks steeper, longer and denser than any training draw (``HELDOUT_RAIN_*``), and
- haze thicker and darker than any training draw (``HELDOUT_HAZE_*``),

and the same noise levels (the denoising tasks are defined by their sigma). ``load_heldout_set``
returns ``TestItem``s like the test set, so ``evaluate`` scores them unchanged.
"""
from __future__ import annotations

import numpy as np

from mirl_lib.core.config import DataConfig
from mirl_lib.core.errors import DataError
from mirl_lib.data.degrade import (
    HAZE_AIRLIGHT,
    HAZE_BETA,
    NOISE_SIGMAS,
    RAIN_ANGLE_DEG,
    RAIN_DENSITY,
    RAIN_LENGTH,
    add_haze,
    add_noise,
    add_rain,
    depth_prior,
    image_seed,
)
from mirl_lib.data.photos import HELDOUT_PHOTOS, bundled_photo
from mirl_lib.data.testset import TestItem, test_crop

HELDOUT_DATASET = "heldout"




# Out-of-range degradations: every range lies strictly outside the training range of its parameter.
HELDOUT_RAIN_ANGLE_DEG = (25.0, 35.0)  # |angle|, sign drawn; training: [-20, 20]
HELDOUT_RAIN_DENSITY = (0.006, 0.008)  # training: [0.0015, 0.005]
HELDOUT_RAIN_LENGTH = (45.0, 60.0)  # training: [15, 40]
HELDOUT_HAZE_BETA = (2.0, 2.5)  # training: [0.6, 1.8]
HELDOUT_HAZE_AIRLIGHT = (0.65, 0.78)  # training: [0.8, 1.0]
_SEED_OFFSET = 7_919  # the held-out draws never reuse a test-set draw


def _outside(inner: tuple[float, float], outer: tuple[float, float]) -> bool:
    return outer[0] > inner[1] or outer[1] < inner[0]


assert _outside(RAIN_ANGLE_DEG, HELDOUT_RAIN_ANGLE_DEG)


assert _outside(RAIN_DENSITY, HELDOUT_RAIN_DENSITY)


assert _outside(RAIN_LENGTH, HELDOUT_RAIN_LENGTH)


assert _outside(HAZE_BETA, HELDOUT_HAZE_BETA)


assert _outside(HAZE_AIRLIGHT, HELDOUT_HAZE_AIRLIGHT)


def photo(name: str) -> np.ndarray:
    """A held-out photograph as uint8 (H, W, 3) (grey ones replicated to three channels)."""
    return bundled_photo(HELDOUT_PHOTOS[name])


def degrade_heldout(clean: np.ndarray, task: str, seed: int) -> np.ndarray:
    """``clean`` degraded for ``task`` with the held-out (out-of-range) parameters."""
    rng = np.random.default_rng(seed)
    if task in NOISE_SIGMAS:
        return add_noise(clean, NOISE_SIGMAS[task], rng)
    if task == "derain":
        angle = rng.choice([-1.0, 1.0]) * rng.uniform(*HELDOUT_RAIN_ANGLE_DEG)
        return add_rain(clean, rng, angle=float(angle),
                        density=rng.uniform(*HELDOUT_RAIN_DENSITY),
                        length=rng.uniform(*HELDOUT_RAIN_LENGTH))
    if task == "dehaze":
        depth = depth_prior(clean.shape[0], clean.shape[1], rng)
        return add_haze(clean, rng, depth, beta=rng.uniform(*HELDOUT_HAZE_BETA),
                        airlight=rng.uniform(*HELDOUT_HAZE_AIRLIGHT))
    raise DataError(f"task {task!r}: no held-out degradation")


def load_heldout_set(cfg: DataConfig, seed: int = 0) -> list:
    """The held-out items for the tasks of ``cfg``: every photo of ``HELDOUT_PHOTOS``, centre-
    cropped like the test set (``cfg.test_max_side``, then a multiple of 16), degraded by
    ``degrade_heldout`` with a seed from the photo's name, the task and ``seed``."""
    items = []
    for name in HELDOUT_PHOTOS:
        clean = photo(name).astype(np.float32) / 255.0
        (clean,) = test_crop([clean], cfg.test_max_side, HELDOUT_PHOTOS[name])
        for task in cfg.tasks:
            s = image_seed(f"{HELDOUT_DATASET}/{name}", task, seed + _SEED_OFFSET)
            items.append(TestItem(task, HELDOUT_DATASET, name, degrade_heldout(clean, task, s),
                                  clean))
    return sorted(items, key=lambda i: (i.task, i.dataset, i.name))
