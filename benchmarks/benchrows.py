"""Benchmark CSVs that accumulate measurements: a rerun replaces its own rows and keeps the rest.

``merge_rows(new, path, key, columns, kind)`` is ``new`` after the rows of ``path`` whose ``key``
columns match no row of ``new`` (other devices, shapes, options ...), in ``columns`` order. A file
that cannot be read, or that lacks a ``key`` column, is one ``MirlError`` naming it, before
anything is measured or overwritten.

This module imports pandas and ``mirl_lib.core.errors`` only; the benchmarks import it as a sibling
script (``from benchrows import ...``).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from mirl_lib.core.errors import MirlError

# What a column added to a CSV later reads in the rows written before it, its value unknown.
NOT_RECORDED = "not recorded"


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one short line (compiler errors run over many lines)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def merge_rows(new: pd.DataFrame, path: Path, key: Sequence[str], columns: Sequence[str],
               kind: str, later: dict[str, object] | None = None) -> pd.DataFrame:
    """The rows of ``path`` that share no ``key`` with ``new``, then ``new``. ``later``: columns
    added to the CSV after rows were written, with the value such an older row stands for (or a
    function of the older rows giving one value per row)."""
    if not path.is_file():
        return new
    try:
        old = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise MirlError(f"{path}: cannot read the existing results ({one_line(exc)}); move it away "
                        f"or pass another --out") from None
    later = later or {}

    def foreign(missing: list[str]) -> MirlError:
        return MirlError(f"{path}: not a {kind} CSV (no column(s) {missing}); move it away or "
                         f"pass another --out")

    missing = [c for c in key if c not in old.columns and c not in later]
    if missing:
        raise foreign(missing)
    for column, value in later.items():
        if column not in old.columns:
            try:
                old[column] = value(old) if callable(value) else value
            except KeyError as exc:  # the function reads a column this file lacks
                raise foreign([exc.args[0]]) from None
    keys = set(new[list(key)].astype(str).itertuples(index=False, name=None))
    same = old[list(key)].astype(str).apply(tuple, axis=1).isin(keys) if len(old) else \
        pd.Series([], dtype=bool)
    kept = old.loc[~same.to_numpy(bool)].reindex(columns=list(columns))
    if kept.empty or new.empty:
        return new if kept.empty else kept
    return pd.concat([kept, new], ignore_index=True)
