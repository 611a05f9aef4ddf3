"""The executor a run's units go to: local worker processes (fork server), a Ray cluster or Slurm
jobs through submitit. A kind says which it supports; the rest are refused before anything runs:
grid points go to any of the three; capacity probes and training units run locally only (a probe's
outcome is the memory budget this machine's worker enforces; a training checkpoints into this
machine's run folder)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from bench.executors.base import Executor
from bench.executors.local import DEFAULT_PROCESSES, LocalExecutor
from bench.options import RunError

EXECUTORS = ("local", "ray", "submitit")


def make_executor(opts: Any, timeout_s: float | None, run_dir: Path | None = None,
                  log: Callable[[str], None] | None = None, processes: int = DEFAULT_PROCESSES,
                  measure: str | None = None) -> Executor:
    """`opts.executor`'s executor for units of `timeout_s` each (None: each point's own) measured in
    `processes` worker processes by `measure` (the grid's measurement by default), on any executor."""
    extra: dict[str, Any] = {} if opts.memory_limit_mib is None else {"memory_limit_mib": int(opts.memory_limit_mib)}
    if processes != DEFAULT_PROCESSES:  # the suite's memory processes per point, on every executor
        extra["processes"] = processes
    if measure is not None:
        extra["measure"] = measure
    if opts.executor == "ray":
        # Imported when chosen: ray is an optional dependency, and slow to import.
        from bench.executors.ray_executor import RayExecutor

        return RayExecutor(address=opts.ray_address, timeout_s=timeout_s,
                           connect_timeout_s=opts.ray_connect_timeout_s, log=log, **extra)
    if opts.executor == "submitit":
        # Imported when chosen: submitit is an optional dependency.
        from bench.executors.submitit_executor import SubmititExecutor, slurm_options

        return SubmititExecutor(
            Path(run_dir or opts.results_root) / "submitit", timeout_s,
            cluster=None if opts.submitit_cluster == "auto" else opts.submitit_cluster,
            slurm=slurm_options(opts.slurm_partition, opts.slurm_time_min, opts.slurm_cpus_per_task,
                                opts.slurm_args),
            num_gpus=opts.slurm_gpus_per_task, **extra,
        )
    if opts.executor != "local":
        raise RunError(f"--executor {opts.executor!r}: expected one of {', '.join(EXECUTORS)}")
    return LocalExecutor(timeout_s=None, memory_limit_mib=opts.memory_limit_mib, processes=processes,
                         measure=measure)
