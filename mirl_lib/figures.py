"""Figures of a finished study (seaborn, PNG)."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from mirl_lib.fileio import atomic_write_bytes  # noqa: E402
from mirl_lib import strategies  # noqa: E402
from mirl_lib.evaluate import ALL_IN_ONE  # noqa: E402
from mirl_lib.report import point_means  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(buf.getvalue(), path)
    return path


def psnr_vs_remaining(metrics: pd.DataFrame, path: Path) -> Path:
    """PSNR against remaining weights, one panel per task (+ all-in-one), one line per strategy.

    The dense network is a horizontal line; with several seeds, bands show one standard deviation.
    """
    means = point_means(metrics)
    means["remaining %"] = 100 * means["remaining_all"]
    label = strategies.labels()
    present = strategies.ordered(set(means["strategy"]))
    means["strategy"] = means["strategy"].map(label)
    tasks = sorted(set(means["task"]) - {ALL_IN_ONE}) + [ALL_IN_ONE]
    sparse = means[means["strategy"] != label["dense"]]
    hue_order = [label[s] for s in present if s != "dense"]
    grid = sns.FacetGrid(sparse, col="task", col_order=tasks, col_wrap=3, sharey=False, height=3.0,
                         aspect=1.25)
    grid.map_dataframe(sns.lineplot, x="remaining %", y="psnr", hue="strategy", hue_order=hue_order,
                       style="strategy", style_order=hue_order, markers=True, dashes=False,
                       errorbar="sd", palette="tab10")
    dense = means[means["strategy"] == label["dense"]].groupby("task")["psnr"].mean()
    ticks = [t for t in (1, 2, 5, 10, 20, 50, 100) if t >= 0.8 * sparse["remaining %"].min()]
    for task, ax in zip(tasks, grid.axes.flat):
        ax.axhline(dense[task], color="black", ls="--", lw=1, label="dense")
        ax.set_xscale("log")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_ylabel("PSNR (dB)")
    # the x axes are shared: set the (reversed) limits once, dense at the left
    grid.axes.flat[0].set_xlim(110, 0.9 * sparse["remaining %"].min())
    handles, labels = grid.axes.flat[-1].get_legend_handles_labels()
    grid.figure.legend(handles, labels, loc="lower center", ncol=len(labels),
                       bbox_to_anchor=(0.5, -0.04), frameon=False)
    grid.figure.suptitle("PSNR against remaining parameters (log scale, sparser to the right)",
                         y=1.02)
    return _save(grid.figure, path)


def layer_density(report: pd.DataFrame, path: Path, title: str) -> Path:
    """Per-layer density of a mask (its density report), one bar per prunable tensor.

    A report holding several seeds' masks (concatenated) shows their mean and standard deviation.
    """
    data = report[report["prunable"]].copy() if "prunable" in report else report.copy()
    data["layer"] = data["name"].str.replace(".weight", "", regex=False)
    height = max(4.0, 0.12 * data["layer"].nunique())
    fig, ax = plt.subplots(figsize=(8, height))
    sns.barplot(data=data, y="layer", x="density", color="tab:blue", errorbar="sd", ax=ax)
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of weights kept")
    ax.set_ylabel("")
    ax.tick_params(axis="y", labelsize=6)
    ax.set_title(title)
    return _save(fig, path)


def training_curves(histories: pd.DataFrame, path: Path) -> Path:
    """Training loss against step, one line per round, one panel per strategy (with several
    seeds: their mean, and one standard deviation as a band)."""
    data = histories.copy()
    label = strategies.labels()
    col_order = [label[s] for s in strategies.ordered(set(data["strategy"]))]
    data["strategy"] = data["strategy"].map(label)
    grid = sns.relplot(data=data, x="step", y="loss", hue="round", col="strategy", col_wrap=3,
                       col_order=col_order,
                       kind="line", palette="viridis", height=2.8, aspect=1.3, errorbar="sd",
                       facet_kws={"sharey": True})
    for ax in grid.axes.flat:
        ax.set_yscale("log")
    grid.figure.suptitle("Training L1 loss per round", y=1.02)
    return _save(grid.figure, path)


def degradation_grid(items: list, path: Path, max_side: int = 160) -> Path:
    """One column per task: the first test image of each task, degraded above and clean below."""
    firsts = {}
    for item in items:
        firsts.setdefault(item.task, item)
    fig, axes = plt.subplots(2, len(firsts), figsize=(2.6 * len(firsts), 5.4), squeeze=False)
    for col, (task, item) in enumerate(firsts.items()):
        for row, (image, label) in enumerate(((item.degraded, "degraded"), (item.clean, "clean"))):
            ax = axes[row][col]
            ax.imshow(image[:max_side, :max_side].clip(0, 1))
            ax.set_title(f"{task}\n{item.name} ({label})" if row == 0 else label, fontsize=8)
            ax.axis("off")
    return _save(fig, path)
