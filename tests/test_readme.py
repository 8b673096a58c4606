"""The README's headline (and the default tier's block in docs/results.md) is the committed run's
primary decisions, word for word (never typed in); each committed run's ``primary.csv`` is what
the primary analysis computes from its metrics; the docs quote every committed rerun's verdict."""
from __future__ import annotations

import io
import re
from pathlib import Path

import pandas as pd
import pytest

from mirl_lib.core.config import load_config
from mirl_lib.report.headline import deepest_round, headline
from mirl_lib.report.primary import confirmation_table, primary_table

pytestmark = pytest.mark.slow  # simulates the power of both committed tiers

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- headline:(\w+) -->\n(.*?)<!-- /headline -->", re.S)
SIZES = re.compile(r"<!-- sizes(-compact)?:(\w+) -->\n(.*?)<!-- /sizes -->", re.S)


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
        analysis = load_config(REPO / "results" / run / "config.yaml").analysis
        assert text == headline(pd.read_csv(metrics), analysis), (
            f"the README's headline for results/{run} is not what report.headline computes from "
            f"its metrics.csv; regenerate it: python -m mirl_lib headline results/{run}")


def test_every_sizes_table_is_generated_from_its_committed_run_and_speed_rows() -> None:
    """The README's table of the structured tickets (quality and speed side by side) is
    ``report.sizes.sizes_block`` of the committed run and of ``ticket_speed.csv``."""
    from mirl_lib.report.sizes import compact_block, sizes_block, speed_rows

    found = [block for text in pages().values() for block in SIZES.findall(text)]
    assert ("-compact", "structured") in {(c, r) for c, r, _ in SIZES.findall(
        pages()["README.md"])}, "the README has no generated short table for results/structured"
    assert ("", "structured") in {(c, r) for c, r, _ in found}, "no page has the long table"
    speed = pd.read_csv(REPO / "results" / "benchmarks" / "ticket_speed.csv")
    for compact, run, text in found:
        folder = REPO / "results" / run
        metrics, comps = (pd.read_csv(folder / "metrics.csv"),
                          pd.read_csv(folder / "comparisons.csv"))
        rows, level = (speed_rows(speed, f"{run}.yaml"),
                       load_config(folder / "config.yaml").analysis.level)
        block = (compact_block(metrics, rows, comps, level) if compact else
                 sizes_block(metrics, pd.read_csv(folder / "heldout.csv"), rows, comps, level))
        assert text == block, (f"a sizes table of results/{run} is stale; regenerate it: "
                               f"python -m mirl_lib sizes results/{run}"
                               f"{' --compact' * bool(compact)}")


@pytest.mark.parametrize("run", ["default", "full", "structured"])
def test_a_committed_primary_table_is_what_the_analysis_computes(run: str) -> None:
    """``results/<tier>/primary.csv`` (the summary's and the figures' source) is
    ``primary_table`` of the committed metrics with the run's analysis settings, never typed in;
    and those settings are its params file's."""
    folder = REPO / "results" / run
    metrics = pd.read_csv(folder / "metrics.csv")
    analysis = load_config(folder / "config.yaml").analysis
    assert analysis == load_config(REPO / "params" / f"{run}.yaml").analysis
    computed = primary_table(metrics, analysis, deepest_round(metrics))
    written = pd.read_csv(io.StringIO(computed.to_csv(index=False)))  # as the run writes it
    pd.testing.assert_frame_equal(pd.read_csv(folder / "primary.csv"), written, atol=1e-9)
    if analysis.confirm_seeds:  # and its declared confirmation, the same way
        confirm = confirmation_table(metrics, analysis, deepest_round(metrics))
        written = pd.read_csv(io.StringIO(confirm.to_csv(index=False)))
        pd.testing.assert_frame_equal(pd.read_csv(folder / "confirmation.csv"), written,
                                      atol=1e-9)


RERUN_LINES = sorted(path.parent.relative_to(REPO).as_posix()
                     for path in (REPO / "results").glob("*/rerun_*/reproduction.txt"))


def test_committed_reruns_exist_for_both_tiers() -> None:
    assert {Path(rerun).parts[1] for rerun in RERUN_LINES} >= {"default", "full"}


@pytest.mark.parametrize("rerun", RERUN_LINES)
def test_a_committed_rerun_line_is_what_the_check_computes_and_the_docs_quote_it(
        rerun: str) -> None:
    """``results/<tier>/rerun_*/reproduction.txt`` is ``report.reproduction`` of that rerun against
    the committed run it reran (kept in ``reference/``; never typed in), and
    docs/reproducibility.md quotes its verdict: e.g. "reproduced within noise: 6 of 6 primary
    decisions held" and "3 of 228 exploratory estimates"."""
    from mirl_lib.report.reproduction import reproduction, reproduction_inputs

    folder = REPO / rerun
    current, reference, heldout, analysis = reproduction_inputs(
        folder / "metrics.csv", folder / "reference" / "metrics.csv")
    _, line = reproduction(current, reference, analysis, heldout=heldout)
    assert (folder / "reproduction.txt").read_text().strip() == line, (
        f"{rerun}/reproduction.txt is stale; rewrite it: python -m mirl_lib reproduce {rerun} "
        f"{rerun}/reference")
    docs = " ".join(pages()["docs/reproducibility.md"].split())
    verdict = re.match(r"(NOT )?reproduced within noise: \d+ of \d+ primary decisions held",
                       line).group(0)
    count = re.search(r"\d+ of \d+ exploratory estimates", line).group(0)
    quoted = re.search(rf"{re.escape(rerun)}.*?{re.escape(verdict)}.*?{re.escape(count)}", docs)
    assert quoted, (f"docs/reproducibility.md does not quote {rerun}'s verdict: {verdict!r}, "
                    f"{count!r}")


@pytest.mark.parametrize("run", ["default", "full", "structured"])
def test_a_reader_can_rescore_every_primary_comparison_from_the_committed_tickets(run: str) -> None:
    """Seed 0 of each committed tier holds the dense network and, at the primary round, the ticket
    and every strategy it is compared with; each loads as the tier's network (a structured ticket
    at its own widths) and scores on the test photos what the committed metrics.csv says."""
    import torch

    from mirl_lib.core.names import DENSE, TRUNK
    from mirl_lib.data.testset import load_test_set
    from mirl_lib.evaluation.scoring import evaluate
    from mirl_lib.net.checkpoints import load_model
    from mirl_lib.study.strategies import REGISTRY

    folder = REPO / "results" / run
    cfg = load_config(folder / "config.yaml")
    metrics = pd.read_csv(folder / "metrics.csv")
    rnd = deepest_round(metrics)
    points = [(DENSE, 0), (TRUNK, rnd),
              *((vs, rnd) for vs, _ in cfg.analysis.comparisons() if vs != DENSE)]
    models = {}
    for strategy, r in points:
        path = folder / "seed_0" / strategy / ("" if r == 0 else f"round_{r:02d}") / "ticket.mirl"
        assert path.is_file(), f"{path.relative_to(REPO)} is not committed"
        models[strategy], _ = load_model(path, expected=REGISTRY[strategy].model_config(cfg, r))
    items = load_test_set(cfg.data, seed=cfg.data.test_seed)
    if run == "default":  # 100 crops: two of each task are enough to tell the network apart
        items = [i for k, i in enumerate(items) if k % 10 == 0]
    before = torch.get_num_threads()
    torch.set_num_threads(cfg.train.threads)
    try:
        for strategy, r in points:
            scores = evaluate(models[strategy], items)
            committed = metrics.query("seed == 0 and strategy == @strategy and round == @r")
            merged = scores.merge(committed, on=["task", "dataset", "image"], suffixes=("", "_c"))
            assert len(merged) == len(items)
            assert (merged["psnr"] - merged["psnr_c"]).abs().max() < 1e-4, (run, strategy)
    finally:
        torch.set_num_threads(before)
