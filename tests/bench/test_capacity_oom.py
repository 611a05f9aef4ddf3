"""OOM messages parsed into sizes, and probe records turned into planner outcomes and status rows."""
from __future__ import annotations

import pytest

from bench.capacity.oom import oom_source, parse_oom_message
from bench.capacity.planner import ERROR, FIT, MEMORY, NO_FIT, TIME, Outcome
from bench.capacity.runner import finish_record
from bench.capacity.searches import outcome_of
from bench.capacity.spec import CapacityConfig, CapacityPlan, SearchSpec
from bench.store import make_record

CUDA_OOM = (
    "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has a total capacity of "
    "139.72 GiB of which 120.51 GiB is free. Including non-PyTorch memory, this process has 16.42 GiB memory "
    "in use. 16.00 GiB allowed; Of the allocated memory 13.10 GiB is allocated by PyTorch, and 1.22 GiB is "
    "reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting "
    "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation."
)


def test_cuda_allocator_message_parsed_to_mib():
    got = parse_oom_message(CUDA_OOM)
    assert got["oom_tried_mib"] == pytest.approx(2.5 * 1024)
    assert got["oom_device_total_mib"] == pytest.approx(139.72 * 1024)
    assert got["oom_device_free_mib"] == pytest.approx(120.51 * 1024)
    assert got["oom_process_in_use_mib"] == pytest.approx(16.42 * 1024)
    assert got["oom_allowed_mib"] == pytest.approx(16 * 1024)
    assert got["oom_allocated_mib"] == pytest.approx(13.10 * 1024)
    assert got["oom_reserved_unallocated_mib"] == pytest.approx(1.22 * 1024)


def test_small_units_and_messages_without_a_fraction():
    got = parse_oom_message("CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of "
                            "15.77 GiB of which 512.00 KiB is free. Process 4242 has 15.76 GiB memory in use. "
                            "Of the allocated memory 14.9 GiB is allocated by PyTorch, and 8.00 bytes is "
                            "reserved by PyTorch but unallocated.")
    assert got["oom_tried_mib"] == pytest.approx(20.0)
    assert got["oom_device_free_mib"] == pytest.approx(0.5)
    assert got["oom_allowed_mib"] is None
    assert got["oom_reserved_unallocated_mib"] == pytest.approx(8 / 2**20)


def test_cpu_allocator_message_and_unrelated_text():
    got = parse_oom_message("RuntimeError: [enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: "
                            "can't allocate memory: you tried to allocate 17179869184 bytes. Error code 12")
    assert got["oom_tried_mib"] == pytest.approx(16384.0)
    assert all(v is None for v in parse_oom_message("ValueError: bad shape").values())


@pytest.mark.parametrize("status,reason,source", [
    ("oom", "host RSS 537 MiB exceeded memory_limit_mib=512; killed", "rss_watchdog"),
    ("oom", "BudgetExceeded: peak RSS 530 MiB exceeded the budget of 512 MiB (read after the step)", "peak_rss"),
    ("oom", CUDA_OOM, "cuda_allocator"),
    ("error", "RuntimeError: DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes", "cpu_allocator"),
    ("error", "ValueError: something else", None),
])
def test_oom_source(status, reason, source):
    assert oom_source(status, reason) == source


def _plan(device="cpu") -> CapacityPlan:
    return CapacityPlan(suite="t", profile="cpu", device=device, over="seq_len",
                        search=SearchSpec(over="seq_len", start=64, max_value=1024, resolution=0.5, multiple=64),
                        memory_budget_gib=0.5, timeout_s=30.0,
                        configs=(CapacityConfig("full", {"attention": "full", "dtype": "float32", "batch_size": 1,
                                                         "d_model": 32, "n_heads": 2}),))


def test_an_allocator_error_becomes_an_oom_row_with_budget_and_detection():
    plan = _plan()
    config = plan.configs[0]
    point = plan.point(config, 512)
    raw = make_record(point, "error", "RuntimeError: DefaultCPUAllocator: can't allocate memory: "
                                      "you tried to allocate 1073741824 bytes")
    rec = finish_record(raw, plan, config, 512, "run-1")
    assert rec["status"] == "oom" and outcome_of(rec) == Outcome(NO_FIT, MEMORY)
    assert rec["params"]["memory_budget_gib"] == 0.5
    assert rec["params"]["budget_enforcement"] == "rss_watchdog+peak_rss"
    assert rec["params"]["config"] == "full" and rec["params"]["seq_len"] == 512
    assert rec["effective"]["oom_detected_by"] == "cpu_allocator"
    assert rec["metrics"]["oom_tried_mib"] == pytest.approx(1024.0)
    watchdog = finish_record(make_record(point, "oom", "host RSS 600 MiB exceeded memory_limit_mib=512; killed"),
                             plan, config, 512, "run-1")
    assert watchdog["effective"]["oom_detected_by"] == "rss_watchdog"


def test_outcomes_of_each_status():
    plan = _plan()
    point = plan.point(plan.configs[0], 128)
    assert outcome_of(make_record(point, "ok")).status == FIT
    assert outcome_of(make_record(point, "timeout", "exceeded timeout_s")) == Outcome(NO_FIT, TIME)
    assert outcome_of(make_record(point, "error", "ValueError: x")) == Outcome(ERROR)
