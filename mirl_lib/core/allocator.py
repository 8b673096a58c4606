"""The C allocator's settings for a process that trains or scores a network (``train.malloc``).

glibc's ``malloc`` serves a block above its mmap threshold (128 KiB at first, raised as such
blocks are freed) with fresh pages from the kernel, and hands freed memory at the top of its heap
back above its trim threshold. A training step allocates and frees every activation and gradient
each step, so with those defaults every step's large tensors arrive as fresh pages, each faulted
in and zeroed by the kernel: on the 2-core virtual machine of this repository about 39,000 page
faults a step of the ``cpu`` preset at the full tier's shape in fp32 and 8,000 channels-last, and
the setting below makes those steps 1.28x and 1.10x faster (``results/benchmarks/
train_throughput.csv``, the ``malloc`` and ``page_faults`` columns; ``docs/performance.md``).

``apply("auto")`` on glibc sets ``M_MMAP_THRESHOLD`` to 32 MiB (the most ``mallopt`` takes on a
64-bit system; larger blocks still come from the kernel) and ``M_TRIM_THRESHOLD`` to 2 GiB - 1,
so freed blocks stay in the process and the next step reuses them. It changes where tensors live,
not what is computed: a run's floats are identical bit for bit (``tests/core/test_allocator.py``).
The cost is that memory a step freed is not returned to the system until the process ends (the
peak resident set stays about the same). ``system`` leaves the allocator as it is; elsewhere than
on glibc (macOS, musl) ``auto`` does nothing either.

The settings are the process's: they cannot be taken back (``apply("system")`` after ``auto``
changes nothing and says so), and processes forked afterwards (the runner's stage kernels) inherit
them. This module imports only the standard library.
"""
from __future__ import annotations

import ctypes
import platform
import sys

MODES: tuple[str, ...] = ("auto", "system")
MMAP_THRESHOLD = 32 * 2**20  # mallopt refuses more than half of glibc's 64 MiB heap size
TRIM_THRESHOLD = 2**31 - 1   # mallopt's value is a C int
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h

SYSTEM = "system"
TUNED = "tuned"
_state = {"now": SYSTEM}


def _mallopt():
    """glibc's ``mallopt``, or None where this process does not run on glibc."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None


def apply(mode: str) -> str:
    """Set this process's allocator for ``mode`` (``MODES``) and return what it now is:
    ``tuned`` (the settings above are in force) or ``system``. Calling it again is cheap."""
    if mode not in MODES:
        raise ValueError(f"malloc mode {mode!r}: must be one of {', '.join(MODES)}")
    if mode == "auto" and _state["now"] == SYSTEM:
        mallopt = _mallopt()
        if mallopt is not None and mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(MMAP_THRESHOLD)) \
                and mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(TRIM_THRESHOLD)):
            _state["now"] = TUNED
    return _state["now"]


def current() -> str:
    """``tuned`` when ``apply("auto")`` has set this process's allocator, else ``system``."""
    return _state["now"]
