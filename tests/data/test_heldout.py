"""The held-out check: photos outside both bundled splits, degradations outside training ranges."""
from __future__ import annotations

import numpy as np
import pytest

from mirl_lib.core.config import DataConfig
from mirl_lib.core.names import TASKS
from mirl_lib.core.protocol import psnr
from mirl_lib.data import degrade, heldout
from mirl_lib.data.photos import BUNDLED_TEST, BUNDLED_TRAIN_SETS, photo_name


def test_heldout_photos_are_neither_training_nor_test_photos() -> None:
    names = set(heldout.HELDOUT_PHOTOS)
    bundled = {photo_name(r) for r in BUNDLED_TEST + sum(BUNDLED_TRAIN_SETS.values(), ())}
    assert not names & bundled
    refs = set(heldout.HELDOUT_PHOTOS.values())
    assert not refs & (set(BUNDLED_TEST) | set(sum(BUNDLED_TRAIN_SETS.values(), ())))
    for name in names:  # and none is the same picture under another name (chelsea == cat)
        photo = heldout.photo(name)
        assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3


@pytest.mark.parametrize("inner, outer", [
    (degrade.RAIN_ANGLE_DEG,
     (-heldout.HELDOUT_RAIN_ANGLE_DEG[1], -heldout.HELDOUT_RAIN_ANGLE_DEG[0])),
    (degrade.RAIN_ANGLE_DEG, heldout.HELDOUT_RAIN_ANGLE_DEG),
    (degrade.RAIN_DENSITY, heldout.HELDOUT_RAIN_DENSITY),
    (degrade.RAIN_LENGTH, heldout.HELDOUT_RAIN_LENGTH),
    (degrade.HAZE_BETA, heldout.HELDOUT_HAZE_BETA),
    (degrade.HAZE_AIRLIGHT, heldout.HELDOUT_HAZE_AIRLIGHT)])
def test_every_heldout_range_lies_outside_the_training_range(inner, outer) -> None:
    assert outer[0] > inner[1] or outer[1] < inner[0]


def test_heldout_items_are_cropped_degraded_and_reproducible() -> None:
    cfg = DataConfig(test_max_side=64)
    items = heldout.load_heldout_set(cfg, seed=0)
    assert len(items) == len(heldout.HELDOUT_PHOTOS) * len(TASKS)
    assert {i.dataset for i in items} == {heldout.HELDOUT_DATASET}
    for item in items:
        assert item.clean.shape == item.degraded.shape == (64, 64, 3)
        assert psnr(item.degraded, item.clean) < 40.0  # every item is degraded
    again = heldout.load_heldout_set(cfg, seed=0)
    assert all(np.array_equal(a.degraded, b.degraded) for a, b in zip(items, again))
    other = heldout.load_heldout_set(cfg, seed=1)
    assert not np.array_equal(items[0].degraded, other[0].degraded)


def test_heldout_haze_is_thicker_than_any_training_draw() -> None:
    clean = np.full((32, 32, 3), 0.2, dtype=np.float32)
    depth = np.ones((32, 32), dtype=np.float32)
    rng = np.random.default_rng(0)
    thickest_training = degrade.add_haze(clean, rng, depth, beta=degrade.HAZE_BETA[1],
                                         airlight=degrade.HAZE_AIRLIGHT[0])
    held = heldout.degrade_heldout(clean, "dehaze", seed=3)
    # farthest pixels: the held-out transmission is lower than any training transmission
    t_train = np.exp(-degrade.HAZE_BETA[1])
    assert held.shape == clean.shape and thickest_training.shape == clean.shape
    assert np.exp(-heldout.HELDOUT_HAZE_BETA[0]) < t_train
