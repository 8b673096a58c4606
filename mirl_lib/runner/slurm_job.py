"""What a stage's Slurm job runs (``StageJob``), in a module of its own: submitit unpickles it in
the job's fresh interpreter, so it imports only what running a command needs, not torch or the
study (4.8 s of every job's start on the 2-core machine when it lived beside the executor)."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import submitit

from mirl_lib.core import zygote
from mirl_lib.files.atomic import atomic_write_text


class StageJob(submitit.helpers.Checkpointable):
    """The stage's command, its output appended to ``log``; when it started and ended (on the
    node's clock) go to ``times``. When Slurm preempts the job or its time limit nears, submitit
    requeues this same call (``Checkpointable``): the command runs again and resumes from what the
    stage saved."""

    def __call__(self, command: list[str], log: str, times: str) -> int:
        env = {k: v for k, v in os.environ.items() if k != zygote.ENV}  # the job's own process
        started = time.time()
        with open(log, "a") as out:
            code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
        atomic_write_text(json.dumps({"started": started, "ended": time.time()}), Path(times))
        if code != 0:
            raise RuntimeError(f"the stage's command exited with code {code}; see {log}")
        return code
