"""The capacity planner: exact probe sequences on synthetic outcomes, the resolution it stops at,
its edge cases, and that it is a pure function of the outcomes (what makes resume exact)."""
from __future__ import annotations

import random

import pytest

from bench.capacity.planner import ERROR, FIT, NO_FIT, Done, Probe, Search, next_probe


def simulate(search: Search, fits, errors=()) -> tuple[list[int], Done]:
    """Drive the planner with an oracle; returns the probes in order and the result."""
    outcomes: dict[int, str] = {}
    order = []
    while True:
        step = next_probe(search, outcomes)
        if isinstance(step, Done):
            return order, step
        assert step.value not in outcomes, f"probe {step.value} asked twice"
        order.append(step.value)
        outcomes[step.value] = ERROR if step.value in errors else (FIT if fits(step.value) else NO_FIT)


def test_doubles_then_bisects_to_the_resolution():
    search = Search(start=512, max_value=65536, resolution=1 / 16, multiple=64)
    order, done = simulate(search, lambda v: v <= 5000)
    assert order == [512, 1024, 2048, 4096, 8192, 6144, 5120, 4608, 4864]
    assert (done.longest, done.first_failure, done.why) == (4864, 5120, "bracketed")
    assert done.probes == tuple(order)
    assert done.first_failure - done.longest <= search.tolerance(done.longest)
    assert all(v % 64 == 0 for v in order)


def test_first_probe_fails_halves_down_then_bisects():
    order, done = simulate(Search(start=4096, max_value=65536, resolution=1 / 16, multiple=64), lambda v: v <= 1000)
    assert order == [4096, 2048, 1024, 512, 768, 896, 960]
    assert (done.longest, done.first_failure, done.why) == (960, 1024, "bracketed")


def test_never_fails_stops_at_max_value_rounded_down():
    order, done = simulate(Search(start=512, max_value=10000, resolution=1 / 16, multiple=64), lambda v: True)
    assert order == [512, 1024, 2048, 4096, 8192, 9984]
    assert (done.longest, done.first_failure, done.why) == (9984, None, "max_value")


def test_nothing_fits_down_to_one_multiple():
    order, done = simulate(Search(start=256, max_value=4096, resolution=0.25, multiple=64), lambda v: False)
    assert order == [256, 128, 64]
    assert (done.longest, done.first_failure, done.why) == (None, 64, "nothing_fits")


def test_start_is_rounded_up_to_a_multiple_and_batch_search_steps_by_one():
    order, done = simulate(Search(start=100, max_value=4096, resolution=0.25, multiple=64), lambda v: v <= 300)
    assert order[0] == 128
    order, done = simulate(Search(start=1, max_value=64, resolution=1 / 16, multiple=1), lambda b: b <= 11)
    assert order == [1, 2, 4, 8, 16, 12, 10, 11]
    assert (done.longest, done.first_failure) == (11, 12)


def test_an_error_ends_the_search():
    order, done = simulate(Search(start=512, max_value=65536, resolution=1 / 16, multiple=64),
                           lambda v: True, errors={2048})
    assert order == [512, 1024, 2048]
    assert (done.longest, done.why) == (1024, "error")


@pytest.mark.parametrize("seed", range(20))
def test_pure_in_the_outcomes_so_resume_asks_the_same_next_probe(seed):
    rng = random.Random(seed)
    search = Search(start=rng.choice([64, 256, 1000]), max_value=rng.choice([8192, 50000]),
                    resolution=rng.choice([1 / 16, 1 / 4, 1.0]), multiple=rng.choice([1, 32, 64]))
    limit = rng.randint(1, 60000)
    order, done = simulate(search, lambda v: v <= limit)
    truth = {v: FIT if v <= limit else NO_FIT for v in order}
    for k in range(len(order)):  # a run killed after k recorded probes
        items = [(v, truth[v]) for v in order[:k]]
        rng.shuffle(items)  # the order records were read in does not matter
        assert next_probe(search, dict(items)) == Probe(order[k])
    assert next_probe(search, truth) == done
    if done.longest is not None and done.first_failure is not None:
        assert done.longest <= limit < done.first_failure


def test_search_refuses_nonsense():
    with pytest.raises(ValueError, match="resolution"):
        Search(start=1, max_value=2, resolution=0)
    with pytest.raises(ValueError, match="start"):
        Search(start=10, max_value=2, resolution=0.5)
    with pytest.raises(ValueError, match="max_value"):
        Search(start=1, max_value=32, resolution=0.5, multiple=64)
