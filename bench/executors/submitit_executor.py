"""SubmititExecutor: one Slurm job per grid point through submitit, each holding a whole node
(`--exclusive`) and running the point in a subprocess exactly as the local executor does, with an
explicit torch thread count, so records and statuses match a local run. `cluster="local"` runs the
same jobs as local processes, one at a time (how the tests exercise it)."""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from bench.executors.base import Record
from bench.executors.local import DEFAULT_PROCESSES
from bench.executors.remote_task import RunPoint, failure_record, node_cpus, point_runner, run_point_remote
from bench.point import GridPoint

# Slurm's own limit sits above the point's timeout: interpreter start, imports, and the point's
# own timeout handling (which records a `timeout` row) must fit before Slurm kills the job.
JOB_GRACE_S = 300.0


def _cause(error: BaseException) -> str:
    """One line saying why a job failed: the job's own exception line when submitit relays a
    traceback (`ValueError: ...`), else the start of submitit's message."""
    text = str(error)
    if "Traceback (most recent call last)" in text:
        trace = text.split("Traceback (most recent call last):", 1)[1]
        lines = []
        for line in trace.splitlines():
            if line.startswith("---"):  # submitit's divider before its "check the logs" footer
                break
            lines.append(line)
        last = next((line for line in reversed(lines) if line.strip() and not line[0].isspace()), None)
        if last:
            return last
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("---")]
    return f"{type(error).__name__}: " + " ".join(lines[:2])


def slurm_options(partition: str | None = None, time_min: int | None = None, cpus_per_task: int | None = None,
                  extra: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """submitit parameters for the command line's --slurm-* flags; `extra` are any other sbatch
    options (`constraint=a100` becomes `#SBATCH --constraint=a100`)."""
    options: dict[str, Any] = {}
    if partition:
        options["slurm_partition"] = partition
    if time_min is not None:
        options["timeout_min"] = int(time_min)
    if cpus_per_task is not None:
        options["cpus_per_task"] = int(cpus_per_task)
    if extra:
        options["slurm_additional_parameters"] = dict(extra)
    return options


def run_point_job(point: GridPoint, timeout_s: float, memory_limit_mib: int | None,
                  run_point: RunPoint | None) -> Record:
    """The body of one job: as many torch threads as CPUs Slurm gave the task (else this process's)."""
    import submitit  # optional dependency, imported only where a job runs

    threads = int(os.environ.get("SLURM_CPUS_PER_TASK") or node_cpus())
    try:
        job_id = submitit.JobEnvironment().job_id
    except RuntimeError:  # not inside a submitit job (called directly)
        job_id = None
    return run_point_remote(point, timeout_s, memory_limit_mib, run_point, threads, {"slurm_job_id": job_id})


class SubmititExecutor:
    """Submits every point as a job to `folder` (logs and pickles land there) and yields records as
    jobs finish. A job that fails (node failure, Slurm timeout, preemption) becomes an `error` row.

    Each point runs in `processes` worker processes (the suite's), measured by `measure`, unless
    `run_point` replaces the job's body (tests). slurm: extra submitit parameters, generic (`mem_gb`, `timeout_min`) or Slurm-specific
    (`slurm_partition`). Every job asks for a whole node (`slurm_exclusive`); without Slurm
    (`local`) jobs run one after another, so a timed point still has its machine to itself.
    """

    def __init__(
        self,
        folder: Path,
        timeout_s: float = 600.0,
        *,
        num_gpus: int = 0,
        cluster: str | None = None,
        slurm: Mapping[str, Any] | None = None,
        memory_limit_mib: int | None = None,
        run_point: RunPoint | None = None,
        processes: int = DEFAULT_PROCESSES,
        measure: str | None = None,
        poll_s: float | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"SubmititExecutor: timeout_s must be > 0, got {timeout_s!r}")
        if num_gpus < 0 or int(num_gpus) != num_gpus:
            raise ValueError(f"SubmititExecutor: num_gpus must be a whole number >= 0, got {num_gpus!r}")
        self.folder = Path(folder)
        self.timeout_s = timeout_s
        self.num_gpus = int(num_gpus)
        self.cluster = cluster
        self.slurm = dict(slurm or {})
        self.memory_limit_mib = memory_limit_mib
        self.run_point = run_point or point_runner(processes, measure)  # the suite's memory processes per point
        self.poll_s = poll_s  # None: 5 s against Slurm, 0.2 s for local processes

    def _executor(self) -> Any:
        import submitit  # optional dependency, imported only when this executor runs

        ex = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        ex.update_parameters(**{
            "timeout_min": math.ceil((self.timeout_s + JOB_GRACE_S) / 60), "nodes": 1, "tasks_per_node": 1,
            "name": "reformer-bench", "slurm_exclusive": True, **self.slurm,
        })
        return ex

    def run(self, points: Iterable[GridPoint]) -> Iterator[Record]:
        ex = self._executor()
        # Slurm's --exclusive keeps jobs on separate nodes; local processes share this machine.
        at_once = 1 if ex.cluster != "slurm" else None
        poll_s = self.poll_s if self.poll_s is not None else (0.2 if at_once else 5.0)
        queue = list(points)
        jobs: list[tuple[Any, GridPoint]] = []
        try:
            while queue or jobs:
                while queue and (at_once is None or len(jobs) < at_once):
                    point = queue.pop(0)
                    ex.update_parameters(gpus_per_node=self.num_gpus if point.device.startswith("cuda") else 0)
                    job = ex.submit(run_point_job, point, self.timeout_s, self.memory_limit_mib, self.run_point)
                    jobs.append((job, point))
                waiting = []
                for job, point in jobs:
                    if job.done():
                        yield self._collect(job, point)
                    else:
                        waiting.append((job, point))
                jobs = waiting
                if jobs:
                    time.sleep(poll_s)
        finally:
            for job, _ in jobs:  # the consumer stopped early: leave nothing queued
                job.cancel(check=False)

    @staticmethod
    def _collect(job: Any, point: GridPoint) -> Record:
        try:
            record = job.result()
        except Exception as e:  # noqa: BLE001 -- FailedJobError, UncompletedJobError: a row, not a crash
            return failure_record(point, f"submitit job {job.job_id}: {_cause(e)}", traceback=str(e))
        if not isinstance(record, dict) or record.get("point_id") != point.point_id:
            got = record.get("point_id") if isinstance(record, dict) else type(record).__name__
            return failure_record(point, f"submitit job {job.job_id} returned a record for {got!r}, not {point.point_id!r}")
        return record
