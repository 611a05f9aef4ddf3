"""What an out-of-memory message says, and whether a probe's record means "does not fit".

PyTorch's CUDA caching allocator reports, e.g. (c10/cuda/CUDACachingAllocator.cpp):
  CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 139.72 GiB of which
  120.51 GiB is free. Including non-PyTorch memory, this process has 16.42 GiB memory in use. 16.00 GiB
  allowed; Of the allocated memory 13.10 GiB is allocated by PyTorch, and 1.22 GiB is reserved by
  PyTorch but unallocated. ...
("... allowed;" only under torch.cuda.set_per_process_memory_fraction.) Its CPU allocator says:
  DefaultCPUAllocator: can't allocate memory: you tried to allocate 17179869184 bytes.
Pure: no torch.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from bench.capacity.budget import BEFORE_MODEL

_UNITS = {"bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
_SIZE = r"([0-9][0-9.]*) (bytes|KiB|MiB|GiB|TiB)"
_CUDA_FIELDS = {
    "oom_tried_mib": rf"Tried to allocate {_SIZE}",
    "oom_device_total_mib": rf"has a total capac\w* of {_SIZE}",
    "oom_device_free_mib": rf"of which {_SIZE} is free",
    "oom_process_in_use_mib": rf"has {_SIZE} memory in use",
    "oom_allowed_mib": rf"{_SIZE} allowed;",
    "oom_allocated_mib": rf"Of the allocated memory {_SIZE} is allocated by PyTorch",
    "oom_reserved_unallocated_mib": rf"and {_SIZE} is reserved by PyTorch but unallocated",
}
_CPU_TRIED = re.compile(r"you tried to allocate ([0-9]+) bytes")


def _mib(number: str, unit: str) -> float:
    return float(number) * _UNITS[unit] / 2**20


def parse_oom_message(message: str) -> dict[str, float | None]:
    """The sizes an allocator's OOM message states, in MiB (None for those it does not state)."""
    out: dict[str, float | None] = {}
    for key, pattern in _CUDA_FIELDS.items():
        match = re.search(pattern, message)
        out[key] = _mib(*match.groups()) if match else None
    if out["oom_tried_mib"] is None and (match := _CPU_TRIED.search(message)):
        out["oom_tried_mib"] = int(match.group(1)) / 2**20
    return out


def oom_source(status: str, reason: str | None) -> str | None:
    """How a failed probe's out-of-memory was detected, or None if the record is not an OOM:
    'cuda_allocator' (over the per-process fraction or the device), 'cpu_allocator' (malloc
    failed), 'rss_watchdog' (the executor killed the worker over the budget), 'peak_rss' (the
    worker's own peak RSS exceeded the budget after the step), 'baseline_rss' (the worker held more
    than the budget before its model was built)."""
    text = reason or ""
    if "host RSS" in text and "exceeded memory_limit_mib" in text:
        return "rss_watchdog"
    if "BudgetExceeded" in text:
        return "baseline_rss" if BEFORE_MODEL in text else "peak_rss"
    if "CUDA out of memory" in text or "OutOfMemoryError" in text:
        return "cuda_allocator"
    if "DefaultCPUAllocator" in text or "can't allocate memory" in text or "MemoryError" in text:
        return "cpu_allocator"
    return "other" if status == "oom" else None


def is_oom(record: Mapping[str, Any]) -> bool:
    """An OOM, however reported: torch's CPU allocator failure reads as an `error` to the worker
    (its message has no 'out of memory'), so it is recognised here by its message."""
    return record.get("status") == "oom" or (
        record.get("status") == "error" and oom_source("error", record.get("reason")) is not None
    )
