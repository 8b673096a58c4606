"""The study's summary page (``summary_markdown``, ``<run>/summary.md``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mirl_lib.core.config import AnalysisConfig, Config, TrainConfig
from mirl_lib.core.names import ALL_IN_ONE, DENSE, TRUNK, task_order
from mirl_lib.files.atomic import atomic_write_text
from mirl_lib.files.paths import SUMMARY_FILE
from mirl_lib.report.comparisons import (
    branch_rounds,
    comparisons,
    curve_reading,
    interval,
    label,
    ordered,
    trunk_curve,
    where,
)
from mirl_lib.report.gains import dense_bars, dense_gains, gains_table
from mirl_lib.report.headline import answer, deepest_round, method_note
from mirl_lib.report.means import cell, collapse_of, point_means, sd, seed_stats
from mirl_lib.report.primary import (
    HELD_BACK,
    blinded,
    confirmation_table,
    decided,
    held_back,
    planning_table,
    primary_table,
)

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
    trunk = stats_[stats_["strategy"] == TRUNK].groupby("round")["remaining_all"].mean()
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


def _curve_table(curve: pd.DataFrame) -> list[str]:
    band = float(curve["band_level"].iloc[0]) if len(curve) else 0.0
    lines = [f"| round | remaining % | ticket − dense [95% CI] | simultaneous band "
             f"({100 * band:.1f}% each) |", "|---|---|---|---|"]
    for r in curve.itertuples():
        lines.append(f"| {r.round} | {100 * r.remaining:.1f} | {interval(r)} | "
                     f"[{r.band_low:+.2f}, {r.band_high:+.2f}] |")
    return lines


def _tested_cells(r: Any) -> str:
    """A tested comparison's row up to its decision: X, hypothesis, interval, df, p, Holm p."""
    return (f"| {label(r.vs)} | {r.kind} | {interval(r)} | {r.df:.1f} | {r.p:.3f} | "
            f"{r.p_holm:.3f} | {r.decision} |")


def _power_cells(r: Any) -> str:
    """Its power, and the seeds and photos that would give the analysis's power."""
    needed = "none ≤ 200" if pd.isna(r.seeds_needed) else str(int(r.seeds_needed))
    photos = "none ≤ 100" if pd.isna(r.photos_needed) else str(int(r.photos_needed))
    return f"{100 * r.power:.0f}% | {needed} | {photos} |"


def _primary_section(primary: pd.DataFrame, analysis: AnalysisConfig) -> list[str]:
    if primary.empty:
        return []
    reason = f" ({analysis.margin_reason})" if analysis.margin_reason else ""
    lines = ["", "## Primary comparisons", "",
             f"Declared in the params file (`analysis.primary`). Ticket − X at "
             f"{where(int(primary['round'].iloc[0]), float(primary['remaining'].iloc[0]))}, "
             f"all-in-one PSNR (dB) with its {100 * analysis.level:.0f}% interval; margin "
             f"±{analysis.margin_db:.2f} dB{reason}. One-sided p-value of the declared "
             f"hypothesis (equivalence: the larger of its two one-sided tests), Holm-adjusted over "
             f"the {len(primary)} at family-wise α = {analysis.alpha:g}. *Power*: with this many "
             f"seeds, simulated from the measured variance components (non-inferiority and "
             f"equivalence at a true difference of 0, superiority at the measured one, each at "
             f"α / {len(primary)}); *seeds for {100 * analysis.power:.0f}%*: the fewest that give "
             f"it on these photos; *photos for {100 * analysis.power:.0f}%*: the fewest test "
             f"photos that give it at this many seeds, new photos varying as these did.", "",
             "| X | hypothesis | ticket − X [CI] | df | p | Holm p | decision | power | "
             f"seeds for {100 * analysis.power:.0f}% | photos for {100 * analysis.power:.0f}% |",
             "|---" * 10 + "|"]
    lines += [f"{_tested_cells(r)} {_power_cells(r)}" for r in primary.itertuples()]
    lines += ["", "Variance components of each primary difference (dB², from the seeds × photos "
              "table of cell means): between seeds, between photos, and what is left (their "
              "interaction, and the tasks and crops within a cell).", "",
              "| X | seeds | photos | rest | share from seeds |", "|---|---|---|---|---|"]
    for r in primary.itertuples():
        total = r.var_seed / r.seeds + r.var_photo / r.photos + r.var_resid / (r.seeds * r.photos)
        share = f"{100 * (r.var_seed / r.seeds) / total:.0f}%" if total > 0 else "n/a"
        lines.append(f"| {label(r.vs)} | {r.var_seed:.3f} | {r.var_photo:.3f} | "
                     f"{r.var_resid:.3f} | {share} |")
    return lines


def _confirmation_section(confirm: pd.DataFrame, analysis: AnalysisConfig) -> list[str]:
    if confirm.empty:
        return []
    declared_n = len(analysis.confirm_seeds)
    lines = ["", "## Confirmation", "",
             f"Declared in the params file before its seeds were trained "
             f"(`analysis.confirm_seeds`: {', '.join(map(str, analysis.confirm_seeds))}): the "
             f"primary comparisons tested again on those seeds alone, Holm over the "
             f"{len(confirm)} at family-wise α = {analysis.alpha:g}; the primary comparisons "
             f"above use the other seeds only. No estimate and no decision until all "
             f"{declared_n} are scored. *Planned power*: of a confirmation of {declared_n} seeds "
             f"on these photos, simulated from the variance components above (as *power* there, "
             f"at α / {len(confirm)}).", ""]
    if not decided(confirm):
        scored = int(confirm['scored_seeds'].iloc[0])
        lines += [f"Pending: {scored} of {declared_n} seeds scored."
                  + (f" {HELD_BACK}." if scored else ""),
                  "", "| X | hypothesis | planned power |", "|---|---|---|"]
        lines += [f"| {label(r.vs)} | {r.kind} | {100 * r.planned_power:.0f}% |"
                  for r in confirm.itertuples()]
        return lines
    goal = f"{100 * analysis.power:.0f}%"
    lines += [f"*Power*, *seeds for {goal}* and *photos for {goal}* as in the primary table, "
              f"simulated from the confirmation's own variance components: what a next "
              f"confirmation of an undecided comparison would need.", "",
              "| X | hypothesis | ticket − X [CI] | df | p | Holm p | decision | planned power | "
              f"power | seeds for {goal} | photos for {goal} |", "|---" * 11 + "|"]
    lines += [f"{_tested_cells(r)} {100 * r.planned_power:.0f}% | {_power_cells(r)}"
              for r in confirm.itertuples()]
    return lines


def _planning_section(plan: pd.DataFrame, analysis: AnalysisConfig) -> list[str]:
    if plan.empty:
        return []
    designs = sorted({(int(r.photos), int(r.seeds)) for r in plan.itertuples()})
    lines = ["", "## Planning: the power of other designs", "",
             "Each primary comparison's power with S seeds on P test photos (columns S × P), "
             "simulated from the "
             "variance components measured above, new photos varying as these did (a variance "
             "from few photos: a rough guide), at the same level as *power* above. For choosing "
             "the next run's size, not a result.", "",
             "| X | hypothesis | " + " | ".join(f"{s} × {p}" for p, s in designs) + " |",
             "|---|---|" + "---|" * len(designs)]
    for (vs, kind), rows in plan.groupby(["vs", "kind"], sort=False):
        by = {(int(r.photos), int(r.seeds)): r.power for r in rows.itertuples()}
        lines.append(f"| {label(vs)} | {kind} | "
                     + " | ".join(f"{100 * by[d]:.0f}%" for d in designs) + " |")
    return lines


def _exploratory_tables(comps: pd.DataFrame) -> list[str]:
    every = comps[comps["metric"] == "psnr"]
    psnr = every[every["a"] == TRUNK]
    lines: list[str] = []
    for rnd in branch_rounds(psnr, "b"):
        at = psnr[psnr["round"] == rnd]
        others = [b for b in ordered(list(set(at["b"]))) if b != DENSE]
        cols = ([DENSE] if DENSE in set(at["b"]) else []) + others
        rem = float(at["remaining"].iloc[0])
        lines += ["", f"## Exploratory: ticket − X at {100 * rem:.1f}% remaining (trunk round "
                  f"{rnd}), PSNR dB", "",
                  "Estimate [95% interval]; positive: the ticket scores higher. Exploratory: no "
                  "verdict (only the primary comparisons are tested).", "",
                  "| task | " + " | ".join(f"ticket − {label(b)}" for b in cols) + " |",
                  "|---" * (len(cols) + 1) + "|"]
        for task in task_order(at["task"]):
            cells = []
            for b in cols:
                row = at[(at["b"] == b) & (at["task"] == task)]
                cells.append(interval(row.iloc[0]) if len(row) else "")
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
    others = every[every["a"] != TRUNK]
    if len(others):
        tasks = task_order(others["task"])
        lines += ["", "## Exploratory: other pairs of the same size, PSNR dB", "",
                  "A − B, estimate [95% interval], at the trunk rounds where both ran (the "
                  "strategies' `compared_with`). Exploratory: no verdict.", "",
                  "| round (remaining) | A − B | " + " | ".join(tasks) + " |",
                  "|---" * (len(tasks) + 2) + "|"]
        for (rnd, a, b), rows in others.groupby(["round", "a", "b"], sort=True):
            by_task = rows.set_index("task")
            cells = [interval(by_task.loc[t]) if t in by_task.index else "" for t in tasks]
            lines.append(f"| {int(rnd)} ({100 * float(rows['remaining'].iloc[0]):.1f}%) | "
                         f"{label(a)} − {label(b)} | " + " | ".join(cells) + " |")
    return lines


def _heldout_section(heldout: pd.DataFrame, rounds: list[int]) -> list[str]:
    held_stats = seed_stats(point_means(heldout))
    dense = held_stats[held_stats["strategy"] == DENSE].set_index("task")
    pair = heldout[heldout["strategy"].isin([DENSE, TRUNK])]  # ticket vs dense only
    comps = comparisons(pair, metric_names=("psnr",))
    vs = comps[(comps["b"] == DENSE) & comps["round"].isin(rounds)] if len(comps) else comps
    shown = sorted(set(vs["round"])) if len(vs) else []
    rem = {int(r): float(vs.loc[vs["round"] == r, "remaining"].iloc[0]) for r in shown}
    images = heldout.groupby("task")["image"].nunique()
    lines = ["", "## Held-out photos", "",
             f"Photographs the training never saw, with rain and haze outside the training ranges "
             f"({int(images.max()) if len(images) else 0} images per task). Ticket − dense: "
             f"estimate [95% interval] (exploratory).", ""]
    head = ["task", "input PSNR", "dense PSNR", "gain",
            *(f"ticket − dense at {100 * rem[r]:.1f}% (round {r})" for r in shown)]
    lines += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for task in task_order({*heldout["task"], ALL_IN_ONE}):
        cells = [task]
        if task in dense.index:
            d = dense.loc[task]
            cells += [f"{d.input_psnr:.2f}", sd(d.psnr, d.psnr_sd, d.seeds),
                      sd(d.gain, d.gain_sd, d.seeds, "+.2f")]
        else:
            cells += ["", "", ""]
        for r in shown:
            row = vs[(vs["round"] == r) & (vs["task"] == task)]
            cells.append(interval(row.iloc[0]) if len(row) else "")
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
    trunk = data[data["strategy"] == TRUNK].groupby("round")["remaining_all"].mean() \
        if "remaining_all" in data else pd.Series(dtype=float)
    rank = {n: i for i, n in enumerate(ordered(list(set(data["strategy"]))))}
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


def summary_markdown(metrics: pd.DataFrame, title: str, analysis: AnalysisConfig,
                     notes: str = "", heldout: pd.DataFrame | None = None,
                     points: pd.DataFrame | None = None, comps: pd.DataFrame | None = None,
                     primary: pd.DataFrame | None = None, confirm: pd.DataFrame | None = None
                     ) -> str:
    """The study's summary page.

    ``## Answer`` (``headline.answer``: the primary decisions and the trunk curve) and the method
    note; the primary comparisons with their tests, power and variance components; the dense
    network against the degraded inputs; all-in-one PSNR by strategy and round (mean ± sd over
    seeds); the trunk curve with its simultaneous band; per branch round, ticket − X per task as
    exploratory estimates; with ``heldout`` (the run's ``heldout.csv``) a held-out section; with
    ``points`` (the run's ``catalog.csv``) a layer-collapse section. ``comps``, ``primary`` and
    ``confirm``: a precomputed ``comparisons(metrics)``, ``primary_table`` and
    ``confirmation_table`` at the deepest round (their power simulations take seconds).
    While a declared confirmation is pending, the seeds of it already scored are left out of
    every section but the confirmation's count (``primary.held_back``); ``comps`` must then be
    computed without them too.
    """
    rnd = deepest_round(metrics)
    confirm = confirmation_table(metrics, analysis, rnd) if confirm is None else confirm
    held = held_back(metrics, analysis)  # a pending confirmation's scored seeds: left out
    metrics, heldout, points = (blinded(t, held) for t in (metrics, heldout, points))
    comps = comparisons(metrics, analysis.level) if comps is None else comps
    stats_ = seed_stats(point_means(metrics))
    primary = primary_table(metrics, analysis, rnd) if primary is None else primary
    curve = trunk_curve(metrics, analysis.level)
    lines = [f"# {title}", "", notes, "", "## Answer", ""]
    for sentence in answer(primary, curve, analysis, confirm):
        lines += [sentence, ""]
    if len(primary):
        lines += [f"Method: {method_note(analysis, primary)}", ""]
    lines += _primary_section(primary, analysis)
    lines += _confirmation_section(confirm, analysis)
    lines += _planning_section(planning_table(metrics, analysis, rnd), analysis)
    lines += ["", "## Dense network against the degraded inputs", "",
              "PSNR in dB; gain = dense − input PSNR" + (" (mean ± sd over seeds)" if
                                                        stats_["seeds"].max() > 1 else "") + ".",
              "", *_dense_table(stats_)]
    gains = dense_gains(metrics, analysis.level)
    held_gains = (dense_gains(heldout, analysis.level) if heldout is not None and len(heldout)
                  else None)
    if len(gains):
        lines += ["", "Paired dense − input on the test photos (intervals over seeds and photos):",
                  "", *gains_table(gains), "", *dense_bars(gains, held_gains)]
    lines += ["", "## All-in-one PSNR (dB) by strategy and remaining parameters", "",
              "Remaining = % of all parameters (unpruned ones counted) of the trunk at that "
              "round" + ("; mean ± sd over seeds" if stats_["seeds"].max() > 1 else "") + ".",
              "", *_overall_table(stats_)]
    if len(curve):
        lines += ["", "## The trunk as a curve", "", curve_reading(curve), "",
                  *_curve_table(curve)]
    lines += _exploratory_tables(comps)
    rounds = branch_rounds(comps[comps["a"] == TRUNK], "b") if len(comps) else []
    if heldout is not None and not heldout.empty:
        lines += _heldout_section(heldout, rounds)
    if points is not None and not points.empty:
        lines += _collapse_section(points, rounds)
    return "\n".join(lines) + "\n"


def write_summary(run_dir: Path, metrics: pd.DataFrame, title: str, analysis: AnalysisConfig,
                  notes: str = "", heldout: pd.DataFrame | None = None,
                  points: pd.DataFrame | None = None, comps: pd.DataFrame | None = None,
                  primary: pd.DataFrame | None = None, confirm: pd.DataFrame | None = None
                  ) -> Path:
    """Write ``<run>/summary.md`` (``summary_markdown``)."""
    path = Path(run_dir) / SUMMARY_FILE
    atomic_write_text(summary_markdown(metrics, title, analysis, notes, heldout, points, comps,
                                       primary, confirm), path)
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
