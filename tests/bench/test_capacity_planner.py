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


# --------------------------------------------------------------------------- the calibrated search

from bench.capacity.planner import MAX_VALUE, MEMORY, TIME, Outcome, calibration_of, calibration_probes  # noqa: E402


def machine(peak, wall=lambda v: 1.0, budget=2048.0, timeout=120.0):
    """An oracle with a memory and a time model: what a probe's record would say."""
    def outcome(value: int) -> Outcome:
        if peak(value) > budget:
            return Outcome(NO_FIT, MEMORY)
        if wall(value) > timeout:
            return Outcome(NO_FIT, TIME)
        return Outcome(FIT, peak_mib=peak(value), wall_s=wall(value))
    return outcome


def drive(search: Search, oracle) -> tuple[list[int], Done, dict[int, Outcome]]:
    outcomes: dict[int, Outcome] = {}
    order = []
    while True:
        step = next_probe(search, outcomes)
        if isinstance(step, Done):
            return order, step, outcomes
        assert step.value not in outcomes, f"probe {step.value} asked twice"
        order.append(step.value)
        outcomes[step.value] = oracle(step.value)


CAL = dict(start=8192, max_value=1 << 20, resolution=1 / 16, multiple=256, budget_mib=2048.0, timeout_s=120.0)


NO_REACH = dict(CAL, reach=1e9)  # the three calibration probes alone, never extended


def test_linear_memory_found_with_the_prediction_and_one_probe_above_it():
    order, done, _ = drive(Search(**CAL), machine(lambda v: 300 + 0.02 * v))
    # 87,400 tokens fit: the calibration predicts 87,296, more than twice its longest length, so it
    # probes half of it too (43,520: the prediction stays); then the prediction and just above it fails
    assert order == [2048, 4096, 8192, 43520, 87296, 92928]
    assert (done.longest, done.first_failure, done.why, done.limit) == (87296, 92928, "bracketed", MEMORY)
    assert done.predicted == 87296 and done.probes == tuple(order)
    assert calibration_probes(Search(**CAL), dict.fromkeys(order, FIT)) == (2048, 4096, 8192)  # no peaks: no fit
    _, _, outcomes = drive(Search(**CAL), machine(lambda v: 300 + 0.02 * v))
    assert calibration_probes(Search(**CAL), outcomes) == (2048, 4096, 8192, 43520)


def test_a_concave_peak_is_predicted_from_the_extended_calibration():
    # the small lengths' slope (0.02 MiB per token) overstates the long ones' (0.01): the prediction
    # from 2K-8K (87,296) is more than twice 8K, so the calibration probes at half of each new
    # prediction and fits its longest three, until the prediction is within twice its longest probe
    peak = lambda v: 300 + 0.02 * min(v, 8192) + 0.01 * max(0, v - 8192)  # noqa: E731
    truth = 8192 + (2048 - 300 - 0.02 * 8192) / 0.01  # 166,624 tokens
    search = Search(**CAL)
    order, done, outcomes = drive(search, machine(peak))
    extension = calibration_probes(search, outcomes)[3:]
    assert extension and all(v <= done.predicted / 2 + search.multiple for v in extension)
    assert abs(done.predicted / truth - 1) < 0.01 and done.longest <= truth < done.first_failure
    unextended = drive(Search(**NO_REACH), machine(peak))[1]
    assert unextended.predicted == 87296  # what the three small probes alone predict: 48% low


def test_a_low_prediction_probes_just_above_then_re_predicts_from_the_long_lengths():
    peak = lambda v: 300 + 0.02 * min(v, 8192) + 0.01 * max(0, v - 8192)  # noqa: E731
    search = Search(**NO_REACH)
    order, done, _ = drive(search, machine(peak))
    truth = 8192 + (2048 - 300 - 0.02 * 8192) / 0.01  # 166,624 tokens
    # calibration, the prediction (87,296) and just above it (both fit), then the line through
    # 8,192 and 92,928 solved for the budget (166,400: fits), just above that (fails)
    assert order == [2048, 4096, 8192, 87296, 92928, 166400, 176896]
    assert done.predicted == 87296 and done.longest <= truth < done.first_failure and done.limit == MEMORY
    assert done.first_failure - done.longest <= search.tolerance(done.longest)


def test_a_far_low_prediction_widens_at_most_by_doubling():
    peak = lambda v: 300 + 0.02 * min(v, 8192) + 0.005 * max(0, v - 8192)  # noqa: E731
    order, done, _ = drive(Search(**NO_REACH), machine(peak))
    assert all(b <= 2 * a for a, b in zip(order[3:], order[4:]))
    truth = 8192 + (2048 - 300 - 0.02 * 8192) / 0.005
    assert done.longest <= truth < done.first_failure and len(order) <= 9
    extended = drive(Search(**CAL), machine(peak))[1]
    assert abs(extended.predicted / truth - 1) < 0.01 and extended.longest <= truth < extended.first_failure


def test_a_high_prediction_steps_down_from_the_failure():
    peak = lambda v: 300 + 0.02 * min(v, 8192) + 0.04 * max(0, v - 8192)  # noqa: E731  (convex)
    order, done, _ = drive(Search(**NO_REACH), machine(peak))
    assert order[3] == done.predicted == 87296 and done.first_failure <= 87296
    truth = 8192 + (2048 - 300 - 0.02 * 8192) / 0.04
    assert done.longest <= truth < done.first_failure and done.limit == MEMORY
    assert all(v < 87296 for v in order[4:])
    extended = drive(Search(**CAL), machine(peak))[1]
    assert abs(extended.predicted / truth - 1) < 0.02 and extended.longest <= truth < extended.first_failure


def test_a_failing_extension_probe_ends_the_calibration_and_bounds_the_search():
    # steep past 8K: half the small probes' prediction (43,520) is already over the budget
    peak = lambda v: 300 + 0.02 * min(v, 8192) + 0.5 * max(0, v - 8192)  # noqa: E731
    search = Search(**CAL)
    order, done, outcomes = drive(search, machine(peak))
    truth = 8192 + (2048 - 300 - 0.02 * 8192) / 0.5
    assert order[:4] == [2048, 4096, 8192, 43520] and outcomes[43520].status == NO_FIT
    assert calibration_probes(search, outcomes) == (2048, 4096, 8192, 43520)
    assert all(v < 43520 for v in order[4:]) and done.longest <= truth < done.first_failure


def test_quadratic_memory_predicted_from_three_small_lengths():
    peak = lambda v: 220 + 0.05 * v + 2e-4 * v * v  # noqa: E731
    search = Search(**{**CAL, "start": 2048, "memory_form": "quadratic"})
    order, done, _ = drive(search, machine(peak))
    assert order[:3] == [512, 1024, 2048]
    assert done.predicted == 2816 and done.longest == 2816 and done.limit == MEMORY  # root 2,902
    assert len(order) == 5


def test_the_cap_says_which_limit_capped_it():
    tiny = lambda v: 300 + 1e-6 * v  # noqa: E731  memory never runs out
    order, done, _ = drive(Search(**CAL), machine(tiny))
    assert order == [2048, 4096, 8192, 1 << 20]  # a prediction at the cap is probed at once, not extended to
    assert (done.longest, done.first_failure, done.why, done.limit) == (1 << 20, None, "max_value", MAX_VALUE)
    slow = lambda v: 2 + 0.002 * v  # noqa: E731  the timeout is reached at 59,000 tokens
    order, done, _ = drive(Search(**CAL), machine(tiny, wall=slow))
    assert done.limit == TIME and done.why == "bracketed"
    assert done.longest <= 59000 < done.first_failure
    assert calibration_of(Search(**CAL), {v: machine(tiny, wall=slow)(v) for v in order}).limit == "time"
    order, done, _ = drive(Search(**CAL), machine(lambda v: 300 + 0.02 * v))
    assert done.limit == MEMORY


def test_failing_calibration_lengths_fit_what_fits_and_halve_for_two_points():
    # the 8,192 calibration probe fails: a line through 2,048 and 4,096, clamped below the failure
    order, done, _ = drive(Search(**CAL), machine(lambda v: 300 + 0.25 * v))
    assert order == [2048, 4096, 8192, 6912, 7424]  # the prediction, then just above it (not down from 8,192)
    assert done.predicted == 6912 and done.longest <= 6992 < done.first_failure and done.limit == MEMORY
    # only 2,048 fits: 1,024 is probed so two points fit
    order, done, _ = drive(Search(**CAL), machine(lambda v: 300 + 0.6 * v))
    assert order[:3] == [2048, 4096, 1024]
    assert done.predicted is not None and done.longest <= (2048 - 300) / 0.6 < done.first_failure
    # nothing fits down to one multiple
    order, done, _ = drive(Search(**CAL), machine(lambda v: 5000.0))
    assert done.why == "nothing_fits" and done.longest is None and done.limit == MEMORY
    assert order == [2048, 1024, 512, 256]


def test_bare_statuses_without_peaks_fall_back_to_doubling_from_the_calibration():
    order, done = simulate(Search(**CAL), lambda v: v <= 40000)
    assert order[:3] == [2048, 4096, 8192] and order[3:5] == [16384, 32768]
    assert done.longest <= 40000 < done.first_failure and done.predicted is None


def test_an_error_in_calibration_ends_the_search():
    oracle = machine(lambda v: 300 + 0.02 * v)
    order, done, _ = drive(Search(**CAL), lambda v: Outcome(ERROR) if v == 4096 else oracle(v))
    assert order == [2048, 4096] and done.why == "error" and done.longest == 2048


@pytest.mark.parametrize("seed", range(20))
def test_calibrated_search_is_pure_in_the_outcomes_so_kill_and_resume_ask_the_same(seed):
    rng = random.Random(seed)
    a, b, c = rng.uniform(100, 400), rng.uniform(0.001, 0.2), rng.choice([0, 0, 1e-5, 1e-4])
    peak = lambda v: (a + b * v + c * v * v) * (1 + random.Random(seed * 1_000_003 + v).uniform(-0.03, 0.03))  # noqa: E731
    wall = lambda v: 1 + rng_wall * v  # noqa: E731
    rng_wall = rng.choice([1e-5, 1e-3])
    search = Search(start=rng.choice([1024, 4096, 8192]), max_value=rng.choice([65536, 1 << 20]),
                    resolution=rng.choice([1 / 16, 1 / 4]), multiple=rng.choice([64, 256]),
                    budget_mib=2048.0, memory_form=rng.choice(["linear", "quadratic"]), timeout_s=120.0)
    oracle = machine(peak, wall)
    order, done, truth = drive(search, oracle)
    for k in range(len(order)):  # a run killed (kill -9) after k recorded probes, resumed
        items = [(v, truth[v]) for v in order[:k]]
        rng.shuffle(items)
        assert next_probe(search, dict(items)) == Probe(order[k])
    assert next_probe(search, truth) == done
    assert len(set(order)) == len(order)
    if done.why == "bracketed":
        assert truth[done.longest].status == FIT and truth[done.first_failure].status == NO_FIT
        assert done.first_failure - done.longest <= search.tolerance(done.longest)


def test_calibrated_search_refuses_nonsense():
    with pytest.raises(ValueError, match="budget_mib"):
        Search(**{**CAL, "budget_mib": 0})
    with pytest.raises(ValueError, match="memory_form"):
        Search(**{**CAL, "memory_form": "cubic"})
    with pytest.raises(ValueError, match="calibration"):
        Search(**{**CAL, "calibration": (4096, 2048)})
    with pytest.raises(ValueError, match="reach"):
        Search(**{**CAL, "reach": 1.0})
    with pytest.raises(ValueError, match="Outcome.limit"):
        Outcome(NO_FIT, "patience")
    assert Search(**{**CAL, "calibration": (1000, 3000, 9000)}).calibration_lengths == (768, 2816, 8960)
