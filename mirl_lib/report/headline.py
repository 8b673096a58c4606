"""The study's answer in sentences, chosen by verdicts (``answer``), the README's headline block
(``headline``) and the verdicts it states (``headline_verdicts``).
"""
from __future__ import annotations

import pandas as pd

from mirl_lib.core.names import DENSE
from mirl_lib.report import stats
from mirl_lib.report.comparisons import (
    SHORT,
    comparisons,
    design,
    interval,
    label,
    psnr_overall,
    stated_rows,
    trunk_tally,
    verdict_name,
    where,
)
from mirl_lib.report.stats import EQUIVALENCE_MARGIN_DB, N_BOOT
from mirl_lib.study import strategies


def answer(comps: pd.DataFrame) -> list[str]:
    """The study's answer as sentences, chosen by the verdicts of ``comparisons`` (all-in-one
    PSNR): the deepest ticket against the dense network; the sparsest trunk round that matches it
    (or that none does); at each branch round, the ticket against each ablation and control."""
    vs_dense, branches = stated_rows(comps)
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
    tally = trunk_tally(vs_dense)
    if len(matching):
        best = matching.iloc[-1]
        sentences.append(
            f"The sparsest ticket that matches the dense network keeps "
            f"{where(best['round'], best.remaining)}: {interval(best, ' dB')}; over the "
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
                items = ", ".join(f"{SHORT[at.loc[b, 'verdict']]} {label(b)} "
                                  f"({interval(at.loc[b], ' dB')})" for b in names)
                parts.append(f"against {title}: {items}")
        first = at.iloc[0]
        sentences.append(f"At {where(rnd, first.remaining)}, the ticket "
                         + "; ".join(parts) + " (all-in-one PSNR, ticket − X).")
    return sentences


def share(value: float) -> str:
    return f"{100 * value:.0f}%"


def needed(value: float) -> str:
    top = max(stats.REPLICATION_SEEDS)
    return f"more than {top}" if pd.isna(value) else f"{int(value)}"


def replication_sentence(table: pd.DataFrame) -> str:
    """How often the headline's verdicts replicate (``stats.replications`` rows of the stated
    comparisons: the deepest ticket against the dense network and every branch comparison), or
    why that cannot be said (one seed, no comparison)."""
    if table is None or table.empty:
        return ""
    vs_dense, branches = stated_rows(table)
    stated = pd.concat([vs_dense.tail(1), *(at.reset_index() for at in branches.values())])
    if stated.empty:
        return ""
    seeds = int(stated["seeds"].max())
    if seeds < 2 or stated["survives"].isna().all():
        return ("How often these verdicts replicate cannot be estimated from one seed "
                "(`stats.replication` draws new seeds from the committed seeds' spread).")
    rows = [(f"vs {'the dense network' if r.b == DENSE else label(r.b)}", r)
            for r in stated.itertuples()]
    parts = [f"{name}: {r.verdict} {share(r.survives)} ({needed(r.seeds_needed)} seeds)"
             for name, r in rows]
    robust = [name for name, r in rows if r.survives >= stats.REPLICATION_TARGET]
    firm = (f" Robust (kept at least {share(stats.REPLICATION_TARGET)} of the time): "
            + (", ".join(robust) if robust else "none")
            + "; a rerun may change the others.")
    return (f"How often a rerun keeps each verdict (the share of {stats.REPLICATION_SIMS} simulated "
            f"runs of {seeds} new seeds, drawn from what these {seeds} leave uncertain, "
            f"`stats.replication`), and the seeds two runs need to agree on it "
            f"{share(stats.REPLICATION_TARGET)} of the time: " + "; ".join(parts) + "." + firm)


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
    vs_dense, branches = stated_rows(comps)
    if vs_dense.empty:
        return {}
    deepest = vs_dense.iloc[-1]
    found = {verdict_name(deepest["round"], DENSE): str(deepest.verdict)}
    matching = vs_dense[vs_dense["verdict"] == "matches"]
    found["sparsest trunk round that matches dense"] = (
        f"round {int(matching.iloc[-1]['round'])}" if len(matching) else "none")
    found["trunk rounds vs dense"] = trunk_tally(vs_dense)
    for rnd, at in branches.items():
        found.update({verdict_name(rnd, b): str(at.loc[b, "verdict"]) for b in at.index})
    return found


def method_note(comps: pd.DataFrame) -> str:
    """How the intervals and verdicts were made (margin, resampling, replicates)."""
    overall = psnr_overall(comps)
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


def kept_shares(replication: pd.DataFrame | None) -> dict[str, float]:
    """``{"round 12 vs dense": 0.78, ...}``: ``stats.replications``' *survives* under the names of
    ``headline_verdicts``."""
    if replication is None or replication.empty:
        return {}
    return {verdict_name(r.round, r.b): float(r.survives) for r in replication.itertuples()
            if not pd.isna(r.survives)}
