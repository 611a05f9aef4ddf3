"""The executor interface: local subprocesses, a Ray cluster or Slurm all yield the same records."""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Protocol

from bench.point import GridPoint

Record = dict[str, Any]


class Executor(Protocol):
    """Runs points and yields each point's record (any status) as soon as it finishes, in any order."""

    def run(self, points: Iterable[GridPoint]) -> Iterator[Record]: ...


class ExecutorError(RuntimeError):
    """The executor cannot start (cluster unreachable, refused, no node fits): nothing ran."""


class ClusterLost(RuntimeError):
    """The cluster went away mid-run. Points that were running or never started are not recorded,
    so the next run of the same command runs them."""

    def __init__(self, message: str, unfinished: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.unfinished = unfinished  # point_ids left without a record
