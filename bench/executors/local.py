"""Local executor: each point in a fresh `python -m bench.worker` process, with a wall-clock
timeout and a host-memory watchdog; a kill, a crash or a missing record line becomes a row."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Iterable, Iterator, Sequence

import psutil

from bench.point import GridPoint
from bench.store import Record, make_record
from bench.worker import RECORD_PREFIX

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER_CMD: tuple[str, ...] = (sys.executable, "-m", "bench.worker")
MEMORY_FRACTION = 0.75  # default watchdog limit: this share of the RAM available at start
POLL_S = 0.1
STDERR_TAIL = 2000  # characters of a crashed worker's stderr kept in the record


def default_memory_limit_mib() -> float:
    return MEMORY_FRACTION * psutil.virtual_memory().available / 2**20


def _tree_rss_mib(proc: psutil.Process) -> float:
    """Resident memory of a process and its descendants, in MiB (0 if it is gone)."""
    total = 0
    try:
        for p in [proc, *proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0
    return total / 2**20


def _kill_group(popen: subprocess.Popen) -> None:
    """SIGKILL the worker and anything it started (it leads its own session)."""
    try:
        os.killpg(popen.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        popen.kill()
    popen.wait()


def _tail(f: IO[bytes], limit: int) -> str:
    f.seek(0)
    return f.read().decode("utf-8", "replace")[-limit:].strip()


def _find_record(stdout: str) -> Record | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RECORD_PREFIX):
            try:
                return json.loads(line[len(RECORD_PREFIX):])
            except json.JSONDecodeError:
                return None
    return None


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (possibly the kernel OOM killer)" if -code == signal.SIGKILL else ""
        return f"worker killed by {name}{hint}"
    return f"worker exited with code {code}"


def run_point_subprocess(
    point: GridPoint,
    timeout_s: float,
    memory_limit_mib: float | None = None,
    *,
    worker_cmd: Sequence[str] | None = None,
) -> Record:
    """Run one point in a fresh worker process and return its record (any status).

    Over `timeout_s` -> `timeout`; resident memory of the worker over `memory_limit_mib` (default
    75% of the RAM available now) -> `oom`; a non-zero exit, a signal or no record line -> `error`
    with the exit and the stderr tail. `worker_cmd` replaces `python -m bench.worker` (tests).
    """
    limit = default_memory_limit_mib() if memory_limit_mib is None else memory_limit_mib
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        popen = subprocess.Popen(
            list(worker_cmd or WORKER_CMD),
            stdin=subprocess.PIPE, stdout=out, stderr=err, env=env, start_new_session=True,
        )
        killed: tuple[str, str] | None = None
        try:
            popen.stdin.write(json.dumps(point.to_json()).encode())
            popen.stdin.close()
        except BrokenPipeError:
            pass  # the worker died at once; its exit code says why
        try:
            try:
                proc: psutil.Process | None = psutil.Process(popen.pid)
            except psutil.NoSuchProcess:
                proc = None
            while popen.poll() is None:
                elapsed = time.perf_counter() - start
                if elapsed > timeout_s:
                    killed = ("timeout", f"exceeded timeout_s={timeout_s:g} after {elapsed:.1f} s; killed")
                elif limit and proc is not None and (rss := _tree_rss_mib(proc)) > limit:
                    killed = ("oom", f"host RSS {rss:.0f} MiB exceeded memory_limit_mib={limit:.0f}; killed")
                if killed:
                    _kill_group(popen)
                    break
                time.sleep(POLL_S)
        finally:
            if popen.poll() is None:  # interrupted (Ctrl-C): leave no orphan behind
                _kill_group(popen)
        wall_s = time.perf_counter() - start
        if killed:
            return make_record(point, killed[0], killed[1], wall_s=wall_s)
        stdout = _tail(out, sys.maxsize)
        stderr_tail = _tail(err, STDERR_TAIL)
    record = _find_record(stdout)
    code = popen.returncode
    if record is None:
        reason = f"{_describe_exit(code)} without a record line" if code else "worker printed no record line"
        return make_record(point, "error", reason, wall_s=wall_s, traceback=stderr_tail or None)
    if code:
        note = f"{_describe_exit(code)} after writing its record"
        record["reason"] = f"{record['reason']}; {note}" if record.get("reason") else note
    record["wall_s"] = wall_s
    return record


class LocalExecutor:
    """Runs points one after another, each in a fresh subprocess (see run_point_subprocess).
    `timeout_s=None` uses each point's own timeout_s."""

    def __init__(
        self,
        timeout_s: float | None = None,
        memory_limit_mib: float | None = None,
        worker_cmd: Sequence[str] | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.memory_limit_mib = memory_limit_mib
        self.worker_cmd = worker_cmd

    def run(self, points: Iterable[GridPoint]) -> Iterator[Record]:
        for point in points:
            timeout = self.timeout_s if self.timeout_s is not None else point.timeout_s
            yield run_point_subprocess(point, timeout, self.memory_limit_mib, worker_cmd=self.worker_cmd)
