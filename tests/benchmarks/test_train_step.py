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
    capability = torch.backends.cpu.get_cpu_capability()
    other = {"date": "2026-01-01", "device": "Other CPU", "cpu_capability": "AVX2", "amx": True,
             "avx512_bf16": False, "torch": "2.13.0+cpu", "threads": 1, "batch": 2, "patch": 16,
             "option": "fp32", "ms_per_step": 1.0, "p90_ms": 1.0, "steps_timed": 2,
             "speedup_vs_fp32": 1.0, "chosen": True, "load_avg": 0.1}
    stale = other | {"device": here, "cpu_capability": capability, "option": "stale"}
    # the same model name with another instruction set: another machine, kept
    elsewhere = other | {"device": here, "cpu_capability": "NOT_" + capability}
    pd.DataFrame([other, stale, elsewhere], columns=list(bench.COLUMNS)).to_csv(out, index=False)
    threads = torch.get_num_threads()

    assert bench.main(quick(out)) == 0
    assert torch.get_num_threads() == threads
    table = pd.read_csv(out)
    assert list(table.columns) == list(bench.COLUMNS)
    assert list(table["device"]) == ["Other CPU", here] + [here] * len(bench.OPTIONS)
    assert table["cpu_capability"].iloc[1] == "NOT_" + capability
    ours = table.iloc[2:]
    assert (ours["cpu_capability"] == capability).all()
    assert sorted(ours["option"]) == sorted(o.name for o in bench.OPTIONS)
    assert (ours[["threads", "batch", "patch"]] == [1, 2, 16]).all().all()
    assert (ours["steps_timed"] == 2).all() and (ours["ms_per_step"] > 0).all()
    assert (ours["p90_ms"] >= ours["ms_per_step"]).all()
    assert ours["chosen"].astype(bool).sum() == 1
    fastest = ours.loc[ours["ms_per_step"].idxmin(), "option"]
    assert ours.loc[ours["chosen"].astype(bool), "option"].item() == fastest
    assert ours.loc[ours["option"] == "fp32", "speedup_vs_fp32"].item() == 1.0
    assert set(ours["amx"].astype(str)) <= {"True", "False"}
    assert set(ours["avx512_bf16"].astype(str)) == {str(bench.has_avx512_bf16())}
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


def test_rows_written_before_the_instruction_set_columns_are_kept(bench: ModuleType,
                                                                  tmp_path: Path) -> None:
    """A committed row without ``cpu_capability`` may come from another instruction set under
    the same model name: it reads ``not recorded`` and a rerun on this machine keeps it."""
    out = tmp_path / "train_step.csv"
    here = device_name(torch.device("cpu"))
    old = pd.DataFrame([{"date": "2026-01-01", "device": here, "amx": False,
                         "torch": "2.13.0+cpu", "threads": 1, "batch": 8, "patch": 32,
                         "option": "bf16", "ms_per_step": 3900.0, "p90_ms": 4000.0,
                         "steps_timed": 8, "speedup_vs_fp32": 0.07, "chosen": False,
                         "load_avg": 1.0}])
    old.to_csv(out, index=False)
    new = pd.DataFrame([old.iloc[0].to_dict() | {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "avx512_bf16": True,
        "ms_per_step": 240.0}], columns=list(bench.COLUMNS))
    merged = bench.merge(new, out)
    assert list(merged.columns) == list(bench.COLUMNS)
    assert merged["ms_per_step"].tolist() == [3900.0, 240.0]
    assert merged["cpu_capability"].iloc[0] == merged["avx512_bf16"].iloc[0] == "not recorded"
    assert bench.merge(new, out)["ms_per_step"].tolist() == [3900.0, 240.0]  # twice: same


def test_native_bf16_from_cpu_flags(bench: ModuleType) -> None:
    assert bench.has_amx({"avx2", "amx_bf16", "amx_tile"})
    assert not bench.has_amx({"avx2", "avx512_bf16"})
    assert bench.has_avx512_bf16({"avx2", "avx512f", "avx512_bf16"})
    assert not bench.has_avx512_bf16({"avx2", "avx512f", "amx_tile"})
    assert bench.p90([float(v) for v in range(1, 12)]) == pytest.approx(10.0)
