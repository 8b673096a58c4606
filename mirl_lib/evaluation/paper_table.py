"""The paper's results table: dehaze SOTS, derain Rain100L, then sigma 15/25/50 per denoising test
set, and the average (``paper_table``, ``format_paper_table``).
"""
from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from mirl_lib.core.names import ALL_IN_ONE
from mirl_lib.core.protocol import METRICS, task_means

# The paper's column order: dehazing, deraining, then denoising at each sigma per test set.
PAPER_TASKS: tuple[str, ...] = ("dehaze", "derain", "denoise_15", "denoise_25", "denoise_50")
AVERAGE = "average"


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
