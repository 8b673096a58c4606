"""The smoke study the tests share: its params file, how to run ``./run_all.sh`` and what a finished
run leaves (``SmokeRun``; the session fixture ``smoke_run`` in ``conftest.py`` makes one)."""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from mirl_lib.core.config import load_config
from mirl_lib.files.paths import CHECKOUT
from mirl_lib.study.study import Study

SMOKE = CHECKOUT / "params" / "smoke.yaml"


def run_all(params: Path, results: Path, *args: str, timeout: int = 600
            ) -> subprocess.CompletedProcess:
    """``./run_all.sh PARAMS --results RESULTS ARGS...``, its output captured."""
    return subprocess.run([str(CHECKOUT / "run_all.sh"), str(params), "--results", str(results),
                           *args], capture_output=True, text=True, timeout=timeout, cwd=CHECKOUT)


@dataclass(frozen=True)
class SmokeRun:
    """The finished smoke study: its run folder, the log of the run that finished it and a copy of
    its ``metrics.csv`` as it finished."""

    run_dir: Path
    log: str
    metrics: Path


def smoke_study(tmp_path: Path, **overrides: dict) -> Study:
    """The smoke params with ``overrides`` (nested sections) merged in, as a study in
    ``tmp_path/<study.name>`` (run in this process, no notebooks)."""
    cfg = load_config(SMOKE, overrides=overrides)
    return Study(cfg, tmp_path / cfg.study.name)
