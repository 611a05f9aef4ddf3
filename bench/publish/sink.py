"""The Sink interface: where a published run goes. `WandbSink` is the real one; `RecordingSink`
keeps every call so tests can check exactly what would have been sent."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import pandas as pd

from bench.publish.frames import LineSeries


class Sink(Protocol):
    """One experiment-tracker run: opened once, written to, finished once."""

    next_step: int  # the step the next log call lands on

    def init(
        self, *, name: str, group: str, tags: Sequence[str], config: Mapping[str, Any], job_type: str,
        run_id: str | None = None, start_step: int = 0,
    ) -> None:
        """Open the run `run_id` (resumed when it exists), logging from `start_step` on."""
        ...

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None: ...

    def define_x(self, glob: str, x: str) -> None:
        """Plot the metrics matching `glob` (a prefix and `*`) against the metric `x`, not the step."""
        ...

    def log_table(self, name: str, df: pd.DataFrame) -> None: ...

    def log_images(self, images: Mapping[str, Path]) -> None: ...

    def log_line_series(self, series: LineSeries) -> None: ...

    def finish(self) -> str | None:
        """Close the run; returns where it went (an offline run's directory) or None."""
        ...


@dataclass(frozen=True)
class InitCall:
    name: str
    group: str
    tags: tuple[str, ...]
    config: dict[str, Any]
    job_type: str
    run_id: str | None = None
    start_step: int = 0


@dataclass
class RecordingSink:
    """A Sink that only remembers: for tests, and for a dry run that prints what would be sent."""

    inits: list[InitCall] = field(default_factory=list)
    metrics: list[tuple[int | None, dict[str, Any]]] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    images: dict[str, Path] = field(default_factory=dict)
    series: list[LineSeries] = field(default_factory=list)
    x_axes: dict[str, str] = field(default_factory=dict)
    finished: int = 0
    next_step: int = 0

    def init(
        self, *, name: str, group: str, tags: Sequence[str], config: Mapping[str, Any], job_type: str,
        run_id: str | None = None, start_step: int = 0,
    ) -> None:
        self.inits.append(InitCall(name, group, tuple(tags), dict(config), job_type, run_id, start_step))
        self.next_step = max(self.next_step, start_step)

    def _step(self, step: int | None = None) -> int:
        step = self.next_step if step is None else max(step, self.next_step)
        self.next_step = step + 1
        return step

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        self.metrics.append((self._step(step), dict(metrics)))

    def define_x(self, glob: str, x: str) -> None:
        self.x_axes[glob] = x

    def log_table(self, name: str, df: pd.DataFrame) -> None:
        self._step()
        self.tables[name] = df.copy()

    def log_images(self, images: Mapping[str, Path]) -> None:
        if images:
            self._step()
        self.images.update(images)

    def log_line_series(self, series: LineSeries) -> None:
        self._step()
        self.series.append(series)

    def finish(self) -> str | None:
        self.finished += 1
        return None
