"""Tables of a finished study: per-point means, the summary page, and reproduction checks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mirl_lib import strategies
from mirl_lib.evaluate import ALL_IN_ONE, task_means
from mirl_lib.fileio import atomic_write_text

# A ticket "matches" the dense network when its all-in-one PSNR is at most this far below it
# (or within two seed standard deviations, when several seeds ran).
MATCH_TOLERANCE_DB = 0.1


def point_means(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean PSNR/SSIM per (seed, strategy, round, task) and the all-in-one mean (task
    ``all-in-one``, ``evaluate.task_means``)."""
    keys = ["seed", "strategy", "round", "remaining_all", "remaining_prunable"]
    return task_means(metrics, keys)


def seed_stats(means: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds of every point and task."""
    keys = ["strategy", "round", "task"]
    stats = means.groupby(keys, as_index=False).agg(
        remaining_all=("remaining_all", "mean"), psnr=("psnr", "mean"),
        psnr_sd=("psnr", "std"), ssim=("ssim", "mean"), ssim_sd=("ssim", "std"),
        input_psnr=("input_psnr", "mean"), seeds=("seed", "nunique"))
    return stats.fillna({"psnr_sd": 0.0, "ssim_sd": 0.0})


def _cell(row: pd.Series) -> str:
    return f"{row.psnr:.2f} ± {row.psnr_sd:.2f}" if row.seeds > 1 else f"{row.psnr:.2f}"


def verdict(stats: pd.DataFrame) -> str:
    """One honest sentence: does the deepest ticket match the dense network?"""
    overall = stats[stats["task"] == ALL_IN_ONE]
    dense = overall[overall["strategy"] == "dense"].iloc[0]
    trunk = overall[overall["strategy"] == "rewind"].sort_values("round")
    if trunk.empty:
        return "No pruning round has finished yet."
    tol = max(MATCH_TOLERANCE_DB, 2 * float(np.hypot(dense.psnr_sd, trunk.iloc[-1].psnr_sd)))
    matching = trunk[trunk["psnr"] >= dense.psnr - tol]
    last = trunk.iloc[-1]
    gap = last.psnr - dense.psnr
    sentence = (f"The MIR-L ticket with {100 * last.remaining_all:.1f}% of all parameters scores "
                f"{last.psnr:.2f} dB all-in-one PSNR against {dense.psnr:.2f} dB for the dense network "
                f"({gap:+.2f} dB), so at this scale it "
                f"{'matches' if gap >= -tol else 'does not match'} the dense network "
                f"(tolerance {tol:.2f} dB)")
    if not matching.empty:
        sparsest = matching.iloc[-1]
        sentence += (f"; the sparsest ticket within tolerance keeps "
                     f"{100 * sparsest.remaining_all:.1f}% of all parameters")
    controls = overall[(overall["strategy"].isin(strategies.with_role("control")))
                       & (overall["round"] == last["round"])]
    if not controls.empty:
        label = strategies.labels()
        parts = [f"{label[r.strategy]} {r.psnr:.2f} dB" for r in controls.itertuples()]
        sentence += f". At the same sparsity the controls score {', '.join(parts)}"
    return sentence + "."


def summary_markdown(metrics: pd.DataFrame, title: str, notes: str = "") -> str:
    """The study's summary page: dense vs ticket vs every ablation and control, per task."""
    stats = seed_stats(point_means(metrics))
    overall = stats[stats["task"] == ALL_IN_ONE].copy()
    overall["remaining"] = (100 * overall["remaining_all"]).round(1)
    names = strategies.ordered(set(overall["strategy"]))
    label = strategies.labels()
    lines = [f"# {title}", "", notes, "", "## Answer", "", verdict(stats), ""]

    dense = stats[stats["strategy"] == "dense"].set_index("task")
    dense = dense.loc[sorted(dense.index, key=lambda t: (t == ALL_IN_ONE, t))]
    lines += ["## Dense network against the degraded inputs (PSNR dB / SSIM)", "",
              "| task | input PSNR | dense PSNR | gain | dense SSIM |", "|---|---|---|---|---|"]
    for task, row in dense.iterrows():
        lines.append(f"| {task} | {row.input_psnr:.2f} | {_cell(row)} | "
                     f"{row.psnr - row.input_psnr:+.2f} | {row.ssim:.4f} |")

    lines += ["", "## All-in-one PSNR (dB) by strategy and remaining parameters", "",
              "Remaining = % of all parameters (unpruned ones counted).", ""]
    overall["cell"] = [_cell(row) for row in overall.itertuples()]
    table = overall.pivot_table(index="remaining", columns="strategy", values="cell",
                                aggfunc="first")
    table = table.sort_index(ascending=False)[[s for s in names if s in table.columns]]
    lines.append("| remaining % | " + " | ".join(label[s] for s in table.columns) + " |")
    lines.append("|---" * (len(table.columns) + 1) + "|")
    for rem, row in table.iterrows():
        cells = ["" if not isinstance(v, str) else v for v in row.to_numpy()]
        lines.append(f"| {rem:.1f} | " + " | ".join(cells) + " |")

    at_branches = [name for name, s in strategies.REGISTRY.items()
                   if s.placement == "branch_rounds"]
    branch_rounds = sorted(set(stats[stats["strategy"].isin(at_branches)]["round"]))
    for rnd in branch_rounds:
        at = stats[(stats["round"] == rnd) | (stats["strategy"] == "dense")]
        rem = 100 * stats[(stats["strategy"] == "rewind") & (stats["round"] == rnd)][
            "remaining_all"].mean()
        lines += ["", f"## Per task at {rem:.1f}% remaining (trunk round {rnd}), PSNR dB", ""]
        cols = [s for s in names if s in set(at["strategy"])]
        lines.append("| task | " + " | ".join(label[s] for s in cols) + " |")
        lines.append("|---" * (len(cols) + 1) + "|")
        for task in sorted(set(at["task"]), key=lambda t: (t == ALL_IN_ONE, t)):
            cells = []
            for s in cols:
                row = at[(at["strategy"] == s) & (at["task"] == task)]
                cells.append(_cell(row.iloc[0]) if len(row) else "")
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(run_dir: Path, metrics: pd.DataFrame, title: str, notes: str = "") -> Path:
    path = Path(run_dir) / "summary.md"
    atomic_write_text(summary_markdown(metrics, title, notes), path)
    return path


def compare_with_reference(current: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Per point and task, the PSNR of this run against the committed reference run."""
    keys = ["seed", "strategy", "round", "task"]
    cur = point_means(current)[keys + ["psnr"]]
    ref = point_means(reference)[keys + ["psnr"]]
    both = cur.merge(ref, on=keys, how="outer", suffixes=("", "_reference"))
    both["difference"] = both["psnr"] - both["psnr_reference"]
    return both
