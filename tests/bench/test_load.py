"""The load record: /proc/stat and /proc/loadavg readings injected, arithmetic checked by hand."""
from __future__ import annotations

import pytest

from bench import load

# cpu user nice system idle iowait irq softirq steal guest guest_nice, in ticks (HZ=100 below)
STAT_0 = "cpu  1000 0 500 8000 100 0 0 50 0 0\ncpu0 1 2 3 4\nintr 1\n"
STAT_1 = "cpu  1300 0 600 8500 100 0 0 100 0 0\ncpu0 1 2 3 4\nintr 1\n"


def snap(stat: str, loadavg: float = 1.5) -> load.Snapshot:
    return load.Snapshot(cpu=load.parse_proc_stat(stat, ticks_per_s=100), loadavg_1m=loadavg)


def test_parse_proc_stat_in_seconds():
    cpu = load.parse_proc_stat(STAT_0, ticks_per_s=100)
    assert cpu == load.CpuTimes(busy_s=15.0, total_s=96.5, steal_s=0.5)
    old_kernel = load.parse_proc_stat("cpu  100 0 100 800\n", ticks_per_s=100)  # no steal column
    assert old_kernel == load.CpuTimes(busy_s=2.0, total_s=10.0, steal_s=None)


def test_parse_loadavg():
    assert load.parse_loadavg("0.52 0.61 0.70 3/320 8305\n") == 0.52


def test_other_processes_share_is_busy_time_minus_our_own():
    # 9.5 s of capacity passed: busy 4.0 s, steal 0.5 s. We used 1.0 s, so others used 3.0 s.
    record = load.load_record(snap(STAT_0), snap(STAT_1, loadavg=2.25), own_cpu_s=1.0)
    assert record["other_cpu_frac"] == pytest.approx(3.0 / 9.5)
    assert record["steal_frac"] == pytest.approx(0.5 / 9.5)
    assert record["loadavg_1m"] == 2.25 and record["under_load"] is True


def test_a_quiet_machine_is_not_under_load():
    # everything busy was ours: nothing left for other processes (and never below zero)
    record = load.load_record(snap(STAT_0), snap(STAT_1), own_cpu_s=10.0)
    assert record["other_cpu_frac"] == 0.0
    quiet_stat = "cpu  1000 0 500 8900 100 0 0 50 0 0\n"  # 9 s idle, nothing busy, no steal
    record = load.load_record(snap(STAT_0), snap(quiet_stat), own_cpu_s=0.0)
    assert record == {"loadavg_1m": 1.5, "other_cpu_frac": 0.0, "steal_frac": 0.0, "under_load": False}


def test_threshold_is_the_documented_one():
    assert not load.is_under_load(load.OTHER_CPU_LIMIT - 0.01, 0.0)
    assert load.is_under_load(load.OTHER_CPU_LIMIT, 0.0)
    assert load.is_under_load(0.0, load.STEAL_LIMIT)
    assert not load.is_under_load(None, None)


def test_no_proc_leaves_the_fractions_empty(tmp_path):
    missing = load.snapshot(tmp_path / "no-stat", tmp_path / "no-loadavg")
    assert missing.cpu is None
    record = load.load_record(missing, missing, own_cpu_s=0.0)
    assert record["other_cpu_frac"] is None and record["steal_frac"] is None and record["under_load"] is False


def test_busy_reason_reads_the_machine_around_a_sleep(monkeypatch):
    snaps = iter([snap(STAT_0, 3.0), snap(STAT_1, 3.0)])
    monkeypatch.setattr(load, "snapshot", lambda: next(snaps))
    monkeypatch.setattr(load.time, "sleep", lambda s: None)
    reason = load.busy_reason(0.5)
    assert reason.startswith("the machine is busy: other processes used 42% of the CPU over 0.5 s")
    assert "steal 5%" in reason and "1-min load average 3.00" in reason
    quiet = iter([snap(STAT_0), snap("cpu  1000 0 500 8900 100 0 0 50 0 0\n")])
    monkeypatch.setattr(load, "snapshot", lambda: next(quiet))
    assert load.busy_reason(0.5) is None
