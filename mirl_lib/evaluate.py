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


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean metrics per task (in ``TASKS`` order) plus an ``all-in-one`` row, the mean of the tasks.

    Columns: task, images, psnr, ssim, input_psnr, input_ssim.
    """
    per_task = df.groupby("task", sort=False)[list(METRICS)].mean()
    per_task.insert(0, "images", df.groupby("task", sort=False).size())
    order = ([t for t in TASKS if t in per_task.index]
             + [t for t in per_task.index if t not in TASKS])
    per_task = per_task.loc[order]
    overall = per_task[list(METRICS)].mean().to_frame(ALL_IN_ONE).T
    overall.insert(0, "images", int(per_task["images"].sum()))
    out = pd.concat([per_task, overall])
    out.index.name = "task"
    return out.reset_index()
