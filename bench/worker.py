"""One worker process of a grid point: measure it and print exactly one line `@@RECORD@@ {record}`
on stdout. Any exception becomes a status row (oom, skipped, error), so the parent only has to
handle crashes, kills and timeouts. Runs in a child of the fork server (bench.forkserver), or
standalone as `python -m bench.worker < request.json` for debugging.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
import traceback as tb
from typing import Any, Callable, Mapping

from bench.environment import _cpu_name
from bench.point import GridPoint
from bench.store import Record, make_record

# Marks the record line, so stray prints from libraries cannot be mistaken for it.
RECORD_PREFIX = "@@RECORD@@ "
TRACEBACK_TAIL = 4000  # characters of traceback kept in an error record
# Set by the cluster executors: the torch thread count, so it never comes from Ray's OMP_NUM_THREADS.
THREADS_ENV = "BENCH_TORCH_THREADS"

# measure(point) times and reads memory; measure(point, timing=False) reads memory only.
Measure = Callable[..., Mapping[str, Any]]


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom_type = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    # The CPU allocator's failure is a plain RuntimeError: "DefaultCPUAllocator: can't allocate memory".
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _is_unavailable(exc: BaseException) -> bool:
    # Only measure() can raise it, and then bench.workloads is already imported.
    workloads = sys.modules.get("bench.workloads")
    unavailable = getattr(workloads, "WorkloadUnavailable", None)
    return unavailable is not None and isinstance(exc, unavailable)


def classify(exc: BaseException) -> tuple[str, str]:
    """The (status, reason) row an exception from a measurement becomes."""
    message = f"{type(exc).__name__}: {exc}".strip()
    if _is_oom(exc):
        return "oom", message
    if _is_unavailable(exc):
        return "skipped", str(exc) or type(exc).__name__
    return "error", message


def run_point(point: GridPoint, measure: Measure, timing: bool = True) -> Record:
    """Measure one point (memory only when not `timing`) and return its record, whatever happens."""
    start = time.perf_counter()
    try:
        result = measure(point) if timing else measure(point, timing=False)
    except Exception as exc:  # every outcome is a row
        status, reason = classify(exc)
        trace = tb.format_exc()[-TRACEBACK_TAIL:] if status == "error" else None
        effective = {"oom_detected_by": "exception"} if status == "oom" else None
        return make_record(point, status, reason, effective=effective,
                           wall_s=time.perf_counter() - start, traceback=trace)
    return make_record(
        point,
        "ok",
        params=result.get("params"),
        effective=result.get("effective"),
        metrics=result.get("metrics"),
        wall_s=time.perf_counter() - start,
    )


def serve(request: Mapping[str, Any], measure: Measure) -> None:
    """Measure the request's point (or run its `unit`: `measure(unit)` returns the record) and print
    its record line, with the node it ran on."""
    apply_thread_count()
    if "unit" in request:
        record = dict(measure(request["unit"]))
        record["node"] = node_info(str(request["unit"].get("device", "cpu")))
    else:
        point = GridPoint.from_json(request["point"])
        record = run_point(point, measure, timing=bool(request.get("timing", True)))
        record["node"] = node_info(point.device)
    sys.stdout.write(RECORD_PREFIX + json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n")
    sys.stdout.flush()


def apply_thread_count() -> int | None:
    """torch.set_num_threads(BENCH_TORCH_THREADS) when a cluster executor set it; else torch's default."""
    value = os.environ.get(THREADS_ENV)
    if not value:
        return None
    import torch  # only here: the worker's own modules stay torch-free; the measurement imports it anyway

    torch.set_num_threads(int(value))
    return int(value)


def node_info(device: str) -> dict[str, Any]:
    """Where a point ran: host, CPU, CPU count, torch threads and GPU (cuda points), for `record["node"]`."""
    torch = sys.modules.get("torch")  # only read if the measurement imported it
    gpu = None
    if torch is not None and device.startswith("cuda") and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name()
    return {
        "host": platform.node(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "gpu": gpu,
    }


def _default_measure(point: GridPoint, **kwargs: Any) -> Mapping[str, Any]:
    # The measuring stack (torch, the workloads) loads here, once per fork server, never in the runner.
    from bench.measure_point import measure

    return measure(point, **kwargs)


def main(measure: Measure | None = None) -> int:
    """Read a request ({"point": ..., "timing": bool}, or a bare point) on stdin, print its record."""
    request = json.loads(sys.stdin.read())
    serve(request if "point" in request else {"point": request}, measure or _default_measure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
