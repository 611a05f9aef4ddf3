"""NVML readings: a background sampler that turns device and process used memory into a real peak
over the measured iteration, and the clocks, temperature, power and throttle reasons of the GPU.

Torch-free. The reader is an interface, so the sampler's peak logic is tested on CPU with injected
readings; `open_reader` returns None (and every column stays null) without a GPU or NVML.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Protocol

MIB = 2**20
SAMPLE_INTERVAL_S = 0.001

# nvmlClocksEventReason* bits (nvml.h). Only the SLOWING ones mean the clocks were held down
# against the workload's will; idle, application clocks, sync boost and display clocks do not.
THROTTLE_BITS = {
    0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
    0x10: "sync_boost", 0x20: "sw_thermal_slowdown", 0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown", 0x100: "display_clock_setting",
}
SLOWING = frozenset({"sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown",
                     "hw_power_brake_slowdown"})
STATE_FIELDS = ("sm_clock_mhz", "mem_clock_mhz", "temperature_c", "power_w", "throttle_reasons")
METRIC_NAMES = (
    "nvml_device_peak_mib", "nvml_process_peak_mib",
    *(f"{name}_{when}" for name in STATE_FIELDS for when in ("start", "end")),
    "throttled",
)


@dataclass(frozen=True)
class DeviceState:
    """Clocks, temperature, power and throttle reasons at one moment (None where unreadable)."""

    sm_clock_mhz: float | None = None
    mem_clock_mhz: float | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    throttle_reasons: tuple[str, ...] | None = None


class Reader(Protocol):
    """What the sampler needs from NVML: used bytes of the device and of this process, and state."""

    def device_used_bytes(self) -> int | None: ...

    def process_used_bytes(self) -> int | None: ...

    def state(self) -> DeviceState: ...


def reasons_from_mask(mask: int) -> tuple[str, ...]:
    """The names of the throttle-reason bits set in an NVML mask (unknown bits as hex)."""
    names = [name for bit, name in THROTTLE_BITS.items() if mask & bit]
    rest = mask & ~sum(THROTTLE_BITS)
    return tuple(names + ([hex(rest)] if rest else []))


def is_throttled(*states: DeviceState) -> bool | None:
    """True when any state shows a slowing reason; None when no state could read its reasons."""
    known = [s.throttle_reasons for s in states if s.throttle_reasons is not None]
    if not known:
        return None
    return any(SLOWING.intersection(r) for r in known)


class PeakSampler:
    """Samples a Reader every `interval_s` in a background thread while the `with` block runs, plus
    once on entry and once on exit (so even a short block has two samples); keeps the maxima.
    A reading that raises counts as missing: NVML hiccups never fail a measurement."""

    def __init__(self, reader: Reader, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.reader = reader
        self.interval_s = interval_s
        self.device_peak_bytes: int | None = None
        self.process_peak_bytes: int | None = None
        self.n_samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="nvml-sampler", daemon=True)

    def sample(self) -> None:
        device = safe(self.reader.device_used_bytes)
        process = safe(self.reader.process_used_bytes)
        self.device_peak_bytes = _max(self.device_peak_bytes, device)
        self.process_peak_bytes = _max(self.process_peak_bytes, process)
        self.n_samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> "PeakSampler":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def peaks_mib(self) -> dict[str, float | None]:
        return {
            "nvml_device_peak_mib": None if self.device_peak_bytes is None else self.device_peak_bytes / MIB,
            "nvml_process_peak_mib": None if self.process_peak_bytes is None else self.process_peak_bytes / MIB,
        }


def state_metrics(start: DeviceState | None, end: DeviceState | None) -> dict[str, Any]:
    """The `<field>_start`, `<field>_end` columns and `throttled` (all null without NVML)."""
    out: dict[str, Any] = {}
    for name in STATE_FIELDS:
        for when, state in (("start", start), ("end", end)):
            value = None if state is None else getattr(state, name)
            out[f"{name}_{when}"] = list(value) if isinstance(value, tuple) else value
    out["throttled"] = is_throttled(*[s for s in (start, end) if s is not None])
    return out


def safe(read: Callable[[], Any]) -> Any:
    try:
        return read()
    except Exception:
        return None


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


class NvmlReader:
    """The real Reader over pynvml for one physical GPU index; `close()` shuts NVML down."""

    def __init__(self, pynvml: Any, index: int, pid: int | None = None) -> None:
        self.nv = pynvml
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.pid = os.getpid() if pid is None else pid

    def device_used_bytes(self) -> int | None:
        return int(self.nv.nvmlDeviceGetMemoryInfo(self.handle).used)

    def process_used_bytes(self) -> int | None:
        procs = self.nv.nvmlDeviceGetComputeRunningProcesses(self.handle)
        mine = [p.usedGpuMemory for p in procs if p.pid == self.pid and p.usedGpuMemory is not None]
        return sum(mine) if mine else None  # None also where the container hides host pids

    def state(self) -> DeviceState:
        nv, h = self.nv, self.handle
        get_reasons = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
            nv.nvmlDeviceGetCurrentClocksThrottleReasons
        mask = safe(lambda: get_reasons(h))
        power_mw = safe(lambda: nv.nvmlDeviceGetPowerUsage(h))
        return DeviceState(
            sm_clock_mhz=safe(lambda: float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))),
            mem_clock_mhz=safe(lambda: float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM))),
            temperature_c=safe(lambda: float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))),
            power_w=None if power_mw is None else power_mw / 1000.0,
            throttle_reasons=None if mask is None else reasons_from_mask(int(mask)),
        )

    def close(self) -> None:
        safe(self.nv.nvmlShutdown)


def open_reader(index: int) -> NvmlReader | None:
    """A reader for physical GPU `index`, or None where pynvml or the driver is missing."""
    try:
        import pynvml  # optional (CUDA machines): a CPU-only install has no NVML

        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        return NvmlReader(pynvml, index)
    except Exception:
        safe(pynvml.nvmlShutdown)
        return None
