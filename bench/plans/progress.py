"""How far a run folder has come, by the rule of the kind that made it (run.json's `kind`): what
decides whether a run is continued, and whether it may become a reference. Torch-free."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from bench.capacity.runner import capacity_progress
from bench.store import RECORDS, Record, pending_ids, read_records

# progress(run.json, records, retry_failed) -> (done, planned), or None when run.json lists no plan.
Progress = Callable[[Mapping[str, Any], Sequence[Record], bool], "tuple[int, int] | None"]


def planned_progress(meta: Mapping[str, Any], records: Sequence[Record], retry_failed: bool) -> tuple[int, int] | None:
    """(done, planned) from run.json's `planned` ids, each finished by one record (grid points,
    trainings, evaluations); None when run.json lists none. With retry_failed, what
    `--retry-failed` would rerun is not done."""
    planned = meta.get("planned")
    if not isinstance(planned, list):
        return None
    return len(planned) - len(pending_ids(records, planned, retry_failed)), len(planned)


def search_progress(meta: Mapping[str, Any], records: Sequence[Record], retry_failed: bool) -> tuple[int, int] | None:
    """(searches done, searches planned): a capacity run plans its probes as it goes."""
    if not isinstance(meta.get("planned"), list):
        return None
    return capacity_progress(records, meta["suite_spec"], retry_failed)


# Kinds whose units are not one record per planned id; every other kind counts planned ids.
RULES: dict[str, Progress] = {"capacity": search_progress}


def run_progress(run_dir: Path, meta: Mapping[str, Any], retry_failed: bool = False) -> tuple[int, int] | None:
    """(done, planned) of a run folder from its run.json and records."""
    rule = RULES.get(str(meta.get("kind") or "grid"), planned_progress)
    return rule(meta, read_records(Path(run_dir) / RECORDS), retry_failed)
