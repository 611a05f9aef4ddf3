"""SubmititExecutor: one Slurm job per grid point through submitit, each running the point in a
subprocess exactly as the local executor does, so records and statuses match a local run.
`cluster="local"` runs the same jobs as local processes (how the tests exercise it)."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from bench.executors.base import Record
from bench.executors.ray_executor import RunPoint, failure_record, run_point_task
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


class SubmititExecutor:
    """Submits every point as a job to `folder` (logs and pickles land there) and yields records as
    jobs finish. A job that fails (node failure, Slurm timeout, preemption) becomes an `error` row.

    slurm: extra submitit parameters, generic (`mem_gb`) or Slurm-specific (`slurm_partition`).
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
        poll_s: float = 5.0,
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
        self.run_point = run_point
        self.poll_s = poll_s

    def _executor(self) -> Any:
        import submitit

        ex = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        ex.update_parameters(
            timeout_min=math.ceil((self.timeout_s + JOB_GRACE_S) / 60), nodes=1, tasks_per_node=1,
            cpus_per_task=1, name="reformer-bench", **self.slurm,
        )
        return ex

    def run(self, points: Iterable[GridPoint]) -> Iterator[Record]:
        ex = self._executor()
        jobs: list[tuple[Any, GridPoint]] = []
        try:
            for point in points:
                ex.update_parameters(gpus_per_node=self.num_gpus if point.device.startswith("cuda") else 0)
                job = ex.submit(run_point_task, point, self.timeout_s, self.memory_limit_mib, self.run_point)
                jobs.append((job, point))
            while jobs:
                waiting = []
                for job, point in jobs:
                    if job.done():
                        yield self._collect(job, point)
                    else:
                        waiting.append((job, point))
                jobs = waiting
                if jobs:
                    time.sleep(self.poll_s)
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
