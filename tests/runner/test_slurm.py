"""The study on a real Slurm cluster (Debian's slurm-wlm, one node on this machine, started by
``scripts/slurm_local.sh``) through ``--executor slurm``: the smoke study gives the local run's
``metrics.csv``, a driver killed and started again submits no stage twice, a training job requeued
mid-way resumes from its checkpoint to the uninterrupted run's weights, a failing stage is reported
at once with nothing after it submitted, and options Slurm refuses are named before anything is
submitted. Skipped, with the reason, only where ``sinfo`` is missing (CI installs Slurm)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from smoke import SMOKE

from mirl_lib.core.config import load_config
from mirl_lib.core.names import DENSE
from mirl_lib.files.paths import (
    CHECKOUT,
    FINAL_FILE,
    JOBS_DIR,
    METRICS_FILE,
    NOTEBOOKS_DIR,
    STATE_FILE,
    SUBMISSIONS_FILE,
    TIMINGS_FILE,
)
from mirl_lib.files.tensors import load_tensors
from mirl_lib.study.graph import stage_list
from mirl_lib.study.study import Study

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("sinfo") is None,
                                 reason="no Slurm here (sinfo missing): install slurm-wlm and "
                                        "munge, then scripts/slurm_local.sh start")]


def cluster_up() -> bool:
    done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return done.returncode == 0 and any(s in done.stdout for s in ("idle", "mixed", "allocated"))


@pytest.fixture(scope="module", autouse=True)
def slurm() -> None:
    """The local one-node cluster, started when it is not running."""
    if not cluster_up():
        subprocess.run([str(CHECKOUT / "scripts" / "slurm_local.sh"), "start"], check=True,
                       timeout=180, capture_output=True)
    assert cluster_up()


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


@pytest.fixture(scope="module")
def cluster_smoke(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The smoke study through Slurm; the driver is killed (SIGKILL, a lost login session) while
    the first trunk round's job is in the queue and started again with the same command."""
    tmp = tmp_path_factory.mktemp("slurm_smoke")
    results = tmp / "results"
    run_dir = results / "smoke"
    started = time.time()
    first = driver(SMOKE, results)
    wait_for(lambda: job_of(run_dir, "round_01") is not None, 600, "the trunk round's job")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    killed = job_of(run_dir, "round_01")
    names = {stage.name for stage in stage_list(Study(load_config(SMOKE), run_dir))}
    first_stages = {name for name in names if job_of(run_dir, name) is not None}
    second = driver(SMOKE, results)
    out, err = second.communicate(timeout=900)
    return {"run_dir": run_dir, "log": out, "err": err, "code": second.returncode,
            "killed_job": killed, "first_stages": first_stages,
            "seconds": time.time() - started}


def test_the_smoke_study_through_slurm_is_the_local_study(cluster_smoke: dict, smoke_run) -> None:
    assert cluster_smoke["code"] == 0, cluster_smoke["log"] + cluster_smoke["err"]
    assert "Study finished" in cluster_smoke["log"]
    ours = pd.read_csv(cluster_smoke["run_dir"] / METRICS_FILE)
    local = pd.read_csv(smoke_run.run_dir / METRICS_FILE)
    pd.testing.assert_frame_equal(ours, local)


def test_a_driver_started_again_submits_no_stage_twice(cluster_smoke: dict) -> None:
    run_dir = cluster_smoke["run_dir"]
    stages = stage_list(Study(load_config(SMOKE), run_dir))
    names = [stage.name for stage in stages]
    assert sorted(submissions(run_dir)) == sorted(names)  # every stage exactly once
    assert (f"reattached to Slurm job {cluster_smoke['killed_job']}" in cluster_smoke["log"]
            or "round_01: done already" in cluster_smoke["log"]), cluster_smoke["log"]
    listed = subprocess.run([sys.executable, "-m", "mirl_lib", "stages", "list", str(SMOKE),
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
    names = [stage.name for stage in stage_list(Study(load_config(SMOKE), run_dir))]
    assert timings["stage"].is_unique and set(timings["stage"]) <= set(names)
    assert set(names) - set(timings["stage"]) <= cluster_smoke["first_stages"]
    assert (timings["command_s"] > 0).all() and (timings["overhead_s"] >= 0).all()
    assert (timings["started"] >= timings["submitted"] - 1).all()  # one clock, this machine
    poll = load_config(SMOKE).cluster.poll_seconds
    assert timings["overhead_s"].median() < 60 + poll, timings  # an idle one-node cluster


@pytest.fixture(scope="module")
def requeued(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A study whose dense training is long enough to requeue: its job is requeued
    (``scontrol requeue``, as a preemption does) once it has saved a checkpoint."""
    tmp = tmp_path_factory.mktemp("slurm_requeue")
    params = params_file(tmp, "requeue", train={"steps": 300, "checkpoint_every": 25},
                         prune={"rounds": 1}, study={"strategies": []})
    results = tmp / "results"
    run_dir = results / "requeue"
    dense = Study(load_config(params), run_dir).point_dir(0, DENSE, 0)
    proc = driver(params, results)
    wait_for(lambda: job_of(run_dir, "dense") is not None
             and queue_state(job_of(run_dir, "dense")) == "RUNNING"
             and (dense / STATE_FILE).is_file(), 600, "the dense job's first checkpoint")
    job = job_of(run_dir, "dense")
    subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True)
    requeued_at = int(load_tensors(dense / STATE_FILE)["step"])
    wait_for(lambda: queue_state(job) not in ("", "RUNNING"), 60, "the job back in the queue")
    for _ in range(20):  # a requeued job waits on a begin time; let it start now
        subprocess.run(["scontrol", "update", f"jobid={job}", "starttime=now"],
                       capture_output=True)
        if queue_state(job) != "PENDING":
            break
        time.sleep(0.5)
    out, err = proc.communicate(timeout=900)
    reference = Study(load_config(params), tmp / "uninterrupted")
    reference.prepare()
    reference.run_point(0, DENSE, 0)
    return {"run_dir": run_dir, "code": proc.returncode, "log": out, "err": err, "job": job,
            "requeued_at": requeued_at, "steps": 300,
            "reference": reference.point_dir(0, DENSE, 0)}


def test_a_requeued_training_resumes_to_the_uninterrupted_weights(requeued: dict) -> None:
    assert requeued["code"] == 0, requeued["log"] + requeued["err"]
    assert 0 < requeued["requeued_at"] < requeued["steps"]
    notebook, = (requeued["run_dir"] / NOTEBOOKS_DIR).glob("01_dense*.ipynb")
    assert "resuming at step " in notebook.read_text()  # the second attempt went on from it
    ours = load_tensors(requeued["run_dir"] / "seed_0" / DENSE / FINAL_FILE)["state_dict"]
    theirs = load_tensors(requeued["reference"] / FINAL_FILE)["state_dict"]
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert submissions(requeued["run_dir"]).count("dense") == 1  # requeued, not submitted again
    assert f"dense: Slurm job {requeued['job']} PENDING" in requeued["log"]


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
