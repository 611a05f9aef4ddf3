"""RayExecutor: one Ray task per grid point on an existing cluster (or a local instance), each task
in a fresh worker process running the same subprocess-per-point code as the local executor, so the
records, statuses and resume behave exactly as in a local run."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from bench.executors.base import Record
from bench.point import GridPoint

REPO_ROOT = Path(__file__).resolve().parents[2]
RunPoint = Callable[..., Record]  # run_point_subprocess(point, timeout_s, memory_limit_mib=None)
TRACEBACK_CHARS = 2000  # as much of Ray's error text as a record keeps (the local executor's budget)


def failure_record(point: GridPoint, reason: str, traceback: str | None = None) -> Record:
    """The `error` record of a point whose task returned none, shaped exactly as the local
    executor's failures are (bench.store.make_record); the runner fills in run_id."""
    from bench.store import make_record

    return make_record(point, "error", reason, traceback=traceback[-TRACEBACK_CHARS:] if traceback else None)


def run_point_task(point: GridPoint, timeout_s: float, memory_limit_mib: int | None, run_point: RunPoint | None) -> Record:
    """The body of one Ray task: run the point as the local executor would and return its record."""
    if run_point is None:
        from bench.executors.local import run_point_subprocess as run_point
    if memory_limit_mib is None:
        return run_point(point, timeout_s)
    return run_point(point, timeout_s, memory_limit_mib=memory_limit_mib)


def _reason(error: BaseException) -> str:
    """A short cause for a failed task: the task's own exception when Ray wrapped one."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        return f"ray task raised {type(cause).__name__}: {cause}"
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"ray: {type(error).__name__}: {first}"


class RayExecutor:
    """Runs points as Ray tasks and yields their records as they finish, in any order.

    address: a cluster (`ray://head:10001`, `auto`) or None for a local instance. num_gpus: GPUs
    per point for CUDA points (CPU points ask for none). Each task is retried never (a crash is a
    result) and gets a fresh worker (`max_calls=1`), so no CUDA context or allocator state leaks
    from one point to the next. A task that fails becomes an `error` record; the grid goes on.
    """

    def __init__(
        self,
        address: str | None = None,
        num_gpus: float = 0.0,
        timeout_s: float = 600.0,
        *,
        num_cpus: float = 1.0,
        memory_limit_mib: int | None = None,
        run_point: RunPoint | None = None,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if num_gpus < 0:
            raise ValueError(f"RayExecutor: num_gpus must be >= 0, got {num_gpus!r}")
        if num_cpus <= 0:
            raise ValueError(f"RayExecutor: num_cpus must be > 0, got {num_cpus!r}")
        if timeout_s <= 0:
            raise ValueError(f"RayExecutor: timeout_s must be > 0, got {timeout_s!r}")
        self.address = address
        self.num_gpus = num_gpus
        self.timeout_s = timeout_s
        self.num_cpus = num_cpus
        self.memory_limit_mib = memory_limit_mib
        self.run_point = run_point
        self.init_kwargs = dict(init_kwargs or {})

    def _init(self, ray: Any) -> bool:
        """Connect (or start a local instance) unless Ray is already up; True when we started it."""
        if ray.is_initialized():
            return False
        kwargs: dict[str, Any] = {"include_dashboard": False, **self.init_kwargs}
        if self.address is None and "runtime_env" not in kwargs:
            # A local instance's workers must import `bench` even when run from another directory.
            path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
            kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": path}}
        ray.init(address=self.address, **kwargs)
        return True

    def _gpus_for(self, point: GridPoint) -> float:
        return self.num_gpus if point.device.startswith("cuda") else 0.0

    def run(self, points: Iterable[GridPoint]) -> Iterator[Record]:
        import ray

        started = self._init(ray)
        task = ray.remote(max_calls=1, max_retries=0)(run_point_task)
        pending: dict[Any, GridPoint] = {}
        try:
            for point in points:
                ref = task.options(num_cpus=self.num_cpus, num_gpus=self._gpus_for(point)).remote(
                    point, self.timeout_s, self.memory_limit_mib, self.run_point
                )
                pending[ref] = point
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    point = pending.pop(ref)
                    yield self._collect(ray, ref, point)
        finally:
            for ref in pending:  # the consumer stopped early: leave nothing running on the cluster
                ray.cancel(ref)
            if started:
                ray.shutdown()

    @staticmethod
    def _collect(ray: Any, ref: Any, point: GridPoint) -> Record:
        try:
            record = ray.get(ref)
        except Exception as e:  # noqa: BLE001 -- RayTaskError, WorkerCrashedError, ...: a row, not a crash
            return failure_record(point, _reason(e), traceback=str(e))
        if not isinstance(record, dict) or record.get("point_id") != point.point_id:
            got = record.get("point_id") if isinstance(record, dict) else type(record).__name__
            return failure_record(point, f"ray task returned a record for {got!r}, not point {point.point_id!r}")
        return record
