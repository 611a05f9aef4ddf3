"""What one point does on a cluster node (a Ray task or a Slurm job): fix the torch thread count
explicitly, run the point in a subprocess exactly as the local executor does, and stamp the record
with the node it ran on. Shared by the Ray and submitit executors."""
from __future__ import annotations

import functools
import os
from typing import Any, Callable, Mapping

from bench.point import GridPoint
from bench.executors.local import (  # STDERR_TAIL: as much error text as a local failure keeps
    DEFAULT_PROCESSES, STDERR_TAIL, run_point_subprocess,
)
from bench.store import make_record
from bench.worker import THREADS_ENV, node_info

Record = dict[str, Any]
RunPoint = Callable[..., Record]  # run_point_subprocess(point, timeout_s, memory_limit_mib=None)
# Libraries that read a thread count from the environment; Ray sets some of them to the task's CPUs.
THREAD_VARS = (THREADS_ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def failure_record(point: GridPoint, reason: str, traceback: str | None = None) -> Record:
    """The `error` record of a point whose task returned none, shaped exactly as the local
    executor's failures are (bench.store.make_record); the runner fills in run_id."""
    return make_record(point, "error", reason, traceback=traceback[-STDERR_TAIL:] if traceback else None)


def point_runner(processes: int = DEFAULT_PROCESSES, measure: str | None = None) -> RunPoint:
    """How a node runs one point: in `processes` worker processes measured by `measure` (the suite's
    `processes`, as under the local executor), picklable for a Ray task or a Slurm job."""
    if processes < 1:
        raise ValueError(f"processes={processes}: need at least one worker process per point")
    return functools.partial(run_point_subprocess, processes=processes, measure=measure)


def node_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_point_remote(
    point: GridPoint,
    timeout_s: float,
    memory_limit_mib: int | None,
    run_point: RunPoint | None,
    threads: int,
    node_extra: Mapping[str, Any] | None = None,
) -> Record:
    """Run one point with `threads` torch threads in its worker and return its record, whose
    `node` block says where it ran (plus `node_extra`, e.g. the Ray node id or Slurm job id)."""
    for var in THREAD_VARS:  # the worker subprocess inherits these; this process runs one point only
        os.environ[var] = str(threads)
    run_point = run_point or run_point_subprocess
    record = run_point(point, timeout_s, memory_limit_mib=memory_limit_mib)
    if isinstance(record, dict):
        # A worker that wrote its record knows its threads; a killed one gets this process's view.
        node = record.get("node") or {**node_info(point.device), "torch_threads": threads}
        record["node"] = {**node, **(node_extra or {})}
    return record
