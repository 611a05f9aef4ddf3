"""How busy the machine was around a point: load average, CPU time taken by other processes and
steal time, read from /proc (Linux). Pure arithmetic over two snapshots, so it is tested with
injected /proc text; everything is None/quiet where /proc is not there.
"""
from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A point is `under_load` when other processes took at least this share of the machine's CPU
# capacity during it (one busy core of 10 is 0.1), or the hypervisor stole at least STEAL_LIMIT.
OTHER_CPU_LIMIT = 0.10
STEAL_LIMIT = 0.05
BUSY_SAMPLE_S = 0.5  # how long busy_reason() watches the machine before a run starts
LOAD_FIELDS = ("loadavg_1m", "other_cpu_frac", "steal_frac", "under_load")

PROC_STAT = Path("/proc/stat")
PROC_LOADAVG = Path("/proc/loadavg")


@dataclass(frozen=True)
class CpuTimes:
    """Machine-wide CPU time since boot in seconds, summed over all CPUs (first line of /proc/stat)."""

    busy_s: float  # user + nice + system + irq + softirq (guest time is inside user)
    total_s: float  # busy + idle + iowait + steal: the machine's capacity
    steal_s: float | None  # None where the kernel does not report steal


@dataclass(frozen=True)
class Snapshot:
    """The machine's CPU times and 1-minute load average at one moment."""

    cpu: CpuTimes | None
    loadavg_1m: float | None


def parse_proc_stat(text: str, ticks_per_s: float | None = None) -> CpuTimes:
    """The aggregate `cpu` line of /proc/stat (in clock ticks) as seconds."""
    hz = ticks_per_s or os.sysconf("SC_CLK_TCK")
    line = next(l for l in text.splitlines() if l.startswith("cpu "))
    ticks = [int(v) for v in line.split()[1:]]
    user, nice, system, idle = ticks[:4]
    iowait, irq, softirq = (ticks + [0, 0, 0])[4:7]
    steal = ticks[7] if len(ticks) > 7 else None
    busy = user + nice + system + irq + softirq
    total = busy + idle + iowait + (steal or 0)
    return CpuTimes(busy_s=busy / hz, total_s=total / hz, steal_s=None if steal is None else steal / hz)


def parse_loadavg(text: str) -> float:
    """The 1-minute load average from /proc/loadavg."""
    return float(text.split()[0])


def snapshot(stat_path: Path = PROC_STAT, loadavg_path: Path = PROC_LOADAVG) -> Snapshot:
    """Read the machine's CPU times and load average now (None for what cannot be read)."""
    try:
        cpu: CpuTimes | None = parse_proc_stat(stat_path.read_text())
    except (OSError, ValueError, StopIteration):
        cpu = None
    try:
        load: float | None = parse_loadavg(loadavg_path.read_text())
    except (OSError, ValueError, IndexError):
        load = None
    if load is None and hasattr(os, "getloadavg"):
        load = os.getloadavg()[0]
    return Snapshot(cpu=cpu, loadavg_1m=load)


def load_record(before: Snapshot, after: Snapshot, own_cpu_s: float) -> dict[str, Any]:
    """`record["load"]` for a point between two snapshots, whose own processes (the runner, the
    fork server and the point's workers) used `own_cpu_s` CPU seconds.

    other_cpu_frac: busy CPU time of everything else over the machine's capacity in that interval
    (the kernel's own count of all CPUs' ticks, so it needs no CPU count); steal_frac: time the
    hypervisor gave to other guests, over the same capacity (None where not reported).
    """
    other = steal = None
    if before.cpu is not None and after.cpu is not None:
        capacity = after.cpu.total_s - before.cpu.total_s
        if capacity > 0:
            busy = after.cpu.busy_s - before.cpu.busy_s
            other = min(1.0, max(0.0, (busy - own_cpu_s) / capacity))
            if before.cpu.steal_s is not None and after.cpu.steal_s is not None:
                steal = min(1.0, max(0.0, (after.cpu.steal_s - before.cpu.steal_s) / capacity))
    return {
        "loadavg_1m": after.loadavg_1m,
        "other_cpu_frac": other,
        "steal_frac": steal,
        "under_load": is_under_load(other, steal),
    }


def is_under_load(other_cpu_frac: float | None, steal_frac: float | None) -> bool:
    """The documented threshold: other processes >= OTHER_CPU_LIMIT or steal >= STEAL_LIMIT."""
    return (other_cpu_frac or 0.0) >= OTHER_CPU_LIMIT or (steal_frac or 0.0) >= STEAL_LIMIT


def describe_busy(load: dict[str, Any], window_s: float) -> str | None:
    """A warning line for a load record that is under load, else None."""
    if not load["under_load"]:
        return None
    parts = []
    if load["other_cpu_frac"] is not None:
        parts.append(f"other processes used {load['other_cpu_frac']:.0%} of the CPU over {window_s:g} s")
    if load["steal_frac"]:
        parts.append(f"steal {load['steal_frac']:.0%}")
    if load["loadavg_1m"] is not None:
        parts.append(f"1-min load average {load['loadavg_1m']:.2f} on {os.cpu_count()} CPUs")
    return "the machine is busy: " + ", ".join(parts)


def busy_reason(sample_s: float = BUSY_SAMPLE_S) -> str | None:
    """Why the machine is too busy to measure on now (watched for `sample_s` while this process
    sleeps), or None when it is quiet or /proc cannot say."""
    before, own = snapshot(), process_cpu_s()
    time.sleep(sample_s)
    return describe_busy(load_record(before, snapshot(), own_cpu_s=process_cpu_s() - own), sample_s)


def process_cpu_s() -> float:
    """CPU seconds this process has used (all threads), user plus system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
