"""The README's headline is the committed run's verdicts, word for word (never typed in)."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from mirl_lib.report import headline

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- headline:(\w+) -->\n(.*?)<!-- /headline -->", re.S)


def test_every_readme_headline_block_is_generated_from_its_committed_run() -> None:
    blocks = dict(BLOCK.findall((REPO / "README.md").read_text()))
    assert "default" in blocks, "the README has no generated headline for results/default"
    for run, text in blocks.items():
        metrics = REPO / "results" / run / "metrics.csv"
        if not metrics.is_file():
            pytest.fail(f"README quotes results/{run}, which has no committed metrics.csv")
        assert text == headline(pd.read_csv(metrics)), (
            f"the README's headline for results/{run} is not what report.headline computes from "
            f"its metrics.csv; regenerate it: python -m mirl_lib headline results/{run}")
