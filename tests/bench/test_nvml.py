"""The NVML sampler's peak logic and the GPU state columns, on CPU with injected readers."""
from __future__ import annotations

import threading
import time


from bench import measure as m
from bench import nvml

MIB = 2**20


class ScriptedReader:
    """Readings from a script, one per call, the last one repeated; `None` and exceptions as NVML
    would give them."""

    def __init__(self, device, process):
        self.device, self.process = list(device), list(process)
        self.calls = 0

    @staticmethod
    def _next(values):
        value = values.pop(0) if len(values) > 1 else values[0]
        if isinstance(value, Exception):
            raise value
        return value

    def device_used_bytes(self):
        self.calls += 1
        return self._next(self.device)

    def process_used_bytes(self):
        return self._next(self.process)

    def state(self):
        return nvml.DeviceState()


def test_sampler_keeps_the_peak_of_a_known_sequence():
    device = [100 * MIB, 900 * MIB, RuntimeError("NVML hiccup"), 300 * MIB, 200 * MIB]
    process = [None, 50 * MIB, 700 * MIB, None, 10 * MIB]
    sampler = nvml.PeakSampler(ScriptedReader(device, process), interval_s=0.0005)
    with sampler:
        time.sleep(0.05)
    assert sampler.n_samples >= 5
    assert sampler.peaks_mib() == {"nvml_device_peak_mib": 900.0, "nvml_process_peak_mib": 700.0}
    hidden = nvml.PeakSampler(ScriptedReader([MIB], [None]))  # NVML cannot see this process's pid
    with hidden:
        pass
    assert hidden.peaks_mib() == {"nvml_device_peak_mib": 1.0, "nvml_process_peak_mib": None}


class Live(ScriptedReader):
    """Reads a level the test changes; `seen` is set once a reading returned `watch`."""

    def __init__(self, level, watch):
        super().__init__([0], [None])
        self.level, self.watch, self.seen = level, watch, threading.Event()

    def device_used_bytes(self):
        value = self.level["bytes"]
        if value == self.watch:
            self.seen.set()
        return value

    def process_used_bytes(self):
        return self.level["bytes"] // 2


def test_sampler_sees_a_peak_that_lasts_only_inside_the_block():
    level = {"bytes": 1 * MIB}
    reader = Live(level, watch=64 * MIB)
    sampler = nvml.PeakSampler(reader, interval_s=0.001)
    with sampler:
        level["bytes"] = 64 * MIB  # the iteration's transient peak: gone before the block ends
        assert reader.seen.wait(10.0)  # the background thread read it (entry and exit samples cannot)
        level["bytes"] = 2 * MIB
    assert sampler.peaks_mib()["nvml_device_peak_mib"] == 64.0
    assert sampler.peaks_mib()["nvml_process_peak_mib"] == 32.0
    assert not any(t.name == "nvml-sampler" for t in threading.enumerate())


def test_throttle_reasons_and_flag():
    assert nvml.reasons_from_mask(0x1 | 0x4) == ("gpu_idle", "sw_power_cap")
    assert nvml.reasons_from_mask(0x10000) == ("0x10000",)
    idle = nvml.DeviceState(throttle_reasons=("gpu_idle",))
    hot = nvml.DeviceState(throttle_reasons=("hw_thermal_slowdown",))
    assert nvml.is_throttled(idle, idle) is False
    assert nvml.is_throttled(idle, hot) is True
    assert nvml.is_throttled(nvml.DeviceState()) is None


def test_state_metrics_have_every_column_and_none_without_nvml():
    start = nvml.DeviceState(1980.0, 2619.0, 41.0, 120.5, ("gpu_idle",))
    end = nvml.DeviceState(1755.0, 2619.0, 63.0, 690.0, ("sw_power_cap",))
    got = nvml.state_metrics(start, end)
    assert got["sm_clock_mhz_start"] == 1980.0 and got["sm_clock_mhz_end"] == 1755.0
    assert got["throttle_reasons_end"] == ["sw_power_cap"] and got["throttled"] is True
    empty = nvml.state_metrics(None, None)
    assert set(empty) == set(nvml.METRIC_NAMES) - {"nvml_device_peak_mib", "nvml_process_peak_mib"}
    assert all(v is None for v in empty.values())


def test_no_gpu_no_reader_and_null_columns():
    assert m.open_nvml("cpu") is None
    reading = m.read_memory(lambda clock: None, "cpu", m.current_rss_mib())
    assert reading.nvml_device_peak_mib is None and reading.nvml_process_peak_mib is None
    assert m.nvml_used_mib(None) == {"nvml_device_used_mib": None, "nvml_process_used_mib": None}


def test_read_memory_samples_nvml_during_the_iteration():
    level = {"bytes": 10 * MIB}
    reader = Live(level, watch=512 * MIB)

    def iteration(clock):
        with clock.phase("fwd"):
            level["bytes"] = 512 * MIB
            assert reader.seen.wait(10.0)
            level["bytes"] = 12 * MIB

    reading = m.read_memory(iteration, "cpu", m.current_rss_mib(), nvml_reader=reader)
    assert (reading.nvml_device_peak_mib, reading.nvml_process_peak_mib) == (512.0, 256.0)
    assert (reading.nvml_device_used_mib, reading.nvml_process_used_mib) == (12.0, 6.0)  # after: not a peak
