"""Degradations: determinism, noise statistics, haze formula, rain geometry."""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from mirl_lib.core.errors import ConfigError
from mirl_lib.core.names import TASKS
from mirl_lib.data.degrade import (
    HAZE_AIRLIGHT,
    HAZE_BETA,
    add_haze,
    add_noise,
    add_rain,
    degrade,
    depth_prior,
    depth_prior_window,
    image_seed,
    streak_kernel,
)


def _photo(seed: int = 0, size: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).random((size, size, 3)).astype(np.float32)


@pytest.mark.parametrize("task", TASKS)
def test_degrade_is_deterministic_per_seed(task: str) -> None:
    clean = _photo()
    first, again = degrade(clean, task, 7), degrade(clean, task, np.random.default_rng(7))
    assert first.dtype == np.float32 and first.shape == clean.shape
    assert 0.0 <= first.min() and first.max() <= 1.0
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, degrade(clean, task, 8))
    assert not np.array_equal(first, clean)


def test_image_seed_is_a_stable_hash_of_name_task_and_base() -> None:
    assert image_seed("cat", "derain", 3) == zlib.crc32(b"3:derain:cat")
    seeds = {image_seed(n, t, b)
             for n in ("cat", "dog") for t in ("derain", "dehaze") for b in (0, 1)}
    assert len(seeds) == 8


@pytest.mark.parametrize("sigma", [15, 25, 50])
def test_noise_std_matches_sigma_on_mid_grey(sigma: int) -> None:
    clean = np.full((256, 256, 3), 128 / 255, np.float32)
    noisy = add_noise(clean, sigma, np.random.default_rng(0))
    residual = (noisy - clean) * 255
    assert abs(residual.std() - sigma) / sigma < 0.03
    np.testing.assert_allclose(noisy * 255, np.round(noisy * 255), atol=1e-3)  # 8-bit values


def test_noise_truncates_like_the_published_code() -> None:
    clean = _photo(1)
    noisy = add_noise(clean, 25, np.random.default_rng(5))
    draw = np.random.default_rng(5).normal(0.0, 25, clean.shape)
    expected = np.clip(clean.astype(np.float64) * 255 + draw, 0, 255).astype(np.uint8) / 255
    np.testing.assert_array_equal(noisy, expected.astype(np.float32))


def test_haze_formula_is_exact() -> None:
    clean = _photo(2, 16)
    depth = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
    hazy = add_haze(clean, np.random.default_rng(0), depth, beta=1.2, airlight=0.9)
    t = np.exp(-1.2 * depth)[..., None]
    np.testing.assert_allclose(hazy, clean * t + 0.9 * (1 - t), atol=1e-6)


def test_haze_draws_beta_and_airlight_in_range() -> None:
    black, far = np.zeros((4, 4, 3), np.float32), np.ones((4, 4), np.float32)
    lo = HAZE_AIRLIGHT[0] * (1 - np.exp(-HAZE_BETA[0]))
    hi = HAZE_AIRLIGHT[1] * (1 - np.exp(-HAZE_BETA[1]))
    values = [float(add_haze(black, np.random.default_rng(s), far)[0, 0, 0]) for s in range(50)]
    assert lo <= min(values) and max(values) <= hi and max(values) - min(values) > 0.1


def test_depth_prior_range_and_far_top() -> None:
    depth = depth_prior(40, 30, np.random.default_rng(0))
    assert depth.shape == (40, 30) and depth.min() >= 0 and depth.max() <= 1
    assert depth[:5].mean() > depth[-5:].mean() + 0.4


@pytest.mark.parametrize("height,width,top,left", [(427, 640, 100, 300), (512, 512, 0, 464),
                                                   (480, 640, 432, 0), (49, 50, 1, 2)])
def test_depth_prior_window_is_the_window_of_the_whole_photos_prior(height: int, width: int,
                                                                      top: int, left: int) -> None:
    """Computed on a coarse grid, the window matches the full-size prior drawn from the same
    generator to within 1% of its range (its far top and near bottom included)."""
    full = depth_prior(height, width, np.random.default_rng(5))[top:top + 48, left:left + 48]
    window = depth_prior_window(height, width, top, left, 48, np.random.default_rng(5))
    assert window.shape == (48, 48) and window.dtype == np.float32
    assert np.abs(window - full).max() < 0.01
    other = depth_prior_window(height, width, top, left, 48, np.random.default_rng(6))
    assert np.abs(other - full).max() > 0.02  # another draw is another map


def test_rain_only_brightens() -> None:
    clean = _photo(3, 64)
    rainy = add_rain(clean, np.random.default_rng(0))
    assert (rainy >= clean - 1e-6).all()
    assert (rainy > clean + 0.1).mean() > 0.01


def _directional_roughness(layer: np.ndarray) -> tuple[float, float]:
    """Mean absolute difference along rows (vertical) and along columns (horizontal)."""
    return (float(np.abs(np.diff(layer, axis=0)).mean()),
            float(np.abs(np.diff(layer, axis=1)).mean()))


@pytest.mark.parametrize("angle, vertical", [(0.0, True), (90.0, False), (None, True)])
def test_rain_has_one_dominant_orientation(angle: float | None, vertical: bool) -> None:
    grey = np.full((96, 96, 3), 0.3, np.float32)
    layer = add_rain(grey, np.random.default_rng(4), angle=angle)[..., 0] - 0.3
    along_y, along_x = _directional_roughness(layer)
    assert (along_y < 0.5 * along_x) if vertical else (along_x < 0.5 * along_y)


def test_streak_kernel_peak_and_direction() -> None:
    kernel = streak_kernel(20, 0.0)
    assert kernel.max() == pytest.approx(1.0)
    rows, cols = np.nonzero(kernel > 0.5)
    assert np.ptp(rows) > 10 and np.ptp(cols) <= 2


def test_unknown_task_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="deblur"):
        degrade(_photo(), "deblur", 0)
