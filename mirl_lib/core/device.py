"""Pick the torch device a run uses: ``auto`` prefers CUDA, then Apple MPS, then the CPU."""
from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from mirl_lib.core.errors import ConfigError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The ``torch.device`` for ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Raises ``ConfigError`` when the name is unknown or the requested accelerator is absent.
    """
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r}: CUDA is not available on this machine")
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ConfigError(f"device {name!r}: not a valid CUDA device name") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
        return device
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("device 'mps': Apple MPS is not available on this machine")
        return torch.device("mps")
    raise ConfigError(f"device {name!r}: must be auto, cpu, cuda, cuda:N or mps")


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name (``/proc/cpuinfo`` on Linux), for benchmark rows."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


# Environment variables that choose which float kernels run, and so the last bits of a result
# (oneDNN's and MKL's instruction-set caps, ATen's vectorization level, the GPU's TF32 switch).
KERNEL_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY",
              "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "NVIDIA_TF32_OVERRIDE")


def arithmetic(device: torch.device, threads: int) -> dict[str, str | int]:
    """What computed a result, for its record (``point.json``): the machine (``device_name``),
    torch's version, the CPU vector level torch dispatches to (``AVX2``, ``AVX512``, ...), the
    intra-op threads that trained, and every ``KERNEL_ENV`` variable that is set (``NAME=value``,
    space-separated; empty when none is). Two runs that differ here may differ in the last bits."""
    return {"machine": device_name(device), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": int(threads),
            "kernel_env": kernel_env()}


def kernel_env() -> str:
    """Every ``KERNEL_ENV`` variable that is set, as ``NAME=value`` separated by spaces (empty
    when none is)."""
    return " ".join(f"{name}={os.environ[name]}" for name in KERNEL_ENV if name in os.environ)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Use ``count`` torch threads inside the block (0 = leave as is); the count before is
    restored on the way out."""
    before = torch.get_num_threads()
    if count > 0:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
