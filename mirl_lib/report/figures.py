"""Figures of a finished study (seaborn, PNG): PSNR against remaining parameters (spread over
seeds), the paired comparisons as forest plots, per-layer density, training curves, the data.
"""
from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from mirl_lib.core.names import (
    ALL_IN_ONE,  # noqa: E402
    DENSE,
    TRUNK,
    task_order,
)
from mirl_lib.files.atomic import atomic_write_bytes  # noqa: E402
from mirl_lib.report.comparisons import branch_rounds
from mirl_lib.report.means import point_means
from mirl_lib.report.primary import NOT_SHOWN, SHOWN, UNDECIDABLE, UNTESTABLE
from mirl_lib.study import strategies  # noqa: E402

matplotlib.use("Agg")


DECISION_COLOURS = {SHOWN: "tab:blue", NOT_SHOWN: "tab:gray", UNDECIDABLE: "tab:orange",
                    UNTESTABLE: "tab:red", "exploratory": "black"}


def _save(fig: plt.Figure, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(buf.getvalue(), path)
    return path


def psnr_vs_remaining(metrics: pd.DataFrame, path: Path, curve: pd.DataFrame | None = None
                      ) -> Path:
    """PSNR against remaining weights, one panel per task (+ all-in-one), one line per strategy,
    and with ``curve`` (``report.comparisons.trunk_curve``) a last panel: ticket − dense over the
    trunk rounds with its 95% intervals and the simultaneous band.

    Each point is the mean over seeds of the per-seed means; with several seeds the bands show
    one standard deviation over seeds (and the dense line its own band), as the title says.
    """
    means = point_means(metrics)
    seeds = int(means["seed"].nunique())
    means["remaining %"] = 100 * means["remaining_all"]
    label = strategies.labels()
    present = strategies.ordered(set(means["strategy"]))
    means["strategy"] = means["strategy"].map(lambda s: label.get(s, s))
    dense_label = label.get(DENSE, DENSE)
    tasks = task_order({*means["task"], ALL_IN_ONE})
    sparse = means[means["strategy"] != dense_label]
    hue_order = [label.get(s, s) for s in present if s != DENSE]
    panels = len(tasks) + (curve is not None and len(curve) > 0)
    rows = -(-panels // 3)
    fig, axes = plt.subplots(rows, 3, figsize=(11.2, 3.0 * rows), squeeze=False)
    dense = means[means["strategy"] == dense_label].groupby("task")["psnr"].agg(["mean", "std"])
    ticks = [t for t in (1, 2, 5, 10, 20, 50, 100) if t >= 0.8 * sparse["remaining %"].min()]
    flat = list(axes.flat)
    for task, ax in zip(tasks, flat):
        sns.lineplot(data=sparse[sparse["task"] == task], x="remaining %", y="psnr", ax=ax,
                     hue="strategy", hue_order=hue_order, style="strategy",
                     style_order=hue_order, markers=True, dashes=False, errorbar="sd",
                     palette="tab10", legend=task == tasks[0])
        if task in dense.index:
            ax.axhline(dense.at[task, "mean"], color="black", ls="--", lw=1, label=DENSE)
            if seeds > 1:
                sd = dense.at[task, "std"]
                ax.axhspan(dense.at[task, "mean"] - sd, dense.at[task, "mean"] + sd,
                           color="black", alpha=0.08, lw=0)
        ax.set_title(f"task = {task}", fontsize=10)
        ax.set_ylabel("PSNR (dB)")
    if panels > len(tasks):
        ax = flat[len(tasks)]
        x = 100 * curve["remaining"]
        ax.fill_between(x, curve["band_low"], curve["band_high"], color="tab:blue", alpha=0.15,
                        lw=0, label="simultaneous 95% band")
        ax.errorbar(x, curve["difference"],
                    yerr=[curve["difference"] - curve["ci_low"],
                          curve["ci_high"] - curve["difference"]],
                    fmt="o-", color="tab:blue", ms=4, capsize=2, label="ticket − dense [95%]")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_title("ticket − dense, all-in-one", fontsize=10)
        ax.set_ylabel("PSNR difference (dB)")
        ax.legend(fontsize=7, loc="best")
    for ax in flat[:panels]:
        ax.set_xscale("log")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlim(110, 0.9 * sparse["remaining %"].min())  # dense at the left
        ax.set_xlabel("remaining %")
    for ax in flat[panels:]:
        ax.axis("off")
    handles, labels = flat[0].get_legend_handles_labels()
    if flat[0].get_legend() is not None:
        flat[0].get_legend().remove()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), bbox_to_anchor=(0.5, -0.04),
               frameon=False)
    spread = (f"; mean ± sd over {seeds} seeds" if seeds > 1 else "; one seed")
    fig.suptitle("PSNR against remaining parameters (log scale, sparser to the right"
                 f"{spread})", y=1.01)
    fig.tight_layout()
    return _save(fig, path)


def comparison_forest(comparisons: pd.DataFrame, path: Path, primary: pd.DataFrame | None = None,
                      margin: float = 0.25, metric: str = "psnr",
                      rounds: list[int] | None = None, decided_by: str = "primary") -> Path:
    """Forest plots of the paired comparisons (``report.comparisons.comparisons``), one panel per
    branch round: for every X compared with the ticket at that round, ticket − X all-in-one (large
    marker) and per task (small), with the 95% interval as whiskers and the ±margin band shaded.
    A primary comparison (``primary``: ``report.primary.primary_table``, or a decided
    ``confirmation_table`` with ``decided_by="confirmation"``, as the legend then says) is
    coloured by its decision; every other estimate is exploratory (black)."""
    data = (comparisons[(comparisons["metric"] == metric) & (comparisons["a"] == TRUNK)]
            if len(comparisons) else comparisons)
    rounds = branch_rounds(data, "b") if rounds is None else rounds
    if data.empty or not rounds:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.text(0.5, 0.5, "no comparisons to show", ha="center", va="center")
        ax.axis("off")
        return _save(fig, path)
    decided = ({(int(r.round), r.vs): r.decision for r in primary.itertuples()}
               if primary is not None and metric == "psnr" else {})
    label = strategies.labels()
    rank = {t: i for i, t in enumerate(task_order(data["task"]))}
    heights = []
    for rnd in rounds:
        at = data[data["round"] == rnd]
        heights.append(len(at) + at["b"].nunique())
    fig, axes = plt.subplots(1, len(rounds), figsize=(4.6 * len(rounds), 0.24 * max(heights) + 1.6),
                             squeeze=False)
    unit = " (dB)" if metric == "psnr" else ""
    for ax, rnd in zip(axes[0], rounds):
        at = data[data["round"] == rnd]
        names = [b for b in strategies.ordered(set(at["b"]))]
        names = [b for b in names if b == DENSE] + [b for b in names if b != DENSE]
        y, ticks, ticklabels = 0.0, [], []
        for b in names:
            rows = at[at["b"] == b]
            rows = rows.assign(_k=[-1 if t == ALL_IN_ONE else rank.get(t, 99)
                                   for t in rows["task"]]).sort_values("_k")
            for r in rows.itertuples():
                overall = r.task == ALL_IN_ONE
                decision = decided.get((int(rnd), b), "exploratory") if overall else "exploratory"
                low = r.ci_low if np.isfinite(r.ci_low) else r.difference
                high = r.ci_high if np.isfinite(r.ci_high) else r.difference
                ax.errorbar(r.difference, y, xerr=[[r.difference - low], [high - r.difference]],
                            fmt="D" if overall else "o", ms=7 if overall else 4,
                            color=DECISION_COLOURS[decision],
                            elinewidth=2 if overall else 1, capsize=2)
                ticks.append(y)
                ticklabels.append(f"vs {label.get(b, b)}" if overall else f"  {r.task}")
                y -= 1
            y -= 0.6
        ax.axvspan(-margin, margin, color="tab:green", alpha=0.12, lw=0)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(ticks, ticklabels, fontsize=7)
        for tick, text in zip(ax.get_yticklabels(), ticklabels):
            if text.startswith("vs "):
                tick.set_fontweight("bold")
        ax.set_xlabel(f"ticket − X, {metric.upper()}{unit}")
        ax.set_title(f"{100 * float(at['remaining'].iloc[0]):.1f}% remaining (round {rnd})",
                     fontsize=10)
    handles = [plt.Line2D([], [], ls="", marker="o", color=c,
                          label=v if v == "exploratory" else f"{decided_by}: {v}")
               for v, c in DECISION_COLOURS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False,
               bbox_to_anchor=(0.5, -0.06))
    seeds, photos = int(data["seeds"].max()), int(data["photos"].max())
    fig.suptitle(f"Ticket − X with 95% intervals ({seeds} seed{'s' * (seeds != 1)} × {photos} "
                 f"photo{'s' * (photos != 1)}, crossed); shaded: the ±{margin:g}"
                 f"{' dB' if metric == 'psnr' else ''} margin", y=1.02)
    fig.tight_layout()
    return _save(fig, path)


def _collapse_title(collapse: Mapping[str, Any]) -> str:
    parts = []
    if "empty_tensors" in collapse:
        of = f" of {collapse['prunable_tensors']}" if "prunable_tensors" in collapse else ""
        parts.append(f"{collapse['empty_tensors']}{of} prunable tensors empty")
    if "path_cut" in collapse:
        cut, seeds = collapse["path_cut"], collapse.get("seeds")
        if isinstance(cut, (bool, np.bool_)) or seeds is None:
            parts.append("input-output path cut: returns its input" if cut else "path intact")
        else:
            parts.append(f"input-output path cut in {int(cut)} of {int(seeds)} seeds")
    return "; ".join(parts)


def layer_density(report: pd.DataFrame, path: Path, title: str,
                  collapse: Mapping[str, Any] | None = None) -> Path:
    """Per-layer density of a mask (its density report), one bar per prunable tensor.

    A report holding several seeds' masks (concatenated) shows their mean and standard deviation.
    Layers with no weight left (density 0 in every seed) are marked in red (label and cross).
    ``collapse`` (``report.means.collapse_of``: ``empty_tensors``, ``prunable_tensors``,
    ``path_cut``, ``seeds``) is added to the title.
    """
    data = report[report["prunable"]].copy() if "prunable" in report else report.copy()
    data["layer"] = data["name"].str.replace(".weight", "", regex=False)
    order = list(dict.fromkeys(data["layer"]))
    empty = [layer for layer, d in data.groupby("layer", sort=False)["density"].max().items()
             if d == 0]
    height = max(4.0, 0.12 * len(order))
    fig, ax = plt.subplots(figsize=(8, height))
    sns.barplot(data=data, y="layer", x="density", order=order, color="tab:blue", errorbar="sd",
                ax=ax)
    if empty:
        ax.scatter([0.0] * len(empty), [order.index(layer) for layer in empty], marker="x",
                   color="tab:red", s=18, zorder=3, clip_on=False, label="empty (no weight left)")
        ax.legend(loc="lower right", fontsize=7)
    for tick in ax.get_yticklabels():
        if tick.get_text() in empty:
            tick.set_color("tab:red")
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of weights kept")
    ax.set_ylabel("")
    ax.tick_params(axis="y", labelsize=6)
    extra = _collapse_title(collapse) if collapse else ""
    ax.set_title(f"{title}\n{extra}" if extra else title)
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
