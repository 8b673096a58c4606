"""The restorable points of a finished run folder (``RunCatalog``: its ``catalog.csv`` rows whose
ticket file exists, less the seeds of a pending confirmation already scored).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from mirl_lib.core.errors import DataError
from mirl_lib.files.paths import CATALOG_FILE, CONFIG_FILE, VIEWER_COLUMNS
from mirl_lib.report.primary import blinded, held_back_in
from mirl_lib.study import strategies


class RunCatalog:
    """The restorable points of a run folder: the rows of ``<run_dir>/catalog.csv`` whose ticket
    file exists."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        path = self.run_dir / CATALOG_FILE
        if not path.is_file():
            raise DataError(f"{path}: catalog not found (is {self.run_dir} a finished run folder?)")
        try:
            frame = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not a readable CSV ({exc})") from None
        missing = [c for c in VIEWER_COLUMNS if c not in frame.columns]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; "
                            f"expected {list(VIEWER_COLUMNS)}")
        if frame.empty:
            raise DataError(f"{path}: the catalog has no rows")
        if frame[list(VIEWER_COLUMNS)].isna().any().any():
            raise DataError(f"{path}: empty cells in column(s) "
                            f"{[c for c in VIEWER_COLUMNS if frame[c].isna().any()]}")
        try:
            frame = frame.astype({"seed": int, "round": int, "remaining_all": float,
                                  "remaining_prunable": float, "mean_psnr": float,
                                  "strategy": str, "ticket": str})
        except ValueError as exc:
            raise DataError(f"{path}: a column has values of the wrong type ({exc})") from None
        # A pending confirmation's seeds stay out of sight until all are scored.
        frame = blinded(frame, held_back_in(self.run_dir, frame))
        if frame.empty:
            raise DataError(f"{path}: every point belongs to a pending confirmation's seeds "
                            f"(analysis.confirm_seeds of {self.run_dir / CONFIG_FILE}); they are "
                            f"shown once all are scored")
        # A clone holds only the committed tickets: offer the points whose ticket is on disk.
        frame = frame[[(self.run_dir / t).is_file() for t in frame["ticket"]]]
        if frame.empty:
            raise DataError(f"{path}: none of the catalog's ticket files exist under "
                            f"{self.run_dir}")
        rank = {s: i for i, s in enumerate(strategies.ordered(set(frame["strategy"])))}
        frame["_order"] = frame["strategy"].map(rank)
        self.frame = (frame.sort_values(["seed", "_order", "strategy", "round"], kind="stable")
                      .drop(columns="_order").reset_index(drop=True))

    def seeds(self) -> list[int]:
        """The training seeds in the catalog, ascending."""
        return sorted(int(s) for s in self.frame["seed"].unique())

    def strategies(self, seed: int) -> list[str]:
        """The strategies of ``seed``, in the registry's display order."""
        return list(dict.fromkeys(self.frame.loc[self.frame["seed"] == seed, "strategy"]))

    def points(self, seed: int, strategy: str) -> list[int]:
        """Row indices (into ``frame``) of ``seed``/``strategy``, by round."""
        rows = self.frame[(self.frame["seed"] == seed) & (self.frame["strategy"] == strategy)]
        return [int(i) for i in rows.index]

    def row(self, index: int) -> pd.Series:
        """One catalog row."""
        return self.frame.loc[index]

    def ticket_path(self, index: int) -> Path:
        """Absolute path of the ticket of row ``index``."""
        return self.run_dir / str(self.frame.at[index, "ticket"])

    def label(self, index: int, with_strategy: bool = False) -> str:
        """A dropdown label such as ``round 3 - 51.2% remaining (53.0% of all)``."""
        r = self.frame.loc[index]
        text = (f"round {r['round']} - {100 * r['remaining_prunable']:.1f}% remaining "
                f"({100 * r['remaining_all']:.1f}% of all)")
        return f"seed {r['seed']} {r['strategy']} {text}" if with_strategy else text
