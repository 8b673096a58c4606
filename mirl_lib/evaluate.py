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

from mirl_lib import protocol
from mirl_lib.config import TASKS, Config, ModelConfig
from mirl_lib.restore import restore_image

METRICS: tuple[str, ...] = ("psnr", "ssim", "input_psnr", "input_ssim")
SCORE_COLUMNS: tuple[str, ...] = ("task", "dataset", "image", *METRICS)
ALL_IN_ONE = "all-in-one"
# The paper's column order: dehazing, deraining, then denoising at each sigma per test set.
PAPER_TASKS: tuple[str, ...] = ("dehaze", "derain", "denoise_15", "denoise_25", "denoise_50")
AVERAGE = "average"


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
    from mirl_lib.checkpoints import load_model
    from mirl_lib.data import load_test_set
    from mirl_lib.errors import DataError

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


def paper_label(task: str, dataset: str) -> str:
    """A column of the paper's table: ``dehaze SOTS``, ``derain Rain100L``, ``BSD68 sigma15``."""
    if task.startswith("denoise_"):
        return f"{dataset} sigma{task.removeprefix('denoise_')}"
    return f"{task} {dataset}"


def _paper_order(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """(task, dataset) pairs in the paper's order: dehaze, derain, then for each denoising test set
    sigma 15, 25, 50; test sets of one task keep their order of first appearance."""
    pairs = list(dict.fromkeys(pairs))
    first = {d: i for i, (t, d) in reversed(list(enumerate(pairs)))}
    rank = {t: i for i, t in enumerate(PAPER_TASKS)}

    def key(pair: tuple[str, str]) -> tuple[int, int, int]:
        task, dataset = pair
        if task.startswith("denoise_") and task in rank:
            return (rank["denoise_15"], first[dataset], rank[task])
        return (rank.get(task, len(rank)), first[dataset], 0)

    return sorted(pairs, key=key)


def paper_table(scores: pd.DataFrame) -> pd.DataFrame:
    """The paper's table of one model from ``evaluate``-style scores.

    One column per (task, test set) in the paper's order (``paper_label``: dehaze, derain, then
    sigma 15/25/50 of each denoising test set), then ``average``: the study's all-in-one score
    (``task_means``: the mean of the per-task means, a task's test sets pooled by image), which is
    the mean of the columns when every task has one test set, as in the paper. Rows: images,
    psnr, ssim, input_psnr, input_ssim (means over the column's images).
    """
    if scores.empty:
        raise ValueError("no scores to tabulate")
    pairs = _paper_order(scores[["task", "dataset"]].itertuples(index=False, name=None))
    groups = scores.groupby(["task", "dataset"], sort=False)
    columns = {}
    for task, dataset in pairs:
        group = groups.get_group((task, dataset))
        columns[paper_label(task, dataset)] = {"images": len(group),
                                               **{m: float(group[m].mean()) for m in METRICS}}
    overall = task_means(scores).set_index("task").loc[ALL_IN_ONE]
    columns[AVERAGE] = {"images": int(overall["images"]), **{m: float(overall[m]) for m in METRICS}}
    return pd.DataFrame(columns).loc[["images", *METRICS]]


def format_paper_table(table: pd.DataFrame, name: str = "restored") -> str:
    """``paper_table`` as text: rows ``images``, ``name`` and ``degraded input``, cells PSNR/SSIM
    as ``30.12/0.912``, and a line saying what the cells and the average are."""
    def cells(psnr: str, ssim: str) -> list[str]:
        return [f"{table.at[psnr, c]:.2f}/{table.at[ssim, c]:.3f}" for c in table.columns]

    text = pd.DataFrame([[str(int(v)) for v in table.loc["images"]], cells("psnr", "ssim"),
                         cells("input_psnr", "input_ssim")],
                        index=["images", name, "degraded input"], columns=table.columns)
    return (text.to_string() + "\nPSNR (dB) / SSIM per test set and task; average: the mean of "
            "the per-task means (the study's all-in-one score).")
