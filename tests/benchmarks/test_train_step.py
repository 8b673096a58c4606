"""``benchmarks/train_step.py``: its CSV columns, every option, ``chosen``, the per-device merge."""
from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest
import torch
from script_loader import script_fixture

from mirl_lib.core.device import device_name
from mirl_lib.files.paths import CHECKOUT

ROOT = CHECKOUT
SCRIPT = ROOT / "benchmarks" / "train_step.py"
bench = script_fixture(SCRIPT, "train_step_bench")


def quick(out: Path, *extra: str) -> list[str]:
    """The smallest run: tiny preset, one small shape, one thread, --quick with 2 timed steps."""
    return ["--quick", "--steps", "2", "--warmup", "1", "--preset", "tiny", "--shapes", "2x16",
            "--threads", "1", "--out", str(out), *extra]


@pytest.mark.slow  # runs the benchmark
def test_quick_run_writes_every_option_and_keeps_other_devices(
        bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "train_step.csv"
    here = device_name(torch.device("cpu"))
    other = {"date": "2026-01-01", "device": "Other CPU", "amx": True, "torch": "2.13.0+cpu",
             "threads": 1, "batch": 2, "patch": 16, "option": "fp32", "ms_per_step": 1.0,
             "p90_ms": 1.0, "steps_timed": 2, "speedup_vs_fp32": 1.0, "chosen": True,
             "load_avg": 0.1}
    stale = other | {"device": here, "option": "stale"}
    pd.DataFrame([other, stale], columns=list(bench.COLUMNS)).to_csv(out, index=False)
    threads = torch.get_num_threads()

    assert bench.main(quick(out)) == 0
    assert torch.get_num_threads() == threads
    table = pd.read_csv(out)
    assert list(table.columns) == list(bench.COLUMNS)
    assert list(table["device"]) == ["Other CPU"] + [here] * len(bench.OPTIONS)
    ours = table[table["device"] == here]
    assert sorted(ours["option"]) == sorted(o.name for o in bench.OPTIONS)
    assert (ours[["threads", "batch", "patch"]] == [1, 2, 16]).all().all()
    assert (ours["steps_timed"] == 2).all() and (ours["ms_per_step"] > 0).all()
    assert (ours["p90_ms"] >= ours["ms_per_step"]).all()
    assert ours["chosen"].astype(bool).sum() == 1
    fastest = ours.loc[ours["ms_per_step"].idxmin(), "option"]
    assert ours.loc[ours["chosen"].astype(bool), "option"].item() == fastest
    assert ours.loc[ours["option"] == "fp32", "speedup_vs_fp32"].item() == 1.0
    assert set(ours["amx"].astype(str)) <= {"True", "False"}
    assert table.loc[table["device"] == "Other CPU", "amx"].astype(str).tolist() == ["True"]
    captured = capsys.readouterr()
    assert "threads 1, batch 2 x 16x16" in captured.err  # progress on stderr
    assert "wrote" in captured.out


def test_bad_input_fails_with_one_line(bench: ModuleType, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "train_step.csv"
    assert bench.main(quick(out, "--shapes", "2x12")) == 2
    assert "error: --shapes" in capsys.readouterr().err
    assert not out.exists()


def test_amx_from_cpu_flags(bench: ModuleType) -> None:
    assert bench.has_amx({"avx2", "amx_bf16", "amx_tile"})
    assert not bench.has_amx({"avx2", "avx512_bf16"})
    assert bench.p90([float(v) for v in range(1, 12)]) == pytest.approx(10.0)
