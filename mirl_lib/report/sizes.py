"""Networks of the same size side by side: their quality on the test and held-out photos, each
against the unstructured ticket with its interval, and their speed (the rows that
``benchmarks/ticket_speed.py`` wrote for the run's params file).

One row per strategy at every branch round (the dense network first), from the run's tables only;
the README's ``<!-- sizes:<run> -->`` block is ``sizes_block`` (``python -m mirl_lib sizes RUN``).
Quality is exploratory except where a primary comparison says otherwise (the run's
``primary.csv``); the block says which.
"""
from __future__ import annotations

from dataclasses import replace

import pandas as pd

from mirl_lib.core.names import ALL_IN_ONE, DENSE, TRUNK
from mirl_lib.core.protocol import task_means
from mirl_lib.files.paths import TICKET_SPEED_COLUMNS
from mirl_lib.report.comparisons import (
    branch_rounds,
    compare,
    interval,
    label,
    ordered,
    psnr_overall,
)
from mirl_lib.report.intervals import cell_table, crossed, pairs
from mirl_lib.report.means import sd
from mirl_lib.report.primary import seeds_needed

COLUMNS = ("round", "strategy", "remaining_all", "test_psnr", "test_psnr_sd", "seeds",
           "test_vs_ticket", "heldout_psnr", "heldout_psnr_sd", "heldout_vs_ticket",
           "forward_ms_1", "forward_speedup_1", "forward_speedup_2", "train_speedup_1")


def _overall(table: pd.DataFrame, strategy: str, rnd: int) -> tuple[float, float, int, float]:
    """Mean and sd over seeds of a point's all-in-one PSNR, its seeds and its remaining share."""
    point = table[(table["strategy"] == strategy) & (table["round"] == rnd)]
    if point.empty:
        return float("nan"), float("nan"), 0, float("nan")
    means = task_means(point, ["seed"])
    overall = means[means["task"] == ALL_IN_ONE]["psnr"]
    return (float(overall.mean()), float(overall.std()) if len(overall) > 1 else 0.0,
            int(len(overall)), float(point["remaining_all"].mean()))


def _vs_ticket(table: pd.DataFrame | None, strategy: str, rnd: int, level: float) -> str:
    """``ticket − X`` all-in-one PSNR with its interval, or "" where there is nothing to pair."""
    if table is None or strategy == TRUNK or table.empty:
        return ""
    b_round = 0 if strategy == DENSE else rnd
    result = compare(table, (TRUNK, rnd), (strategy, b_round), "psnr", level)
    if result.empty:
        return ""
    return interval(result[result["task"] == ALL_IN_ONE].iloc[0])


def _speed(speed: pd.DataFrame | None, strategy: str, rnd: int, threads: int, column: str
           ) -> float:
    if speed is None:
        return float("nan")
    rows = speed[(speed["strategy"] == strategy) & (speed["round"] == rnd)
                 & (speed["threads"] == threads)]
    return float(rows[column].iloc[-1]) if len(rows) else float("nan")


def size_table(metrics: pd.DataFrame, heldout: pd.DataFrame | None, speed: pd.DataFrame | None,
               level: float = 0.95) -> pd.DataFrame:
    """``COLUMNS``: the dense network, then per branch round the trunk's ticket and every other
    strategy that ran there (registry order); ``*_vs_ticket`` is ticket − X at that round (the
    dense network: the ticket of the deepest branch round − dense), PSNR in dB with its crossed
    interval; speed-ups are over the dense network (``_1``/``_2``: 1 and 2 CPU threads)."""
    if speed is not None:
        missing = [c for c in TICKET_SPEED_COLUMNS if c not in speed]
        if missing:
            raise ValueError(f"the speed table lacks the column(s) {missing}")
    rounds = branch_rounds(metrics)
    present = set(zip(metrics["strategy"], metrics["round"].astype(int), strict=True))
    points = [(DENSE, 0)] if (DENSE, 0) in present else []
    for rnd in rounds:
        names = ordered([s for s, r in present if r == rnd and s not in (DENSE, TRUNK)])
        points += [(s, rnd) for s in ([TRUNK] if (TRUNK, rnd) in present else []) + names]
    rows = []
    for strategy, rnd in points:
        paired = max(rounds) if strategy == DENSE and rounds else rnd
        psnr, psnr_sd, seeds, remaining = _overall(metrics, strategy, rnd)
        held = ((float("nan"),) * 2 if heldout is None or heldout.empty
                else _overall(heldout, strategy, rnd)[:2])
        rows.append({
            "round": rnd, "strategy": strategy, "remaining_all": remaining,
            "test_psnr": psnr, "test_psnr_sd": psnr_sd, "seeds": seeds,
            "test_vs_ticket": _vs_ticket(metrics, strategy, paired, level),
            "heldout_psnr": held[0], "heldout_psnr_sd": held[1],
            "heldout_vs_ticket": _vs_ticket(heldout, strategy, paired, level),
            "forward_ms_1": _speed(speed, strategy, rnd, 1, "forward_ms"),
            "forward_speedup_1": _speed(speed, strategy, rnd, 1, "forward_speedup"),
            "forward_speedup_2": _speed(speed, strategy, rnd, 2, "forward_speedup"),
            "train_speedup_1": _speed(speed, strategy, rnd, 1, "train_speedup")})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _x(value: float, fmt: str = ".2f", suffix: str = "x") -> str:
    return "" if pd.isna(value) else f"{value:{fmt}}{suffix}"


def seeds_to_decide(metrics: pd.DataFrame, a: tuple[str, int], b: tuple[str, int],
                    level: float = 0.95, target: float = 0.8) -> int | None:
    """The fewest seeds (``primary.SEED_GRID``) whose two-sided test at ``1 - level`` tells ``a``
    from ``b`` with power ``target`` at the measured all-in-one PSNR difference, on the run's
    photos (``primary.seeds_needed``, simulated from the measured variance components); None when
    no count up to the grid's last does."""
    diffs = pairs(metrics, "psnr", a, b)
    if diffs.empty:
        return None
    tables, _, _, _, _ = cell_table(diffs)
    result = crossed(tables[ALL_IN_ONE])
    return seeds_needed(replace(result, estimate=abs(result.estimate)), "superiority", 0.0,
                        (1 - level) / 2, target)


def pair_lines(comps: pd.DataFrame, metrics: pd.DataFrame | None = None,
               level: float = 0.95) -> list[str]:
    """The exploratory same-size pairs other than the ticket's (``Strategy.compared_with``),
    all-in-one PSNR on the test photos, one line per pair: each round's estimate and interval,
    and, with ``metrics``, whether the interval decides the sign and, where it does not, about how
    many seeds would (``seeds_to_decide``)."""
    psnr = psnr_overall(comps)
    psnr = psnr[psnr["a"] != TRUNK]
    lines = []
    for (a, b), rows in psnr.groupby(["a", "b"], sort=False):
        parts = []
        for r in rows.sort_values("round").itertuples():
            part = f"{interval(r, ' dB')} at {100 * r.remaining:.1f}%"
            if metrics is not None:
                if r.ci_low > 0 or r.ci_high < 0:
                    part += f" ({label(a)} {'higher' if r.ci_low > 0 else 'lower'})"
                else:
                    n = seeds_to_decide(metrics, (a, int(r.round)),
                                        (b, 0 if b == DENSE else int(r.round)), level)
                    part += (" (undecided; on these photos no seed count up to 200 would decide "
                             "it)" if n is None else
                             f" (undecided; about {n} seeds would decide it, 80% power)")
            parts.append(part)
        lines.append(f"{label(a)} − {label(b)} (test photos, exploratory): " + "; ".join(parts))
    return lines


def sizes_block(metrics: pd.DataFrame, heldout: pd.DataFrame | None, speed: pd.DataFrame | None,
                comps: pd.DataFrame, level: float = 0.95) -> str:
    """The README's table: ``size_table`` as markdown, then ``pair_lines``."""
    table = size_table(metrics, heldout, speed, level)
    seeds = int(table["seeds"].max()) if len(table) else 0
    lines = ["| network | remaining | test PSNR | ticket − X, test | held-out PSNR | ticket − X, "
             "held-out | 512² image, 1 thread | speed-up, 2 threads | train step |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        name = label(r.strategy) if r.strategy != TRUNK else "unstructured ticket"
        ms = "" if pd.isna(r.forward_ms_1) else f"{r.forward_ms_1 / 1000:.2f} s"
        speed_1 = f"{ms} ({_x(r.forward_speedup_1)})" if ms else ""
        lines.append(
            f"| {name} | {100 * r.remaining_all:.1f}% | {sd(r.test_psnr, r.test_psnr_sd, r.seeds)}"
            f" | {r.test_vs_ticket} | "
            f"{'' if pd.isna(r.heldout_psnr) else sd(r.heldout_psnr, r.heldout_psnr_sd, r.seeds)}"
            f" | {r.heldout_vs_ticket} | {speed_1} | {_x(r.forward_speedup_2)} | "
            f"{_x(r.train_speedup_1)} |")
    notes = [f"All-in-one PSNR in dB, mean ± sd over {seeds} seeds; ticket − X: the unstructured "
             f"ticket of the same round (the dense network: of the deepest round) minus the row's "
             f"network, paired, {100 * level:.0f}% interval over seeds and photos crossed. "
             f"Speed-ups over the dense network on the CPU (`benchmarks/ticket_speed.py`, seed 0's "
             f"networks); train step: batch of the run's training, 1 thread.",
             *pair_lines(comps, metrics, level)]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def compact_block(metrics: pd.DataFrame, speed: pd.DataFrame | None, comps: pd.DataFrame,
                  level: float = 0.95) -> str:
    """The README's short table: per same-size pair A − B other than the ticket's
    (``Strategy.compared_with``), one row per round where both ran: all-in-one PSNR of the
    unstructured ticket, A and B, the ticket − A and A − B intervals, and A's and B's speed-up on
    one and two CPU threads; then the dense network's figures. Empty without such a pair."""
    table = size_table(metrics, None, speed, level).set_index(["strategy", "round"])
    psnr = psnr_overall(comps)
    blocks = []
    for (a, b), rows in psnr[psnr["a"] != TRUNK].groupby(["a", "b"], sort=False):
        la, lb = label(a), label(b)
        lines = [f"| remaining | unstructured ticket | {la} | {lb} | ticket − {la} | {la} − {lb} "
                 f"| speed-up, 1 / 2 threads: {la} | speed-up: {lb} |", "|---" * 8 + "|"]
        for r in rows.sort_values("round").itertuples():
            rnd = int(r.round)
            cells = [f"{100 * r.remaining:.1f}%",
                     *(f"{table.at[(s, rnd), 'test_psnr']:.2f}" for s in (TRUNK, a, b)),
                     table.at[(a, rnd), "test_vs_ticket"], interval(r),
                     *(f"{_x(table.at[(s, rnd), 'forward_speedup_1'])} / "
                       f"{_x(table.at[(s, rnd), 'forward_speedup_2'])}" for s in (a, b))]
            lines.append("| " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    if not blocks:
        return ""
    dense = table.loc[(DENSE, 0)] if (DENSE, 0) in table.index else None
    seeds = int(table["seeds"].max())
    note = (f"All-in-one PSNR in dB on the test photos, mean over {seeds} seeds; differences "
            f"paired, {100 * level:.0f}% intervals over seeds and photos crossed; speed-ups over "
            f"the dense network on a 512 x 512 image (CPU, seed 0's networks)")
    if dense is not None:
        note += (f"; the dense network: {dense.test_psnr:.2f} dB, "
                 f"{dense.forward_ms_1 / 1000:.2f} s on one thread")
    return "\n\n".join(blocks) + "\n\n" + note + ".\n"


def speed_rows(speed: pd.DataFrame, params_file: str, device_type: str = "cpu") -> pd.DataFrame:
    """The rows of ``ticket_speed.csv`` measured for ``params_file`` (its name, e.g.
    ``structured.yaml``) on ``device_type`` at the largest image side measured."""
    rows = speed[(speed["params_file"] == params_file) & (speed["device_type"] == device_type)]
    return rows[rows["side"] == rows["side"].max()] if len(rows) else rows
