"""The capacity search as a pure function of the probes recorded so far.

`next_probe(search, outcomes)` replays the search (double from `start` until the first failure, or
halve down from a failing start until a success; then bisect between the last success and the first
failure) against the recorded outcomes and returns the first value it has no outcome for, or the
result when the search is over. Nothing but the outcomes is remembered, so a search killed at any
moment resumes where it stopped: the same probes in the same order, none lost, none repeated.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

FIT, NO_FIT, ERROR = "fit", "no_fit", "error"


@dataclass(frozen=True)
class Search:
    """How one configuration is searched: values are multiples of `multiple` in [multiple, max_value];
    bisection stops once the bracket is at most `resolution` of the last success (and one multiple)."""

    start: int
    max_value: int
    resolution: float
    multiple: int = 1

    def __post_init__(self) -> None:
        if self.multiple < 1:
            raise ValueError(f"Search.multiple={self.multiple}: must be >= 1")
        if not 0 < self.resolution <= 1:
            raise ValueError(f"Search.resolution={self.resolution}: must be in (0, 1]")
        if self.start < 1 or self.max_value < self.start:
            raise ValueError(f"Search.start={self.start}, max_value={self.max_value}: need 1 <= start <= max_value")
        if self.max_value < self.multiple:
            raise ValueError(f"Search.max_value={self.max_value}: below one multiple ({self.multiple})")

    def down(self, value: float) -> int:
        """The largest allowed value <= value (0 if none)."""
        return int(value // self.multiple) * self.multiple

    @property
    def first(self) -> int:
        """start rounded up to a multiple, at most the largest allowed value."""
        return min(math.ceil(self.start / self.multiple) * self.multiple, self.down(self.max_value))

    def tolerance(self, lo: int) -> int:
        """The bracket width at which bisection stops: resolution * lo rounded up to a multiple."""
        return max(self.multiple, math.ceil(self.resolution * lo / self.multiple) * self.multiple)


@dataclass(frozen=True)
class Probe:
    """Run this value next."""

    value: int


@dataclass(frozen=True)
class Done:
    """The search is over. `longest`: the largest value that fit (None: not even the smallest);
    `first_failure`: the smallest value above it that did not (None: it fit up to max_value);
    `why`: 'bracketed', 'max_value', 'nothing_fits' or 'error'; `probes`: values in probe order."""

    longest: int | None
    first_failure: int | None
    why: str
    probes: tuple[int, ...]


def next_probe(search: Search, outcomes: Mapping[int, str]) -> Probe | Done:
    """The next value to probe, or Done. `outcomes` maps probed values to FIT, NO_FIT or ERROR
    (an error ends the search: a broken configuration is reported, not searched around)."""
    order: list[int] = []

    def ask(value: int) -> str | None:
        order.append(value)
        return outcomes.get(value)

    top = search.down(search.max_value)
    lo: int | None = None
    hi: int | None = None
    value = search.first
    while True:  # grow: double until the first failure or max_value
        outcome = ask(value)
        if outcome is None:
            return Probe(value)
        if outcome == ERROR:
            return Done(lo, hi, "error", tuple(order))
        if outcome == NO_FIT:
            hi = value
            break
        lo = value
        if value >= top:
            return Done(lo, None, "max_value", tuple(order))
        value = min(search.down(2 * value), top)
    while lo is None or hi - lo > search.tolerance(lo):  # halve until something fits, then bisect
        if lo is None:
            value = search.down(hi / 2)
            if value < search.multiple:
                return Done(None, hi, "nothing_fits", tuple(order))
        else:
            value = search.down((lo + hi) / 2)
            if value <= lo:
                break
        outcome = ask(value)
        if outcome is None:
            return Probe(value)
        if outcome == ERROR:
            return Done(lo, hi, "error", tuple(order))
        if outcome == FIT:
            lo = value
        else:
            hi = value
    return Done(lo, hi, "bracketed", tuple(order))
