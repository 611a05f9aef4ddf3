"""The calibration fit on synthetic probe outcomes: a linear and a quadratic peak recovered exactly,
a noisy point moving the solved length by little, negative terms dropped, and the solve itself."""
from __future__ import annotations

import math

import pytest

from bench.capacity.calibrate import LINEAR, QUADRATIC, Fit, calibrate, fit, memory_form, time_form


def test_linear_peaks_are_fitted_and_solved_exactly():
    lengths = [2048, 4096, 8192]
    peaks = [300 + 0.02 * x for x in lengths]
    f = fit(lengths, peaks, LINEAR)
    assert (f.a, f.b, f.c) == pytest.approx((300, 0.02, 0))
    assert f.solve(2048) == pytest.approx((2048 - 300) / 0.02)
    cal = calibrate([(x, p, None) for x, p in zip(lengths, peaks)], 2048, LINEAR, multiple=256)
    assert cal.value == 87296 and cal.value % 256 == 0 and cal.limit == "memory"  # floor(87400 / 256) * 256


def test_quadratic_peaks_are_fitted_and_solved_exactly():
    lengths = [512, 1024, 2048]
    peaks = [220 + 0.05 * x + 2e-4 * x**2 for x in lengths]
    f = fit(lengths, peaks, QUADRATIC)
    assert (f.a, f.b, f.c) == pytest.approx((220, 0.05, 2e-4), rel=1e-6)
    root = (-0.05 + math.sqrt(0.05**2 + 4 * 2e-4 * (2048 - 220))) / (2 * 2e-4)
    assert f.solve(2048) == pytest.approx(root)
    assert f(root) == pytest.approx(2048)


def test_a_noisy_point_moves_the_linear_prediction_by_little():
    lengths = [2048, 4096, 8192]
    clean = [300 + 0.02 * x for x in lengths]
    noisy = [clean[0], clean[1] * 1.03, clean[2]]  # +3% on one peak (about 12 MiB)
    truth = fit(lengths, clean, LINEAR).solve(2048)
    got = fit(lengths, noisy, LINEAR).solve(2048)
    assert got != truth
    assert abs(got / truth - 1) < 0.15


def test_a_noisy_point_that_would_bend_a_quadratic_down_keeps_it_linear():
    # the L^2 coefficient these three points imply is negative: memory cannot shrink with L, so the
    # fit drops the term and keeps the least-squares line
    lengths, peaks = [512, 1024, 2048], [300.0, 360.0, 400.0]
    f = fit(lengths, peaks, QUADRATIC)
    assert f.c == 0 and f.b > 0
    line = fit(lengths, peaks, LINEAR)
    assert (f.a, f.b) == pytest.approx((line.a, line.b))


def test_flat_or_shrinking_memory_does_not_stop_anywhere():
    f = fit([1024, 2048, 4096], [500.0, 490.0, 480.0], LINEAR)
    assert f.b == 0 and f.solve(2048) == math.inf
    cal = calibrate([(1024, 500.0, None), (2048, 490.0, None)], 2048, LINEAR, multiple=64, top=65536)
    assert cal.value == 65536  # clamped to the search's largest value


def test_too_few_points_and_the_time_limit():
    assert fit([1024], [500.0], LINEAR) is None
    assert fit([1024, 1024], [500.0, 501.0], LINEAR) is None
    assert calibrate([(1024, None, 1.0), (2048, None, 2.0)], 2048, LINEAR) is None  # no peaks measured
    # memory would allow 87,400 tokens; the wall time (1 + 0.001 L s) reaches a 60 s timeout at 59,000
    pts = [(x, 300 + 0.02 * x, 1 + 0.001 * x) for x in (2048, 4096, 8192)]
    cal = calibrate(pts, 2048, LINEAR, timeout_s=60, t_form=LINEAR, multiple=1)
    assert cal.limit == "time" and cal.value == 59000 and cal.memory == pytest.approx(87400)
    assert Fit(LINEAR, 3000, 1, 0, 2).solve(2048) == 0.0  # over the budget before any token
    with pytest.raises(ValueError, match="form"):
        fit([1, 2], [1, 2], "cubic")


def test_forms_follow_what_the_attention_stores():
    assert memory_form("full") == QUADRATIC and time_form("full") == QUADRATIC
    assert memory_form("sdpa") == LINEAR and time_form("sdpa") == QUADRATIC  # fused: no L x L stored
    assert memory_form("lsh") == LINEAR and time_form("lsh") == LINEAR
