"""Local executor: each point in `processes` fresh worker processes forked one after another from a
fork server (bench.forkserver), each with a wall-clock timeout and a host-memory watchdog over the
worker and its children; a kill, a crash or a missing record line becomes a row. The first process
times the point and reads its memory, the others read memory only; the record carries the median
of each memory figure with its spread, and the machine's load during the point."""
from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import psutil

from bench import load
from bench.forkserver import ForkServer, ServerDied
from bench.metrics import combine_processes
from bench.point import GridPoint
from bench.store import Record, make_record
from bench.worker import RECORD_PREFIX

# fail(status, reason, effective=None, wall_s=0.0, traceback=None) -> the row of a unit without a record.
Fail = Callable[..., Record]
MEMORY_FRACTION = 0.75  # default watchdog limit: this share of the RAM available at start
DEFAULT_PROCESSES = 3
POLL_S = 0.1
STDERR_TAIL = 2000  # characters of a crashed worker's stderr kept in the record


def default_memory_limit_mib() -> float:
    return MEMORY_FRACTION * psutil.virtual_memory().available / 2**20


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MiB (0 if it is gone)."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total / 2**20


def kill_group(pid: int) -> None:
    """SIGKILL a worker and everything it started (it leads its own session)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def find_record(stdout: str) -> Record | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RECORD_PREFIX):
            try:
                return json.loads(line[len(RECORD_PREFIX):])
            except json.JSONDecodeError:
                return None
    return None


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (possibly the kernel OOM killer)" if -code == signal.SIGKILL else ""
        return f"worker killed by {name}{hint}"
    return f"worker exited with code {code}"


def _read(path: Path, limit: int) -> str:
    try:
        return path.read_bytes().decode("utf-8", "replace")[-limit:].strip()
    except OSError:
        return ""


def _note(record: Record, note: str) -> None:
    record["reason"] = f"{record['reason']}; {note}" if record.get("reason") else note


class PointRunner:
    """Runs points through one fork server (started on first use; `close()` stops it)."""

    def __init__(self, memory_limit_mib: float | None = None, processes: int = DEFAULT_PROCESSES,
                 measure: str | None = None) -> None:
        if processes < 1:
            raise ValueError(f"processes={processes}: need at least one worker process per point")
        self.memory_limit_mib = memory_limit_mib
        self.processes = processes
        self.server = ForkServer(measure)
        self.last_stdout = ""  # the last worker's stdout (its own lines beside the record line)
        self._tmp = Path(tempfile.mkdtemp(prefix="bench-worker-"))

    def close(self) -> None:
        self.server.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def run(self, point: GridPoint, timeout_s: float, *, memory_limit_mib: float | None = None,
            env: Mapping[str, str] | None = None) -> Record:
        """All worker processes of one point, then one record with the load during them;
        `memory_limit_mib` replaces the runner's watchdog limit for this point, `env` is set in each
        of its workers' environment (a capacity probe's own budget)."""
        before, own_before, server_before = load.snapshot(), load.process_cpu_s(), self.server.cpu_s()
        readings: list[Record] = []
        worker_cpu = wall = 0.0
        final: Record | None = None
        for i in range(self.processes):
            record, cpu_s = self.run_process(point, timeout_s, timing=(i == 0), memory_limit_mib=memory_limit_mib,
                                             env=env)
            worker_cpu += cpu_s
            wall += record["wall_s"]
            if record["status"] != "ok":
                if i:
                    record["reason"] = f"memory process {i + 1} of {self.processes}: {record['reason']}"
                final = record
                break
            readings.append(record)
        if final is None:
            final = readings[0]
            final["metrics"] = combine_processes([r["metrics"] for r in readings])
            for i, r in enumerate(readings[1:], start=2):
                if r.get("reason"):
                    _note(final, f"memory process {i}: {r['reason']}")
            if final["metrics"].get("throttled"):
                _note(final, "the GPU ran throttled: " + ", ".join(
                    final["metrics"].get("throttle_reasons_end") or final["metrics"].get("throttle_reasons_start") or []))
        final["wall_s"] = wall
        own = worker_cpu + (load.process_cpu_s() - own_before) + (self.server.cpu_s() - server_before)
        final["load"] = load.load_record(before, load.snapshot(), own_cpu_s=own)
        return final

    def run_process(self, point: GridPoint, timeout_s: float, timing: bool, *,
                    memory_limit_mib: float | None = None, env: Mapping[str, str] | None = None) -> tuple[Record, float]:
        """One worker process: its record (any status) and the CPU seconds it used."""
        def fail(status: str, reason: str, effective: dict[str, Any] | None = None, wall_s: float = 0.0,
                 traceback: str | None = None) -> Record:
            return make_record(point, status, reason, effective=effective, wall_s=wall_s, traceback=traceback)

        request: dict[str, Any] = {"point": point.to_json(), "timing": timing}
        if env:
            request["env"] = dict(env)
        return self.run_request(request, timeout_s, fail, memory_limit_mib=memory_limit_mib)

    def run_request(self, request: dict[str, Any], timeout_s: float, fail: Fail, *,
                    memory_limit_mib: float | None = None) -> tuple[Record, float]:
        """One fresh worker process for one request (a grid point, a probe, a training unit): the
        record it printed, else the row `fail(status, reason, ...)` makes of its timeout, its kill by
        the memory watchdog (at `memory_limit_mib`, else the runner's limit), its crash or its
        silence; and the CPU seconds it used."""
        own = memory_limit_mib if memory_limit_mib is not None else self.memory_limit_mib
        user_limit = own is not None
        limit = own if user_limit else default_memory_limit_mib()
        out, err = self._tmp / "stdout", self._tmp / "stderr"
        start = time.perf_counter()
        try:
            pid = self.server.spawn({**request, "stdout": str(out), "stderr": str(err)})
        except ServerDied as exc:
            self.server.close()
            return fail("error", f"no worker started: {exc}", wall_s=time.perf_counter() - start), 0.0
        killed: tuple[str, str] | None = None
        exited: dict[str, Any] | None = None
        try:
            while exited is None:
                exited = self.server.poll(POLL_S)
                if exited is not None:
                    break
                elapsed = time.perf_counter() - start
                if elapsed > timeout_s:
                    killed = ("timeout", f"exceeded timeout_s={timeout_s:g} after {elapsed:.1f} s; killed")
                elif limit and (rss := tree_rss_mib(pid)) > limit:
                    killed = ("oom", f"host RSS {rss:.0f} MiB exceeded memory_limit_mib={limit:.0f}; killed")
                if killed:
                    kill_group(pid)
                    exited = self.server.read(60.0, expect="exited")
        except ServerDied as exc:
            kill_group(pid)
            self.server.close()
            return fail("error", f"fork server died while the worker ran: {exc}",
                        wall_s=time.perf_counter() - start), 0.0
        finally:
            if exited is None:  # interrupted (Ctrl-C, SIGTERM): leave no orphan behind
                kill_group(pid)
        wall_s = time.perf_counter() - start
        cpu_s = float(exited.get("cpu_s") or 0.0)
        self.last_stdout = _read(out, 2**31)
        if killed:
            effective = None
            if killed[0] == "oom":
                effective = {"oom_detected_by": "rss_watchdog", "memory_limit_mib": limit,
                             "memory_limit_set_by": "user" if user_limit else "default"}
            return fail(killed[0], killed[1], effective=effective, wall_s=wall_s), cpu_s
        return self._finish(fail, int(exited["code"]), self.last_stdout, _read(err, STDERR_TAIL), wall_s), cpu_s

    @staticmethod
    def _finish(fail: Fail, code: int, stdout: str, stderr_tail: str, wall_s: float) -> Record:
        record = find_record(stdout)
        if record is None:
            reason = f"{describe_exit(code)} without a record line" if code else "worker printed no record line"
            return fail("error", reason, wall_s=wall_s, traceback=stderr_tail or None)
        if code:  # the measurement finished, but the process did not end cleanly: say so
            _note(record, f"{describe_exit(code)} after writing its record")
        record["wall_s"] = wall_s
        return record


def run_point_subprocess(point: GridPoint, timeout_s: float, memory_limit_mib: float | None = None, *,
                         processes: int = DEFAULT_PROCESSES, measure: str | None = None) -> Record:
    """Run one point with a fork server of its own (for executors that hand out single points,
    e.g. Ray) and return its record (any status).

    Over `timeout_s` (per process) -> `timeout`; resident memory of a worker and its children over
    `memory_limit_mib` (default 75% of the RAM available; 0 = off) -> `oom`; a non-zero exit, a
    signal or no record line -> `error` with the exit and the stderr tail. `measure` replaces
    `bench.measure_point:measure` ("module:function", tests).
    """
    runner = PointRunner(memory_limit_mib, processes, measure)
    try:
        return runner.run(point, timeout_s)
    finally:
        runner.close()


class LocalExecutor:
    """Runs points one after another through one fork server (see PointRunner).
    `timeout_s=None` uses each point's own timeout_s."""

    def __init__(
        self,
        timeout_s: float | None = None,
        memory_limit_mib: float | None = None,
        processes: int = DEFAULT_PROCESSES,
        measure: str | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.memory_limit_mib = memory_limit_mib
        self.processes = processes
        self.measure = measure

    def run(self, points: Iterable[GridPoint]) -> Iterator[Record]:
        runner = PointRunner(self.memory_limit_mib, self.processes, self.measure)
        try:
            for point in points:
                yield runner.run(point, self.timeout_s if self.timeout_s is not None else point.timeout_s)
        finally:  # also when the runner stops early (time budget, Ctrl-C, SIGTERM)
            runner.close()
