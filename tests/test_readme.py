"""The README's headline (and the default tier's block in docs/results.md) is the committed run's
verdicts, word for word (never typed in); the docs quote every committed rerun's verdict."""
from __future__ import annotations

import functools
import re
from pathlib import Path

import pandas as pd
import pytest

from mirl_lib.report.headline import headline

pytestmark = pytest.mark.slow  # simulates reruns of both committed tiers

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- headline:(\w+) -->\n(.*?)<!-- /headline -->", re.S)


@functools.cache
def simulated(run: str) -> pd.DataFrame:
    """``stats.replications`` of ``results/<run>`` computed from its committed metrics (about
    30 s a tier; once per session)."""
    from mirl_lib.report import stats
    from mirl_lib.report.comparisons import comparisons

    metrics = pd.read_csv(REPO / "results" / run / "metrics.csv")
    return stats.replications(metrics, comparisons(metrics))


def pages() -> dict[str, str]:
    """The README and every page of docs/, by path."""
    paths = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    return {str(p.relative_to(REPO)): p.read_text() for p in paths}


def test_every_headline_block_is_generated_from_its_committed_run() -> None:
    found = {page: dict(BLOCK.findall(text)) for page, text in pages().items()}
    assert "full" in found["README.md"], "the README has no generated headline for results/full"
    assert "default" in found["docs/results.md"], "docs/results.md has no block for results/default"
    blocks = {run: text for page in found.values() for run, text in page.items()}
    for run, text in blocks.items():
        metrics = REPO / "results" / run / "metrics.csv"
        if not metrics.is_file():
            pytest.fail(f"README quotes results/{run}, which has no committed metrics.csv")
        assert text == headline(pd.read_csv(metrics), replication=simulated(run)), (
            f"the README's headline for results/{run} is not what report.headline computes from "
            f"its metrics.csv; regenerate it: python -m mirl_lib headline results/{run}")


RERUN_LINES = sorted(path.parent.relative_to(REPO).as_posix()
                     for path in (REPO / "results").glob("*/rerun_*/reproduction.txt"))


def test_committed_reruns_exist_for_both_tiers() -> None:
    assert {Path(rerun).parts[1] for rerun in RERUN_LINES} >= {"default", "full"}


@pytest.mark.parametrize("run", ["default", "full"])
def test_a_committed_replication_table_is_what_the_simulation_computes(run: str) -> None:
    """``results/<tier>/replication.csv`` (the summary's and the reproduction check's source) is
    ``stats.replications`` of the committed metrics, never typed in."""
    committed = pd.read_csv(REPO / "results" / run / "replication.csv")
    pd.testing.assert_frame_equal(committed, simulated(run), check_dtype=False, atol=1e-9)


@pytest.mark.parametrize("rerun", RERUN_LINES)
def test_a_committed_rerun_line_is_what_the_check_computes_and_the_readme_quotes_it(
        rerun: str) -> None:
    """``results/<tier>/rerun_*/reproduction.txt`` is ``report.reproduction`` of that rerun against
    its tier's committed run (never typed in), and docs/reproducibility.md quotes its verdict (e.g.
    "reproduced within noise: 15 of 228 comparisons ... miss by chance")."""
    from mirl_lib.report.reproduction import reproduction, reproduction_inputs

    folder = REPO / rerun
    current, reference, heldout, replication = reproduction_inputs(
        folder / "metrics.csv", folder.parent / "metrics.csv")
    assert replication is not None, f"{folder.parent}/replication.csv is missing"
    _, line = reproduction(current, reference, heldout=heldout, replication=replication)
    assert (folder / "reproduction.txt").read_text().strip() == line, (
        f"{rerun}/reproduction.txt is stale; rewrite it: python -m mirl_lib reproduce {rerun} "
        f"{folder.parent.relative_to(REPO)}")
    verdict = re.match(r".*?by chance" if "by chance" in line else r".*?intervals", line).group(0)
    assert verdict in " ".join(pages()["docs/reproducibility.md"].split()), (
        f"docs/reproducibility.md does not quote {rerun}'s verdict: {verdict!r}")
