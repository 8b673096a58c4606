"""Tables of a finished study: per-point means, the paired comparisons, the summary page, the
README headline and the reproduction check.

Every statement the summary makes about one network against another comes from
``mirl_lib.stats``: a paired difference (same seed, same test image) with a bootstrap 95% interval
and a verdict (``matches`` / ``better`` / ``worse`` / ``inconclusive``, margin
``stats.EQUIVALENCE_MARGIN_DB``). The sentences of ``answer`` are chosen by verdicts, never by
point estimates.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mirl_lib import stats, strategies
from mirl_lib.config import TASKS
from mirl_lib.evaluate import ALL_IN_ONE, task_means
from mirl_lib.fileio import atomic_write_text
from mirl_lib.stats import EQUIVALENCE_MARGIN_DB, N_BOOT

DENSE = strategies.DENSE[0]
# A rerun's comparison mean within this many dB of the committed interval (or of the committed
# mean) counts as inside: identical reruns must not fail on floating-point noise.
REPRODUCTION_TOLERANCE_DB = 1e-6
# The degraded input, as the ``b`` of a dense-gain comparison (``gain_comparisons``).
INPUT = "input"
# The two image sets a run is scored on: the bundled test photos (``metrics.csv``) and the
# held-out check (``heldout.csv``); ``reproduction`` keeps them apart in its ``set`` column.
TEST_SET, HELDOUT_SET = "test", "heldout"
SET_WORDS = {TEST_SET: "on the test photos", HELDOUT_SET: "on the held-out photos"}
# How a verdict of "ticket - X" reads before X in a sentence.
SHORT = {"matches": "matches", "better": "better than", "worse": "worse than",
         "inconclusive": "inconclusive against"}


# ----- means ------------------------------------------------------------------------------------

def point_means(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean PSNR/SSIM per (seed, strategy, round, task) and the all-in-one mean (task
    ``all-in-one``, ``evaluate.task_means``)."""
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


def _task_key(task: str) -> tuple[bool, int, str]:
    rank = {t: i for i, t in enumerate(TASKS)}
    return task == ALL_IN_ONE, rank.get(task, len(rank)), task


def _sd(mean: float, sd: float, seeds: int, fmt: str = ".2f") -> str:
    return f"{mean:{fmt}} ± {sd:{fmt.lstrip('+')}}" if seeds > 1 else f"{mean:{fmt}}"


def _cell(row: Any) -> str:
    return _sd(row.psnr, row.psnr_sd, row.seeds)


# ----- comparisons ------------------------------------------------------------------------------

def comparisons(metrics: pd.DataFrame, margin: float = EQUIVALENCE_MARGIN_DB,
                n_boot: int = N_BOOT, seed: int = 0,
                metric_names: Sequence[str] = ("psnr", "ssim")) -> pd.DataFrame:
    """``stats.comparisons`` of a study's metrics with the registry's trunk, dense point and
    display order: the ticket against the dense network at every trunk round, and against every
    other strategy at every round where it ran (columns in ``stats.comparisons``)."""
    return stats.comparisons(metrics, margin, n_boot, seed, trunk=strategies.TRUNK, dense=DENSE,
                             order=strategies.ordered(), metric_names=metric_names)


def branch_rounds(table: pd.DataFrame, column: str = "strategy") -> list[int]:
    """The branch rounds of a study, from the strategies in ``table[column]`` and the registry:
    the rounds where a control placed at the branch rounds (``placement`` ``branch_rounds``) ran;
    without one, where any strategy placed there ran; without any, the deepest round where a
    strategy other than the dense network and the trunk ran; else the deepest round of all."""
    if table.empty:
        return []
    registry = strategies.REGISTRY
    placed = [n for n, s in registry.items() if s.placement == "branch_rounds"]
    for names in ([n for n in placed if registry[n].role == "control"], placed):
        rounds = sorted({int(r) for r in table.loc[table[column].isin(names), "round"]})
        if rounds:
            return rounds
    others = table.loc[~table[column].isin([DENSE, strategies.TRUNK]), "round"]
    if len(others):
        return [int(others.max())]
    deepest = int(table["round"].max())
    return [deepest] if deepest > 0 else []


def _label(name: str) -> str:
    return strategies.labels().get(name, name)


def _ordered(names: Sequence[str]) -> list[str]:
    return strategies.ordered(set(names))


def interval(row: Any, unit: str = "") -> str:
    """``+0.12 [-0.05, +0.30]`` (``unit`` after the mean, e.g. `` dB``)."""
    return f"{row.difference:+.2f}{unit} [{row.ci_low:+.2f}, {row.ci_high:+.2f}]"


def design(row: Any) -> str:
    """``3 seeds × 15 images, bootstrap over seeds and images`` for a comparison row."""
    seeds = int(row.seeds)
    over = "seeds and images" if seeds > 1 else "images only"
    return (f"{seeds} seed{'s' if seeds != 1 else ''} × {int(row.images)} images, "
            f"bootstrap over {over}")


def _where(rnd: int, remaining: float) -> str:
    return f"{100 * remaining:.1f}% of all parameters (trunk round {rnd})"


def _psnr_overall(comps: pd.DataFrame) -> pd.DataFrame:
    return comps[(comps["metric"] == "psnr") & (comps["task"] == ALL_IN_ONE)]


def verdict_name(rnd: int, b: str) -> str:
    """``round 12 vs dense``: how ``headline_verdicts`` and ``kept_shares`` name a comparison."""
    return f"round {int(rnd)} vs {b}"


def _stated(comps: pd.DataFrame) -> tuple[pd.DataFrame, dict[int, pd.DataFrame]]:
    """What the headline speaks of (all-in-one PSNR): the rows against the dense network in
    round order, and at each branch round the rows against every other strategy, indexed by
    ``b`` in display order. ``comps``: ``comparisons`` rows, or rows that are all-in-one PSNR
    already (without ``metric`` and ``task``, e.g. ``stats.replications``)."""
    overall = _psnr_overall(comps) if "metric" in comps else comps
    vs_dense = overall[overall["b"] == DENSE].sort_values("round")
    branches = {}
    for rnd in branch_rounds(overall, "b"):
        at = overall[(overall["round"] == rnd) & (overall["b"] != DENSE)]
        if len(at):
            branches[rnd] = at.set_index("b").loc[_ordered(list(at["b"]))]
    return vs_dense, branches


def _tally(vs_dense: pd.DataFrame) -> str:
    """``9 better, 3 inconclusive``: the verdicts of the trunk rounds against the dense network."""
    counts = vs_dense["verdict"].value_counts()
    return ", ".join(f"{int(counts[v])} {v}" for v in stats.VERDICTS if v in counts)


def answer(comps: pd.DataFrame) -> list[str]:
    """The study's answer as sentences, chosen by the verdicts of ``comparisons`` (all-in-one
    PSNR): the deepest ticket against the dense network; the sparsest trunk round that matches it
    (or that none does); at each branch round, the ticket against each ablation and control."""
    vs_dense, branches = _stated(comps)
    if vs_dense.empty:
        return ["No pruning round has been compared with the dense network yet."]
    margin = float(vs_dense["margin"].iloc[0])
    deepest = vs_dense.iloc[-1]
    sentences = [
        f"Deepest ticket ({100 * deepest.remaining:.1f}% of all parameters, trunk round "
        f"{int(deepest['round'])}) against the dense network, all-in-one PSNR difference "
        f"{interval(deepest, ' dB')}: {SHORT[deepest.verdict]} the dense network (margin "
        f"±{margin:.2f} dB; {design(deepest)})."]
    matching = vs_dense[vs_dense["verdict"] == "matches"]
    tally = _tally(vs_dense)
    if len(matching):
        best = matching.iloc[-1]
        sentences.append(
            f"The sparsest ticket that matches the dense network keeps "
            f"{_where(best['round'], best.remaining)}: {interval(best, ' dB')}; over the "
            f"{len(vs_dense)} trunk rounds the verdicts are {tally}.")
    else:
        sentences.append(
            f"No trunk round matches the dense network within ±{margin:.2f} dB; over the "
            f"{len(vs_dense)} trunk rounds the verdicts are {tally}.")
    roles = {n: s.role for n, s in strategies.REGISTRY.items()}
    for rnd, at in branches.items():
        parts = []
        for group, title in (("control", "the controls"), ("ablation", "the ablations"),
                             (None, "the other strategies")):
            names = [b for b in at.index
                     if roles.get(b) == group or (group is None
                                                  and roles.get(b) not in ("control", "ablation"))]
            if names:
                items = ", ".join(f"{SHORT[at.loc[b, 'verdict']]} {_label(b)} "
                                  f"({interval(at.loc[b], ' dB')})" for b in names)
                parts.append(f"against {title}: {items}")
        first = at.iloc[0]
        sentences.append(f"At {_where(rnd, first.remaining)}, the ticket "
                         + "; ".join(parts) + " (all-in-one PSNR, ticket − X).")
    return sentences


def _share(value: float) -> str:
    return f"{100 * value:.0f}%"


def _needed(value: float) -> str:
    top = max(stats.REPLICATION_SEEDS)
    return f"more than {top}" if pd.isna(value) else f"{int(value)}"


def replication_sentence(table: pd.DataFrame) -> str:
    """How often the headline's verdicts replicate (``stats.replications`` rows of the stated
    comparisons: the deepest ticket against the dense network and every branch comparison), or
    why that cannot be said (one seed, no comparison)."""
    if table is None or table.empty:
        return ""
    vs_dense, branches = _stated(table)
    stated = pd.concat([vs_dense.tail(1), *(at.reset_index() for at in branches.values())])
    if stated.empty:
        return ""
    seeds = int(stated["seeds"].max())
    if seeds < 2 or stated["survives"].isna().all():
        return ("How often these verdicts replicate cannot be estimated from one seed "
                "(`stats.replication` draws new seeds from the committed seeds' spread).")
    rows = [(f"vs {'the dense network' if r.b == DENSE else _label(r.b)}", r)
            for r in stated.itertuples()]
    parts = [f"{name}: {r.verdict} {_share(r.survives)} ({_needed(r.seeds_needed)} seeds)"
             for name, r in rows]
    robust = [name for name, r in rows if r.survives >= stats.REPLICATION_TARGET]
    firm = (f" Robust (kept at least {_share(stats.REPLICATION_TARGET)} of the time): "
            + (", ".join(robust) if robust else "none")
            + "; a rerun may change the others.")
    return (f"How often a rerun keeps each verdict (the share of {stats.REPLICATION_SIMS} simulated "
            f"runs of {seeds} new seeds, drawn from what these {seeds} leave uncertain, "
            f"`stats.replication`), and the seeds two runs need to agree on it "
            f"{_share(stats.REPLICATION_TARGET)} of the time: " + "; ".join(parts) + "." + firm)


def headline(metrics: pd.DataFrame, margin: float = EQUIVALENCE_MARGIN_DB, n_boot: int = N_BOOT,
             seed: int = 0, comps: pd.DataFrame | None = None,
             replication: pd.DataFrame | None = None) -> str:
    """The answer as a markdown list, for the README's headline section, ending with how often
    its verdicts replicate (``replication``: ``stats.replications`` of the run, computed when
    None)."""
    comps = comparisons(metrics, margin, n_boot, seed, ("psnr",)) if comps is None else comps
    if replication is None:
        replication = stats.replications(metrics, comps, margin, seed=seed)
    sentences = answer(comps)
    extra = replication_sentence(replication)
    return "\n".join(f"- {s}" for s in [*sentences, *([extra] if extra else [])]) + "\n"


def headline_verdicts(comps: pd.DataFrame) -> dict[str, str]:
    """The verdicts the headline (``answer``) states, by name: the deepest ticket against the
    dense network, the sparsest trunk round that matches it (``none`` when none does), the tally
    over the trunk rounds, and at each branch round the ticket against each other strategy
    (all-in-one PSNR). The reproduction check compares these between a rerun and the committed
    run: the README's headline survives a rerun when every one is unchanged."""
    vs_dense, branches = _stated(comps)
    if vs_dense.empty:
        return {}
    deepest = vs_dense.iloc[-1]
    found = {verdict_name(deepest["round"], DENSE): str(deepest.verdict)}
    matching = vs_dense[vs_dense["verdict"] == "matches"]
    found["sparsest trunk round that matches dense"] = (
        f"round {int(matching.iloc[-1]['round'])}" if len(matching) else "none")
    found["trunk rounds vs dense"] = _tally(vs_dense)
    for rnd, at in branches.items():
        found.update({verdict_name(rnd, b): str(at.loc[b, "verdict"]) for b in at.index})
    return found


def method_note(comps: pd.DataFrame) -> str:
    """How the intervals and verdicts were made (margin, resampling, replicates)."""
    overall = _psnr_overall(comps)
    if overall.empty:
        return ""
    row = overall.iloc[0]
    margin = float(row.margin)
    seeds = int(overall["seeds"].max())
    resampled = ("the training seeds and the test images (crossed: every resampled seed is scored "
                 "on the same resampled images; images within each task)" if seeds > 1 else
                 "the test images within each task only: one seed, so the intervals say nothing "
                 "about the spread between training runs")
    return (f"Each comparison is a paired difference a − b (same seed, same test image) with a "
            f"95% percentile bootstrap interval from {int(row.n_boot)} replicates resampling "
            f"{resampled}. The all-in-one difference is the mean of the task means (every task "
            f"weighs the same). Verdict: *matches* when the whole interval lies within "
            f"±{margin:.2f} dB; otherwise *better* when it lies above 0, *worse* below 0, else "
            f"*inconclusive* (it holds 0 and reaches beyond the margin). Per-task intervals rest "
            f"on few images and are optimistic (a bootstrap cannot show more spread than its "
            f"images do).")


# ----- does the dense network learn every task? ----------------------------------------------------

# The full tier's bars for the dense network on the bundled test photos: at least this PSNR gain
# over the degraded input on every task, and a higher SSIM than the input on every task. On the
# held-out photos it must beat the input (gain > 0) on every task.
DENSE_MIN_GAIN_DB = 3.0


def dense_gains(metrics: pd.DataFrame, n_boot: int = N_BOOT, seed: int = 0) -> pd.DataFrame:
    """The dense network against the degraded inputs, per task and all-in-one: the paired PSNR gain
    and SSIM change (dense − input, same seed and image) with 95% bootstrap intervals (seeds and
    images resampled as in ``stats.paired_bootstrap``). Columns: task, gain_db, gain_low,
    gain_high, ssim_change, ssim_low, ssim_high, seeds, images."""
    dense = metrics[metrics["strategy"] == DENSE]
    if dense.empty:
        return pd.DataFrame(columns=["task", "gain_db", "gain_low", "gain_high", "ssim_change",
                                     "ssim_low", "ssim_high", "seeds", "images"])
    key = dense["dataset"].astype(str) + "/" + dense["image"].astype(str)
    out = None
    for metric, name in (("psnr", "gain"), ("ssim", "ssim")):
        diffs = pd.DataFrame({"seed": dense["seed"], "task": dense["task"], "image": key,
                              "diff": dense[metric] - dense[f"input_{metric}"]})
        res = stats.paired_bootstrap(diffs, n_boot=n_boot, seed=seed)
        col = "gain_db" if name == "gain" else "ssim_change"
        res = res.rename(columns={"difference": col, "ci_low": f"{name}_low",
                                  "ci_high": f"{name}_high"})
        keep = ["task", col, f"{name}_low", f"{name}_high"]
        out = res[keep + ["seeds", "images"]] if out is None else out.merge(res[keep], on="task")
    return out


def dense_bars(test: pd.DataFrame, heldout: pd.DataFrame | None = None) -> list[str]:
    """Whether the dense network learns every task, as sentences computed from ``dense_gains``
    tables (``test``: the bundled test photos, ``heldout``: the held-out check)."""
    per_task = test[test["task"] != ALL_IN_ONE]
    gain_ok = per_task[per_task["gain_db"] >= DENSE_MIN_GAIN_DB]["task"].tolist()
    ssim_ok = per_task[per_task["ssim_change"] > 0]["task"].tolist()
    missed = [t for t in per_task["task"] if t not in gain_ok or t not in ssim_ok]
    sentences = [
        f"Dense network on the test photos: PSNR gain ≥ +{DENSE_MIN_GAIN_DB:.0f} dB on "
        f"{len(gain_ok)} of {len(per_task)} tasks, SSIM above the input on {len(ssim_ok)} of "
        f"{len(per_task)}; " + ("it learns every task." if not missed else
                                "it does not yet learn every task (short on "
                                + ", ".join(missed) + ").")]
    if heldout is not None and len(heldout):
        held = heldout[heldout["task"] != ALL_IN_ONE]
        beaten = held[held["gain_db"] > 0]["task"].tolist()
        lost = [t for t in held["task"] if t not in beaten]
        sentences.append(
            f"On the held-out photos (unseen photos, out-of-range rain and haze) it beats the "
            f"degraded input on {len(beaten)} of {len(held)} tasks"
            + ("." if not lost else f" (not on {', '.join(lost)})."))
    return sentences


def _gains_table(gains: pd.DataFrame) -> list[str]:
    lines = ["| task | PSNR gain [95% CI] | SSIM change [95% CI] |", "|---|---|---|"]
    for r in gains.itertuples():
        lines.append(f"| {r.task} | {r.gain_db:+.2f} [{r.gain_low:+.2f}, {r.gain_high:+.2f}] | "
                     f"{r.ssim_change:+.4f} [{r.ssim_low:+.4f}, {r.ssim_high:+.4f}] |")
    return lines


# ----- the summary page -------------------------------------------------------------------------

def _dense_table(stats_: pd.DataFrame) -> list[str]:
    dense = stats_[stats_["strategy"] == DENSE]
    dense = dense.set_index("task").loc[sorted(dense["task"], key=_task_key)]
    lines = ["| task | input PSNR | dense PSNR | gain | input SSIM | dense SSIM |",
             "|---|---|---|---|---|---|"]
    for task, r in dense.iterrows():
        lines.append(f"| {task} | {r.input_psnr:.2f} | {_sd(r.psnr, r.psnr_sd, r.seeds)} | "
                     f"{_sd(r.gain, r.gain_sd, r.seeds, '+.2f')} | {r.input_ssim:.4f} | "
                     f"{_sd(r.ssim, r.ssim_sd, r.seeds, '.4f')} |")
    return lines


def _round_label(stats_: pd.DataFrame) -> dict[int, float]:
    """Remaining fraction per round: the trunk's (a control's own count may differ)."""
    trunk = stats_[stats_["strategy"] == strategies.TRUNK].groupby("round")["remaining_all"].mean()
    own = stats_.groupby("round")["remaining_all"].mean()
    return {int(r): float(trunk.get(r, own[r])) for r in own.index}


def _overall_table(stats_: pd.DataFrame) -> list[str]:
    overall = stats_[stats_["task"] == ALL_IN_ONE].copy()
    names = _ordered(list(overall["strategy"]))
    remaining = _round_label(stats_)
    overall["cell"] = [_cell(r) for r in overall.itertuples()]
    table = overall.pivot_table(index="round", columns="strategy", values="cell",
                                aggfunc="first").sort_index()
    table = table[[s for s in names if s in table.columns]]
    lines = ["| remaining % (round) | " + " | ".join(_label(s) for s in table.columns) + " |",
             "|---" * (len(table.columns) + 1) + "|"]
    for rnd, row in table.iterrows():
        cells = ["" if not isinstance(v, str) else v for v in row.to_numpy()]
        lines.append(f"| {100 * remaining[int(rnd)]:.1f} ({rnd}) | " + " | ".join(cells) + " |")
    return lines


def _vs_dense_table(comps: pd.DataFrame) -> list[str]:
    rows = _psnr_overall(comps)
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
        others = [b for b in _ordered(list(set(at["b"]))) if b != DENSE]
        cols = ([DENSE] if DENSE in set(at["b"]) else []) + others
        rem = float(at["remaining"].iloc[0])
        lines += ["", f"## Ticket − X at {100 * rem:.1f}% remaining (trunk round {rnd}), PSNR dB",
                  "", "Difference [95% CI] verdict; positive: the ticket scores higher.", "",
                  "| task | " + " | ".join(f"ticket − {_label(b)}" for b in cols) + " |",
                  "|---" * (len(cols) + 1) + "|"]
        for task in sorted(set(at["task"]), key=_task_key):
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
    tasks = sorted(set(heldout["task"]) | {ALL_IN_ONE}, key=_task_key)
    for task in tasks:
        cells = [task]
        if task in dense.index:
            d = dense.loc[task]
            cells += [f"{d.input_psnr:.2f}", _sd(d.psnr, d.psnr_sd, d.seeds),
                      _sd(d.gain, d.gain_sd, d.seeds, "+.2f")]
        else:
            cells += ["", "", ""]
        for r in shown:
            row = vs[(vs["round"] == r) & (vs["task"] == task)]
            cells.append(f"{interval(row.iloc[0])} {row.iloc[0].verdict}" if len(row) else "")
        lines.append("| " + " | ".join(cells) + " |")
    if not shown:
        lines += ["", "No ticket at a branch round was scored on the held-out photos."]
    return lines


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
        lines.append(f"| {rnd} | {100 * rem:.1f} | {_label(strategy)} | {empty} | {cut} |")
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
                  *_gains_table(gains), "", *dense_bars(gains, held_gains)]
    lines += ["", "## All-in-one PSNR (dB) by strategy and remaining parameters", "",
              "Remaining = % of all parameters (unpruned ones counted) of the trunk at that "
              "round" + ("; mean ± sd over seeds" if stats_["seeds"].max() > 1 else "") + ".",
              "", *_overall_table(stats_)]
    if not _psnr_overall(comps).empty:
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
              f"{_share(stats.REPLICATION_TARGET)} of the time. A comparison whose mean lies near "
              f"0 or ±margin needs many seeds: more seeds narrow its interval, but around a mean "
              f"that stays near the boundary.", "",
              "| round | remaining | ticket − X | verdict | rerun keeps | "
              + " | ".join(f"agree at {c.split('_')[1]}" for c in agree) + " | seeds needed |",
              "|---" * (len(agree) + 6) + "|"]
    rank = {name: i for i, name in enumerate([DENSE, *_ordered(list(set(table["b"]) - {DENSE}))])}
    order = table.assign(_rank=table["b"].map(rank)).sort_values(["round", "_rank"])
    for r in order.itertuples():
        lines.append(f"| {int(r.round)} | {100 * r.remaining:.1f}% | {_label(r.b)} | {r.verdict} "
                     f"| {_share(r.survives)} | "
                     + " | ".join(_share(getattr(r, c)) for c in agree)
                     + f" | {_needed(r.seeds_needed)} |")
    return lines


def write_replication(run_dir: Path, table: pd.DataFrame) -> Path:
    """``<run>/replication.csv``: ``stats.replications`` of the run."""
    path = Path(run_dir) / "replication.csv"
    atomic_write_text(table.to_csv(index=False), path)
    return path


def read_optional(path: Path) -> pd.DataFrame | None:
    """A CSV of the run folder, or None when it is absent or empty."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    table = pd.read_csv(path)
    return None if table.empty else table


def write_comparisons(run_dir: Path, comps: pd.DataFrame) -> Path:
    """``<run>/comparisons.csv``: every comparison of the study (``comparisons``)."""
    path = Path(run_dir) / "comparisons.csv"
    atomic_write_text(comps.to_csv(index=False), path)
    return path


def load_comparisons(run_dir: Path, metrics: pd.DataFrame) -> pd.DataFrame:
    """``<run>/comparisons.csv`` when the evaluation wrote it, else ``comparisons(metrics)``."""
    table = read_optional(Path(run_dir) / "comparisons.csv")
    return comparisons(metrics) if table is None else table


def write_summary(run_dir: Path, metrics: pd.DataFrame, title: str, notes: str = "",
                  heldout: pd.DataFrame | None = None, points: pd.DataFrame | None = None,
                  comps: pd.DataFrame | None = None,
                  replication: pd.DataFrame | None = None) -> Path:
    """Write ``<run>/summary.md`` (``summary_markdown``)."""
    path = Path(run_dir) / "summary.md"
    atomic_write_text(summary_markdown(metrics, title, notes, heldout, points, comps,
                                       replication=replication), path)
    return path


# ----- reproduction -----------------------------------------------------------------------------

def compare_with_reference(current: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Per point and task, the PSNR of this run against the committed reference run: columns
    seed, strategy, round, task, remaining, psnr_rerun, psnr_reference, difference."""
    keys = ["seed", "strategy", "round", "task"]
    cur = point_means(current)[keys + ["remaining_all", "psnr"]]
    ref = point_means(reference)[keys + ["remaining_all", "psnr"]]
    both = cur.merge(ref, on=keys, how="outer", suffixes=("_rerun", "_reference"))
    both["remaining"] = both["remaining_all_rerun"].fillna(both["remaining_all_reference"])
    both["difference"] = both["psnr_rerun"] - both["psnr_reference"]
    return both[[*keys, "remaining", "psnr_rerun", "psnr_reference", "difference"]]


def gain_comparisons(gains: pd.DataFrame, margin: float = EQUIVALENCE_MARGIN_DB) -> pd.DataFrame:
    """A ``dense_gains`` table (PSNR) as comparison rows: ``a`` the dense network, ``b`` the degraded
    input (``INPUT``), round 0, with the interval's verdict (the columns of ``stats.comparisons``
    that the reproduction check reads: metric, round, remaining, a, b, task, difference, ci_low,
    ci_high, verdict)."""
    return pd.DataFrame({
        "metric": "psnr", "round": 0, "remaining": 1.0, "a": DENSE, "b": INPUT,
        "task": gains["task"].tolist(), "difference": gains["gain_db"].tolist(),
        "ci_low": gains["gain_low"].tolist(), "ci_high": gains["gain_high"].tolist(),
        "verdict": [stats.verdict(lo, hi, margin)
                    for lo, hi in zip(gains["gain_low"], gains["gain_high"])]})


def _set_comparisons(comps: tuple[pd.DataFrame, pd.DataFrame],
                     gains: tuple[pd.DataFrame, pd.DataFrame], margin: float) -> pd.DataFrame:
    """One image set's rows of ``reproduction``: every PSNR comparison and every dense gain of
    the committed run beside the rerun's (``comps``: their PSNR ``comparisons``, ``gains``: their
    ``dense_gains``, rerun first), with ``inside`` and ``verdict_unchanged``."""
    keys = ["metric", "round", "a", "b", "task"]
    pick = ["remaining", "difference", "ci_low", "ci_high", "verdict"]

    def rows(table_comps: pd.DataFrame, table_gains: pd.DataFrame) -> pd.DataFrame:
        frames = [frame[keys + pick] for frame in
                  (table_comps, gain_comparisons(table_gains, margin)) if len(frame)]
        return (pd.concat(frames, ignore_index=True) if frames
                else pd.DataFrame(columns=keys + pick))

    comp = rows(comps[1], gains[1]).rename(columns={c: f"reference_{c}" for c in pick}).merge(
        rows(comps[0], gains[0]).rename(columns={c: f"rerun_{c}" for c in pick}), on=keys,
        how="outer")
    comp["remaining"] = comp["reference_remaining"].fillna(comp["rerun_remaining"])
    comp = comp.drop(columns=["reference_remaining", "rerun_remaining"]).rename(
        columns={"reference_verdict": "verdict_reference", "rerun_verdict": "verdict_rerun"})
    tol = REPRODUCTION_TOLERANCE_DB
    d, lo, hi = comp["rerun_difference"], comp["reference_ci_low"], comp["reference_ci_high"]
    present = d.notna() & comp["reference_difference"].notna()
    comp["inside"] = present & (((lo - tol <= d) & (d <= hi + tol))
                                | ((d - comp["reference_difference"]).abs() <= tol))
    comp["verdict_unchanged"] = present & (comp["verdict_reference"] == comp["verdict_rerun"])
    return comp.assign(kind="comparison")


def _named(row: Any) -> str:
    """``round 12 (9.7%), rewind vs reinit, derain``, led by ``heldout:`` off the test set."""
    where = "" if row.set == TEST_SET else f"{row.set}: "
    return (f"{where}round {int(row['round'])} ({100 * row.remaining:.1f}%), {row.a} vs {row.b}, "
            f"{row.task}")


def _bars_note(gains: dict[str, tuple[pd.DataFrame, pd.DataFrame]]) -> str:
    """Whether ``dense_bars`` reads the same for the rerun (index 0) as for the committed run."""
    texts = [" ".join(dense_bars(gains[TEST_SET][i], gains[HELDOUT_SET][i])) for i in (0, 1)]
    if texts[0] == texts[1]:
        return "; the dense network's bars read as committed"
    return f"; the dense network's bars changed: committed \"{texts[1]}\", rerun \"{texts[0]}\""


def reproduction_inputs(rerun: Path, reference: Path) -> tuple[
        pd.DataFrame, pd.DataFrame, tuple[pd.DataFrame, pd.DataFrame] | None,
        pd.DataFrame | None]:
    """The tables ``report.reproduction`` compares, read from two ``metrics.csv`` files: the
    rerun's and the reference's metrics; when both have a ``heldout.csv`` beside them, the two
    held-out tables (else ``None``); the reference's ``replication.csv`` when it has one (else
    ``None``)."""
    held = [path.with_name("heldout.csv") for path in (rerun, reference)]
    heldout = (tuple(pd.read_csv(path) for path in held)
               if all(path.is_file() for path in held) else None)
    return (pd.read_csv(rerun), pd.read_csv(reference), heldout,
            read_optional(reference.with_name("replication.csv")))


def kept_shares(replication: pd.DataFrame | None) -> dict[str, float]:
    """``{"round 12 vs dense": 0.78, ...}``: ``stats.replications``' *survives* under the names of
    ``headline_verdicts``."""
    if replication is None or replication.empty:
        return {}
    return {verdict_name(r.round, r.b): float(r.survives) for r in replication.itertuples()
            if not pd.isna(r.survives)}


def _headline_note(comps: dict[str, tuple[pd.DataFrame, pd.DataFrame]], show: int,
                   kept: dict[str, float] | None = None) -> str:
    """Whether the headline's verdicts (``headline_verdicts`` on the test photos) survive:
    ``the headline's 9 verdicts unchanged`` or ``2 of 9 headline verdicts changed (...)``; with
    ``kept`` (``kept_shares`` of the committed run) each changed verdict says how often the
    committed run's simulated reruns kept it."""
    rerun, committed = (headline_verdicts(comps[TEST_SET][i]) for i in (0, 1))
    names = [name for name in committed if name in rerun]
    if not names:
        return ""
    kept = kept or {}
    changed = [name for name in names if rerun[name] != committed[name]]
    robust = [name for name in names if kept.get(name, 0.0) >= stats.REPLICATION_TARGET]
    if not changed:
        return f"the headline's {len(names)} verdicts unchanged, "

    def odds(name: str) -> str:
        return f", simulated reruns kept it {_share(kept[name])}" if name in kept else ""

    listed = "; ".join(f"{name}: {committed[name]} → {rerun[name]}{odds(name)}"
                       for name in changed[:show])
    more = f"; and {len(changed) - show} more" if len(changed) > show else ""
    simulated = [name for name in names if name in kept]
    expected = (f"; the simulated reruns expected {sum(1 - kept[n] for n in simulated):.1f} of "
                f"the {len(simulated)} single comparisons among them to change, "
                f"{sum(n in changed for n in simulated)} did" if simulated else "")
    if simulated:
        lost = [name for name in robust if name in changed]
        expected += (f"; of the {len(robust)} robust ones (kept at least "
                     f"{_share(stats.REPLICATION_TARGET)} of the time) "
                     + (f"{len(lost)} changed: {', '.join(lost)}" if lost else
                        "none changed" if robust else "there were none"))
    return f"{len(changed)} of {len(names)} headline verdicts changed ({listed}{more}{expected}), "


def reproduction(current: pd.DataFrame, reference: pd.DataFrame,
                 margin: float = EQUIVALENCE_MARGIN_DB, n_boot: int = N_BOOT, seed: int = 0,
                 show: int = 3, heldout: tuple[pd.DataFrame, pd.DataFrame] | None = None,
                 replication: pd.DataFrame | None = None) -> tuple[pd.DataFrame, str]:
    """Does a rerun (``current`` metrics) reproduce the committed run (``reference``)?

    For every PSNR comparison of ``comparisons`` and every dense gain over the degraded input
    (``gain_comparisons``) present in both: is the rerun's mean difference inside the committed
    95% interval (``inside``), and is the verdict unchanged. ``heldout`` (the rerun's and the
    committed run's ``heldout.csv``) adds the same rows for the held-out photos (``set``
    ``heldout``; the test photos are ``set`` ``test``) and says whether the dense network's bars
    (``dense_bars``) read as committed.

    The rule: N 95% intervals are missed by chance alone now and then, so the rerun is
    *reproduced within noise* when no more of its N comparison means lie outside than
    ``stats.chance_misses(N)`` (the 95% quantile of Binomial(N, 0.05); 0 of 1, 3 of 18, 17 of
    228), and *not reproduced* when more do. Either way the line names the comparisons outside
    (farthest first), says whether the headline's verdicts (``headline_verdicts``) survive and
    names the first ``show`` verdicts that changed, each with how often the committed run's
    simulated reruns kept it (``replication``: the committed run's ``stats.replications``, read
    by the caller from its ``replication.csv``; without it that is left out).

    Returns the table written to ``reproduction.csv`` (``kind`` ``point``: per (set, seed,
    strategy, round, task) the raw PSNR difference; ``kind`` ``comparison``:
    reference_difference, reference_ci_low/high, rerun_difference, rerun_ci_low/high, inside,
    verdict_reference, verdict_rerun, verdict_unchanged) and that line.
    """
    sets = {TEST_SET: (current, reference)}
    if heldout is not None:
        sets[HELDOUT_SET] = heldout
    points = pd.concat([compare_with_reference(cur, ref).assign(kind="point", set=name)
                        for name, (cur, ref) in sets.items()], ignore_index=True)
    comps = {name: tuple(comparisons(table, margin, n_boot, seed, ("psnr",)) for table in pair)
             for name, pair in sets.items()}
    gains = {name: (dense_gains(cur, n_boot, seed), dense_gains(ref, n_boot, seed))
             for name, (cur, ref) in sets.items()}
    comp = pd.concat([_set_comparisons(comps[name], gains[name], margin).assign(set=name)
                      for name in sets], ignore_index=True)
    table = pd.concat([points, comp], ignore_index=True)
    first = ["kind", "set", "metric", "seed", "strategy", "round", "remaining", "a", "b", "task"]
    table = table[[c for c in first if c in table] + [c for c in table if c not in first]]

    present = comp["rerun_difference"].notna() & comp["reference_difference"].notna()
    both = comp[present]
    total = len(both)
    moved = points.loc[points["set"] == TEST_SET, "difference"].abs()
    point_note = ("point means: max |ΔPSNR| = n/a" if moved.isna().all()
                  else f"point means: max |ΔPSNR| = {moved.max():.3f} dB")
    only_one = int((~present).sum())
    extra = (f"; {only_one} comparison{'s' if only_one != 1 else ''} in only one of the two runs"
             if only_one else "")
    if total == 0:
        return table, (f"nothing to compare: the rerun and the committed run share no comparison "
                       f"({point_note}){extra}.")
    counts = both["set"].value_counts()
    split = ("" if len(sets) == 1 else " (" + ", ".join(
        f"{int(counts.get(name, 0))} {SET_WORDS[name]}" for name in sets) + ")")
    unchanged = int(both["verdict_unchanged"].sum())
    changed = both[~both["verdict_unchanged"]]
    flips = ("" if changed.empty else ": " + "; ".join(
        f"{_named(r)} {r.verdict_reference} → {r.verdict_rerun}"
        for _, r in changed.head(show).iterrows())
        + (f"; and {len(changed) - show} more" if len(changed) > show else ""))
    verdicts = (f"{_headline_note(comps, show, kept_shares(replication))}{unchanged}/{total} "
                f"verdicts unchanged{flips}")
    bars = _bars_note(gains) if heldout is not None else ""
    outside = both[~both["inside"]]
    if outside.empty:
        return table, (f"reproduced within noise: all {total} rerun comparison means{split} lie "
                       f"inside the committed 95% intervals, {verdicts} ({point_note}){extra}"
                       f"{bars}.")
    allowed = stats.chance_misses(total)
    within = len(outside) <= allowed
    distance = np.maximum(outside["reference_ci_low"] - outside["rerun_difference"],
                          outside["rerun_difference"] - outside["reference_ci_high"])
    outside = outside.assign(_distance=distance).sort_values("_distance", ascending=False)
    named = [f"{_named(r)}: committed {r.reference_difference:+.2f} [{r.reference_ci_low:+.2f}, "
             f"{r.reference_ci_high:+.2f}], rerun {r.rerun_difference:+.2f}"
             for _, r in outside.head(show).iterrows()]
    more = f"; and {len(outside) - show} more" if len(outside) > show else ""
    return table, (f"{'' if within else 'NOT '}reproduced within noise: {len(outside)} of "
                   f"{total} comparisons{split} outside the committed intervals, "
                   f"{'no more than' if within else 'more than'} the {allowed} that {total} 95% "
                   f"intervals miss by chance: " + "; ".join(named) + more
                   + f" ({verdicts}; {point_note}){extra}{bars}.")
