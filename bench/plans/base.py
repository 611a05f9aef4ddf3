"""The interface every kind's plan offers the lifecycle (`bench.lifecycle`), in the spirit of an
ask/tell optimiser: the lifecycle asks for the next units given the records so far, executes them,
and tells the plan each record. Progress, "done", what `--retry-failed` reruns and the summary come
from the plan; the lifecycle and the store know no kind."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

from rich.console import Console

from bench.options import RunError
from bench.plans.progress import Progress

Record = dict[str, Any]
Say = Callable[[str], None]

class UnitExecutor(Protocol):
    """Runs a plan's units and yields (unit, record) for each as soon as it finishes, in any order;
    `close()` stops its workers (it may serve several rounds of `run`)."""

    def run(self, units: Sequence[Any]) -> Iterator[tuple[Any, Record]]: ...

    def close(self) -> None: ...


class Plan(Protocol):
    """One profile of one suite, resolved, as the lifecycle drives it."""

    kind: str
    suite: str
    profile: str
    device: str
    report_module: str  # its `write_report(run_dir)`
    units_word: str  # what its units are called in "N points: x already recorded, y to do"
    checkpoints: bool  # its units keep to the time budget themselves (else the lifecycle stops between units)
    say: Say  # set by the lifecycle: where the plan's own lines go

    def spec(self) -> dict[str, Any]:
        """The resolved suite run.json keeps as `suite_spec`."""

    def planned(self) -> list[str]:
        """run.json's `planned`: the ids whose records finish the run (points, searches, trainings...)."""

    def key(self) -> str:
        """What a continued run must share with the one that began it (`bench.store.plan_key`)."""

    def check_kept(self, kept: Mapping[str, Any], run_dir: Path, say: Say) -> None:
        """A continued run's run.json against this plan: warn, or raise RunError to refuse it."""

    progress: Progress  # of a run folder, from its run.json and records (a static method)

    def start(self, records: Sequence[Record], retry_failed: bool) -> tuple[int, int]:
        """Take the records a continued run holds; returns (done, planned)."""

    def nothing_left(self, run_dir: Path, total: int) -> str:
        """Why a run folder with a final record of every unit measures nothing (NOTHING MEASURED)."""

    def nothing_to_run(self) -> str | None:
        """Why the units left measure nothing (e.g. every one is skipped), or None."""

    def ask(self) -> list[Any]:
        """The next units to run given what was told so far; [] when the plan is done."""

    def tell(self, unit: Any, record: Record) -> Record:
        """A unit's record as the run keeps it (completed with the plan's identity)."""

    def executor(self, opts: Any, run_dir: Path, say: Say) -> UnitExecutor:
        """What runs the units (refusing, up front, an executor this kind cannot use)."""

    def summary(self, console: Console, records: Sequence[Record]) -> None:
        """The table printed at the end of a run."""

    def one_line(self, unit: Any, record: Record) -> str:
        """The line printed as a unit's record lands (rich markup allowed)."""


def refuse(kind: str, flag: str, why: str) -> None:
    """A flag a kind cannot honour: refused before anything runs, with its one-line reason."""
    raise RunError(f"{flag}: not available for {kind} suites ({why})")
