"""Extract features: turn many PL and absorbance spectra into one table row each, at once.

Pure numpy (no Prefect). Windows come from `FeatureSettings`, in nm. What each column means:

- PL_peak_nm: smooth the PL lightly (3 nm moving average), take its maximum inside pl_window, then
  fit a Gaussian to the points above 75 % of that maximum around it (a least-squares parabola on the
  log of the spectrum, against photon energy, where the bands are Gaussian). The peak is the top
  of that fit. PL_peak_eV = 1239.84198 / PL_peak_nm.
- PL_I: height of the fitted Gaussian at its top, in cps (the PLQY proxy).
- PL_A: area under the (unsmoothed) PL over pl_window, trapezoids on the real grid, cps*nm.
- FWHM_nm: distance between the first points on either side of the peak where the smoothed PL
  falls below PL_I / 2 (linear interpolation between pixels); NaN if a side never falls that low.
  FWHM_meV: the same two points in photon energy, x1000.
- Abs_300: absorbance at abs_wavelength (300 nm by default; the column keeps its name), mean over
  +/-1 nm.
- Abs_peak_nm: excitonic peak: maximum of the smoothed absorbance in abs_peak_window, refined by a
  parabola over +/-5 nm. NaN if the maximum sits on the window edge (no clear peak).
- Abs_onset_nm: where the tangent at the steepest descent of the smoothed absorbance in
  onset_window meets the baseline (median absorbance in baseline_window). NaN if nothing descends.
- SNR: PL_I / noise, noise = std of first differences of the PL in quiet_window / sqrt(2).
- <side>_I: mean PL over +/-5 nm around each side peak; <side>_ratio = <side>_I / PL_I.
- flag_saturated: raw PL maximum >= detector full scale. flag_no_emission: SNR < 3 or PL_I <= 0.
  flag_noisy: SNR < min_snr (both False where no valid PL was given). flag_side_peak: a side ratio
  above side_peak_ratio_flag. flag_invalid: the spectrum held NaN or inf (only with
  on_invalid="flag"); all its features are NaN.

Everything is computed for all spectra at once (no Python loop over spectra), in float64; the
pixel windows are worked out once per wavelength grid and settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from hardware.errors import InvalidSpectrum, SaturatedSpectrum
from tasks.feature_names import (  # noqa: F401 - part of the features API
    ABS_COLUMNS,
    FLAGS,
    PL_COLUMNS,
    FeatureSettings,
    Window,
    feature_columns,
)

HC_EV_NM = 1239.84198
PL_SMOOTH_NM = 3.0  # moving average; widens a 40 nm band by ~0.1 %
ABS_SMOOTH_NM = 4.0
FIT_LEVEL = 0.75  # the PL Gaussian fit uses the points above this fraction of the maximum
ABS_FIT_HALF_NM = 5.0
SLOPE_HALF_NM = 2.0  # onset slope: central difference over +/- this
ABS_MEAN_HALF_NM = 1.0
SIDE_MEAN_HALF_NM = 5.0
NO_EMISSION_SNR = 3.0
SHOWN = 5  # spectrum indices named in an error message

def extract_features(
    wavelengths_nm,
    pl_cps=None,
    absorbance=None,
    settings: FeatureSettings = FeatureSettings(),
    *,
    abs_wavelengths_nm=None,
    pl_raw_max_counts=None,
    max_counts: float | None = None,
    on_invalid: Literal["raise", "flag"] = "raise",
) -> pd.DataFrame:
    """One row of features per spectrum (columns: `feature_columns(settings)`).

    pl_cps and absorbance are (n, pixels) or (pixels,); either may be None (its features are NaN).
    pl_raw_max_counts (scalar or (n,)) with max_counts flags saturated PL spectra. With
    on_invalid="raise", NaN/inf raises `InvalidSpectrum` and saturation `SaturatedSpectrum`; with
    "flag" those rows are flagged instead. Wrong shapes always raise `InvalidSpectrum`.
    """
    if on_invalid not in ("raise", "flag"):
        raise ValueError(f"on_invalid must be 'raise' or 'flag', not {on_invalid!r}")
    if pl_cps is None and absorbance is None:
        raise InvalidSpectrum("no spectra given: pass pl_cps, absorbance or both")
    grid = _as_grid("PL", wavelengths_nm)
    abs_grid = grid if abs_wavelengths_nm is None else _as_grid("absorbance", abs_wavelengths_nm)
    pl = None if pl_cps is None else _as_batch("PL", pl_cps, grid)
    ab = None if absorbance is None else _as_batch("absorbance", absorbance, abs_grid)
    if pl is not None and ab is not None and pl.shape[0] != ab.shape[0]:
        raise InvalidSpectrum(
            f"{pl.shape[0]} PL spectra (shape {pl.shape}) but {ab.shape[0]} absorbance spectra "
            f"(shape {ab.shape}): pass one absorbance spectrum per PL spectrum"
        )
    n = (pl if pl is not None else ab).shape[0]
    invalid = np.zeros(n, dtype=bool)
    for name, spectra in (("PL", pl), ("absorbance", ab)):
        if spectra is not None:
            invalid |= _check_finite(name, spectra, on_invalid)
    saturated = _check_saturation(pl_raw_max_counts, max_counts, n, on_invalid)

    out = {name: np.full(n, np.nan) for name in feature_columns(settings)[: -len(FLAGS)]}
    if pl is not None:
        out.update(_pl_features(np.where(invalid[:, None], 0.0, pl) if invalid.any() else pl,
                                _pl_plan(grid.tobytes(), settings)))
    if ab is not None:
        out.update(_abs_features(np.where(invalid[:, None], 0.0, ab) if invalid.any() else ab,
                                 _abs_plan(abs_grid.tobytes(), settings)))
    for values in out.values():
        values[invalid] = np.nan
    measured = ~invalid & (pl is not None)  # PL flags only where a valid PL spectrum was given
    side_peak = np.zeros(n, dtype=bool)
    for name, _ in settings.side_peaks:
        side_peak |= out[f"{name}_ratio"] > settings.side_peak_ratio_flag
    out["flag_saturated"] = saturated
    out["flag_no_emission"] = measured & ~((out["SNR"] >= NO_EMISSION_SNR) & (out["PL_I"] > 0))
    out["flag_noisy"] = measured & ~(out["SNR"] >= settings.min_snr)
    out["flag_side_peak"] = side_peak
    out["flag_invalid"] = invalid
    return pd.DataFrame({name: out[name] for name in feature_columns(settings)})  # dict order = columns


# --- input checks ------------------------------------------------------------------------


def _as_grid(name: str, wavelengths) -> np.ndarray:
    grid = np.asarray(wavelengths, dtype=float)
    if grid.ndim != 1 or grid.size < 8 or not np.isfinite(grid).all() or (np.diff(grid) <= 0).any():
        raise InvalidSpectrum(
            f"{name} wavelength grid of shape {grid.shape} must be 1-D, finite and strictly increasing (nm)"
        )
    return grid


def _as_batch(name: str, spectra, grid: np.ndarray) -> np.ndarray:
    arr = np.asarray(spectra, dtype=float)
    arr = arr[None, :] if arr.ndim == 1 else arr
    if arr.ndim != 2 or arr.shape[1] != grid.size:
        raise InvalidSpectrum(
            f"{name} spectra have shape {np.shape(spectra)} but their wavelength grid has {grid.size} "
            f"pixels: pass shape (n, {grid.size}) or ({grid.size},)"
        )
    return arr


def _check_finite(name: str, spectra: np.ndarray, on_invalid: str) -> np.ndarray:
    """Boolean mask of spectra holding NaN or inf; raises if on_invalid == "raise"."""
    bad = np.zeros(spectra.shape[0], dtype=bool)
    suspects = np.flatnonzero(~np.isfinite(spectra.sum(axis=1)))  # one cheap pass
    if suspects.size == 0:
        return bad
    pixels = (~np.isfinite(spectra[suspects])).sum(axis=1)
    rows, pixels = suspects[pixels > 0], pixels[pixels > 0]
    bad[rows] = True
    if rows.size and on_invalid == "raise":
        shown = _list_rows(rows, [f"{p} bad pixel{'s' if p > 1 else ''}" for p in pixels[:SHOWN]])
        raise InvalidSpectrum(
            f"{rows.size} of {spectra.shape[0]} {name} spectra hold NaN or infinite values: "
            f"spectrum {shown}. "
            "Check the acquisition (detector connected, dark and reference taken, no division by zero), "
            "or pass on_invalid='flag' to keep the other spectra."
        )
    return bad


def _check_saturation(raw_max, max_counts, n: int, on_invalid: str) -> np.ndarray:
    if raw_max is None:
        return np.zeros(n, dtype=bool)
    if max_counts is None:
        raise ValueError("pl_raw_max_counts needs max_counts (the detector full scale, in counts)")
    raw = np.asarray(raw_max, dtype=float)
    if raw.ndim > 1 or raw.size not in (1, n):
        raise InvalidSpectrum(
            f"pl_raw_max_counts has shape {raw.shape}: pass a scalar or one value per spectrum ({n},)"
        )
    raw = np.broadcast_to(raw, (n,))
    saturated = raw >= max_counts
    if saturated.any() and on_invalid == "raise":
        rows = np.flatnonzero(saturated)
        shown = _list_rows(rows, [f"{raw[i]:.0f} counts" for i in rows[:SHOWN]])
        raise SaturatedSpectrum(
            f"{rows.size} of {n} PL spectra reached the detector full scale ({max_counts:g} counts), so "
            f"their peak is clipped: spectrum {shown}. Lower the integration time and measure again, "
            "or pass on_invalid='flag' to keep them flagged."
        )
    return saturated.copy()


def _list_rows(rows: np.ndarray, details: list[str]) -> str:
    """'3 (why), 7 (why) and 12 more': the first few spectrum indices for an error message."""
    shown = ", ".join(f"{i} ({why})" for i, why in zip(rows[:SHOWN], details))
    return shown + (f" and {rows.size - SHOWN} more" if rows.size > SHOWN else "")


# --- per-grid plans (computed once per grid and settings) --------------------------------


def _pixels(grid: np.ndarray, nm: float) -> int:
    """Number of pixels spanning about `nm` around the middle of the grid."""
    return max(1, round(nm / float(np.median(np.diff(grid)))))


def _window(grid: np.ndarray, lo: float, hi: float, what: str) -> slice:
    """Pixels inside [lo, hi]; the window must lie on the grid."""
    if not (grid[0] <= lo < hi <= grid[-1]):
        raise InvalidSpectrum(
            f"{what} {lo:g}-{hi:g} nm is not inside the spectrometer grid {grid[0]:.1f}-{grid[-1]:.1f} nm: "
            "fix the [features] section of the platform config"
        )
    return slice(int(np.searchsorted(grid, lo, "left")), int(np.searchsorted(grid, hi, "right")))


def _integral_weights(grid: np.ndarray, lo: float, hi: float, what: str) -> np.ndarray:
    """w such that y @ w is the integral over [lo, hi] of y linearly interpolated on the grid."""
    _window(grid, lo, hi, what)
    a, b = np.clip(grid[:-1], lo, hi), np.clip(grid[1:], lo, hi)
    step = np.diff(grid)
    w = np.zeros(grid.size)
    w[:-1] += ((grid[1:] - a) ** 2 - (grid[1:] - b) ** 2) / (2 * step)
    w[1:] += ((b - grid[:-1]) ** 2 - (a - grid[:-1]) ** 2) / (2 * step)
    return w


def _linear_plan(grid: np.ndarray, columns: list[np.ndarray]) -> tuple[slice, np.ndarray]:
    """Stack weight columns and trim them to the pixels they use."""
    weights = np.stack(columns, axis=1)
    used = np.flatnonzero(weights.any(axis=1))
    return slice(used[0], used[-1] + 1), np.ascontiguousarray(weights[used[0] : used[-1] + 1])


def _smoothed_region(grid: np.ndarray, lo: float, hi: float, margin: int, k: int) -> tuple[slice, slice]:
    """(raw pixels to smooth, pixels the smoothed result covers) for [lo, hi] widened by margin."""
    half = k // 2
    start = max(int(np.searchsorted(grid, lo, "left")) - margin, half)
    stop = min(int(np.searchsorted(grid, hi, "right")) + margin, grid.size - half)
    return slice(start - half, stop + half), slice(start, stop)


@dataclass(frozen=True)
class _PlPlan:
    raw: slice  # pixels fed to the smoothing
    k: int  # moving-average width (pixels, odd)
    wl: np.ndarray  # wavelengths of the smoothed region
    peak: slice  # pl_window, as indices into the smoothed region
    powers: np.ndarray  # (pixels, 5): x**0..x**4, x = photon energy scaled to [-1, 1]
    e_mid: float
    e_half: float
    linear: slice  # pixels used by PL_A and side-peak means
    weights: np.ndarray  # (pixels, 1 + sides)
    sides: tuple[str, ...]
    quiet: slice


@lru_cache(maxsize=16)
def _pl_plan(grid_bytes: bytes, settings: FeatureSettings) -> _PlPlan:
    grid = np.frombuffer(grid_bytes)
    lo, hi = settings.pl_window
    _window(grid, lo, hi, "pl_window")
    k = 2 * (_pixels(grid, PL_SMOOTH_NM) // 2) + 1
    # Half-max crossings may lie outside pl_window: search half a window further on each side.
    raw, region = _smoothed_region(grid, lo, hi, _pixels(grid, (hi - lo) / 2), k)
    wl = grid[region]
    energy = HC_EV_NM / wl
    e_mid, e_half = (energy[0] + energy[-1]) / 2, (energy[0] - energy[-1]) / 2
    x = (energy - e_mid) / e_half
    peak = _window(wl, max(lo, wl[0]), min(hi, wl[-1]), "pl_window")
    columns = [_integral_weights(grid, lo, hi, "pl_window")]
    for name, nm in settings.side_peaks:
        side = (nm - SIDE_MEAN_HALF_NM, nm + SIDE_MEAN_HALF_NM)
        columns.append(_integral_weights(grid, *side, f"side peak {name}") / (2 * SIDE_MEAN_HALF_NM))
    linear, weights = _linear_plan(grid, columns)
    powers = np.ascontiguousarray(np.stack([x**j for j in range(5)], axis=1))
    sides = tuple(name for name, _ in settings.side_peaks)
    return _PlPlan(raw, k, wl, peak, powers, e_mid, e_half, linear, weights, sides,
                   _window(grid, *settings.quiet_window, "quiet_window"))


@dataclass(frozen=True)
class _AbsPlan:
    raw: slice
    k: int
    wl: np.ndarray
    peak: slice  # abs_peak_window, in the smoothed region
    fit: np.ndarray  # pixel offsets of the peak parabola
    onset: slice  # onset_window, in the smoothed region
    step: int  # slope = central difference over +/- step pixels
    linear: slice
    weights: np.ndarray  # (pixels, 1): mean around abs_wavelength
    baseline: slice


@lru_cache(maxsize=16)
def _abs_plan(grid_bytes: bytes, settings: FeatureSettings) -> _AbsPlan:
    grid = np.frombuffer(grid_bytes)
    k = 2 * (_pixels(grid, ABS_SMOOTH_NM) // 2) + 1
    fit_half, step = _pixels(grid, ABS_FIT_HALF_NM), _pixels(grid, SLOPE_HALF_NM)
    (p_lo, p_hi), (o_lo, o_hi) = settings.abs_peak_window, settings.onset_window
    _window(grid, p_lo, p_hi, "abs_peak_window")
    _window(grid, o_lo, o_hi, "onset_window")
    raw, region = _smoothed_region(grid, min(p_lo, o_lo), max(p_hi, o_hi), max(fit_half, step), k)
    wl = grid[region]
    onset = _window(wl, o_lo, o_hi, "onset_window")
    onset = slice(max(onset.start, step), min(onset.stop, wl.size - step))
    nm = settings.abs_wavelength
    mean = _integral_weights(grid, nm - ABS_MEAN_HALF_NM, nm + ABS_MEAN_HALF_NM, "abs_wavelength")
    linear, weights = _linear_plan(grid, [mean / (2 * ABS_MEAN_HALF_NM)])
    peak = _window(wl, p_lo, p_hi, "abs_peak_window")
    baseline = _window(grid, *settings.baseline_window, "baseline_window")
    fit = np.arange(-fit_half, fit_half + 1)
    return _AbsPlan(raw, k, wl, peak, fit, onset, step, linear, weights, baseline)


# --- the features ---------------------------------------------------------------------------


def _moving_average(y: np.ndarray, k: int) -> np.ndarray:
    """Mean over k consecutive pixels (cumulative sums); the result is k - 1 pixels shorter."""
    c = np.cumsum(y, axis=1)
    out = np.empty((y.shape[0], y.shape[1] - k + 1))
    out[:, 0] = c[:, k - 1]
    np.subtract(c[:, k:], c[:, :-k], out=out[:, 1:])
    return out / k


def _parabola(m: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares y = a x^2 + b x + c from moments m = sums of x^0..x^4, t = sums of y x^0..x^2."""
    def det(c0, c1, c2):  # 3x3 determinant from its columns
        return c0[0] * (c1[1] * c2[2] - c1[2] * c2[1]) - c1[0] * (c0[1] * c2[2] - c0[2] * c2[1]) \
            + c2[0] * (c0[1] * c1[2] - c0[2] * c1[1])

    cols = [(m[:, 4], m[:, 3], m[:, 2]), (m[:, 3], m[:, 2], m[:, 1]), (m[:, 2], m[:, 1], m[:, 0])]
    rhs = (t[:, 2], t[:, 1], t[:, 0])
    with np.errstate(divide="ignore", invalid="ignore"):
        d = det(*cols)
        return det(rhs, cols[1], cols[2]) / d, det(cols[0], rhs, cols[2]) / d, det(cols[0], cols[1], rhs) / d


def _first_below(below: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Last index left of p and first index right of p where `below` holds (-1 / width if none)."""
    width = below.shape[1]
    cols = np.arange(width)
    left_side, right_side = below & (cols < p[:, None]), below & (cols > p[:, None])
    left = width - 1 - np.argmax(left_side[:, ::-1], axis=1)
    right = np.argmax(right_side, axis=1)
    rows = np.arange(below.shape[0])
    return np.where(left_side[rows, left], left, -1), np.where(right_side[rows, right], right, width)


def _pl_features(pl: np.ndarray, plan: _PlPlan) -> dict[str, np.ndarray]:
    s = _moving_average(pl[:, plan.raw], plan.k)
    rows, width = np.arange(s.shape[0]), s.shape[1]
    p = plan.peak.start + np.argmax(s[:, plan.peak], axis=1)
    top = s[rows, p]
    # Gaussian fit: parabola on log(s) over the contiguous run above FIT_LEVEL x top around p.
    left, right = _first_below(s < FIT_LEVEL * top[:, None], p)
    cols = np.arange(width)
    inside = (cols > left[:, None]) & (cols < right[:, None]) & (top > 0)[:, None]
    log_s = np.log(s, out=np.zeros_like(s), where=inside)
    a, b, c = _parabola(inside.astype(float) @ plan.powers, log_s @ plan.powers[:, :3])
    x = plan.powers[:, 1]
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        x_top = -b / (2 * a)
        fit_i = np.exp(c + b * x_top / 2)
        good = (a < 0) & (np.abs(fit_i / top - 1) < 0.25) & (x_top <= x[np.maximum(left, 0)]) \
            & (x_top >= x[np.minimum(right, width - 1)])
    x_top = np.where(good, x_top, x[p])
    pl_i = np.where(good, fit_i, top)
    peak_nm = np.where(pl_i > 0, HC_EV_NM / (plan.e_mid + plan.e_half * x_top), np.nan)
    # FWHM: first crossings of pl_i / 2 on each side of p, interpolated between pixels.
    half = pl_i / 2
    left, right = _first_below(s < half[:, None], p)
    lo, hi = np.clip(left, 0, width - 2), np.clip(right, 1, width - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        wl_lo = _crossing(plan.wl, s, rows, lo, half)
        wl_hi = _crossing(plan.wl, s, rows, hi - 1, half)
    missing = (left < 0) | (right >= width) | (pl_i <= 0)
    wl_lo[missing] = wl_hi[missing] = np.nan
    linear = pl[:, plan.linear] @ plan.weights
    noise = np.diff(pl[:, plan.quiet], axis=1).std(axis=1) / np.sqrt(2)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = {
            "PL_peak_nm": peak_nm,
            "PL_peak_eV": HC_EV_NM / peak_nm,
            "PL_I": pl_i,
            "PL_A": linear[:, 0],
            "FWHM_nm": wl_hi - wl_lo,
            "FWHM_meV": 1000 * HC_EV_NM * (1 / wl_lo - 1 / wl_hi),
            "SNR": pl_i / noise,
        }
        for j, name in enumerate(plan.sides, start=1):
            out[f"{name}_I"] = linear[:, j]
            out[f"{name}_ratio"] = np.where(pl_i > 0, linear[:, j] / pl_i, np.nan)
    return out


def _crossing(wl: np.ndarray, s: np.ndarray, rows: np.ndarray, i: np.ndarray, level: np.ndarray):
    """Wavelength where s crosses `level` between pixels i and i + 1 (linear interpolation)."""
    s0, s1 = s[rows, i], s[rows, i + 1]
    return wl[i] + (level - s0) / (s1 - s0) * (wl[i + 1] - wl[i])


def _abs_features(ab: np.ndarray, plan: _AbsPlan) -> dict[str, np.ndarray]:
    s = _moving_average(ab[:, plan.raw], plan.k)
    rows, width = np.arange(s.shape[0]), s.shape[1]
    # Excitonic peak: local parabola around the maximum; NaN when the maximum is on the window edge.
    p = plan.peak.start + np.argmax(s[:, plan.peak], axis=1)
    idx = np.clip(p[:, None] + plan.fit, 0, width - 1)
    x = plan.wl[idx] - plan.wl[p][:, None]
    y = np.take_along_axis(s, idx, axis=1)
    moments = np.stack([(x**j).sum(1) for j in range(5)], 1)
    a, b, _ = _parabola(moments, np.stack([(y * x**j).sum(1) for j in range(3)], 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.clip(-b / (2 * a), x[:, 0], x[:, -1])
    peak_nm = plan.wl[p] + np.where(a < 0, shift, 0.0)
    peak_nm[(p == plan.peak.start) | (p == plan.peak.stop - 1)] = np.nan
    # Onset: tangent at the steepest descent, extended down to the baseline.
    o, k = plan.onset, plan.step
    ahead, behind = slice(o.start + k, o.stop + k), slice(o.start - k, o.stop - k)
    slope = (s[:, ahead] - s[:, behind]) / (plan.wl[ahead] - plan.wl[behind])
    m = np.argmin(slope, axis=1)
    steepest = slope[rows, m]
    baseline = np.median(ab[:, plan.baseline], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        onset = plan.wl[o.start + m] + (baseline - s[rows, o.start + m]) / steepest
    onset[~(steepest < 0)] = np.nan
    return {"Abs_300": ab[:, plan.linear] @ plan.weights[:, 0], "Abs_peak_nm": peak_nm, "Abs_onset_nm": onset}


# --- Prefect task ---------------------------------------------------------------------------

# Pure and deterministic: cached on its inputs and on this code.
extract_features_task = task(name="extract-features", cache_policy=INPUTS + TASK_SOURCE)(extract_features)
