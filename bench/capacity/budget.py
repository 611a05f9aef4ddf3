"""How a capacity probe's memory budget reaches its worker and how it is enforced there; torch-free,
so the run's plan and records name it without loading the measuring stack."""
from __future__ import annotations

BUDGET_ENV = "BENCH_CAPACITY_BUDGET_MIB"  # the capacity runner sets it per probe (the fork server's request env)
MMAP_THRESHOLD_ENV = "BENCH_CAPACITY_MMAP_THRESHOLD_KIB"  # set beside it where the profile fixes the threshold
ENFORCE_CUDA = "torch.cuda.set_per_process_memory_fraction"
ENFORCE_CPU = "rss_watchdog+peak_rss"
BEFORE_MODEL = "before its model was built"  # the probe's words for its baseline RSS (parsed back by the runner)


def enforcement(device: str) -> str:
    """How a budget is enforced on a device (the record's `budget_enforcement`)."""
    return ENFORCE_CUDA if str(device).startswith("cuda") else ENFORCE_CPU


# The least resident memory a CPU probe worker holds before its model is built: Python with torch and
# the harness imported (a fork-server worker with torch 2.13 holds 160-220 MiB; typically 150-400
# MiB). A CPU budget below it fits no probe, so the capacity plan refuses it up front; one above it
# but below the worker's actual footprint is caught by the probe itself (bench.capacity.probe) and
# said by the run's summary and report.
WORKER_FLOOR_MIB = 128.0


def footprint_note(budget_mib: float, footprint_mib: float) -> str:
    """Why nothing can fit: the budget is below what the worker holds before its model is built."""
    return (f"the budget ({budget_mib:.0f} MiB) is below the probe worker's own footprint ({footprint_mib:.0f} MiB "
            "resident before its model is built); raise memory_budget_gib")
