"""The executor interface: local subprocesses, a Ray cluster or Slurm all yield the same records."""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Protocol

from bench.point import GridPoint

Record = dict[str, Any]


class Executor(Protocol):
    """Runs points and yields each point's record (any status) as soon as it finishes, in any order."""

    def run(self, points: Iterable[GridPoint]) -> Iterator[Record]: ...
