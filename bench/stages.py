"""Stage breakdown of one iteration: the time of its torch.profiler record_function ranges by name,
each exclusive of the named ranges nested in it, so the stages add up. Knows nothing of reformer_impl:
the range names are passed in."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch.profiler import ProfilerActivity, profile

from bench.measure import is_cuda, synchronize


@dataclass(frozen=True)
class StageTimes:
    """One profiled iteration: milliseconds per named range, exclusive of the named ranges nested
    in it (so the stages add up), and the iteration's wall time (`total_ms`, profiler included)."""

    stages_ms: Mapping[str, float]
    total_ms: float

    def as_metrics(self) -> dict[str, float]:
        """`stage_ms.<name>` per stage, `stage_ms.other` for the rest of the step, `stage_total_ms`."""
        out = {f"stage_ms.{name}": ms for name, ms in self.stages_ms.items()}
        out["stage_ms.other"] = max(0.0, self.total_ms - sum(self.stages_ms.values()))
        out["stage_total_ms"] = self.total_ms
        return out


def _range_us(event: Any, cuda: bool) -> float:
    if cuda:
        device_us = float(getattr(event, "device_time_total", 0.0) or 0.0)
        if device_us > 0:
            return device_us
    return float(event.time_range.end - event.time_range.start)


def exclusive_stage_us(events: Iterable[Any], selected: Callable[[Any], bool], cuda: bool = False) -> dict[str, float]:
    """Per range name, the microseconds of every selected range minus the selected ranges nearest
    below it in the profiler's event tree (events with .name, .cpu_children, .time_range)."""
    def nested(event: Any) -> list[Any]:
        found: list[Any] = []
        for child in event.cpu_children:
            found.extend([child] if selected(child) else nested(child))
        return found

    out: dict[str, float] = {}
    for event in events:
        if selected(event):
            inner = sum(_range_us(c, cuda) for c in nested(event))
            out[event.name] = out.get(event.name, 0.0) + max(0.0, _range_us(event, cuda) - inner)
    return out


def profile_stages(run_once: Callable[[], None], device: str, names: Sequence[str] | None = None) -> StageTimes:
    """Run `run_once` under torch.profiler and return the time of its record_function ranges by name:
    those in `names` (e.g. reformer_impl.STAGES) and torch's optimizer step or, without names, every
    user-annotated range."""
    cuda = is_cuda(device) and torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    wanted = set(names) if names is not None else None

    def selected(event: Any) -> bool:
        if wanted is not None:  # the optimizer's own range (torch names it) counts as a stage too
            return event.name in wanted or event.name.startswith("Optimizer.step")
        return bool(getattr(event, "is_user_annotation", False)) and not event.name.startswith("ProfilerStep")

    synchronize(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        run_once()
        synchronize(device)
        total_ms = (time.perf_counter() - start) * 1e3
    events = [e for e in prof.events() if getattr(e, "device_type", None) is None or "CPU" in str(e.device_type)]
    stages = {name: us / 1e3 for name, us in exclusive_stage_us(events, selected, cuda).items()}
    return StageTimes(stages_ms=dict(sorted(stages.items(), key=lambda kv: -kv[1])), total_ms=total_ms)
