"""Probe records as the planner's outcomes: ok -> fit with its peak and wall time, any OOM -> no fit
(memory), a timeout -> no fit (time), anything else -> error; and each configuration's calibrated
search: the budget, the forms of its attention, the timeout."""
from __future__ import annotations

from bench.capacity.planner import ERROR, FIT, MEMORY, NO_FIT, TIME, Outcome
from bench.capacity.runner import finish_record
from bench.capacity.searches import config_outcomes, outcome_of, search_for
from bench.capacity.spec import CapacityConfig, CapacityPlan, SearchSpec
from bench.store import make_record

COMMON = {"dtype": "float32", "batch_size": 1, "d_model": 32, "n_heads": 2, "d_ff": 64, "n_layers": 2,
          "chunk_len": 64, "n_hashes": 2, "ff_chunks": 1, "vocab_size": 64, "reversible": True}
PLAN = CapacityPlan(
    suite="cs", profile="cpu", device="cpu", over="seq_len",
    search=SearchSpec(over="seq_len", start=4096, max_value=1 << 20, resolution=0.0625, multiple=256),
    memory_budget_gib=1.5, timeout_s=90.0,
    configs=(CapacityConfig("full", {**COMMON, "attention": "full", "shared_qk": False}),
             CapacityConfig("sdpa", {**COMMON, "attention": "sdpa", "shared_qk": False}),
             CapacityConfig("lsh", {**COMMON, "attention": "lsh"}, {"start": 16384})),
)


def _rec(config, value, status, reason=None, **metrics):
    raw = make_record(PLAN.point(config, value), status, reason, metrics=metrics or None)
    raw["wall_s"] = 3.5
    return finish_record(raw, PLAN, config, value, "r")


def test_records_become_outcomes_that_tell_memory_from_time():
    lsh = PLAN.configs[2]
    assert outcome_of(_rec(lsh, 1024, "ok", peak_rss_mib=400.0, peak_alloc_mib=None)) == Outcome(FIT, None, 400.0, 3.5)
    assert outcome_of(_rec(lsh, 1024, "oom", "host RSS 1600 MiB exceeded memory_limit_mib=1536; killed")) \
        == Outcome(NO_FIT, MEMORY)
    # torch's CPU allocator failing reads as an error to the worker: still memory
    assert outcome_of(_rec(lsh, 1024, "error", "RuntimeError: DefaultCPUAllocator: can't allocate memory")) \
        == Outcome(NO_FIT, MEMORY)
    assert outcome_of(_rec(lsh, 1024, "timeout", "exceeded timeout_s=90 after 90.1 s; killed")) == Outcome(NO_FIT, TIME)
    assert outcome_of(_rec(lsh, 1024, "error", "ValueError: broken")) == Outcome(ERROR)
    cuda = {"status": "ok", "metrics": {"peak_rss_mib": 3000.0, "peak_alloc_mib": 900.0, "peak_reserved_mib": 1024.0}}
    assert outcome_of(cuda, "cuda").peak_mib == 1024.0  # what set_per_process_memory_fraction caps


def test_config_outcomes_keep_this_configuration_and_budget_latest_wins():
    full, lsh = PLAN.configs[0], PLAN.configs[2]
    records = [_rec(lsh, 4096, "ok", peak_rss_mib=400.0), _rec(full, 4096, "ok", peak_rss_mib=900.0),
               _rec(lsh, 8192, "error", "ValueError: flaky"), _rec(lsh, 8192, "ok", peak_rss_mib=500.0),
               _rec(lsh, 16384, "error", "ValueError: flaky")]
    other_budget = dict(_rec(lsh, 32768, "ok", peak_rss_mib=1.0))
    other_budget["params"] = {**other_budget["params"], "memory_budget_gib": 8.0}
    got = config_outcomes(records + [other_budget], PLAN, lsh)
    assert {v: o.status for v, o in got.items()} == {4096: FIT, 8192: FIT, 16384: ERROR}
    assert got[8192].peak_mib == 500.0
    assert 16384 not in config_outcomes(records, PLAN, lsh, retry_failed=True)


def test_each_configuration_searched_with_its_forms_budget_and_timeout():
    full, sdpa, lsh = (search_for(PLAN, c) for c in PLAN.configs)
    assert (full.memory_form, full.time_form) == ("quadratic", "quadratic")
    assert (sdpa.memory_form, sdpa.time_form) == ("linear", "quadratic")
    assert (lsh.memory_form, lsh.time_form) == ("linear", "linear")
    assert full.budget_mib == 1536.0 and full.timeout_s == 90.0 and full.max_value == 1 << 20
    assert full.calibration_lengths == (1024, 2048, 4096)
    assert lsh.calibration_lengths == (4096, 8192, 16384) and lsh.multiple == 256  # its own start
