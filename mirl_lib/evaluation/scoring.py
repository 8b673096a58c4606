"""Score a model on test items with the protocol's PSNR/SSIM, per image and per task.

``evaluate`` scores a model in memory; ``evaluate_checkpoint`` scores a checkpoint file on the test
sets of a config (what ``python -m mirl_lib evaluate`` runs); ``paper_table`` and
``format_paper_table`` lay the scores out as the paper's table.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from mirl_lib.core import protocol
from mirl_lib.core.config import Config, ModelConfig
from mirl_lib.core.protocol import METRICS, task_means
from mirl_lib.evaluation.restore import restore_image

SCORE_COLUMNS: tuple[str, ...] = ("task", "dataset", "image", "photo", *METRICS)


def restore_items(model: nn.Module, items: Iterable[Any], device: str | torch.device = "cpu",
                  tile: int = 0, overlap: int = 32, progress: bool = False,
                  desc: str = "restore") -> Iterator[tuple[Any, np.ndarray]]:
    """Yield ``(item, restored)`` for each test item (``restored`` clipped to [0, 1]).

    ``tile=0`` restores each image whole; otherwise tiles of that size (see ``restore_image``).
    ``progress`` shows a bar named ``desc`` on stderr.
    """
    for item in tqdm(items, desc=desc, disable=not progress, leave=False):
        yield item, restore_image(model, item.degraded, device=device, tile=tile, overlap=overlap)


def score_items(model: nn.Module, items: Iterable[Any], device: str | torch.device = "cpu",
                tile: int = 0, overlap: int = 32, progress: bool = False,
                desc: str = "restore") -> Iterator[dict[str, Any]]:
    """Yield the row of ``evaluate`` for each item as soon as that item is scored."""
    for item, restored in restore_items(model, items, device=device, tile=tile, overlap=overlap,
                                        progress=progress, desc=desc):
        yield {"task": item.task, "dataset": item.dataset, "image": item.name,
               "photo": getattr(item, "photo", item.name),
               "psnr": protocol.psnr(restored, item.clean),
               "ssim": protocol.ssim(restored, item.clean),
               "input_psnr": protocol.psnr(item.degraded, item.clean),
               "input_ssim": protocol.ssim(item.degraded, item.clean)}


def evaluate(model: nn.Module, items: Sequence[Any], device: str | torch.device = "cpu",
             tile: int = 0, overlap: int = 32, progress: bool = False) -> pd.DataFrame:
    """One row per item: task, dataset, image, psnr, ssim, input_psnr, input_ssim.

    Outputs are clipped to [0, 1]; ``tile``/``overlap`` as in ``restore_image`` (0 = whole image).
    """
    rows = score_items(model, items, device=device, tile=tile, overlap=overlap, progress=progress)
    return pd.DataFrame(list(rows), columns=list(SCORE_COLUMNS))


def evaluate_checkpoint(path: str | Path, cfg: Config, expected: ModelConfig | None = None,
                        device: str | torch.device = "cpu", tile: int = 0, overlap: int = 32,
                        progress: bool = False,
                        on_image: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Score a checkpoint file on the test sets of ``cfg.data`` with the study's protocol.

    ``path`` is anything ``checkpoints.load_model`` reads (ticket, mirl weights, plain PromptIR
    ``state_dict``, Lightning checkpoint). Its architecture must be ``expected`` (default:
    ``cfg.model``): a ticket or weights file records its own and a different one is refused; a
    plain ``state_dict`` or Lightning checkpoint is built as ``expected`` and must fit it. The test
    items are the study's, ``load_test_set(cfg.data, seed=cfg.data.test_seed)``, scored as the
    study scores them (``evaluate``: whole images unless ``tile``, outputs clipped). The checkpoint
    is read before the test images, so a wrong file fails first. ``on_image(done, total)`` is
    called before the first image and after each one.

    Returns ``evaluate``'s columns after ``checkpoint`` (``path`` as given) and ``format`` (see
    ``load_model``).
    """
    from mirl_lib.core.errors import DataError
    from mirl_lib.data.testset import load_test_set
    from mirl_lib.net.checkpoints import load_model

    model, meta = load_model(path, expected=expected or cfg.model, device=device)
    items = load_test_set(cfg.data, seed=cfg.data.test_seed)
    if not items:
        raise DataError(f"{cfg.data.root}: the configured test sets hold no images")
    rows = []
    if on_image is not None:
        on_image(0, len(items))
    for row in score_items(model, items, device=device, tile=tile, overlap=overlap,
                           progress=progress, desc="evaluate"):
        rows.append(row)
        if on_image is not None:
            on_image(len(rows), len(items))
    scores = pd.DataFrame(rows, columns=list(SCORE_COLUMNS))
    scores.insert(0, "checkpoint", str(path))
    scores.insert(1, "format", meta["format"])
    return scores


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean metrics per task (in ``TASKS`` order) plus the ``all-in-one`` row (``task_means``).

    Columns: task, images, psnr, ssim, input_psnr, input_ssim.
    """
    return task_means(df)
