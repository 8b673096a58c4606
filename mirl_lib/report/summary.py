"""The study's summary page (``summary_markdown``, ``<run>/summary.md``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mirl_lib.core.config import Config, TrainConfig
from mirl_lib.core.names import ALL_IN_ONE, DENSE, task_order
from mirl_lib.files.atomic import atomic_write_text
from mirl_lib.files.paths import SUMMARY_FILE
from mirl_lib.report import stats
from mirl_lib.report.comparisons import (
    branch_rounds,
    comparisons,
    interval,
    label,
    ordered,
    psnr_overall,
)
from mirl_lib.report.gains import dense_bars, dense_gains, gains_table
from mirl_lib.report.headline import answer, method_note, needed, replication_sentence, share
from mirl_lib.report.means import cell, collapse_of, point_means, sd, seed_stats
from mirl_lib.report.stats import EQUIVALENCE_MARGIN_DB, N_BOOT
from mirl_lib.study import strategies

# ----- the summary page -------------------------------------------------------------------------

def _dense_table(stats_: pd.DataFrame) -> list[str]:
    dense = stats_[stats_["strategy"] == DENSE]
    dense = dense.set_index("task").loc[task_order(dense["task"])]
    lines = ["| task | input PSNR | dense PSNR | gain | input SSIM | dense SSIM |",
             "|---|---|---|---|---|---|"]
    for task, r in dense.iterrows():
        lines.append(f"| {task} | {r.input_psnr:.2f} | {sd(r.psnr, r.psnr_sd, r.seeds)} | "
                     f"{sd(r.gain, r.gain_sd, r.seeds, '+.2f')} | {r.input_ssim:.4f} | "
                     f"{sd(r.ssim, r.ssim_sd, r.seeds, '.4f')} |")
    return lines


def _round_label(stats_: pd.DataFrame) -> dict[int, float]:
    """Remaining fraction per round: the trunk's (a control's own count may differ)."""
    trunk = stats_[stats_["strategy"] == strategies.TRUNK].groupby("round")["remaining_all"].mean()
    own = stats_.groupby("round")["remaining_all"].mean()
    return {int(r): float(trunk.get(r, own[r])) for r in own.index}


def _overall_table(stats_: pd.DataFrame) -> list[str]:
    overall = stats_[stats_["task"] == ALL_IN_ONE].copy()
    names = ordered(list(overall["strategy"]))
    remaining = _round_label(stats_)
    overall["cell"] = [cell(r) for r in overall.itertuples()]
    table = overall.pivot_table(index="round", columns="strategy", values="cell",
                                aggfunc="first").sort_index()
    table = table[[s for s in names if s in table.columns]]
    lines = ["| remaining % (round) | " + " | ".join(label(s) for s in table.columns) + " |",
             "|---" * (len(table.columns) + 1) + "|"]
    for rnd, row in table.iterrows():
        cells = ["" if not isinstance(v, str) else v for v in row.to_numpy()]
        lines.append(f"| {100 * remaining[int(rnd)]:.1f} ({rnd}) | " + " | ".join(cells) + " |")
    return lines


def _vs_dense_table(comps: pd.DataFrame) -> list[str]:
    rows = psnr_overall(comps)
    rows = rows[rows["b"] == DENSE].sort_values("round")
    lines = ["| round | remaining % | ticket | dense | ticket − dense [95% CI] | verdict |",
             "|---|---|---|---|---|---|"]
    for r in rows.itertuples():
        lines.append(f"| {r.round} | {100 * r.remaining:.1f} | {r.mean_a:.2f} | {r.mean_b:.2f} | "
                     f"{interval(r)} | {r.verdict} |")
    return lines


def _branch_tables(comps: pd.DataFrame) -> list[str]:
    psnr = comps[comps["metric"] == "psnr"]
    lines: list[str] = []
    for rnd in branch_rounds(psnr, "b"):
        at = psnr[psnr["round"] == rnd]
        others = [b for b in ordered(list(set(at["b"]))) if b != DENSE]
        cols = ([DENSE] if DENSE in set(at["b"]) else []) + others
        rem = float(at["remaining"].iloc[0])
        lines += ["", f"## Ticket − X at {100 * rem:.1f}% remaining (trunk round {rnd}), PSNR dB",
                  "", "Difference [95% CI] verdict; positive: the ticket scores higher.", "",
                  "| task | " + " | ".join(f"ticket − {label(b)}" for b in cols) + " |",
                  "|---" * (len(cols) + 1) + "|"]
        for task in task_order(at["task"]):
            cells = []
            for b in cols:
                row = at[(at["b"] == b) & (at["task"] == task)]
                cells.append(f"{interval(row.iloc[0])} {row.iloc[0].verdict}" if len(row) else "")
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return lines


def _heldout_section(heldout: pd.DataFrame, rounds: list[int], margin: float, n_boot: int,
                     seed: int) -> list[str]:
    held_stats = seed_stats(point_means(heldout))
    dense = held_stats[held_stats["strategy"] == DENSE].set_index("task")
    pair = heldout[heldout["strategy"].isin([DENSE, strategies.TRUNK])]  # ticket vs dense only
    comps = comparisons(pair, margin, n_boot, seed, ("psnr",))
    vs = comps[(comps["b"] == DENSE) & comps["round"].isin(rounds)] if len(comps) else comps
    shown = sorted(set(vs["round"])) if len(vs) else []
    rem = {int(r): float(vs.loc[vs["round"] == r, "remaining"].iloc[0]) for r in shown}
    images = heldout.groupby("task")["image"].nunique()
    lines = ["", "## Held-out photos", "",
             f"Photographs the training never saw, with rain and haze outside the training ranges "
             f"({int(images.max()) if len(images) else 0} images per task). Ticket − dense: "
             f"difference [95% CI] verdict.", ""]
    head = ["task", "input PSNR", "dense PSNR", "gain",
            *(f"ticket − dense at {100 * rem[r]:.1f}% (round {r})" for r in shown)]
    lines += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    tasks = task_order({*heldout["task"], ALL_IN_ONE})
    for task in tasks:
        cells = [task]
        if task in dense.index:
            d = dense.loc[task]
            cells += [f"{d.input_psnr:.2f}", sd(d.psnr, d.psnr_sd, d.seeds),
                      sd(d.gain, d.gain_sd, d.seeds, "+.2f")]
        else:
            cells += ["", "", ""]
        for r in shown:
            row = vs[(vs["round"] == r) & (vs["task"] == task)]
            cells.append(f"{interval(row.iloc[0])} {row.iloc[0].verdict}" if len(row) else "")
        lines.append("| " + " | ".join(cells) + " |")
    if not shown:
        lines += ["", "No ticket at a branch round was scored on the held-out photos."]
    return lines


def _collapse_section(points: pd.DataFrame, rounds: list[int]) -> list[str]:
    if "empty_tensors" not in points:
        return []
    data = points.dropna(subset=["empty_tensors"])
    if data.empty:
        return []
    empties = data.groupby(["strategy", "round"])["empty_tensors"].max()
    chosen = {key for key, k in empties.items() if k > 0 or int(key[1]) in rounds}
    if not chosen:
        return []
    trunk = data[data["strategy"] == strategies.TRUNK].groupby("round")["remaining_all"].mean() \
        if "remaining_all" in data else pd.Series(dtype=float)
    rank = {n: i for i, n in enumerate(strategies.ordered(set(data["strategy"])))}
    lines = ["", "## Layer collapse", "",
             "Prunable tensors left with no weight at all (per point; a range when seeds differ), "
             "and in how many seeds every path from the input to the output is cut (the network "
             "then returns its input unchanged). Shown: the branch rounds, and every point with "
             "an empty tensor.", "",
             "| round | remaining % | strategy | empty tensors | path cut (seeds) |",
             "|---|---|---|---|---|"]
    for strategy, rnd in sorted(chosen, key=lambda k: (k[1], rank.get(k[0], len(rank)))):
        info = collapse_of(data, strategy, rnd)
        if info is None:
            continue
        rem = trunk.get(rnd, np.nan)
        if np.isnan(rem) and "remaining_all" in data:
            rem = data.loc[(data["strategy"] == strategy) & (data["round"] == rnd),
                           "remaining_all"].mean()
        empty = info["empty_tensors"] + (f" of {info['prunable_tensors']}"
                                         if "prunable_tensors" in info else "")
        cut = f"{info['path_cut']} of {info['seeds']}" if "path_cut" in info else "n/a"
        lines.append(f"| {rnd} | {100 * rem:.1f} | {label(strategy)} | {empty} | {cut} |")
    return lines


def summary_markdown(metrics: pd.DataFrame, title: str, notes: str = "",
                     heldout: pd.DataFrame | None = None, points: pd.DataFrame | None = None,
                     comps: pd.DataFrame | None = None, margin: float = EQUIVALENCE_MARGIN_DB,
                     n_boot: int = N_BOOT, seed: int = 0,
                     replication: pd.DataFrame | None = None) -> str:
    """The study's summary page.

    ``## Answer`` (``answer``: verdict sentences) and the method note; the dense network against
    the degraded inputs; all-in-one PSNR by strategy and round (mean ± sd over seeds); the ticket
    against the dense network at every trunk round; per branch round, ticket − X per task with
    interval and verdict; with ``heldout`` (the run's ``heldout.csv``) a held-out section; with
    ``points`` (the run's ``catalog.csv`` holding ``empty_tensors``, ``prunable_tensors``,
    ``path_cut``) a layer-collapse section. ``comps``: a precomputed ``comparisons(metrics)``;
    with ``replication`` (``stats.replications``) a sentence after the answer and a section on how
    often each verdict replicates.
    """
    comps = comparisons(metrics, margin, n_boot, seed) if comps is None else comps
    stats_ = seed_stats(point_means(metrics))
    lines = [f"# {title}", "", notes, "", "## Answer", ""]
    for sentence in answer(comps):
        lines += [sentence, ""]
    extra = replication_sentence(replication) if replication is not None else ""
    if extra:
        lines += [extra, ""]
    note = method_note(comps)
    if note:
        lines += [f"Method: {note}", ""]
    lines += ["## Dense network against the degraded inputs", "",
              "PSNR in dB; gain = dense − input PSNR" + (" (mean ± sd over seeds)" if
                                                        stats_["seeds"].max() > 1 else "") + ".",
              "", *_dense_table(stats_)]
    gains = dense_gains(metrics, n_boot, seed)
    held_gains = (dense_gains(heldout, n_boot, seed) if heldout is not None and len(heldout)
                  else None)
    if len(gains):
        lines += ["", "Paired dense − input on the test photos (bootstrap over "
                  + ("seeds and images" if gains["seeds"].max() > 1 else "images") + "):", "",
                  *gains_table(gains), "", *dense_bars(gains, held_gains)]
    lines += ["", "## All-in-one PSNR (dB) by strategy and remaining parameters", "",
              "Remaining = % of all parameters (unpruned ones counted) of the trunk at that "
              "round" + ("; mean ± sd over seeds" if stats_["seeds"].max() > 1 else "") + ".",
              "", *_overall_table(stats_)]
    if not psnr_overall(comps).empty:
        lines += ["", "## Ticket against the dense network at every trunk round", "",
                  "All-in-one PSNR (dB); difference [95% CI] and verdict.", "",
                  *_vs_dense_table(comps)]
    lines += _branch_tables(comps)
    if replication is not None and not replication.empty:
        lines += _replication_section(replication)
    rounds = branch_rounds(comps, "b") if len(comps) else []
    if heldout is not None and not heldout.empty:
        lines += _heldout_section(heldout, rounds, float(margin), n_boot, seed)
    if points is not None and not points.empty:
        lines += _collapse_section(points, rounds)
    return "\n".join(lines) + "\n"


def _replication_section(table: pd.DataFrame) -> list[str]:
    """``## How often each verdict replicates``: every all-in-one PSNR comparison's verdict, the
    chance a rerun with as many seeds keeps it, and how often two runs of n seeds agree."""
    agree = [c for c in table.columns if c.startswith("agree_")]
    seeds = int(table["seeds"].max())
    lines = ["", "## How often each verdict replicates", ""]
    if seeds < 2 or table["survives"].isna().all():
        return lines + ["One seed: there is no spread between training runs to draw reruns from."]
    lines += [f"All-in-one PSNR. `stats.replication` makes {stats.REPLICATION_SIMS} simulations "
              f"per seed count under a normal model: each draws a truth from what this run's "
              f"{seeds} seeds leave uncertain (the mean differences, and the size of the spread "
              f"between seeds, which {seeds} seeds estimate poorly), then two runs of new seeds "
              f"from it, scored on the same test images with this study's interval and verdict. "
              f"*Rerun keeps* is the share of simulated runs of {seeds} "
              f"seeds whose verdict is the committed one; *agree at n* the chance that two runs "
              f"of n seeds give the same verdict; *seeds needed* the fewest n of "
              f"{', '.join(str(n) for n in stats.REPLICATION_SEEDS)} at which two runs agree "
              f"{share(stats.REPLICATION_TARGET)} of the time. A comparison whose mean lies near "
              f"0 or ±margin needs many seeds: more seeds narrow its interval, but around a mean "
              f"that stays near the boundary.", "",
              "| round | remaining | ticket − X | verdict | rerun keeps | "
              + " | ".join(f"agree at {c.split('_')[1]}" for c in agree) + " | seeds needed |",
              "|---" * (len(agree) + 6) + "|"]
    rank = {name: i for i, name in enumerate([DENSE, *ordered(list(set(table["b"]) - {DENSE}))])}
    order = table.assign(_rank=table["b"].map(rank)).sort_values(["round", "_rank"])
    for r in order.itertuples():
        lines.append(f"| {int(r.round)} | {100 * r.remaining:.1f}% | {label(r.b)} | {r.verdict} "
                     f"| {share(r.survives)} | "
                     + " | ".join(share(getattr(r, c)) for c in agree)
                     + f" | {needed(r.seeds_needed)} |")
    return lines


def write_summary(run_dir: Path, metrics: pd.DataFrame, title: str, notes: str = "",
                  heldout: pd.DataFrame | None = None, points: pd.DataFrame | None = None,
                  comps: pd.DataFrame | None = None,
                  replication: pd.DataFrame | None = None) -> Path:
    """Write ``<run>/summary.md`` (``summary_markdown``)."""
    path = Path(run_dir) / SUMMARY_FILE
    atomic_write_text(summary_markdown(metrics, title, notes, heldout, points, comps,
                                       replication=replication), path)
    return path


def loss_formula(t: TrainConfig) -> str:
    """The training loss in words: ``L1``, ``L1 + 0.01 (-PSNR)``, ``L1 + 0.5 (1 - SSIM)``..."""
    terms = ["L1"]
    if t.psnr_weight:
        terms.append(f"{t.psnr_weight:g} (-PSNR)")
    if t.ssim_weight:
        terms.append(f"{t.ssim_weight:g} (1 - SSIM)")
    return " + ".join(terms)


def config_notes(cfg: Config) -> str:
    """A few lines describing the setting, for the summary page."""
    m, t, p = cfg.model, cfg.train, cfg.prune
    duration = (f"{t.epochs} epochs (warmup {t.warmup_epochs})" if t.epochs
                else f"{t.steps} steps (warmup {t.warmup_steps})")
    return (f"Preset `{m.preset}` (dim {m.dim}, blocks {list(m.num_blocks)}), data "
            f"`{cfg.data.source}` patch {cfg.data.patch_size}, {duration} of batch "
            f"{t.batch_size} per round (lr {t.lr:g}, loss {loss_formula(t)}), "
            f"{p.rounds} rounds of {p.rate:.0%} "
            f"{p.method} pruning ({p.scope} scope), seeds {list(cfg.study.seeds)}, config hash "
            f"`{cfg.hash()}`.")
