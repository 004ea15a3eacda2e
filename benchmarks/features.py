"""Benchmark of `tasks.features.extract_features` on one core, against a per-spectrum scipy loop.

Run: `.venv/bin/python benchmarks/features.py [--quick]`. Prints a markdown table of spectra/s
per batch size (PL only, and PL + absorbance pairs) and the speed-up over the obvious loop
(`scipy.signal.find_peaks` + `peak_widths`, one spectrum at a time) timed in the same run.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one core: set before numpy is imported

import argparse
import time

import numpy as np
from scipy.signal import find_peaks, peak_widths

from hardware.platform import load_platform
from hardware.virtual.chemistry import Band
from hardware.virtual.optics import render_bands, wavelength_grid
from tasks.features import FeatureSettings, extract_features

TARGET = 10_000  # PL spectra/s on one core


def synthetic_spectra(wl: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cs3Cu2I5-like PL (cps, 0.5 % noise) and absorbance (1e-3 noise), n of each."""
    rng = np.random.default_rng(seed)
    ones = np.ones(n)
    height = 10 ** rng.uniform(3.0, 5.5, n)
    pl = render_bands(wl, [
        Band(rng.uniform(440.0, 458.0, n), rng.uniform(60.0, 72.0, n), height),
        Band(380.0 * ones, 30.0 * ones, rng.uniform(0.0, 0.2, n) * height),
        Band(590.0 * ones, 95.0 * ones, rng.uniform(0.0, 0.1, n) * height),
        Band(300.0 * ones, 12.0 * ones, 0.03 * height),
    ], 8.0)
    pl += 0.005 * height[:, None] * rng.standard_normal(pl.shape)
    scale = rng.uniform(0.02, 0.5, n)
    ab = render_bands(wl, [Band(292.0 * ones, 24.0 * ones, 0.75 * scale)], 0.8)
    ab += 0.5 * scale[:, None] / (1.0 + np.exp((wl - rng.uniform(315.0, 330.0, n)[:, None]) / 6.0))
    ab += 1e-3 * rng.standard_normal(ab.shape)
    return pl, ab


def loop_pl(wl: np.ndarray, y: np.ndarray, s: FeatureSettings) -> dict:
    """The obvious per-spectrum way: find_peaks for the peak, peak_widths for the FWHM."""
    lo, hi = np.searchsorted(wl, s.pl_window)
    seg = y[lo:hi]
    peaks, _ = find_peaks(seg, prominence=0.1 * seg.max())
    p = lo + (peaks[np.argmax(seg[peaks])] if peaks.size else np.argmax(seg))
    _, _, left, right = peak_widths(y, [p], rel_height=0.5)
    pixels = np.arange(wl.size)
    q0, q1 = np.searchsorted(wl, s.quiet_window)
    out = {
        "PL_peak_nm": wl[p], "PL_I": y[p], "PL_A": np.trapezoid(seg, wl[lo:hi]),
        "FWHM_nm": np.interp(right[0], pixels, wl) - np.interp(left[0], pixels, wl),
        "noise": np.std(np.diff(y[q0:q1])) / np.sqrt(2),
    }
    for name, nm in s.side_peaks:
        out[name] = y[(wl >= nm - 5) & (wl <= nm + 5)].mean()
    return out


def loop_abs(wl: np.ndarray, a: np.ndarray, s: FeatureSettings) -> dict:
    lo, hi = np.searchsorted(wl, s.abs_peak_window)
    peaks, _ = find_peaks(a[lo:hi], prominence=0.01)
    o0, o1 = np.searchsorted(wl, s.onset_window)
    slope = np.gradient(a[o0:o1], wl[o0:o1])
    m = np.argmin(slope)
    b0, b1 = np.searchsorted(wl, s.baseline_window)
    return {
        "Abs_300": np.interp(s.abs_wavelength, wl, a),
        "Abs_peak_nm": wl[lo + peaks[np.argmax(a[lo + peaks])]] if peaks.size else np.nan,
        "Abs_onset_nm": wl[o0 + m] + (np.median(a[b0:b1]) - a[o0 + m]) / slope[m],
    }


def best_rate(call, batch: int, min_seconds: float) -> float:
    """Spectra per second: best single call, repeated until min_seconds have passed."""
    best, spent = np.inf, 0.0
    while spent < min_seconds or best == np.inf:
        t0 = time.perf_counter()
        call()
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
    return batch / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller batches, shorter timings")
    args = parser.parse_args()
    sizes = [1, 100, 1000] if args.quick else [1, 100, 1000, 10_000]
    min_seconds, loop_n = (0.1, 100) if args.quick else (0.5, 500)

    wl = wavelength_grid(load_platform().spectrometers["pl"])
    settings = FeatureSettings()
    pl, ab = synthetic_spectra(wl, max(sizes))

    def loop_rate(with_abs: bool) -> float:
        t0 = time.perf_counter()
        for i in range(loop_n):
            loop_pl(wl, pl[i], settings)
            if with_abs:
                loop_abs(wl, ab[i], settings)
        return loop_n / (time.perf_counter() - t0)

    base_pl, base_pair = loop_rate(False), loop_rate(True)
    print(f"grid: {wl.size} pixels, one thread; baseline loop (find_peaks + peak_widths, {loop_n} spectra): "
          f"{base_pl:,.0f} PL spectra/s, {base_pair:,.0f} PL+Abs pairs/s\n")
    print("| batch | PL spectra/s | PL+Abs pairs/s | PL speed-up vs loop | pairs speed-up vs loop |")
    print("|---:|---:|---:|---:|---:|")
    rates = {}
    for n in sizes:
        extract_features(wl, pl[:n], ab[:n])  # warm the per-grid plans
        r_pl = best_rate(lambda n=n: extract_features(wl, pl[:n]), n, min_seconds)
        r_pair = best_rate(lambda n=n: extract_features(wl, pl[:n], ab[:n]), n, min_seconds)
        rates[n] = r_pl
        speed_ups = f"{r_pl / base_pl:,.1f}x | {r_pair / base_pair:,.1f}x"
        print(f"| {n:,} | {r_pl:,.0f} | {r_pair:,.0f} | {speed_ups} |")
    largest = max(sizes)
    verdict = "met" if rates[largest] >= TARGET else "NOT met"
    print(f"\ntarget: >= {TARGET:,} PL spectra/s on one core (batch {largest:,}): {verdict} "
          f"({rates[largest]:,.0f} spectra/s)")


if __name__ == "__main__":
    main()
