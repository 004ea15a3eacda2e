"""Statistical process control: limits from a qualification window, each rule on a series built to
trip it, silence on white noise, EWMA on a slow drift, and clear errors on bad windows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tasks import spc
from tasks.spc import Limits, SpcInputError, SpcSettings, chart_series, estimate_limits

UNIT = Limits(feature="x", center=0.0, sigma=1.0, n=40, sigma_mr=1.0, sigma_sd=1.0)
"""Known limits (centre 0, sigma 1), so each constructed series trips exactly what it should."""


def fired(values, rules, limits=UNIT, **settings):
    return chart_series(values, limits, SpcSettings(rules=rules, sigma_floor={}, **settings))


def test_limits_come_from_the_moving_range_of_the_window():
    rng = np.random.default_rng(1)
    window = 100.0 + 2.0 * rng.standard_normal(200)
    limits = estimate_limits(window, "PL_I", SpcSettings(sigma_floor={}))
    assert limits.center == pytest.approx(100.0, abs=0.4)
    assert limits.sigma == pytest.approx(2.0, rel=0.1)
    assert limits.n == 200 and limits.band(3.0) == pytest.approx((limits.center - 3 * limits.sigma,
                                                                   limits.center + 3 * limits.sigma))


def test_a_trend_in_the_window_inflates_the_sd_but_not_the_moving_range_sigma():
    rng = np.random.default_rng(2)
    window = rng.standard_normal(40) + np.linspace(0, 6, 40)  # 6 sigma of drift across the window
    limits = estimate_limits(window, "x", SpcSettings(sigma_floor={}))
    assert limits.sigma_sd > 1.5
    assert limits.sigma_mr == pytest.approx(1.0, rel=0.3)


def test_one_wild_point_in_the_window_neither_widens_the_limits_nor_moves_the_centre():
    rng = np.random.default_rng(3)
    window = rng.standard_normal(40)
    clean = estimate_limits(window, "x", SpcSettings(sigma_floor={}))
    window[17] = 25.0  # a bubble
    spiked = estimate_limits(window, "x", SpcSettings(sigma_floor={}))
    assert spiked.sigma == pytest.approx(clean.sigma, rel=0.1)
    assert spiked.excluded == 1 and spiked.center == pytest.approx(clean.center, abs=0.1)


def test_a_sigma_floor_applies_when_the_noise_is_below_it():
    window = 449.36 + 0.008 * np.random.default_rng(4).standard_normal(40)
    limits = estimate_limits(window, "PL_peak_nm")  # default floor 0.05 nm
    assert limits.sigma == 0.05 and limits.sigma_mr < 0.02


def test_shewhart_fires_on_one_point_beyond_three_sigma():
    signals = fired([0.1, -0.5, 3.4, 0.2], ("shewhart",))
    assert [(s.rule, s.sample, s.side) for s in signals] == [("shewhart", 2, "high")]
    assert "beyond 3 sigma" in signals[0].describe()


def test_two_of_three_beyond_two_sigma_on_one_side():
    signals = fired([0.0, 2.3, -0.4, 2.5, 0.1], ("two_of_three",))
    assert [(s.rule, s.sample) for s in signals] == [("two_of_three", 3)]
    assert fired([0.0, 2.3, -0.4, -2.5, 0.1], ("two_of_three",)) == []  # opposite sides: no signal


def test_eight_in_a_row_on_one_side():
    values = [-0.3, *[0.4] * 8, 0.2]
    signals = fired(values, ("run",), run_length=8)
    assert [(s.rule, s.sample) for s in signals] == [("run", 8)]


def test_ewma_catches_a_slow_drift_that_shewhart_misses():
    rng = np.random.default_rng(5)
    drift = np.linspace(0.0, 2.0, 60) + 0.3 * rng.standard_normal(60)  # never near 3 sigma
    assert fired(drift, ("shewhart",)) == []
    ewma = fired(drift, ("ewma",))
    assert ewma and ewma[0].rule == "ewma" and ewma[0].side == "high"
    assert ewma[0].sample < 45  # while the drift is still below 1.5 sigma


def test_no_rule_fires_on_white_noise_with_known_limits():
    noise = np.random.default_rng(6).standard_normal(100)
    assert fired(noise, spc.DEFAULT_RULES) == []


def test_a_chart_restarts_after_a_signal():
    # A sustained 4-sigma shift: Shewhart fires at every point, the EWMA only once its evidence
    # has built up again after each restart.
    shifted = [4.0] * 6
    rules = [s.rule for s in fired(shifted, ("shewhart", "ewma"))]
    assert rules.count("shewhart") == 6
    state, signals = spc.update(UNIT, spc.ChartState(), 4.0, 0, SpcSettings(sigma_floor={}))
    assert signals and state == spc.ChartState()


def test_a_missing_value_while_monitoring_is_a_signal():
    signals = fired([0.0, math.nan, 0.0], spc.DEFAULT_RULES)
    assert [(s.rule, s.sample) for s in signals] == [("invalid", 1)]


@pytest.mark.parametrize(("window", "message"), [
    (np.zeros(5) + np.arange(5), "5 qualification points, at least 10"),
    ([1.0, 2.0, math.nan, *range(10)], "NaN/inf at samples [2]"),
    ([3.0] * 20, "no variation"),
])
def test_a_bad_qualification_window_is_a_clear_error(window, message):
    with pytest.raises(SpcInputError, match="PL_I") as caught:
        estimate_limits(window, "PL_I", SpcSettings(sigma_floor={}))
    assert message in str(caught.value)


def test_bad_settings_are_refused():
    with pytest.raises(SpcInputError, match="unknown"):
        SpcSettings(rules=("shewhart", "nelson7"))
    with pytest.raises(SpcInputError, match="ewma_lambda"):
        SpcSettings(ewma_lambda=0.0)


def test_update_all_charts_every_feature_and_names_it():
    limits = {"a": UNIT, "b": Limits("b", 10.0, 1.0, 40, 1.0, 1.0)}
    states, signals = spc.update_all(limits, {}, {"a": 0.2, "b": 14.0}, 7)
    assert [(s.feature, s.rule, s.sample) for s in signals][0] == ("b", "shewhart", 7)
    assert set(states) == {"a", "b"}
