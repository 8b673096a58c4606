"""The study on a real Slurm cluster (Debian's slurm-wlm, one node on this machine, started by
``scripts/slurm_local.sh``) through ``--executor slurm``: the smoke study (its trunk and one
control, so that a branch waits on a trunk round's job) gives the local run's numbers point for
point, a driver killed and started again submits no stage twice, a failing stage is
reported at once with nothing after it submitted, and options Slurm refuses are named before
anything is submitted (a requeued training: ``test_slurm_requeue.py``). Skipped, with the reason,
only where ``sinfo`` is missing (CI installs Slurm)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from slurm_cluster import (
    SLURM_TESTS,
    driver,
    job_of,
    params_file,
    queue_state,
    submissions,
    wait_for,
)

from mirl_lib.core.config import load_config
from mirl_lib.core.names import DENSE, TRUNK
from mirl_lib.files.paths import (
    CHECKOUT,
    JOBS_DIR,
    METRICS_FILE,
    SUBMISSIONS_FILE,
    TIMINGS_FILE,
)
from mirl_lib.study.graph import stage_list
from mirl_lib.study.study import Study

pytestmark = SLURM_TESTS


POLL = ("--poll-seconds", "1")  # a runtime option: the study is the smoke study
CONTROL = "random_mask"  # reads trunk round 2: its job waits on that round's


@pytest.fixture(scope="module")
def cluster_smoke(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The smoke study with one control (``CONTROL``) through Slurm; the driver is killed (SIGKILL,
    a lost login session) while the first trunk round's job is in the queue and started again
    with the same command."""
    tmp = tmp_path_factory.mktemp("slurm_smoke")
    params = params_file(tmp, "smoke", study={"strategies": [CONTROL]})
    results = tmp / "results"
    run_dir = results / "smoke"
    started = time.time()
    first = driver(params, results, *POLL)
    # the job's record, then its line in submissions.csv: kill only once both are written (the
    # record first, so that a driver killed between the two reattaches instead of resubmitting)
    wait_for(lambda: job_of(run_dir, "round_01") is not None
             and (run_dir / JOBS_DIR / SUBMISSIONS_FILE).is_file()
             and "round_01" in submissions(run_dir), 600, "the trunk round's job")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    killed = job_of(run_dir, "round_01")
    names = {stage.name for stage in stage_list(Study(load_config(params), run_dir))}
    first_stages = {name for name in names if job_of(run_dir, name) is not None}
    second = driver(params, results, *POLL)
    out, err = second.communicate(timeout=900)
    return {"params": params, "run_dir": run_dir, "log": out, "err": err, "code": second.returncode,
            "killed_job": killed, "first_stages": first_stages,
            "seconds": time.time() - started}


def test_the_smoke_study_through_slurm_gives_the_local_numbers(cluster_smoke: dict,
                                                               smoke_run) -> None:
    assert cluster_smoke["code"] == 0, cluster_smoke["log"] + cluster_smoke["err"]
    assert "Study finished" in cluster_smoke["log"]
    ours = pd.read_csv(cluster_smoke["run_dir"] / METRICS_FILE)
    local = pd.read_csv(smoke_run.metrics)  # as the local run finished it, every strategy
    assert set(ours["strategy"]) == {DENSE, TRUNK, CONTROL}
    local = local[local["strategy"].isin(set(ours["strategy"]))].reset_index(drop=True)
    pd.testing.assert_frame_equal(ours, local)  # the same points, rows and numbers


def test_a_driver_started_again_submits_no_stage_twice(cluster_smoke: dict) -> None:
    run_dir, params = cluster_smoke["run_dir"], cluster_smoke["params"]
    stages = stage_list(Study(load_config(params), run_dir))
    names = [stage.name for stage in stages]
    assert sorted(submissions(run_dir)) == sorted(names)  # every stage exactly once
    assert (f"reattached to Slurm job {cluster_smoke['killed_job']}" in cluster_smoke["log"]
            or "round_01: done already" in cluster_smoke["log"]), cluster_smoke["log"]
    listed = subprocess.run([sys.executable, "-m", "mirl_lib", "stages", "list", str(params),
                             "--results", str(run_dir.parent)], capture_output=True, text=True,
                            cwd=CHECKOUT)
    rows = [line.split("\t") for line in listed.stdout.strip().splitlines()]
    assert [r[0] for r in rows] == names, listed.stdout + listed.stderr
    assert all(r[2].isdigit() and r[3] == "COMPLETED" for r in rows), rows
    assert all(r[1] == "done" for r, stage in zip(rows, stages) if stage.points), rows
    assert rows[names.index("round_01")][2] == cluster_smoke["killed_job"]


def test_each_finished_job_records_its_times_and_overhead(cluster_smoke: dict) -> None:
    """``jobs/timings.csv``: a row per job a driver saw finish (only the killed driver's jobs may
    have finished unseen), its command's own time and the overhead Slurm and the polling added."""
    run_dir = cluster_smoke["run_dir"]
    timings = pd.read_csv(run_dir / JOBS_DIR / TIMINGS_FILE)
    names = [stage.name for stage in stage_list(Study(load_config(cluster_smoke["params"]),
                                                      run_dir))]
    assert timings["stage"].is_unique and set(timings["stage"]) <= set(names)
    assert set(names) - set(timings["stage"]) <= cluster_smoke["first_stages"]
    assert (timings["command_s"] > 0).all() and (timings["overhead_s"] >= 0).all()
    assert (timings["started"] >= timings["submitted"] - 1).all()  # one clock, this machine
    poll = float(POLL[1])
    assert timings["overhead_s"].median() < 60 + poll, timings  # an idle one-node cluster


def test_a_failing_stage_is_reported_at_once_and_nothing_after_it_is_submitted(
        tmp_path: Path) -> None:
    params = params_file(tmp_path, "broken", data={"test_max_side": 8})
    run_dir = tmp_path / "results" / "broken"
    proc = driver(params, tmp_path / "results")
    out, err = proc.communicate(timeout=600)
    ended = time.time()
    assert proc.returncode == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    failed = lines[0].split()[2]  # "error: stage <name> failed in Slurm job <id>: ..."
    job = job_of(run_dir, failed)
    assert lines[0].startswith(f"error: stage {failed} failed in Slurm job {job}: DataError: ")
    assert "smaller than 16 pixels" in lines[0] and "Slurm log " in lines[0], lines[0]
    left = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    assert "JobState=FAILED" in left, left
    assert ended - os.path.getmtime(run_dir / JOBS_DIR / f"{failed}.log") < 30
    assert job_of(run_dir, "evaluate") is None and job_of(run_dir, "figures") is None
    assert job_of(run_dir, "round_02") is None  # nothing downstream of a failure was submitted
    wait_for(lambda: not any(queue_state(j) for j in filter(None, (
        job_of(run_dir, s) for s in ("data", "dense", "round_01")))), 30,
        "the other jobs to leave the queue")  # cancelled, not left to run


@pytest.mark.parametrize("args, key", [
    (("--partition", "nowhere"), "cluster.partition"),
    (("--partition", "short", "--time", "30:00"), "cluster.time"),
    (("--time", "soon"), "cluster.time"),
])
def test_options_slurm_refuses_are_named_before_anything_is_submitted(
        tmp_path: Path, args: tuple[str, ...], key: str) -> None:
    params = params_file(tmp_path, "refused")
    proc = driver(params, tmp_path / "results", *args)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, out + err
    assert err.count("\n") == 1 and err.startswith("error: ") and key in err, err
    assert not (tmp_path / "results" / "refused" / JOBS_DIR).exists()
