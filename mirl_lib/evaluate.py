"""Score a model on test items with the protocol's PSNR/SSIM, per image and per task."""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from mirl_lib import protocol
from mirl_lib.config import TASKS
from mirl_lib.restore import restore_image

METRICS: tuple[str, ...] = ("psnr", "ssim", "input_psnr", "input_ssim")
ALL_IN_ONE = "all-in-one"


def restore_items(model: nn.Module, items: Iterable[Any], device: str | torch.device = "cpu",
                  tile: int = 0, overlap: int = 32, progress: bool = False
                  ) -> Iterator[tuple[Any, np.ndarray]]:
    """Yield ``(item, restored)`` for each test item (``restored`` clipped to [0, 1]).

    ``tile=0`` restores each image whole; otherwise tiles of that size (see ``restore_image``).
    """
    for item in tqdm(items, desc="restore", disable=not progress, leave=False):
        yield item, restore_image(model, item.degraded, device=device, tile=tile, overlap=overlap)


def evaluate(model: nn.Module, items: Sequence[Any], device: str | torch.device = "cpu",
             tile: int = 0, overlap: int = 32, progress: bool = False) -> pd.DataFrame:
    """One row per item: task, dataset, image, psnr, ssim, input_psnr, input_ssim.

    Outputs are clipped to [0, 1]; ``tile``/``overlap`` as in ``restore_image`` (0 = whole image).
    """
    rows = []
    for item, restored in restore_items(model, items, device=device, tile=tile, overlap=overlap,
                                        progress=progress):
        rows.append({"task": item.task, "dataset": item.dataset, "image": item.name,
                     "psnr": protocol.psnr(restored, item.clean),
                     "ssim": protocol.ssim(restored, item.clean),
                     "input_psnr": protocol.psnr(item.degraded, item.clean),
                     "input_ssim": protocol.ssim(item.degraded, item.clean)})
    return pd.DataFrame(rows, columns=["task", "dataset", "image", *METRICS])


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


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean metrics per task (in ``TASKS`` order) plus the ``all-in-one`` row (``task_means``).

    Columns: task, images, psnr, ssim, input_psnr, input_ssim.
    """
    return task_means(df)
