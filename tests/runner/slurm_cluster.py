"""The local one-node Slurm cluster the Slurm tests drive (Debian's slurm-wlm, started by
``scripts/slurm_local.sh``) and their helpers: a params file, a driver, the jobs it recorded."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from smoke import SMOKE

from mirl_lib.files.paths import CHECKOUT, JOBS_DIR, SUBMISSIONS_FILE

# what every Slurm test module marks itself with
SLURM_TESTS = [pytest.mark.slow,
               pytest.mark.skipif(shutil.which("sinfo") is None,
                                  reason="no Slurm here (sinfo missing): install slurm-wlm and "
                                         "munge, then scripts/slurm_local.sh start"),
               pytest.mark.usefixtures("slurm")]


def cluster_up() -> bool:
    done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return done.returncode == 0 and any(s in done.stdout for s in ("idle", "mixed", "allocated"))


def params_file(tmp: Path, name: str, **changes: dict) -> Path:
    """The smoke params under another study name, sections updated by ``changes``; the cluster
    polled every half second."""
    spec = yaml.safe_load(SMOKE.read_text())
    spec["study"]["name"] = name
    spec["cluster"] = {"poll_seconds": 0.5}
    for section, values in changes.items():
        spec.setdefault(section, {}).update(values)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def driver(params: Path, results: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([str(CHECKOUT / "run_all.sh"), str(params), "--results", str(results),
                             "--executor", "slurm", *args], cwd=CHECKOUT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def job_of(run_dir: Path, stage: str) -> str | None:
    path = run_dir / JOBS_DIR / f"{stage}.json"
    return json.loads(path.read_text())["job_id"] if path.is_file() else None


def queue_state(job: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True,
                          text=True).stdout.strip()


def submissions(run_dir: Path) -> list[str]:
    with open(run_dir / JOBS_DIR / SUBMISSIONS_FILE) as handle:
        return [row["stage"] for row in csv.DictReader(handle)]
