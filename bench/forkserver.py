"""A fork server: one long-lived process imports torch and the measuring code once, then forks one
fresh child per worker process, so a point no longer pays ~5 s of interpreter start-up while each
measurement still runs in a process of its own.

The server itself never runs a workload (no tensor op, no CUDA, no OpenMP thread pool: all of these
are unsafe to fork), so every child starts from the same just-imported state and shares no
allocator state with any earlier point. Children lead their own session (the runner kills the
whole group) and die with the server, which dies with the runner (PR_SET_PDEATHSIG).

Protocol (one JSON object per line): the server says {"ready": pid}; per request
{"point": ..., "timing": bool, "stdout": path, "stderr": path, "env": {name: value} (optional: set
in the child's environment before it measures, e.g. a capacity probe's own budget)} it answers
{"started": pid}, then {"exited": pid, "code": exit code (negative: signal), "cpu_s": the child's CPU
seconds}.
"""
from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import IO, Any, Callable

import psutil

PR_SET_PDEATHSIG = 1  # linux/prctl.h
DEFAULT_MEASURE = "bench.measure_point:measure"
REPO_ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 600.0  # importing torch on a loaded machine can take a minute
CHILD_SETUP_FAILED = 70  # exit code of a child that could not redirect its output


class ServerDied(RuntimeError):
    """The fork server exited or stopped answering."""


def die_with_parent(parent_pid: int) -> bool:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux prctl); exit now if the
    parent is already gone. False where prctl is unavailable (then only the runner's own cleanup
    stops the process)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ok = libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        ok = False
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    return ok


def load_measure(ref: str) -> Callable[..., Any]:
    """`module:function` -> the function (importing the module is the preload)."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


# --------------------------------------------------------------------------- server side


def serve(measure_ref: str, parent_pid: int) -> int:
    """The server loop: preload, then fork one child per request and report how it ended."""
    die_with_parent(parent_pid)
    requests = sys.stdin.buffer
    replies = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # stray prints (from imports) must not reach the protocol channel
    # Imported only now, in the server, after stdout is redirected: the measuring stack's imports may print.
    from bench import worker

    measure = load_measure(measure_ref)
    server_pid = os.getpid()
    _send(replies, {"ready": server_pid})
    for line in requests:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request, measure, worker, replies.fileno(), server_pid)
        _send(replies, {"started": pid})
        _, status, usage = os.wait4(pid, 0)
        _send(replies, {"exited": pid, "code": os.waitstatus_to_exitcode(status),
                        "cpu_s": usage.ru_utime + usage.ru_stime})
    return 0


def _child(request: dict[str, Any], measure: Callable[..., Any], worker: Any, channel_fd: int,
           server_pid: int) -> None:
    """In the forked child: own session, die with the server, output to the request's files,
    measure, print the record line, exit. Never returns."""
    code = 0
    try:
        os.setsid()
        os.close(channel_fd)
        die_with_parent(server_pid)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(target, fd)
            os.close(target)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.environ.update({str(k): str(v) for k, v in (request.get("env") or {}).items()})
    except BaseException:
        os._exit(CHILD_SETUP_FAILED)
    try:
        worker.serve(request, measure)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _send(channel: IO[bytes], message: dict[str, Any]) -> None:
    channel.write((json.dumps(message) + "\n").encode())


# --------------------------------------------------------------------------- runner side


class ForkServer:
    """The runner's handle on a fork server, started on first use. One child at a time."""

    def __init__(self, measure: str | None = None, python: str = sys.executable) -> None:
        self.measure = measure or DEFAULT_MEASURE
        self.python = python
        self.popen: subprocess.Popen | None = None
        self._err: IO[bytes] | None = None
        self._buffer = b""

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def start(self) -> None:
        """Start the server and wait until it has imported everything (ServerDied if it fails)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self._err = tempfile.TemporaryFile()
        self._buffer = b""
        self.popen = subprocess.Popen(
            [self.python, "-m", "bench.forkserver", "--measure", self.measure, "--parent-pid", str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, env=env, start_new_session=True,
        )
        self.read(READY_TIMEOUT_S, expect="ready")

    def ensure_started(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            self.close()
            self.start()

    def spawn(self, request: dict[str, Any]) -> int:
        """Ask for one child running `request`; its pid."""
        self.ensure_started()
        assert self.popen is not None and self.popen.stdin is not None
        try:
            self.popen.stdin.write((json.dumps(request) + "\n").encode())
            self.popen.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise ServerDied(f"fork server stopped taking requests: {exc}") from exc
        return int(self.read(READY_TIMEOUT_S, expect="started")["started"])

    def read(self, timeout_s: float, expect: str) -> dict[str, Any]:
        """The next message, which must carry `expect`; ServerDied on EOF or after timeout_s."""
        message = self.poll(timeout_s)
        if message is None:
            raise ServerDied(f"fork server sent no {expect!r} within {timeout_s:g} s")
        if expect not in message:
            raise ServerDied(f"fork server said {message}, expected {expect!r}")
        return message

    def poll(self, timeout_s: float) -> dict[str, Any] | None:
        """The next message if one arrives within timeout_s, else None; ServerDied on EOF."""
        assert self.popen is not None and self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise ServerDied(f"fork server exited ({self.stderr_tail()})")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def stderr_tail(self, limit: int = 2000) -> str:
        if self._err is None:
            return ""
        self._err.seek(0)
        return self._err.read().decode("utf-8", "replace")[-limit:].strip() or "no output"

    def cpu_s(self) -> float:
        """CPU seconds the server itself used (its children are counted apart)."""
        try:
            times = psutil.Process(self.pid).cpu_times() if self.pid else None
        except Exception:
            return 0.0
        return times.user + times.system if times else 0.0

    def close(self) -> None:
        """Stop the server (its children die with it) and reap it."""
        if self.popen is not None:
            if self.popen.poll() is None:
                self.popen.kill()
            self.popen.wait()
            for pipe in (self.popen.stdin, self.popen.stdout):
                if pipe is not None:
                    pipe.close()
        if self._err is not None:
            self._err.close()
        self.popen, self._err = None, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.forkserver", description=__doc__)
    parser.add_argument("--measure", default=DEFAULT_MEASURE, help="module:function to preload and call")
    parser.add_argument("--parent-pid", type=int, required=True)
    args = parser.parse_args(argv)
    return serve(args.measure, args.parent_pid)


if __name__ == "__main__":
    sys.exit(main())
