"""The evaluation protocol, in one place.

- Images are RGB, float32, values in [0, 1], arrays shaped (H, W, 3).
- Test images (clean and degraded alike) are centre-cropped so height and width are multiples of
  ``SIZE_BASE`` = 16, as the published PromptIR test code does, before the network sees them.
- PSNR and SSIM come from ``skimage.metrics`` on the RGB image in [0, 1] (``data_range=1``; SSIM
  with ``channel_axis=-1``), computed per image after the restored output is clipped to [0, 1].
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from mirl_lib.core.names import ALL_IN_ONE, TASKS

SIZE_BASE = 16
# The per-image scores of a restored image and of its degraded input.
METRICS: tuple[str, ...] = ("psnr", "ssim", "input_psnr", "input_ssim")


def crop_to_multiple(image: np.ndarray, base: int = SIZE_BASE) -> np.ndarray:
    """Centre-crop an (H, W, C) array so H and W are multiples of ``base``."""
    h, w = image.shape[:2]
    nh, nw = h - h % base, w - w % base
    if nh == 0 or nw == 0:
        raise ValueError(f"image of size {h}x{w} is smaller than {base} pixels on a side")
    top, left = (h - nh) // 2, (w - nw) // 2
    return image[top:top + nh, left:left + nw]


def psnr(output: np.ndarray, target: np.ndarray) -> float:
    """PSNR in dB of an RGB image in [0, 1] against its target."""
    return float(peak_signal_noise_ratio(target, np.clip(output, 0.0, 1.0), data_range=1.0))


def ssim(output: np.ndarray, target: np.ndarray) -> float:
    """SSIM (skimage defaults, 7x7 window) of an RGB image in [0, 1], averaged over channels."""
    return float(structural_similarity(target, np.clip(output, 0.0, 1.0), data_range=1.0,
                                       channel_axis=-1))


def task_means(df: pd.DataFrame, keys: Sequence[str] = ()) -> pd.DataFrame:
    """Mean metrics per ``keys`` + task (tasks in ``TASKS`` order), and per ``keys`` group one
    ``all-in-one`` row: the mean of the task means, so every task weighs the same whatever its
    number of images. Columns: *keys, task, images, psnr, ssim, input_psnr, input_ssim.

    This is the study's one definition of the all-in-one score (summaries, tables, figures).
    """
    keys = list(keys)
    rank = {t: i for i, t in enumerate(TASKS)}
    per_task = (df.assign(_rank=df["task"].map(lambda t: rank.get(t, len(rank))))
                .groupby([*keys, "_rank", "task"], as_index=False, sort=True)
                .agg(images=("task", "size"), **{m: (m, "mean") for m in METRICS})
                .drop(columns="_rank"))
    if keys:
        overall = per_task.groupby(keys, as_index=False, sort=True).agg(
            images=("images", "sum"), **{m: (m, "mean") for m in METRICS})
    else:
        overall = per_task[list(METRICS)].mean().to_frame().T
        overall.insert(0, "images", int(per_task["images"].sum()))
    overall.insert(len(keys), "task", ALL_IN_ONE)
    return pd.concat([per_task, overall], ignore_index=True)
