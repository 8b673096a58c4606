"""Per-point means of a study's metrics: mean PSNR/SSIM per (seed, strategy, round, task) and over
seeds, and a point's layer collapse over its seeds.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from mirl_lib.core.protocol import task_means

# ----- means ------------------------------------------------------------------------------------

def point_means(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean PSNR/SSIM per (seed, strategy, round, task) and the all-in-one mean (task
    ``all-in-one``, ``core.protocol.task_means``)."""
    keys = ["seed", "strategy", "round", "remaining_all", "remaining_prunable"]
    return task_means(metrics, keys)


def seed_stats(means: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds of every point and task (``point_means`` rows)."""
    keys = ["strategy", "round", "task"]
    means = means.assign(gain=means["psnr"] - means["input_psnr"])
    stats_ = means.groupby(keys, as_index=False).agg(
        remaining_all=("remaining_all", "mean"), psnr=("psnr", "mean"),
        psnr_sd=("psnr", "std"), ssim=("ssim", "mean"), ssim_sd=("ssim", "std"),
        input_psnr=("input_psnr", "mean"), input_ssim=("input_ssim", "mean"),
        gain=("gain", "mean"), gain_sd=("gain", "std"), seeds=("seed", "nunique"))
    return stats_.fillna({"psnr_sd": 0.0, "ssim_sd": 0.0, "gain_sd": 0.0})


def sd(mean: float, sd: float, seeds: int, fmt: str = ".2f") -> str:
    return f"{mean:{fmt}} ± {sd:{fmt.lstrip('+')}}" if seeds > 1 else f"{mean:{fmt}}"


def cell(row: Any) -> str:
    return sd(row.psnr, row.psnr_sd, row.seeds)


def _truthy(values: pd.Series) -> pd.Series:
    if values.dtype == bool:
        return values
    return values.astype(str).str.strip().str.lower().isin(["true", "1", "1.0", "yes"])


def _count_range(values: pd.Series) -> str:
    lo, hi = int(values.min()), int(values.max())
    return f"{lo}" if lo == hi else f"{lo}–{hi}"


def collapse_of(points: pd.DataFrame | None, strategy: str, rnd: int) -> dict[str, Any] | None:
    """Layer collapse of one point over its seeds, from a catalog with ``empty_tensors`` (and
    optionally ``prunable_tensors``, ``path_cut``): ``{"empty_tensors": "14" or "12–15",
    "prunable_tensors": 85, "path_cut": k, "seeds": n}``; None without those columns or rows."""
    if points is None or "empty_tensors" not in points:
        return None
    rows = points[(points["strategy"] == strategy) & (points["round"] == rnd)]
    rows = rows.dropna(subset=["empty_tensors"])
    if rows.empty:
        return None
    out: dict[str, Any] = {"empty_tensors": _count_range(rows["empty_tensors"]),
                           "seeds": int(rows["seed"].nunique()) if "seed" in rows else len(rows)}
    if "prunable_tensors" in rows and rows["prunable_tensors"].notna().any():
        out["prunable_tensors"] = _count_range(rows["prunable_tensors"].dropna())
    if "path_cut" in rows:
        out["path_cut"] = int(_truthy(rows["path_cut"]).sum())
    return out
