"""The study's answer in sentences, made from the primary comparisons only (``answer``), the
README's headline block (``headline``) and the decisions it states (``headline_decisions``).

A primary comparison reads *shown* (its Holm-adjusted test rejects), *not shown* or *undecidable
with n seeds*; each says how many seeds ``analysis.power`` (80% by default) needs. The trunk is
read as a curve with a simultaneous band (``comparisons.trunk_curve``). Every other comparison is
exploratory: the summary gives its estimate and interval and no verdict.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from mirl_lib.core.config import AnalysisConfig
from mirl_lib.core.names import DENSE
from mirl_lib.report.comparisons import (
    branch_rounds,
    curve_reading,
    design,
    interval,
    label,
    trunk_curve,
    where,
)
from mirl_lib.report.primary import (
    HELD_BACK,
    SHOWN,
    UNDECIDABLE,
    UNTESTABLE,
    blinded,
    confirmation_table,
    decided,
    held_back,
    primary_table,
)

CLAIMS = {"noninferiority": "not worse than {X} by more than {m:.2f} dB",
          "superiority": "better than {X}",
          "equivalence": "equivalent to {X} within ±{m:.2f} dB"}


def _x(vs: str) -> str:
    return "the dense network" if vs == DENSE else label(vs)


def needs(row: Any, power: float) -> str:
    """``about 7 seeds give 80% power`` (``power``: the power ``seeds_needed`` and
    ``photos_needed`` were found for, ``analysis.power``), or, where no seed count up to 200 does,
    how many photos would at the run's seeds (or that none up to 100 does); for a confirmation (a
    row with ``planned_power``), the power it was planned with first."""
    planned = (f"planned power {100 * row.planned_power:.0f}%"
               if hasattr(row, "planned_power") else "")
    goal = f"{100 * power:.0f}% power"
    if pd.notna(row.seeds_needed):
        text = f"about {int(row.seeds_needed)} seeds give {goal}"
    else:
        text = f"no number of seeds up to 200 gives it {goal} on these photos"
        photos = getattr(row, "photos_needed", pd.NA)
        if pd.notna(photos):
            text += f"; about {int(photos)} photos would, at {int(row.seeds)} seeds"
        else:
            text += ", nor do 100 photos" + (" at the measured difference"
                                             if row.kind == "superiority" else "")
    return f"{planned}; {text}" if planned else text


def primary_sentence(row: Any, power: float) -> str:
    """One primary comparison, its decision first; ``power`` as for ``needs``."""
    claim = CLAIMS[row.kind].format(X=_x(row.vs), m=row.margin)
    level = 100 * (1 - 2 * row.alpha) if row.kind == "equivalence" else None
    shown_with = f"{design(row)}; Holm-adjusted p = {row.p_holm:.3f}"
    estimate = f"ticket − X {interval(row, ' dB')}"
    if row.decision == UNTESTABLE:
        head = (f"**{claim}: cannot be tested** ({int(row.seeds)} seed × {int(row.photos)} photo:"
                f" nothing measures the spread)")
    elif row.decision == SHOWN:
        head = f"**{claim}: shown** ({shown_with})"
    elif row.decision == UNDECIDABLE:
        head = (f"**{claim}: undecidable with {int(row.seeds)} seeds** (its "
                f"{level:.0f}% interval is wider than ±{row.margin:.2f} dB; "
                f"{needs(row, power)})")
    else:
        head = f"**{claim}: not shown, undecided** ({shown_with}; {needs(row, power)})"
    return f"Ticket vs {_x(row.vs)}: {head}; {estimate}."


def seed_list(seeds: Any) -> str:
    """``5–9`` for consecutive seeds, else ``0, 2, 7``."""
    seeds = sorted(int(x) for x in seeds)
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(map(str, seeds))


def confirmation_sentences(confirm: pd.DataFrame, analysis: AnalysisConfig) -> list[str]:
    """The declared confirmation (``primary.confirmation_table``): pending, with its planned
    power, or its decisions; nothing when none is declared."""
    if confirm.empty:
        return []
    first, k = confirm.iloc[0], len(confirm)
    declared_n = len(analysis.confirm_seeds)
    head = (f"Confirmation, declared before its seeds were trained (`analysis.confirm_seeds`): "
            f"the {k} tested again on seeds {seed_list(analysis.confirm_seeds)} alone, Holm at "
            f"α = {analysis.alpha:g}")
    if not decided(confirm):
        planned = ", ".join(f"{_x(r.vs)} {100 * r.planned_power:.0f}%"
                            for r in confirm.itertuples())
        held = f" {HELD_BACK}." if int(first.scored_seeds) else ""
        return [f"{head}: **pending**, {int(first.scored_seeds)} of {declared_n} seeds scored; "
                f"no estimate before all are.{held} Planned power (simulated from the "
                f"comparisons above): {planned}."]
    shown = int((confirm["decision"] == SHOWN).sum())
    return ([f"{head}: {shown} of {k} shown."]
            + [f"Confirmation: {primary_sentence(r, analysis.power)}"
               for r in confirm.itertuples()])


def answer(primary: pd.DataFrame, curve: pd.DataFrame, analysis: AnalysisConfig,
           confirm: pd.DataFrame | None = None) -> list[str]:
    """The answer as sentences: where the primary comparisons stand, each primary decision, the
    declared confirmation (``confirm``: ``primary.confirmation_table``) and the trunk curve. Once
    the confirmation is decided, the primary comparisons (its exploration) are one sentence and
    the confirmation's decisions the sentences that follow."""
    if primary.empty:
        return ["No primary comparison could be computed (their points are missing)."]
    first = primary.iloc[0]
    shown = int((primary["decision"] == SHOWN).sum())
    on = (f"; tested on the {int(primary['seeds'].max())} seeds outside the confirmation below"
          if analysis.confirm_seeds else "")
    setup = (f"ticket at {where(int(first['round']), first.remaining)} − X, all-in-one PSNR, "
             f"95% intervals over seeds and photos crossed, margin ±{analysis.margin_db:.2f} dB, "
             f"Holm over {len(primary)} at family-wise α = {analysis.alpha:g}{on}")
    if decided(confirm):
        # the confirmation decides: the exploration before it in one sentence (its table, with
        # power and the seeds each needs, is in the summary)
        each = "; ".join(f"{_x(r.vs)} {interval(r, ' dB')} ({r.decision})"
                         for r in primary.itertuples())
        sentences = [f"Exploration: the primary comparisons (declared in the params file; "
                     f"{setup}): {shown} of {len(primary)} shown; ticket − X: {each}."]
    else:
        sentences = [f"Primary comparisons (declared in the params file; {setup}): {shown} of "
                     f"{len(primary)} shown."]
        sentences += [primary_sentence(r, analysis.power) for r in primary.itertuples()]
    if confirm is not None:
        sentences += confirmation_sentences(confirm, analysis)
    sentences.append(curve_reading(curve))
    return sentences


def deepest_round(metrics: pd.DataFrame) -> int:
    """Where the primary comparisons are made: the deepest branch round of the run."""
    return max(branch_rounds(metrics), default=int(metrics["round"].max()))


def headline(metrics: pd.DataFrame, analysis: AnalysisConfig) -> str:
    """The answer as a markdown list, for the README's headline block."""
    rnd = deepest_round(metrics)
    confirm = confirmation_table(metrics, analysis, rnd)
    metrics = blinded(metrics, held_back(metrics, analysis))
    primary = primary_table(metrics, analysis, rnd)
    curve = trunk_curve(metrics, analysis.level)
    return "\n".join(f"- {s}" for s in answer(primary, curve, analysis, confirm)) + "\n"


def headline_decisions(primary: pd.DataFrame) -> dict[str, str]:
    """``{"vs dense (noninferiority)": "shown", ...}``: the decisions the headline states, by
    name (the reproduction check compares them between a rerun and the committed run)."""
    return {f"vs {r.vs} ({r.kind})": str(r.decision) for r in primary.itertuples()}


def method_note(analysis: AnalysisConfig, primary: pd.DataFrame) -> str:
    """How the intervals and decisions were made, with the margin's reason."""
    reason = f" ({analysis.margin_reason})" if analysis.margin_reason else ""
    seeds = int(primary["seeds"].max()) if len(primary) else 0
    photos = int(primary["photos"].max()) if len(primary) else 0
    return (f"Each comparison is a paired difference ticket − X (same seed, same test image). "
            f"Its {100 * analysis.level:.0f}% interval treats the {seeds} training seeds and the "
            f"{photos} test photos as crossed random samples (tasks fixed, a photo's crops and "
            f"tasks nested in it): a t interval with Satterthwaite degrees of freedom from the "
            f"seeds × photos table of cell means (`mirl_lib/report/intervals.py`, "
            f"`docs/statistics.md`). The primary comparisons were declared in the params file "
            f"(`analysis.primary`); margin ±{analysis.margin_db:.2f} dB{reason}; one-sided tests "
            f"(equivalence: two one-sided tests) Holm-adjusted at family-wise "
            f"α = {analysis.alpha:g}. Every other comparison is an exploratory estimate with its "
            f"interval, without a verdict.")
