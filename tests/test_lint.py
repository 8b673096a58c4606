"""The project keeps ruff's E, F, I and W rules at line length 100 (``[tool.ruff]`` in
pyproject.toml), notebooks included; this test holds the checkout to that."""
from __future__ import annotations

import subprocess
import sys

from mirl_lib.files.paths import CHECKOUT


def test_ruff_finds_nothing() -> None:
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(CHECKOUT)],
                          capture_output=True, text=True, cwd=CHECKOUT, timeout=120)
    assert done.returncode == 0, f"ruff check found problems:\n{done.stdout}{done.stderr}"
