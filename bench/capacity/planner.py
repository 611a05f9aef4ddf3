"""The capacity search as a pure function of the probes recorded so far.

`next_probe(search, outcomes)` replays the search against the recorded outcomes and returns the
first value it has no outcome for, or the result when the search is over. Nothing but the outcomes
is remembered, so a search killed at any moment resumes where it stopped: the same probes in the
same order, none lost, none repeated.

Two searches. With a budget (`Search.budget_mib`), the calibrated one: probe three small
calibration lengths (up to the first that fails; halvings below them until two fit), fit their peaks
by the configuration's form and solve for the budget (bench.capacity.calibrate); while that
prediction is more than `reach` (2) times the longest calibration fit, probe at the prediction over
`reach` too and fit the longest three again (a peak's slope at a few thousand tokens need not be
its slope at a hundred thousand); then probe the predicted length and just above it, widen the bracket in
doubling steps from there until it holds the limit, then bisect. Without a budget (or when the
calibration cannot be fitted), the classic one: double from `start` until the first failure (or
halve down from a failing start until a success), then bisect between the last success and the
first failure.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Union

from bench.capacity.calibrate import FORMS, LINEAR, Calibration, calibrate

FIT, NO_FIT, ERROR = "fit", "no_fit", "error"
MEMORY, TIME, MAX_VALUE = "memory", "time", "max_value"  # what stops a search
CALIBRATION_FRACTIONS = (0.25, 0.5, 1.0)  # default calibration lengths, as fractions of `start`
# The calibration extends (a probe at the prediction / REACH) while its prediction is more than REACH
# times its longest fit: the CPU reference's reversible LSH, calibrated at 8K-32K and extrapolated 3-6x,
# missed its limit by 17-23% (the per-token peak at 16K is not the one at 100K).
REACH = 2.0
FIT_POINTS = 3  # the prediction fits the calibration's longest three fits


@dataclass(frozen=True)
class Outcome:
    """One probe's outcome: FIT, NO_FIT or ERROR; for NO_FIT the limit that stopped it (MEMORY or
    TIME, None if unknown); for FIT the step's peak (MiB, what the budget counts) and wall time (s)."""

    status: str
    limit: str | None = None
    peak_mib: float | None = None
    wall_s: float | None = None

    def __post_init__(self) -> None:
        if self.status not in (FIT, NO_FIT, ERROR):
            raise ValueError(f"Outcome.status={self.status!r}: expected {FIT!r}, {NO_FIT!r} or {ERROR!r}")
        if self.limit not in (None, MEMORY, TIME):
            raise ValueError(f"Outcome.limit={self.limit!r}: expected None, {MEMORY!r} or {TIME!r}")


OutcomeLike = Union[str, Outcome]  # a bare status string is an Outcome with nothing measured


def _outcome(raw: OutcomeLike) -> Outcome:
    return raw if isinstance(raw, Outcome) else Outcome(raw)


@dataclass(frozen=True)
class Search:
    """How one configuration is searched: values are multiples of `multiple` in [multiple, max_value];
    bisection stops once the bracket is at most `resolution` of the last success (and one multiple).
    Calibrated when `budget_mib` is set: `calibration` lengths (default: start x 1/4, 1/2, 1) are
    fitted by `memory_form` (and their wall times by `time_form`, solved for `timeout_s`)."""

    start: int
    max_value: int
    resolution: float
    multiple: int = 1
    budget_mib: float | None = None
    memory_form: str = LINEAR
    time_form: str = LINEAR
    timeout_s: float | None = None
    calibration: tuple[int, ...] | None = None
    reach: float = REACH

    def __post_init__(self) -> None:
        if self.multiple < 1:
            raise ValueError(f"Search.multiple={self.multiple}: must be >= 1")
        if not 0 < self.resolution <= 1:
            raise ValueError(f"Search.resolution={self.resolution}: must be in (0, 1]")
        if self.start < 1 or self.max_value < self.start:
            raise ValueError(f"Search.start={self.start}, max_value={self.max_value}: need 1 <= start <= max_value")
        if self.max_value < self.multiple:
            raise ValueError(f"Search.max_value={self.max_value}: below one multiple ({self.multiple})")
        if self.budget_mib is not None and not self.budget_mib > 0:
            raise ValueError(f"Search.budget_mib={self.budget_mib}: must be > 0")
        for name in ("memory_form", "time_form"):
            if getattr(self, name) not in FORMS:
                raise ValueError(f"Search.{name}={getattr(self, name)!r}: expected one of {FORMS}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ValueError(f"Search.timeout_s={self.timeout_s}: must be > 0")
        if self.calibration is not None:
            cal = list(self.calibration)
            if len(cal) < 2 or cal != sorted(set(cal)) or cal[0] < 1 or cal[-1] > self.max_value:
                raise ValueError(f"Search.calibration={self.calibration}: need >= 2 increasing lengths "
                                 f"in [1, max_value={self.max_value}]")
        if not self.reach > 1:
            raise ValueError(f"Search.reach={self.reach}: must be > 1")

    def down(self, value: float) -> int:
        """The largest allowed value <= value (0 if none)."""
        return int(value // self.multiple) * self.multiple

    @property
    def top(self) -> int:
        """The largest allowed value."""
        return self.down(self.max_value)

    @property
    def first(self) -> int:
        """start rounded up to a multiple, at most the largest allowed value."""
        return min(math.ceil(self.start / self.multiple) * self.multiple, self.top)

    def tolerance(self, lo: int) -> int:
        """The bracket width at which bisection stops: resolution * lo rounded up to a multiple."""
        return max(self.multiple, math.ceil(self.resolution * lo / self.multiple) * self.multiple)

    @property
    def calibration_lengths(self) -> tuple[int, ...]:
        """The calibration probes: `calibration`, or start x 1/4, 1/2, 1; rounded to multiples
        (down, at least one multiple), duplicates dropped."""
        raw = self.calibration or tuple(self.first * f for f in CALIBRATION_FRACTIONS)
        out: list[int] = []
        for value in raw:
            v = min(max(self.multiple, self.down(value)), self.top)
            if v not in out:
                out.append(v)
        return tuple(out)


@dataclass(frozen=True)
class Probe:
    """Run this value next."""

    value: int


@dataclass(frozen=True)
class Done:
    """The search is over. `longest`: the largest value that fit (None: not even the smallest);
    `first_failure`: the smallest value above it that did not (None: it fit up to max_value);
    `why`: 'bracketed', 'max_value', 'nothing_fits' or 'error'; `probes`: values in probe order;
    `limit`: what stopped it: MEMORY or TIME (the first failure's), MAX_VALUE, or None (an error,
    or a failure whose cause was not recorded); `predicted`: the calibrated prediction, if any."""

    longest: int | None
    first_failure: int | None
    why: str
    probes: tuple[int, ...]
    limit: str | None = None
    predicted: int | None = None


class _Replay:
    """The probes asked so far, in order, against the recorded outcomes."""

    def __init__(self, outcomes: Mapping[int, OutcomeLike]) -> None:
        self.outcomes = outcomes
        self.order: list[int] = []

    def ask(self, value: int) -> Outcome | None:
        if value not in self.order:
            self.order.append(value)
        raw = self.outcomes.get(value)
        return None if raw is None else _outcome(raw)


class _Stop(Exception):
    def __init__(self, step: Probe | Done) -> None:
        self.step = step


def next_probe(search: Search, outcomes: Mapping[int, OutcomeLike]) -> Probe | Done:
    """The next value to probe, or Done. `outcomes` maps probed values to Outcome or to a bare
    status (FIT, NO_FIT, ERROR); an error ends the search: a broken configuration is reported, not
    searched around."""
    replay = _Replay(outcomes)
    try:
        if search.budget_mib is None:
            return _classic(search, replay)
        return _calibrated(search, replay)
    except _Stop as stop:
        return stop.step


def _calibration_walk(search: Search, outcomes: Mapping[int, OutcomeLike]):
    """The calibration probes in order, and the fits among them: the calibration lengths up to the
    first failure; with fewer than two fits then, halvings below the smallest until two fit; with no
    failure, the prediction over `reach` while the prediction is more than `reach` times the longest
    fit (and below max_value). Yields each value asked; returns (fits as (length, peak, wall),
    complete) through StopIteration."""
    fits: list[tuple[int, float | None, float | None]] = []
    failed = False

    def lengths():
        """The next length to ask, read after each outcome is recorded (fits and failed are live)."""
        cal = search.calibration_lengths
        below = [search.down(cal[0] / 2**k) for k in range(1, 64) if search.down(cal[0] / 2**k) >= search.multiple]
        for value in (*cal, *below):
            if value in below and (len(fits) >= 2 or not failed):
                break
            if not (failed and value in cal):
                yield value
        while not failed and (prediction := _predict(search, fits)) is not None:
            longest = max(v for v, _, _ in fits)
            value = search.down(prediction.value / search.reach)
            if prediction.value >= search.top or prediction.value <= search.reach * longest or value <= longest:
                return
            yield value

    for value in lengths():
        yield value
        raw = outcomes.get(value)
        outcome = None if raw is None else _outcome(raw)
        if outcome is None or outcome.status == ERROR:
            return fits, False
        if outcome.status == FIT:
            fits.append((value, outcome.peak_mib, outcome.wall_s))
        else:
            failed = True
    return fits, True


def _predict(search: Search, fits) -> Calibration | None:
    """The calibration of the longest FIT_POINTS fits (None if they cannot be fitted)."""
    return calibrate(sorted(fits)[-FIT_POINTS:], search.budget_mib, search.memory_form, search.timeout_s,
                     search.time_form, search.multiple, search.top)


def _walk(search: Search, outcomes: Mapping[int, OutcomeLike], visit=None):
    walk = _calibration_walk(search, outcomes)
    try:
        while True:
            value = next(walk)
            if visit is not None:
                visit(value)
    except StopIteration as stop:
        return stop.value


def calibration_of(search: Search, outcomes: Mapping[int, OutcomeLike]) -> Calibration | None:
    """The prediction the calibration probes make (None: no budget, not yet probed, or unfittable)."""
    if search.budget_mib is None:
        return None
    points, complete = _walk(search, outcomes)
    if not complete:
        return None
    return _predict(search, points)


def calibration_probes(search: Search, outcomes: Mapping[int, OutcomeLike]) -> tuple[int, ...]:
    """The calibration lengths the search asked for, in order (its extensions included); () without a budget."""
    if search.budget_mib is None:
        return ()
    asked: list[int] = []
    _walk(search, outcomes, asked.append)
    return tuple(asked)


class _Bracket:
    """lo: the largest value known to fit; hi: the smallest known not to (and its limit)."""

    def __init__(self, search: Search, replay: _Replay, predicted: int | None = None) -> None:
        self.search, self.replay, self.predicted = search, replay, predicted
        self.lo: int | None = None
        self.hi: int | None = None
        self.hi_limit: str | None = None
        self.fits: dict[int, Outcome] = {}

    def probe(self, value: int) -> bool:
        """Ask one value: True if it fit; raises _Stop for an unprobed value or an error."""
        outcome = self.replay.ask(value)
        if outcome is None:
            raise _Stop(Probe(value))
        if outcome.status == ERROR:
            raise _Stop(self.done("error", None))
        if outcome.status == FIT:
            self.lo = value if self.lo is None else max(self.lo, value)
            self.fits[value] = outcome
            return True
        if self.hi is None or value < self.hi:
            self.hi, self.hi_limit = value, outcome.limit
        return False

    def done(self, why: str, limit: str | None) -> Done:
        return Done(self.lo, self.hi, why, tuple(self.replay.order), limit, self.predicted)

    def bisect(self) -> Done:
        """Halve down until something fits, then bisect the bracket to the resolution."""
        s = self.search
        while self.lo is None or self.hi - self.lo > s.tolerance(self.lo):
            if self.lo is None:
                value = s.down(self.hi / 2)
                if value < s.multiple:
                    return self.done("nothing_fits", self.hi_limit)
            else:
                value = s.down((self.lo + self.hi) / 2)
                if value <= self.lo:
                    break
            self.probe(value)
        return self.done("bracketed", self.hi_limit)


def _secant(search: Search, fits: Mapping[int, Outcome], anchor: int, lo: int) -> float:
    """The budget (or timeout) solved on the line through two fits, the longest calibration length
    and the longest fit so far: the long lengths' own slope, where the small ones' misled. 0 if unknown."""
    if lo <= anchor:
        return 0.0
    out = math.inf
    for limit, get in ((search.budget_mib, lambda o: o.peak_mib), (search.timeout_s, lambda o: o.wall_s)):
        y0, y1 = get(fits[anchor]), get(fits[lo])
        if limit is None or y0 is None or y1 is None:
            continue
        if y1 > y0:
            out = min(out, lo + (limit - y1) * (lo - anchor) / (y1 - y0))
    return 0.0 if out == math.inf else out


def _classic(search: Search, replay: _Replay) -> Done:
    """Double from start until the first failure or max_value, then halve or bisect."""
    b = _Bracket(search, replay)
    value = search.first
    while b.probe(value):
        if value >= search.top:
            return b.done("max_value", MAX_VALUE)
        value = min(search.down(2 * value), search.top)
    return b.bisect()


def _calibrated(search: Search, replay: _Replay) -> Done:
    """Calibrate, probe the prediction and just above it, widen in doubling steps, then bisect."""
    b = _Bracket(search, replay)
    _walk(search, replay.outcomes, b.probe)  # stops at the first unprobed value or an error
    cal = calibration_of(search, replay.outcomes)
    b.predicted = cal.value if cal is not None else None
    if b.hi is None and b.lo is not None and b.lo >= search.top:
        return b.done("max_value", MAX_VALUE)
    if b.lo is None:
        return b.bisect()  # nothing fit: halve down from the smallest calibration length
    if cal is None:  # unfittable: the classic search, from the longest calibration fit
        value = b.lo
        while b.hi is None:
            if value >= search.top:
                return b.done("max_value", MAX_VALUE)
            value = min(search.down(2 * value), search.top)
            b.probe(value)
        return b.bisect()
    guess = cal.value
    if b.hi is not None:
        guess = min(guess, b.hi - search.multiple)
    gap = search.tolerance(max(guess, b.lo))
    anchor = b.lo  # the longest calibration fit
    if guess > b.lo and not b.probe(guess):
        while b.hi - b.lo > search.tolerance(b.lo):  # down from a failed prediction: hi - gap, gap doubling
            value = search.down(b.hi - gap)
            if value <= b.lo or b.probe(value):
                break
            gap *= 2
        return b.bisect()
    first = True
    while True:  # up: just above the prediction, then lo + gap (gap doubling) or a re-prediction
        if b.hi is None and b.lo >= search.top:
            return b.done("max_value", MAX_VALUE)
        value = b.lo + gap
        again = 0.0 if first else min(_secant(search, b.fits, anchor, b.lo), 2 * b.lo)
        jump = search.down(again) > value
        value = min(search.down(again if jump else value), search.top)
        if b.hi is not None and value >= b.hi:
            break  # the bracket is known: bisect it
        if not b.probe(value):
            break
        # after a re-prediction, just above it again; else twice as far
        first, gap = False, search.tolerance(b.lo) if jump else gap * 2
    return b.bisect()
