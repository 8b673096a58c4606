"""Synthetic degradations (numpy, float32 RGB in [0, 1]), deterministic given a ``Generator``.

- ``add_noise``: additive Gaussian noise on the 8-bit scale, quantized like the published code.
- ``add_rain``: light rain streaks in one dominant direction (Rain100L-like), screen-blended.
- ``add_haze``: the atmospheric scattering model ``I = J t + A (1 - t)``, ``t = exp(-beta d)``.

Test degradations are seeded per image with ``image_seed(name, task, base_seed)`` so they never
depend on file order. ``degrade`` dispatches on the task names of ``names.TASKS``.
"""
from __future__ import annotations

import zlib

import numpy as np
from scipy import ndimage, signal
from skimage.transform import resize

from mirl_lib.core.errors import ConfigError
from mirl_lib.core.names import TASKS

NOISE_SIGMAS = {"denoise_15": 15.0, "denoise_25": 25.0, "denoise_50": 50.0}
RAIN_ANGLE_DEG = (-20.0, 20.0)
RAIN_DENSITY = (0.0015, 0.005)
RAIN_LENGTH = (15.0, 40.0)
RAIN_INTENSITY = (0.5, 0.9)
RAIN_WIDTH_SIGMA = 0.6
HAZE_BETA = (0.6, 1.8)
HAZE_AIRLIGHT = (0.8, 1.0)
DEPTH_RAMP_WEIGHT = 0.7
DEPTH_FIELD_GRID = 4
COARSE_DEPTH_MIN = 33  # depth_prior_window's coarse grid keeps at least this many rows and columns


def image_seed(name: str, task: str, base_seed: int) -> int:
    """Stable 32-bit seed of one image's degradation: CRC32 of ``f"{base_seed}:{task}:{name}"``."""
    return zlib.crc32(f"{base_seed}:{task}:{name}".encode())


def add_noise(clean: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of std ``sigma`` on the 0-255 scale, as the published PromptIR code does.

    ``noisy8 = clip(clean * 255 + N(0, sigma), 0, 255).astype(uint8)``: the cast truncates
    (floors) rather than rounds, exactly like the published ``.astype(np.uint8)``. Returns
    ``noisy8 / 255`` as float32.
    """
    noisy = np.clip(clean.astype(np.float64) * 255.0 + rng.normal(0.0, sigma, clean.shape), 0, 255)
    return noisy.astype(np.uint8).astype(np.float32) / 255.0


def streak_kernel(length: float, angle_deg: float, width_sigma: float = RAIN_WIDTH_SIGMA
                  ) -> np.ndarray:
    """A motion-blur kernel: a tapered line of ``length`` pixels at ``angle_deg`` from vertical.

    Samples along the line are splatted bilinearly, weighted by a parabolic taper (ends fade),
    blurred by a Gaussian of ``width_sigma`` pixels for thickness, and scaled to a peak of 1.
    Positive angles lean the top of the streak to the right.
    """
    size = int(np.ceil(length)) | 1
    size += 2 * int(np.ceil(3 * width_sigma))
    centre = size // 2
    t = np.linspace(-length / 2, length / 2, int(4 * length) + 1)
    theta = np.deg2rad(angle_deg)
    xs, ys = centre - t * np.sin(theta), centre + t * np.cos(theta)
    weights = 1.0 - (2.0 * t / length) ** 2
    kernel = np.zeros((size, size))
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    for dy, dx, w in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx),
                      (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        np.add.at(kernel, (y0 + dy, x0 + dx), weights * w)
    kernel = ndimage.gaussian_filter(kernel, width_sigma)
    return kernel / kernel.max()


def add_rain(clean: np.ndarray, rng: np.random.Generator, angle: float | None = None,
             density: float | None = None, length: float | None = None,
             intensity: float | None = None) -> np.ndarray:
    """Synthetic light rain (Rain100L-like), one dominant direction, screen-blended.

    Each parameter left as ``None`` is drawn uniformly from its range:

    - ``angle``: streak direction in degrees from vertical, ``RAIN_ANGLE_DEG`` = [-20, 20]; one
      angle per image, so every streak follows the same dominant direction.
    - ``density``: fraction of pixels seeding a streak, ``RAIN_DENSITY`` = [0.0015, 0.005].
    - ``length``: streak length in pixels, ``RAIN_LENGTH`` = [15, 40].
    - ``intensity``: peak streak opacity, ``RAIN_INTENSITY`` = [0.5, 0.9].

    Seeds are sparse uniform noise thresholded at ``1 - density`` with values in [0.5, 1]; they are
    drawn on a canvas padded by the kernel size so streaks also enter from the borders, motion-
    blurred with ``streak_kernel`` and scaled by ``intensity`` into a grey rain layer ``R`` in
    [0, 1]. The result is ``1 - (1 - J)(1 - R)``: rain only brightens.
    """
    angle = rng.uniform(*RAIN_ANGLE_DEG) if angle is None else angle
    density = rng.uniform(*RAIN_DENSITY) if density is None else density
    length = rng.uniform(*RAIN_LENGTH) if length is None else length
    intensity = rng.uniform(*RAIN_INTENSITY) if intensity is None else intensity
    kernel = streak_kernel(length, angle)
    k = kernel.shape[0]
    h, w = clean.shape[:2]
    canvas = (h + k - 1, w + k - 1)
    seeds = np.where(rng.random(canvas) < density, rng.uniform(0.5, 1.0, canvas), 0.0)
    layer = np.clip(signal.fftconvolve(seeds, kernel, mode="valid") * intensity, 0.0, 1.0)
    rain = layer[..., None].astype(np.float32)
    return (1.0 - (1.0 - clean) * (1.0 - rain)).astype(np.float32)


def depth_prior(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A generic outdoor depth map in [0, 1] (1 = far) for images without measured depth.

    ``0.7 * ramp + 0.3 * field``: the ramp grows linearly from the bottom row (0) to the top row
    (1), as the ground recedes towards the horizon; the field is a smooth random surface (a 4x4
    Gaussian grid upsampled bicubically, rescaled to [0, 1]) that breaks the pure gradient.
    """
    ramp = np.repeat(np.linspace(1.0, 0.0, height)[:, None], width, axis=1)
    field = resize(rng.standard_normal((DEPTH_FIELD_GRID, DEPTH_FIELD_GRID)), (height, width),
                   order=3, mode="reflect", anti_aliasing=False)
    field = (field - field.min()) / max(float(np.ptp(field)), 1e-12)
    depth = DEPTH_RAMP_WEIGHT * ramp + (1.0 - DEPTH_RAMP_WEIGHT) * field
    return depth.astype(np.float32)


def depth_prior_window(height: int, width: int, top: int, left: int, size: int,
                       rng: np.random.Generator, coarse_step: int = 8) -> np.ndarray:
    """The ``(size, size)`` window at ``(top, left)`` of a fresh ``depth_prior`` of a whole
    ``(height, width)`` image, drawn from ``rng``.

    The prior is smooth (a ramp plus a 4x4 grid upsampled), so it is computed on a grid
    ``coarse_step`` times coarser (at least ``COARSE_DEPTH_MIN`` rows and columns, at most the
    image's own), its corners on the image's corners, and the window is
    interpolated linearly from it: the same map to within about 1% of its range, at a small
    fraction of the cost of the full-size map (training draws one per hazy sample).
    """
    rows, cols = (min(n, max(COARSE_DEPTH_MIN, -(-(n - 1) // coarse_step) + 1))
                  for n in (height, width))
    coarse = depth_prior(rows, cols, rng)
    r = (top + np.arange(size)) * ((rows - 1) / max(height - 1, 1))
    c = (left + np.arange(size)) * ((cols - 1) / max(width - 1, 1))
    grid_r, grid_c = np.meshgrid(r, c, indexing="ij")
    return ndimage.map_coordinates(coarse, [grid_r, grid_c], order=1,
                                   mode="nearest").astype(np.float32)


def add_haze(clean: np.ndarray, rng: np.random.Generator, depth: np.ndarray,
             beta: float | None = None, airlight: float | None = None) -> np.ndarray:
    """Atmospheric scattering ``I = J t + A (1 - t)`` with ``t = exp(-beta * depth)``.

    ``depth`` is (H, W) in [0, 1] (1 = far). ``beta`` (scattering coefficient for depth in [0, 1])
    is drawn from ``HAZE_BETA`` = [0.6, 1.8], so the farthest transmission is 0.55 to 0.17;
    ``airlight`` (grey atmospheric light ``A``) from ``HAZE_AIRLIGHT`` = [0.8, 1.0], the range of
    RESIDE's outdoor set. Values given explicitly are used as they are.
    """
    if depth.shape != clean.shape[:2]:
        raise ValueError(f"depth shape {depth.shape} does not match image shape {clean.shape[:2]}")
    beta = rng.uniform(*HAZE_BETA) if beta is None else beta
    airlight = rng.uniform(*HAZE_AIRLIGHT) if airlight is None else airlight
    t = np.exp(-beta * depth.astype(np.float64))[..., None]
    return (clean * t + airlight * (1.0 - t)).astype(np.float32)


def degrade(clean: np.ndarray, task: str, rng_or_seed: np.random.Generator | int,
            depth: np.ndarray | None = None) -> np.ndarray:
    """Apply the degradation of ``task`` (one of ``names.TASKS``) to a clean float image.

    ``rng_or_seed`` is a ``Generator`` or an integer seed. For ``dehaze`` without ``depth`` the
    ``depth_prior`` is drawn from the same generator.
    """
    rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else \
        np.random.default_rng(rng_or_seed)
    if task in NOISE_SIGMAS:
        return add_noise(clean, NOISE_SIGMAS[task], rng)
    if task == "derain":
        return add_rain(clean, rng)
    if task == "dehaze":
        if depth is None:
            depth = depth_prior(clean.shape[0], clean.shape[1], rng)
        return add_haze(clean, rng, depth)
    raise ConfigError(f"task {task!r}: unknown task; known: {list(TASKS)}")
