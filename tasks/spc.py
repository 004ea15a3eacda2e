"""Statistical process control: control limits from a qualification window, then Shewhart,
Western Electric run rules and EWMA charts on each QC feature, one point at a time.

Pure functions over typed dataclasses (no Prefect, no instruments). The flow feeds one QC
sample at a time (`update`); tests and benchmarks can chart a whole series (`chart_series`).

Choices, and why:
- Individuals charts (one value per QC sample), as each sample is one measurement of the stream.
- Sigma from the moving range (mean |x[i] - x[i-1]| / d2, d2 = 1.128), not the sample standard
  deviation: a slow trend inside the qualification window inflates the standard deviation but
  barely moves the moving range, so the limits describe the short-term noise the charts must see
  through. Moving ranges above the moving-range chart's upper limit (D4 = 3.267 x mean) are
  dropped once and the mean recomputed, so one wild reading (a bubble) does not widen the limits.
  The centre is the mean of the window without the points beyond 3 sigma of a first estimate.
- A floor per feature (`sigma_floor`): a simulated spectrometer can place a peak within
  0.01 nm, far better than a real one holds its wavelength calibration over a day; the floor
  keeps the charts from alarming on changes no instrument or customer would see.
- Rules on by default: "shewhart" (one point beyond 3 sigma) for large sudden changes and
  "ewma" (lambda 0.2, L 3.0, exact time-varying limits) for slow drifts and small sustained
  shifts that no single point reveals. Available: "two_of_three" (2 of the last 3 beyond
  2 sigma on one side, Western Electric rule 2) and "run" (8 in a row on one side, WE rule 4).
  They are off by default because next to the EWMA they add false alarms and little speed: on
  white noise with limits from 60 points and 144 points charted (a day at 10 min), Shewhart +
  EWMA gave 1.3 false alarms on average and caught a 1-sigma shift after 9.9 points; adding
  2-of-3 gave 1.7 false alarms and 10.7 points (600 simulated days each). The run rule is the
  one most upset by a centre estimated from a short window.
- Limits estimated from a short window make every rule alarm more often than its textbook
  rate (limits from 60 points: ~2x the false alarms of known limits), hence the default of 60
  qualification points.
- After a signal on a feature its chart restarts (EWMA back to the centre, run history
  cleared): each signal is one alarm, and a persisting problem signals again only after the
  evidence has built up anew.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from hardware.errors import SdflInputError

D2 = 1.128
"""E|x1 - x2| / sigma for two normal readings (moving range of 2)."""
D4 = 3.267
"""Upper limit of the moving-range chart, in mean moving ranges."""
RULES = ("shewhart", "two_of_three", "run", "ewma")
DEFAULT_RULES = ("shewhart", "ewma")
DEFAULT_SIGMA_FLOOR = {"PL_peak_nm": 0.05, "FWHM_nm": 0.1}
"""Wavelength repeatability of a spectrometer over a day (assumption), in nm."""


class SpcInputError(SdflInputError):
    """Qualification data or chart settings that cannot give control limits."""


@dataclass(frozen=True)
class SpcSettings:
    """Which rules run and how wide their limits are (in sigma)."""

    rules: tuple[str, ...] = DEFAULT_RULES
    shewhart_k: float = 3.0
    zone_k: float = 2.0
    """Two of three consecutive points beyond this many sigma on one side."""
    run_length: int = 8
    ewma_lambda: float = 0.2
    ewma_L: float = 3.0
    min_points: int = 10
    """Qualification points needed to set limits."""
    sigma_floor: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_SIGMA_FLOOR))

    def __post_init__(self) -> None:
        unknown = sorted(set(self.rules) - set(RULES))
        if unknown:
            raise SpcInputError(f"spc rules: unknown {unknown}; choose from {list(RULES)}")
        if not 0 < self.ewma_lambda <= 1:
            raise SpcInputError(f"spc ewma_lambda must be in (0, 1], got {self.ewma_lambda}")
        for name in ("shewhart_k", "zone_k", "ewma_L"):
            if not getattr(self, name) > 0:
                raise SpcInputError(f"spc {name} must be > 0, got {getattr(self, name)}")
        if self.run_length < 2:
            raise SpcInputError(f"spc run_length must be >= 2, got {self.run_length}")
        if self.min_points < 3:
            raise SpcInputError(f"spc min_points must be >= 3, got {self.min_points}")


@dataclass(frozen=True)
class Limits:
    """Control limits of one feature: centre and short-term sigma from the qualification window."""

    feature: str
    center: float
    sigma: float
    """Used by the charts: max(sigma_mr, floor)."""
    n: int
    sigma_mr: float
    """Moving range / d2, after dropping moving ranges above D4 x the mean once."""
    sigma_sd: float
    """Plain standard deviation of the window (for comparison; drift inflates it)."""
    floor: float = 0.0
    excluded: int = 0
    """Window points left out of the centre (beyond 3 sigma of a first estimate)."""

    def z(self, value: float) -> float:
        return (value - self.center) / self.sigma

    def band(self, k: float) -> tuple[float, float]:
        return self.center - k * self.sigma, self.center + k * self.sigma


@dataclass(frozen=True)
class Signal:
    """One out-of-control signal: which rule fired, on which feature, at which sample."""

    feature: str
    rule: str
    sample: int
    value: float
    statistic: float
    """z for shewhart / two_of_three / run, the EWMA for ewma (feature units)."""
    limit: float
    """The limit crossed (feature units), or the run length for run."""
    side: Literal["high", "low"]

    def describe(self) -> str:
        if self.rule == "ewma":
            return (f"{self.feature}: EWMA {self.statistic:.5g} beyond its {self.side} limit {self.limit:.5g} "
                    f"(sample {self.sample}, value {self.value:.5g})")
        if self.rule == "run":
            return f"{self.feature}: {int(self.limit)} points in a row {self.side} of the centre (sample {self.sample})"
        if self.rule == "invalid":
            return f"{self.feature}: no valid value at sample {self.sample}"
        what = "beyond 3 sigma" if self.rule == "shewhart" else "2 of 3 beyond 2 sigma"
        return f"{self.feature}: {what} ({self.side}), value {self.value:.5g}, z = {self.statistic:+.2f} (sample {self.sample})"


@dataclass(frozen=True)
class ChartState:
    """What a chart remembers between points (since its last restart)."""

    ewma: float | None = None
    count: int = 0
    recent_z: tuple[float, ...] = ()


# --- limits --------------------------------------------------------------------------------
def estimate_limits(values: Sequence[float], feature: str, settings: SpcSettings = SpcSettings()) -> Limits:
    """Limits of one feature from its qualification window (in time order).

    Raises SpcInputError naming the feature when the window is too short, holds NaN, or shows
    no variation at all (and no floor is set).
    """
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise SpcInputError(f"{feature}: qualification values must be a 1-d series")
    bad = np.flatnonzero(~np.isfinite(x))
    if bad.size:
        raise SpcInputError(f"{feature}: the qualification window holds NaN/inf at samples {bad[:5].tolist()}; "
                            "limits need a valid value at every qualification sample")
    if x.size < settings.min_points:
        raise SpcInputError(f"{feature}: {x.size} qualification points, at least {settings.min_points} are needed "
                            "to set control limits; lengthen the qualification window or sample it more often")
    mr = np.abs(np.diff(x))
    kept = mr[mr <= D4 * mr.mean()] if mr.mean() > 0 else mr
    sigma_mr = float(kept.mean() / D2)
    floor = float(settings.sigma_floor.get(feature, 0.0))
    sigma = max(sigma_mr, floor)
    if not sigma > 0:
        raise SpcInputError(f"{feature}: the qualification window shows no variation (all {x[0]:.6g}); "
                            "set a sigma floor for this feature")
    first = float(x.mean())
    inside = np.abs(x - first) <= settings.shewhart_k * sigma
    center = float(x[inside].mean()) if inside.any() else first
    return Limits(feature=feature, center=center, sigma=sigma, n=int(x.size), sigma_mr=sigma_mr,
                  sigma_sd=float(x.std(ddof=1)), floor=floor, excluded=int((~inside).sum()))


def estimate_all(window: Mapping[str, Sequence[float]], features: Sequence[str],
                 settings: SpcSettings = SpcSettings()) -> dict[str, Limits]:
    """Limits for each feature from a table-like window ({feature: values})."""
    missing = [f for f in features if f not in window]
    if missing:
        raise SpcInputError(f"no qualification values for {missing}")
    return {f: estimate_limits(window[f], f, settings) for f in features}


# --- charting one point --------------------------------------------------------------------
def ewma_limit_width(settings: SpcSettings, count: int, sigma: float) -> float:
    """Half-width of the EWMA limits after `count` points since the (re)start (exact variance)."""
    lam = settings.ewma_lambda
    return settings.ewma_L * sigma * math.sqrt(lam / (2.0 - lam) * (1.0 - (1.0 - lam) ** (2 * count)))


def update(limits: Limits, state: ChartState, value: float, sample: int,
           settings: SpcSettings = SpcSettings()) -> tuple[ChartState, list[Signal]]:
    """Chart one value. Returns the new state and the signals it raised (empty when in control).

    A non-finite value is itself a signal ("invalid": the feature could not be measured). After
    any signal the chart restarts.
    """
    f = limits.feature
    if not math.isfinite(value):
        return ChartState(), [Signal(f, "invalid", sample, float(value), float("nan"), float("nan"), "low")]
    z = limits.z(value)
    rules = settings.rules
    recent = (*state.recent_z, z)[-max(3, settings.run_length):]
    count = state.count + 1
    lam = settings.ewma_lambda
    ewma = (limits.center if state.ewma is None else state.ewma) * (1 - lam) + lam * value
    signals: list[Signal] = []
    side = "high" if z > 0 else "low"
    if "shewhart" in rules and abs(z) > settings.shewhart_k:
        limit = limits.band(settings.shewhart_k)[z > 0]
        signals.append(Signal(f, "shewhart", sample, value, z, limit, side))
    if "two_of_three" in rules and len(recent) >= 2 and abs(z) > settings.zone_k:
        last3 = recent[-3:]
        same_side = [v for v in last3 if abs(v) > settings.zone_k and np.sign(v) == np.sign(z)]
        if len(same_side) >= 2:
            limit = limits.band(settings.zone_k)[z > 0]
            signals.append(Signal(f, "two_of_three", sample, value, z, limit, side))
    if "run" in rules and len(recent) >= settings.run_length:
        run = recent[-settings.run_length:]
        if all(v > 0 for v in run) or all(v < 0 for v in run):
            signals.append(Signal(f, "run", sample, value, z, float(settings.run_length), side))
    if "ewma" in rules:
        width = ewma_limit_width(settings, count, limits.sigma)
        if abs(ewma - limits.center) > width:
            high = ewma > limits.center
            limit = limits.center + width if high else limits.center - width
            signals.append(Signal(f, "ewma", sample, value, ewma, limit, "high" if high else "low"))
    if signals:
        return ChartState(), signals
    return replace(state, ewma=ewma, count=count, recent_z=recent), signals


def update_all(limits: Mapping[str, Limits], states: Mapping[str, ChartState], values: Mapping[str, float],
               sample: int, settings: SpcSettings = SpcSettings()) -> tuple[dict[str, ChartState], list[Signal]]:
    """Chart one QC sample on every feature that has limits."""
    new_states, signals = {}, []
    for feature, lim in limits.items():
        value = values.get(feature)
        state, fired = update(lim, states.get(feature, ChartState()), float("nan") if value is None else float(value),
                              sample, settings)
        new_states[feature] = state
        signals += fired
    return new_states, signals


def chart_series(values: Sequence[float], limits: Limits, settings: SpcSettings = SpcSettings(),
                 first_sample: int = 0) -> list[Signal]:
    """Chart a whole series (sample numbers from `first_sample`); every signal, in order."""
    state, out = ChartState(), []
    for i, value in enumerate(values):
        state, fired = update(limits, state, float(value), first_sample + i, settings)
        out += fired
    return out


def ewma_path(values: Sequence[float], limits: Limits, settings: SpcSettings = SpcSettings()) -> np.ndarray:
    """The EWMA statistic along a series with restarts after each signal (for plots)."""
    state, out = ChartState(), []
    for i, value in enumerate(values):
        previous = limits.center if state.ewma is None else state.ewma
        out.append(previous * (1 - settings.ewma_lambda) + settings.ewma_lambda * float(value)
                   if math.isfinite(value) else float("nan"))
        state, _ = update(limits, state, float(value), i, settings)
    return np.asarray(out)
