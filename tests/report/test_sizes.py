"""``report.sizes``: networks of the same size side by side, quality with intervals and speed."""
from __future__ import annotations

import pandas as pd
import pytest

from mirl_lib.core.config import load_config
from mirl_lib.core.names import ALL_IN_ONE, DENSE, TRUNK
from mirl_lib.files.paths import BENCHMARK_RESULTS, CHECKOUT, TICKET_SPEED_FILE
from mirl_lib.report.comparisons import interval, ordered
from mirl_lib.report.primary import visible_scores
from mirl_lib.report.sizes import (
    pair_lines,
    seeds_to_decide,
    size_table,
    sizes_block,
    speed_rows,
)

FULL = CHECKOUT / "results" / "full"
PARAMS = CHECKOUT / "params"


@pytest.fixture(scope="module")
def full() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    speed = speed_rows(pd.read_csv(BENCHMARK_RESULTS / TICKET_SPEED_FILE), "full.yaml")
    metrics, heldout = visible_scores(FULL)  # a pending confirmation's seeds held back
    return metrics, heldout, speed, pd.read_csv(FULL / "comparisons.csv")


def test_the_committed_full_tier_gives_its_networks_with_the_committed_intervals(full) -> None:
    metrics, heldout, speed, comps = full
    table = size_table(metrics, heldout, speed)
    at12 = ordered([s for s in set(metrics["strategy"]) if s not in (DENSE, TRUNK)])
    assert list(zip(table["strategy"], table["round"], strict=True)) == [
        (DENSE, 0), (TRUNK, 12), *((s, 12) for s in at12)]
    rows = table.set_index("strategy")
    psnr = comps[(comps["metric"] == "psnr") & (comps["task"] == ALL_IN_ONE)
                 & (comps["a"] == TRUNK)]
    for strategy in at12:  # the ticket − X intervals are the committed comparisons'
        committed = psnr[(psnr["b"] == strategy) & (psnr["round"] == 12)].iloc[0]
        assert rows.at[strategy, "test_vs_ticket"] == interval(committed)
    dense = psnr[(psnr["b"] == DENSE) & (psnr["round"] == 12)].iloc[0]
    assert rows.at[DENSE, "test_vs_ticket"] == interval(dense)
    assert rows.at[DENSE, "remaining_all"] == 1.0 and rows.at[TRUNK, "test_vs_ticket"] == ""
    seeds = metrics["seed"].nunique()  # every seed of the committed tier trained every network
    assert rows.at[DENSE, "seeds"] == seeds == len(load_config(PARAMS / "full.yaml").study.seeds)
    assert abs(rows.at[TRUNK, "test_psnr"] - dense.mean_a) < 1e-9  # seeds x 3 photos, complete
    # held-out photos: another table, other numbers
    assert rows.at[DENSE, "heldout_vs_ticket"] not in ("", rows.at[DENSE, "test_vs_ticket"])
    # speed: the benchmark's rows for those networks at round 12; none for a control it skips
    cpu1 = speed[(speed["threads"] == 1) & (speed["round"] == 12)].set_index("strategy")
    assert rows.at[TRUNK, "forward_speedup_1"] == cpu1.at[TRUNK, "forward_speedup"]
    small = next(s for s in at12 if s in cpu1.index)
    assert rows.at[small, "forward_ms_1"] == cpu1.at[small, "forward_ms"]
    assert rows.at[DENSE, "forward_speedup_2"] == 1.0
    assert table["forward_speedup_1"].isna().sum() == len(at12) - 1


def test_the_block_is_a_table_with_a_row_per_network_and_a_note(full) -> None:
    metrics, heldout, speed, comps = full
    block = sizes_block(metrics, heldout, speed, comps)
    lines = block.splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + len(size_table(metrics, heldout, speed))
    assert "| unstructured ticket | 9.7% |" in block and "(4.61x)" in block
    assert lines[-1].startswith(
        f"- All-in-one PSNR in dB, mean ± sd over {metrics['seed'].nunique()} seeds")


def test_pairs_other_than_the_tickets_get_one_line_each() -> None:
    row = dict(metric="psnr", task=ALL_IN_ONE, difference=-0.5, ci_low=-1.0, ci_high=0.1)
    comps = pd.DataFrame([
        {**row, "a": "channel_rewind", "b": "small_dense", "round": 8, "remaining": 0.193},
        {**row, "a": "channel_rewind", "b": "small_dense", "round": 3, "remaining": 0.527,
         "difference": 0.25},
        {**row, "a": TRUNK, "b": "small_dense", "round": 3, "remaining": 0.527},
        {**row, "a": "channel_rewind", "b": "small_dense", "round": 3, "remaining": 0.527,
         "task": "dehaze"}])
    lines = pair_lines(comps)
    assert lines == ["structured ticket (channels) − small dense (same size) (test photos, "
                     "exploratory): +0.25 dB [-1.00, +0.10] at 52.7%; -0.50 dB [-1.00, +0.10] at "
                     "19.3%"]


def test_speed_rows_are_the_params_files_cpu_rows_at_the_largest_side() -> None:
    speed = pd.DataFrame({"params_file": ["a.yaml", "a.yaml", "a.yaml", "b.yaml"],
                          "device_type": ["cpu", "cpu", "cuda", "cpu"],
                          "side": [256, 512, 512, 512]})
    assert speed_rows(speed, "a.yaml").index.tolist() == [1]
    assert speed_rows(speed, "a.yaml", "cuda").index.tolist() == [2]
    assert speed_rows(speed, "c.yaml").empty


def test_seeds_to_decide_grow_as_the_difference_shrinks(full) -> None:
    """A difference the 3 seeds already decide needs few seeds; one near zero (+0.08 dB) needs
    many; the answer does not depend on the pair's order."""
    metrics = full[0]
    big = seeds_to_decide(metrics, (TRUNK, 12), ("oneshot", 12))
    assert big is not None and big <= 5
    assert seeds_to_decide(metrics, ("oneshot", 12), (TRUNK, 12)) == big
    small = seeds_to_decide(metrics, (TRUNK, 12), ("late_rewind", 12))
    assert small is None or small >= 4 * big
    comps = full[3]
    lines = pair_lines(comps.assign(a=comps["a"].replace({TRUNK: "oneshot"})), metrics)
    assert any("(one-shot lower)" in line or "(one-shot higher)" in line for line in lines)
