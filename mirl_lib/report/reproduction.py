"""Does a rerun reproduce the committed run within noise? (``reproduction``; the run folder's
reference copy ``keep_reference`` and the line ``reproduction_report``).

A rerun (new seeds, or the same seeds on another machine whose float kernels differ) is judged with
*prediction* intervals: for every exploratory estimate of the committed run (every PSNR comparison
and every dense gain, per task and all-in-one, on the test photos and on the held-out photos), the
interval where another run's estimate on the same photos falls 95% of the time
(``intervals.prediction_interval``: both runs' seeds vary, the shared photos do not). N estimates
miss their prediction intervals now and then by chance; the rerun is *reproduced within noise* when
no more than ``intervals.chance_misses(N)`` of them lie outside and every primary decision
(``report.primary``) is the committed one: a claim shown stays shown, a claim not shown stays
not shown ("undecidable", an interval wider than the margin allows, is a way of not showing it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from mirl_lib.core.config import AnalysisConfig
from mirl_lib.core.names import DENSE, INPUT
from mirl_lib.files.atomic import atomic_write_bytes, atomic_write_text
from mirl_lib.files.paths import (
    CONFIG_FILE,
    HELDOUT_FILE,
    METRICS_FILE,
    REFERENCE_DIR,
    REPRODUCTION_FILE,
)
from mirl_lib.report.comparisons import comparisons
from mirl_lib.report.gains import dense_bars, dense_gains
from mirl_lib.report.headline import deepest_round, headline_decisions
from mirl_lib.report.intervals import LEVEL, chance_misses
from mirl_lib.report.means import point_means
from mirl_lib.report.primary import SHOWN, blinded, held_back, held_back_in, primary_table

# A rerun's estimate within this many dB of the prediction interval counts as inside: identical
# reruns must not fail on floating-point noise.
REPRODUCTION_TOLERANCE_DB = 1e-6
# The two image sets a run is scored on: the test photos (``metrics.csv``) and the held-out
# check (``heldout.csv``); ``reproduction`` keeps them apart in its ``set`` column.
TEST_SET, HELDOUT_SET = "test", "heldout"
SET_WORDS = {TEST_SET: "on the test photos", HELDOUT_SET: "on the held-out photos"}


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


def estimates(metrics: pd.DataFrame, level: float = LEVEL) -> pd.DataFrame:
    """Every exploratory PSNR estimate of a run with what its prediction interval needs: the
    comparisons, and the dense network's gains over the degraded input (``b`` = ``INPUT``)."""
    keep = ["round", "remaining", "a", "b", "task", "difference", "seeds", "photos", "ms_seed"]
    comps = comparisons(metrics, level, ("psnr",))
    gains = dense_gains(metrics, level)
    rows = [comps[keep]] if len(comps) else []
    if len(gains):
        rows.append(pd.DataFrame({"round": 0, "remaining": 1.0, "a": DENSE, "b": INPUT,
                                  "task": gains["task"], "difference": gains["gain_db"],
                                  "seeds": gains["seeds"], "photos": gains["photos"],
                                  "ms_seed": gains["gain_ms_seed"]}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=keep)


def _judged(rerun: pd.DataFrame, reference: pd.DataFrame, level: float) -> pd.DataFrame:
    """One image set's estimates of both runs beside each other, with the reference's prediction
    interval for a run of the rerun's seed count and whether the rerun lies inside."""
    keys = ["round", "a", "b", "task"]
    ref = estimates(reference, level).rename(columns={"difference": "reference_difference",
                                                      "seeds": "reference_seeds"})
    new = estimates(rerun, level)[keys + ["difference", "seeds"]].rename(
        columns={"difference": "rerun_difference", "seeds": "rerun_seeds"})
    both = ref.merge(new, on=keys, how="outer")
    s, p = both["reference_seeds"], both["photos"]
    t = pd.Series(np.where(s > 1, scipy_stats.t.ppf(0.5 + level / 2, (s - 1).clip(lower=1)),
                           np.nan), index=both.index)
    half = t * np.sqrt(both["ms_seed"] / p * (1 / s + 1 / both["rerun_seeds"]))
    both["pi_low"] = both["reference_difference"] - half
    both["pi_high"] = both["reference_difference"] + half
    tol = REPRODUCTION_TOLERANCE_DB
    d = both["rerun_difference"]
    both["judged"] = d.notna() & both["pi_low"].notna()
    both["inside"] = both["judged"] & (((both["pi_low"] - tol <= d) & (d <= both["pi_high"] + tol))
                                       | ((d - both["reference_difference"]).abs() <= tol))
    return both


def _named(row: Any) -> str:
    """``round 12 (9.7%), rewind vs reinit, derain``, led by ``heldout:`` off the test set."""
    where = "" if row.set == TEST_SET else f"{row.set}: "
    return (f"{where}round {int(row['round'])} ({100 * row.remaining:.1f}%), {row.a} vs {row.b}, "
            f"{row.task}")


def _bars_note(test: tuple[pd.DataFrame, pd.DataFrame],
               heldout: tuple[pd.DataFrame, pd.DataFrame] | None) -> str:
    """Whether ``dense_bars`` reads the same for the rerun (index 0) as for the committed run."""
    texts = [" ".join(dense_bars(dense_gains(test[i]),
                                 dense_gains(heldout[i]) if heldout is not None else None))
             for i in (0, 1)]
    if texts[0] == texts[1]:
        return "; the dense network's bars read as committed"
    return f"; the dense network's bars changed: committed \"{texts[1]}\", rerun \"{texts[0]}\""


def _primary_note(rerun: pd.DataFrame, reference: pd.DataFrame, analysis: AnalysisConfig
                  ) -> tuple[str, bool]:
    """Which primary decisions held, and whether all did. A decision is a claim shown or not: a
    move between "not shown" and "undecidable" (both claim nothing) is named but holds."""
    rnd = deepest_round(reference)
    held = [headline_decisions(primary_table(t, analysis, rnd, with_power=False))
            for t in (rerun, reference)]
    names = [n for n in held[1] if n in held[0]]
    if not names:
        return "no primary comparison in both runs", True
    changed = [n for n in names if (held[0][n] == SHOWN) != (held[1][n] == SHOWN)]
    drifted = [n for n in names if n not in changed and held[0][n] != held[1][n]]
    kept = [f"{n}: {held[1][n]}" + (f" → {held[0][n]}" if n in drifted else "")
            for n in names if n not in changed]
    moved = [f"{n}: {held[1][n]} → {held[0][n]}" for n in changed]
    text = (f"{len(names) - len(changed)} of {len(names)} primary decisions held"
            + (f" ({'; '.join(kept)})" if kept else "")
            + (f", changed: {'; '.join(moved)}" if moved else ""))
    return text, not changed


def reproduction(current: pd.DataFrame, reference: pd.DataFrame, analysis: AnalysisConfig,
                 show: int = 3, heldout: tuple[pd.DataFrame, pd.DataFrame] | None = None,
                 level: float = LEVEL) -> tuple[pd.DataFrame, str]:
    """Does a rerun (``current`` metrics) reproduce the committed run (``reference``)? Returns the
    table written to ``reproduction.csv`` (``kind`` ``point``: per (set, seed, strategy, round,
    task) the raw PSNR difference; ``kind`` ``estimate``: each exploratory estimate of both runs
    with the committed run's prediction interval and ``inside``) and one line (module
    docstring): which primary decisions held, how many estimates lie outside their prediction
    intervals against how many chance allows (the farthest named), and whether the dense network's
    bars read as committed. ``heldout``: the rerun's and the committed run's ``heldout.csv``."""
    sets = {TEST_SET: (current, reference)}
    if heldout is not None:
        sets[HELDOUT_SET] = heldout
    points = pd.concat([compare_with_reference(cur, ref).assign(kind="point", set=name)
                        for name, (cur, ref) in sets.items()], ignore_index=True)
    judged = pd.concat([_judged(cur, ref, level).assign(set=name, kind="estimate")
                        for name, (cur, ref) in sets.items()], ignore_index=True)
    table = pd.concat([points, judged], ignore_index=True)
    first = ["kind", "set", "seed", "strategy", "round", "remaining", "a", "b", "task"]
    table = table[[c for c in first if c in table] + [c for c in table if c not in first]]
    primary, held = _primary_note(current, reference, analysis)
    moved = points.loc[points["set"] == TEST_SET, "difference"].abs()
    point_note = ("point means: max |ΔPSNR| = n/a" if moved.isna().all()
                  else f"point means: max |ΔPSNR| = {moved.max():.3f} dB")
    rated = judged[judged["judged"]]
    total = len(rated)
    bars = _bars_note(sets[TEST_SET], heldout)
    if total == 0:
        return table, (f"nothing to judge: the committed run has one seed or the runs share no "
                       f"estimate; {primary} ({point_note}){bars}.")
    counts = rated["set"].value_counts()
    split = ("" if len(sets) == 1 else " (" + ", ".join(
        f"{int(counts.get(name, 0))} {SET_WORDS[name]}" for name in sets) + ")")
    outside = rated[~rated["inside"]]
    allowed = chance_misses(total, level)
    within = len(outside) <= allowed and held
    distance = np.maximum(outside["pi_low"] - outside["rerun_difference"],
                          outside["rerun_difference"] - outside["pi_high"])
    outside = outside.assign(_distance=distance).sort_values("_distance", ascending=False)
    named = [f"{_named(r)}: committed {r.reference_difference:+.2f} (prediction interval "
             f"[{r.pi_low:+.2f}, {r.pi_high:+.2f}]), rerun {r.rerun_difference:+.2f}"
             for _, r in outside.head(show).iterrows()]
    more = f"; and {len(outside) - show} more" if len(outside) > show else ""
    listed = (": " + "; ".join(named) + more) if named else ""
    return table, (f"{'' if within else 'NOT '}reproduced within noise: {primary}; "
                   f"{len(outside)} of {total} exploratory estimates{split} outside their "
                   f"{100 * level:.0f}% prediction intervals, "
                   f"{'no more than' if len(outside) <= allowed else 'more than'} the {allowed} "
                   f"that {total} such intervals miss by chance{listed} ({point_note}){bars}.")


def reproduction_inputs(rerun: Path, reference: Path) -> tuple[
        pd.DataFrame, pd.DataFrame, tuple[pd.DataFrame, pd.DataFrame] | None, AnalysisConfig]:
    """The tables ``reproduction`` compares, read from two ``metrics.csv`` files: both runs'
    metrics; when both have a ``heldout.csv`` beside them, the two held-out tables (else
    ``None``); the reference's analysis settings (its ``config.yaml``, else the defaults). Where
    a run's ``config.yaml`` (the rerun's own, the reference's) declares a confirmation that is
    pending, that run's tables leave out its seeds already scored (``primary.held_back``)."""
    from mirl_lib.core.config import load_config

    held = [path.with_name(HELDOUT_FILE) for path in (rerun, reference)]
    heldout = (tuple(pd.read_csv(path) for path in held)
               if all(path.is_file() for path in held) else None)
    config = next((p / CONFIG_FILE for p in (reference.parent, reference.parent.parent)
                   if (p / CONFIG_FILE).is_file()), None)
    analysis = load_config(config).analysis if config is not None else AnalysisConfig()
    current, committed = pd.read_csv(rerun), pd.read_csv(reference)
    hidden = held_back_in(rerun.parent, current), held_back(committed, analysis)
    current, committed = blinded(current, hidden[0]), blinded(committed, hidden[1])
    if heldout is not None:
        heldout = (blinded(heldout[0], hidden[0]), blinded(heldout[1], hidden[1]))
    return current, committed, heldout, analysis


# What ``keep_reference`` copies, in this order: ``metrics.csv`` last, so that its presence in
# ``reference/`` means the copy is complete.
REFERENCE_FILES = (HELDOUT_FILE, CONFIG_FILE, METRICS_FILE)


def keep_reference(run_dir: Path) -> Path | None:
    """Copy the committed ``metrics.csv``, ``heldout.csv`` and ``config.yaml`` to ``reference/``
    once, before this run replaces them.

    The copies are what ``reproduction_report`` compares the rerun with; they are taken only when
    no reference exists yet, so a run resumed or rerun later still compares with the committed
    run. Each file is written atomically; ``metrics.csv`` comes last.
    """
    run_dir = Path(run_dir)
    reference = run_dir / REFERENCE_DIR
    if (run_dir / METRICS_FILE).is_file() and not (reference / METRICS_FILE).exists():
        for name in REFERENCE_FILES:
            if (run_dir / name).is_file():
                atomic_write_bytes((run_dir / name).read_bytes(), reference / name)
    return reference / METRICS_FILE if (reference / METRICS_FILE).is_file() else None


def reproduction_report(run_dir: Path) -> str:
    """Does this run reproduce the reference (committed) run within noise? One line
    (``reproduction``); ``<run>/reproduction.csv`` gets its table."""
    run_dir = Path(run_dir)
    reference = run_dir / REFERENCE_DIR / METRICS_FILE
    current = run_dir / METRICS_FILE
    if not reference.is_file():
        return "No committed reference results to compare with (this run is the first)."
    if not current.is_file():
        return f"{current}: not written yet (the evaluation stage has not run); nothing to compare."
    rerun, committed, heldout, analysis = reproduction_inputs(current, reference)
    table, line = reproduction(rerun, committed, analysis, heldout=heldout)
    atomic_write_text(table.to_csv(index=False), run_dir / REPRODUCTION_FILE)
    return f"Against the committed results: {line}"
