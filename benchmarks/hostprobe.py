"""How fast the machine is at the moment a benchmark row is measured.

Two rows of a benchmark CSV compare only if they were measured on equally fast hardware: on the
shared virtual machines this repository runs on, the same CPU model name ran the same eager step
1.7x slower on one host than on another, and other processes on a small machine slow a run down
further. So each row carries

- ``measured``: when (UTC, to the minute), and
- ``gemm_gflops``: a fixed fp32 matrix product (``GEMM_SIDE[device type]`` squared, times itself)
  timed on the same device and threads ``REPEATS`` times just before the row's option and again
  just after it (``Probe``), in GFLOP/s of the median product.

Rows whose probes differ by more than a few percent were measured on differently fast machines
(or under different load) and compare only as ratios to their probes. The probe costs well under
a second.

This module imports torch only; the benchmarks import it as a sibling script.
"""
from __future__ import annotations

import statistics
import time
from datetime import datetime, timezone

import torch

GEMM_SIDE = {"cpu": 1024, "cuda": 8192}
REPEATS = 5


def measured_now() -> str:
    """The current UTC time to the minute, as a row's ``measured``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ")


def gemm_seconds(device: torch.device, side: int | None = None,
                 repeats: int = REPEATS) -> list[float]:
    """Seconds of each of ``repeats`` fp32 ``side`` x ``side`` matrix products on ``device`` with
    this process's threads, after one untimed warm-up (CUDA events on CUDA)."""
    side = side or GEMM_SIDE.get(device.type, GEMM_SIDE["cpu"])
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(side, side, generator=generator).to(device)
    b = torch.rand(side, side, generator=generator).to(device)
    cuda = device.type == "cuda"
    times = []
    for i in range(repeats + 1):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.mm(a, b)
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1000
        else:
            t0 = time.perf_counter()
            torch.mm(a, b)
            seconds = time.perf_counter() - t0
        if i:  # the first product warms the allocator and the library up
            times.append(seconds)
    return times


def gflops(device: torch.device, times: list[float], side: int | None = None) -> float:
    """GFLOP/s of the median of ``times`` (``gemm_seconds`` of that ``device`` and ``side``)."""
    side = side or GEMM_SIDE.get(device.type, GEMM_SIDE["cpu"])
    return 2 * side ** 3 / statistics.median(times) / 1e9


def gemm_gflops(device: torch.device, side: int | None = None, repeats: int = REPEATS) -> float:
    """The probe once: GFLOP/s of the median of ``repeats`` products."""
    return gflops(device, gemm_seconds(device, side, repeats), side)


class Probe:
    """The probe around one measurement: ``REPEATS`` products before it and ``REPEATS`` after,
    so a machine that slows down or speeds up while an option runs shows in the median.
    ``row()`` gives a row's ``measured`` (the start) and ``gemm_gflops``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.measured = measured_now()
        self.times = gemm_seconds(device)

    def row(self) -> dict[str, object]:
        times = self.times + gemm_seconds(self.device)
        return {"measured": self.measured, "gemm_gflops": round(gflops(self.device, times), 1)}
