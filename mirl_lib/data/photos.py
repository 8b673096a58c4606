"""Photographs that ship inside installed packages (no download), and the depth behind them.

A bundled photo is named ``<package>:<name>`` (``bundled_photo`` reads it): the training sets
``BUNDLED_TRAIN_SETS`` (chosen by ``data.bundled_train``) and the disjoint test photos
``BUNDLED_TEST``. ``depth_of`` gives the depth behind synthesized haze: measured for the
motorcycle stereo views, else a seeded ``degrade.depth_prior``. ``load_uint8`` and ``image_size``
read a bundled photo or an image file alike.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import skimage.data
from scipy import ndimage

from mirl_lib.core.config import BUNDLED_TRAIN_SET_NAMES
from mirl_lib.core.errors import DataError
from mirl_lib.data.degrade import depth_prior, image_seed
from mirl_lib.files.images import read_rgb_uint8, rgb_size

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
# Every colour photograph that ships inside the installed packages and is large enough for two
# 128-pixel crops a side (left out: ``cat``, the same photo as ``chelsea``; matplotlib's
# ``Minduka_Present_Blue_Pack``, a 128-pixel clip-art; the non-photographic colour images of the
# ``classic`` training set). ``data.bundled_test: unused`` tests on those the training set and
# the held-out check leave (``bundled_test_photos``).
BUNDLED_COLOUR_PHOTOS: tuple[str, ...] = (
    "skimage:astronaut", "skimage:chelsea", "skimage:coffee", "skimage:rocket",
    "skimage:motorcycle_left", "skimage:motorcycle_right", "sklearn:china.jpg",
    "sklearn:flower.jpg", "matplotlib:sample_data/grace_hopper.jpg")
# The held-out check's photographs (``mirl_lib.data.heldout``): in no training set and no test set
# (a test checks it).
HELDOUT_PHOTOS: dict[str, str] = {
    "grace_hopper": "matplotlib:sample_data/grace_hopper.jpg",
    "camera": "skimage:camera",
    "coins": "skimage:coins",
    "grass": "skimage:grass",
    "brick": "skimage:brick",
}
_PACKAGES = ("skimage", "sklearn", "matplotlib")


def bundled_test_photos(train: str, test: str) -> tuple[str, ...]:
    """The bundled test photos for the training set ``train`` (``data.bundled_train``):
    ``BUNDLED_TEST`` for ``test`` ``classic``; for ``unused``, every ``BUNDLED_COLOUR_PHOTOS``
    entry that neither that training set nor the held-out check uses."""
    if test == "classic":
        return BUNDLED_TEST
    used = {*BUNDLED_TRAIN_SETS[train], *HELDOUT_PHOTOS.values()}
    return tuple(ref for ref in BUNDLED_COLOUR_PHOTOS if ref not in used)


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


def measured_depth(ref: str) -> bool:
    """Whether ``ref`` has measured depth (the motorcycle views' disparity)."""
    return ref.startswith("skimage:motorcycle_")


def depth_of(ref: str, name: str, shape: tuple[int, int]) -> np.ndarray:
    """Measured depth for the motorcycle views, else ``depth_prior`` seeded by the image name."""
    if measured_depth(ref):
        return _motorcycle_depth(ref.removeprefix("skimage:"))
    return depth_prior(shape[0], shape[1], np.random.default_rng(image_seed(name, "depth", 0)))


def load_uint8(ref: str) -> np.ndarray:
    """An image as uint8 (H, W, 3): bundled by name, else read strictly from disk."""
    if is_bundled(ref):
        return bundled_photo(ref)
    return read_rgb_uint8(ref)


@functools.lru_cache(maxsize=None)
def _bundled_size(ref: str) -> tuple[int, int]:
    return bundled_photo(ref).shape[:2]


def image_size(ref: str) -> tuple[int, int]:
    """(height, width): bundled by name, else from the file header (``images.rgb_size``: the file
    is checked to be 8-bit RGB, its pixels are not decoded)."""
    if is_bundled(ref):
        return _bundled_size(ref)
    return rgb_size(ref)
