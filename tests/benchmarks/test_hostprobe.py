"""``benchmarks/hostprobe.py``: the machine-speed probe each benchmark row carries."""
from __future__ import annotations

import math
from types import ModuleType

import pytest
import torch
from script_loader import script_fixture

from mirl_lib.files.paths import CHECKOUT

probe = script_fixture(CHECKOUT / "benchmarks" / "hostprobe.py", "hostprobe")


def test_the_probe_is_the_median_of_the_timed_products(probe: ModuleType,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """2 n^3 FLOPs over the median product time, the warm-up product left out."""
    durations = iter([9.0, 0.5, 0.1, 0.2, 0.4, 0.3])  # warm-up, then five products
    clock = {"now": 0.0, "started": False}

    def perf_counter() -> float:
        if clock["started"]:
            clock["now"] += next(durations)
        clock["started"] = not clock["started"]
        return clock["now"]

    monkeypatch.setattr(probe.time, "perf_counter", perf_counter)
    got = probe.gemm_gflops(torch.device("cpu"), side=100)
    assert got == pytest.approx(2 * 100 ** 3 / 0.3 / 1e9)


def test_a_real_probe_is_plausible(probe: ModuleType) -> None:
    got = probe.gemm_gflops(torch.device("cpu"), side=256, repeats=3)
    assert math.isfinite(got) and 0.1 < got < 1e5  # GFLOP/s of one CPU, whatever its load
    assert probe.measured_now().endswith("Z") and len(probe.measured_now()) == 17


def test_a_row_probes_before_and_after(probe: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine that slows down while an option runs shows in the row's probe: the median of
    the products before and after it."""
    calls = iter([[1.0] * 5, [3.0] * 4 + [2.0]])  # before; after (slower)
    monkeypatch.setattr(probe, "gemm_seconds", lambda device, side=None, repeats=5: next(calls))
    around = probe.Probe(torch.device("cpu"))
    row = around.row()
    side = probe.GEMM_SIDE["cpu"]
    assert row["gemm_gflops"] == round(2 * side ** 3 / 1.5 / 1e9, 1)  # median of 5 x 1, 2, 4 x 3
    assert row["measured"] == around.measured
