"""A Slurm job requeued mid-way (``scontrol requeue``, as a preemption does) resumes its training
from its checkpoint to the uninterrupted run's weights, on the local one-node cluster (a module of
its own so that the test workers run it beside ``test_slurm.py``)."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch
from slurm_cluster import (
    SLURM_TESTS,
    job_of,
    params_file,
    queue_state,
    submissions,
    wait_for,
)

from mirl_lib.core.config import load_config
from mirl_lib.core.names import DENSE
from mirl_lib.files.paths import CHECKOUT, FINAL_FILE, JOBS_DIR, STATE_FILE
from mirl_lib.files.tensors import load_tensors
from mirl_lib.study.study import Study

pytestmark = SLURM_TESTS


@pytest.fixture(scope="module")
def requeued(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A study whose dense training is long enough to requeue, its points trained through Slurm
    without notebooks (``stages points --executor slurm``: the notebook stages are
    ``test_slurm.py``'s); the dense job is requeued (``scontrol requeue``, as a preemption does)
    once it has saved a checkpoint."""
    tmp = tmp_path_factory.mktemp("slurm_requeue")
    steps = 100  # a checkpoint every 10: requeued after the first, some 90 steps before the end
    params = params_file(tmp, "requeue", train={"steps": steps, "checkpoint_every": 10},
                         prune={"rounds": 1}, study={"strategies": []})
    results = tmp / "results"
    run_dir = results / "requeue"
    dense = Study(load_config(params), run_dir).point_dir(0, DENSE, 0)
    proc = subprocess.Popen([sys.executable, "-m", "mirl_lib", "stages", "points", str(params),
                             "--results", str(results), "--executor", "slurm"], cwd=CHECKOUT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    wait_for(lambda: job_of(run_dir, "dense") is not None
             and queue_state(job_of(run_dir, "dense")) == "RUNNING"
             and (dense / STATE_FILE).is_file(), 600, "the dense job's first checkpoint")
    job = job_of(run_dir, "dense")
    subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True)
    requeued_at = int(load_tensors(dense / STATE_FILE)["step"])
    wait_for(lambda: queue_state(job) not in ("", "RUNNING"), 60, "the job back in the queue")
    deadline = time.time() + 120
    while queue_state(job) in ("COMPLETING", "PENDING"):  # COMPLETING, then PENDING on a begin
        assert time.time() < deadline, "the requeued job never ran again"  # time 2 min away:
        if queue_state(job) == "PENDING":  # let it start now
            subprocess.run(["scontrol", "update", f"jobid={job}", "starttime=now"],
                           capture_output=True)
        time.sleep(0.5)
    out, err = proc.communicate(timeout=900)
    reference = Study(load_config(params), tmp / "uninterrupted")
    reference.prepare()
    reference.run_point(0, DENSE, 0)
    return {"run_dir": run_dir, "code": proc.returncode, "log": out, "err": err, "job": job,
            "requeued_at": requeued_at, "steps": steps,
            "reference": reference.point_dir(0, DENSE, 0)}


def test_a_requeued_training_resumes_to_the_uninterrupted_weights(requeued: dict) -> None:
    assert requeued["code"] == 0, requeued["log"] + requeued["err"]
    assert 0 < requeued["requeued_at"] < requeued["steps"]
    log = (requeued["run_dir"] / JOBS_DIR / "dense.log").read_text()
    assert "resuming at step " in log  # the second attempt went on from it
    ours = load_tensors(requeued["run_dir"] / "seed_0" / DENSE / FINAL_FILE)["state_dict"]
    theirs = load_tensors(requeued["reference"] / FINAL_FILE)["state_dict"]
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert submissions(requeued["run_dir"]).count("dense") == 1  # requeued, not submitted again
    assert f"dense: Slurm job {requeued['job']} PENDING" in requeued["log"]
