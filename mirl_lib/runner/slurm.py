"""The stage graph on a Slurm cluster: each stage one Slurm job, submitted through submitit once the
stages it waits for have finished, running exactly the command it runs locally.

``SlurmStages`` is the runner's executor for ``cluster.executor: slurm``:

- ``check`` asks Slurm (``sbatch --test-only``) whether it would take a job with the study's
  options (partition, time limit, account, qos, constraint, memory, GPUs, further sbatch options)
  before anything is submitted; a refusal is one ``ConfigError`` naming the option.
- ``execute(stage)`` submits the stage's command as a job (``StageJob``, a submitit
  ``Checkpointable``: a job that is preempted or reaches its time limit is requeued and its command
  run again, and a training resumes from its ``state.pt``), records the job in
  ``<run>/jobs/<stage>.json`` and ``<run>/jobs/submissions.csv``, and waits for it; a finished
  job's times (queued, ran, seen) go to ``<run>/jobs/timings.csv``. Jobs are
  followed with ``squeue`` and submitit's result files, so the cluster needs no accounting database
  (``sacct``).
- A driver that stops and is started again reattaches to a stage's job that is still pending or
  running instead of submitting it again; a stage whose job finished is skipped as locally, and so
  is one whose job the stopped driver submitted and that succeeded while no driver watched
  (``adopt_since``: a stage without points, such as the data preview, is otherwise run again).
- A stage that fails in its job is reported at once, in one line: the stage, the job, the failing
  cell's own error and where the logs are; ``cancel_all`` cancels the jobs still running.
"""
from __future__ import annotations

import csv
import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import submitit

from mirl_lib.core.config import ClusterConfig, slurm_minutes
from mirl_lib.core.errors import ConfigError
from mirl_lib.files.atomic import atomic_write_text
from mirl_lib.files.paths import JOBS_DIR, SLURM_DIR, SUBMISSIONS_FILE, TIMINGS_FILE
from mirl_lib.runner.papermill import StageFailed, failure_reason
from mirl_lib.runner.slurm_job import StageJob
from mirl_lib.study.stage import Stage

# ``<run>/jobs/timings.csv``: per finished job, when it was submitted, started and ended and when
# the driver saw it end; ``overhead_s`` is the stage's time through Slurm beyond its command's own
# (queue wait, job start, the driver's polling).
TIMING_COLUMNS = ["stage", "job_id", "submitted", "started", "ended", "noticed", "command_s",
                  "overhead_s"]


@dataclass
class Record:
    """A stage's job: its id and submitit folder."""

    stage: str
    job_id: str
    folder: str
    submitted: float = float("nan")  # the driver's clock

    def job(self) -> submitit.SlurmJob:
        return submitit.SlurmJob(folder=self.folder, job_id=self.job_id)


def queue_state(job_id: str) -> str | None:
    """The job's state in the queue (``PENDING``, ``RUNNING``, ...), None once it has left it."""
    done = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True,
                          text=True)
    state = done.stdout.strip().splitlines()
    return state[0].strip() if done.returncode == 0 and state else None


def outcome(record: Record) -> str | None:
    """``success`` or ``error`` once the job's call has returned (submitit's result file), None
    before (or when the job died without one)."""
    path = record.job().paths.result_pickle
    if not path.exists():
        return None
    try:
        return str(submitit.core.utils.pickle_load(path)[0])
    except Exception:  # a result being written: not yet
        return None


class SlurmStages:
    """Runs stages as Slurm jobs (module docstring). ``command_for(stage)`` is the command a stage
    runs (locally it would run it itself) and ``notebook_for(stage)`` its executed notebook, where a
    failure's own error is read; the job's output goes to ``log_path(stage)``."""

    def __init__(self, run_dir: Path, cluster: ClusterConfig,
                 command_for: Callable[[Stage], list[str]],
                 notebook_for: Callable[[Stage], Path | None]) -> None:
        self.run_dir, self.cluster = Path(run_dir), cluster
        self.command_for, self.notebook_for = command_for, notebook_for
        self.jobs_dir = self.run_dir / JOBS_DIR
        self._executor: submitit.AutoExecutor | None = None
        self._mine: set[str] = set()
        self._cancelled = False  # cancel_all was called: the jobs left will not write results
        # when this driver took over from one that died (its process start time): a stage whose
        # job that driver submitted and that succeeded while no driver watched is not run again
        self.adopt_since: float | None = None

    @property
    def executor(self) -> submitit.AutoExecutor:
        """submitit's Slurm executor (made when the first job is submitted: listing a run's jobs
        needs no ``srun``)."""
        if self._executor is None:
            self._executor = submitit.AutoExecutor(folder=self.run_dir / SLURM_DIR / "%j",
                                                   cluster="slurm",
                                                   slurm_max_num_timeout=self.cluster.max_timeouts)
            self._executor.update_parameters(**self.parameters())
        return self._executor

    def parameters(self) -> dict:
        """submitit's parameters for a stage's job."""
        c = self.cluster
        params: dict = {"timeout_min": slurm_minutes(c.time), "cpus_per_task": c.cpus_per_stage,
                        "slurm_additional_parameters": {"requeue": True, **c.sbatch_options()}}
        optional = {"slurm_partition": c.partition, "slurm_account": c.account,
                    "slurm_qos": c.qos, "slurm_constraint": c.constraint, "slurm_mem": c.mem,
                    "gpus_per_node": c.gpus_per_stage}
        params.update({k: v for k, v in optional.items() if v})
        return params

    def sbatch_flags(self) -> list[str]:
        """The same options as ``sbatch`` flags (for ``check``)."""
        c = self.cluster
        flags = [f"--time={c.time}", f"--cpus-per-task={c.cpus_per_stage}"]
        for flag, value in (("partition", c.partition), ("account", c.account), ("qos", c.qos),
                            ("constraint", c.constraint), ("mem", c.mem),
                            ("gpus-per-node", c.gpus_per_stage)):
            if value:
                flags.append(f"--{flag}={value}")
        for key, value in c.sbatch_options().items():
            flags.append(f"--{key.replace('_', '-')}" + ("" if value is True else f"={value}"))
        return flags

    def check(self) -> None:
        """Would Slurm take a stage's job? ``ConfigError`` naming the option it refuses."""
        try:
            done = subprocess.run(["sbatch", "--test-only", *self.sbatch_flags(), "--wrap", "true"],
                                  capture_output=True, text=True, timeout=60)
        except FileNotFoundError:
            raise ConfigError("cluster.executor: slurm, but sbatch is not on this machine's "
                              "PATH") from None
        if done.returncode == 0:
            return
        message = " ".join(done.stderr.split()) or f"sbatch exit {done.returncode}"
        lowered = message.lower()
        for words, key in ((("partition",), "partition"), (("time limit",), "time"),
                           (("account",), "account"), (("qos",), "qos"),
                           (("constraint", "feature"), "constraint"),
                           (("memory",), "mem"), (("gres", "gpu"), "gpus_per_stage")):
            if any(w in lowered for w in words):
                raise ConfigError(f"cluster.{key}: Slurm refuses it ({message})")
        raise ConfigError(f"cluster: Slurm refuses a job with these options ({message})")

    # ----- the jobs of a run ---------------------------------------------------------------------
    def record(self, stage: str) -> Record | None:
        path = self.jobs_dir / f"{stage}.json"
        if not path.is_file():
            return None
        return Record(**json.loads(path.read_text()))

    def log_path(self, stage: Stage) -> Path:
        """The job's own output (a notebook stage's own log is its notebook's)."""
        return self.jobs_dir / f"{stage.name}.log"

    def times_path(self, stage: str) -> Path:
        return self.jobs_dir / f"{stage}.times.json"

    def note_timing(self, record: Record, noticed: float) -> None:
        """Append the finished job's times to ``jobs/timings.csv`` (``TIMING_COLUMNS``)."""
        path = self.times_path(record.stage)
        if not path.is_file():
            return
        times = json.loads(path.read_text())
        command = times["ended"] - times["started"]
        row = [record.stage, record.job_id, f"{record.submitted:.3f}", f"{times['started']:.3f}",
               f"{times['ended']:.3f}", f"{noticed:.3f}", f"{command:.3f}",
               f"{noticed - record.submitted - command:.3f}"]
        table = self.jobs_dir / TIMINGS_FILE
        new = not table.exists()
        with open(table, "a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(TIMING_COLUMNS)
            writer.writerow(row)

    def submit(self, stage: Stage) -> Record:
        log = self.log_path(stage)
        log.parent.mkdir(parents=True, exist_ok=True)
        self.executor.update_parameters(name=f"mirl-{stage.name}")
        self.times_path(stage.name).unlink(missing_ok=True)  # an earlier attempt's
        submitted = time.time()
        job = self.executor.submit(StageJob(), self.command_for(stage), str(log),
                                   str(self.times_path(stage.name)))
        record = Record(stage.name, str(job.job_id), str(job.paths.folder), submitted)
        atomic_write_text(json.dumps(record.__dict__), self.jobs_dir / f"{stage.name}.json")
        path = self.jobs_dir / SUBMISSIONS_FILE
        new = not path.exists()
        with open(path, "a", newline="") as handle:  # one line per submission, appended
            writer = csv.writer(handle)
            if new:
                writer.writerow(["stage", "job_id", "submitted"])
            writer.writerow([stage.name, record.job_id, time.strftime("%Y-%m-%d %H:%M:%S")])
        return record

    def state(self, stage: str) -> tuple[str, str]:
        """``(job id, state)`` of a stage's last job: its queue state, ``COMPLETED`` or ``FAILED``
        once it has left the queue, ``-`` without a job."""
        record = self.record(stage)
        if record is None:
            return "-", "-"
        queued = queue_state(record.job_id)
        if queued is not None:
            return record.job_id, queued
        return record.job_id, {"success": "COMPLETED", "error": "FAILED"}.get(
            outcome(record) or "", "ENDED WITHOUT RESULT")

    def execute(self, stage: Stage, where: str) -> None:
        """Run ``stage`` as a job (or follow its job still in the queue) until it ends; raises
        ``StageFailed`` in one line when it fails."""
        record = self.record(stage.name)
        if record is not None and queue_state(record.job_id) is not None:
            print(f"{where}: reattached to Slurm job {record.job_id}", flush=True)
        elif (record is not None and self.adopt_since is not None
              and record.submitted >= self.adopt_since and outcome(record) == "success"):
            print(f"{where}: finished in Slurm job {record.job_id} while no driver watched",
                  flush=True)
            return
        else:
            record = self.submit(stage)
            print(f"{where}: submitted as Slurm job {record.job_id}", flush=True)
        self._mine.add(record.job_id)
        # the job is over when it has left the queue: a requeued job (preempted, time limit) is
        # back in it, PENDING, whatever its interrupted attempt left in submitit's result file
        seen = None
        while (state := queue_state(record.job_id)) is not None:
            if state != seen:
                print(f"{where}: Slurm job {record.job_id} {state}", flush=True)
            seen = state
            time.sleep(self.cluster.poll_seconds)
        deadline = time.time() + 30  # the result file follows the job's end closely
        result = outcome(record)
        while result is None and time.time() < deadline and not self._cancelled:
            time.sleep(0.2)
            result = outcome(record)
        self._mine.discard(record.job_id)
        if result == "success":
            self.note_timing(record, time.time())
            return
        log = self.log_path(stage)
        notebook = self.notebook_for(stage)
        text = log.read_text(errors="replace") if log.is_file() else ""
        own_log = notebook.with_suffix(".log") if notebook is not None else None
        if own_log is not None and own_log.is_file():  # papermill's own output, then the job's
            text = own_log.read_text(errors="replace") + "\n" + text
        reason = failure_reason(notebook if notebook is not None and notebook.exists() else None,
                                text)
        slurm_log = record.job().paths.stdout
        raise StageFailed(f"stage {stage.name} failed in Slurm job {record.job_id}: {reason} "
                          f"(notebook {notebook}, log {log}, Slurm log {slurm_log})"
                          if notebook is not None else
                          f"stage {stage.name} failed in Slurm job {record.job_id}: {reason} "
                          f"(log {log}, Slurm log {slurm_log})")

    def cancel_all(self) -> None:
        """Cancel the jobs this driver is waiting for (a stage failed, or Ctrl-C)."""
        self._cancelled = True
        if self._mine:
            subprocess.run(["scancel", *sorted(self._mine)], capture_output=True)
            self._mine.clear()
