"""How a capacity probe's memory budget reaches its worker and how it is enforced there; torch-free,
so the run's plan and records name it without loading the measuring stack."""
from __future__ import annotations

BUDGET_ENV = "BENCH_CAPACITY_BUDGET_MIB"  # the capacity runner sets it per probe (the fork server's request env)
ENFORCE_CUDA = "torch.cuda.set_per_process_memory_fraction"
ENFORCE_CPU = "rss_watchdog+peak_rss"


def enforcement(device: str) -> str:
    """How a budget is enforced on a device (the record's `budget_enforcement`)."""
    return ENFORCE_CUDA if str(device).startswith("cuda") else ENFORCE_CPU
