"""Does a rerun reproduce the committed run within noise? (``reproduction``; the run folder's
reference copy ``keep_reference`` and the line ``reproduction_report``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mirl_lib.core.names import DENSE
from mirl_lib.files.atomic import atomic_write_bytes, atomic_write_text
from mirl_lib.files.paths import (
    HELDOUT_FILE,
    METRICS_FILE,
    REFERENCE_DIR,
    REPLICATION_FILE,
    REPRODUCTION_FILE,
)
from mirl_lib.report import stats
from mirl_lib.report.comparisons import comparisons, read_optional
from mirl_lib.report.gains import dense_bars, dense_gains
from mirl_lib.report.headline import headline_verdicts, kept_shares, share
from mirl_lib.report.means import point_means
from mirl_lib.report.stats import EQUIVALENCE_MARGIN_DB, N_BOOT

# A rerun's comparison mean within this many dB of the committed interval (or of the committed
# mean) counts as inside: identical reruns must not fail on floating-point noise.
REPRODUCTION_TOLERANCE_DB = 1e-6


# The degraded input, as the ``b`` of a dense-gain comparison (``gain_comparisons``).
INPUT = "input"


# The two image sets a run is scored on: the bundled test photos (``metrics.csv``) and the
# held-out check (``heldout.csv``); ``reproduction`` keeps them apart in its ``set`` column.
TEST_SET, HELDOUT_SET = "test", "heldout"
SET_WORDS = {TEST_SET: "on the test photos", HELDOUT_SET: "on the held-out photos"}


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
    """The tables ``reproduction`` compares, read from two ``metrics.csv`` files: the
    rerun's and the reference's metrics; when both have a ``heldout.csv`` beside them, the two
    held-out tables (else ``None``); the reference's ``replication.csv`` when it has one (else
    ``None``)."""
    held = [path.with_name(HELDOUT_FILE) for path in (rerun, reference)]
    heldout = (tuple(pd.read_csv(path) for path in held)
               if all(path.is_file() for path in held) else None)
    return (pd.read_csv(rerun), pd.read_csv(reference), heldout,
            read_optional(reference.with_name(REPLICATION_FILE)))


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
        return f", simulated reruns kept it {share(kept[name])}" if name in kept else ""

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
                     f"{share(stats.REPLICATION_TARGET)} of the time) "
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


# What ``keep_reference`` copies, in this order: ``metrics.csv`` last, so that its presence in
# ``reference/`` means the copy is complete.
REFERENCE_FILES = (HELDOUT_FILE, REPLICATION_FILE, METRICS_FILE)


def keep_reference(run_dir: Path) -> Path | None:
    """Copy the committed ``metrics.csv``, ``heldout.csv`` and ``replication.csv`` to
    ``reference/`` once, before this run replaces them.

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
    """Does this run reproduce the reference (committed) run within noise? One line.

    Every PSNR comparison of ``comparisons.comparisons`` and every dense gain, on the test photos and,
    when both runs have a ``heldout.csv``, on the held-out photos, is computed on both runs: the
    rerun's differences are set against the committed 95% intervals (reproduced within noise when
    no more lie outside than chance allows, ``stats.chance_misses``), and the verdicts, the
    headline's among them, are compared.
    ``<run>/reproduction.csv`` gets the comparison rows and, per (set, seed, strategy, round,
    task), the raw PSNR differences (``reproduction``).
    """
    run_dir = Path(run_dir)
    reference = run_dir / REFERENCE_DIR / METRICS_FILE
    current = run_dir / METRICS_FILE
    if not reference.is_file():
        return "No committed reference results to compare with (this run is the first)."
    if not current.is_file():
        return f"{current}: not written yet (the evaluation stage has not run); nothing to compare."
    rerun, committed, heldout, replication = reproduction_inputs(current, reference)
    table, line = reproduction(rerun, committed, heldout=heldout, replication=replication)
    atomic_write_text(table.to_csv(index=False), run_dir / REPRODUCTION_FILE)
    return f"Against the committed results: {line}"
