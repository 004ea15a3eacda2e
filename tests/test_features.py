"""Extract features: examples on synthetic spectra rendered on the real, non-uniform HDX grid."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hardware.errors import InvalidSpectrum, SaturatedSpectrum
from hardware.platform import load_platform
from hardware.virtual.chemistry import Band
from hardware.virtual.optics import render_bands, wavelength_grid
from tasks.features import FeatureSettings, extract_features, feature_columns

PLATFORM = load_platform()
WL = wavelength_grid(PLATFORM.spectrometers["pl"])  # 2068 pixels, 198-1065 nm, spacing not uniform
FINE = np.arange(250.0, 800.0, 0.01)  # for honest ground truths
RESOLUTION_NM = 8.0
N = 200


def pl_batch(rng, centers, fwhms, heights, noise, extra_bands=()):
    """Main band + small 300 nm LED scatter, Gaussian noise as a fraction of the peak height."""
    m = len(centers)
    led = Band(np.full(m, 300.0), np.full(m, 12.0), 0.05 * heights)
    bands = [Band(centers, fwhms, heights), led, *extra_bands]
    clean = render_bands(WL, bands, RESOLUTION_NM)
    return clean + noise * heights[:, None] * rng.standard_normal(clean.shape)


def true_band(centers, fwhms, heights):
    """Peak (nm), height and half-max crossings (nm) of the noiseless main band, on a 0.01 nm grid."""
    band = render_bands(FINE, [Band(centers, fwhms, heights)], RESOLUTION_NM)
    top = band.max(axis=1)
    above = band >= top[:, None] / 2
    first = np.argmax(above, axis=1)
    last = FINE.size - 1 - np.argmax(above[:, ::-1], axis=1)
    return FINE[np.argmax(band, axis=1)], top, FINE[first], FINE[last]


@pytest.fixture(scope="module")
def bands():
    rng = np.random.default_rng(7)
    return rng.uniform(430.0, 470.0, N), rng.uniform(40.0, 90.0, N), 10 ** rng.uniform(3.0, 5.5, N)


@pytest.mark.parametrize("noise", [0.01, 0.003])
def test_pl_peak_and_fwhm_match_the_true_band(bands, noise):
    centers, fwhms, heights = bands
    pl = pl_batch(np.random.default_rng(1), centers, fwhms, heights, noise)
    features = extract_features(WL, pl)
    peak_nm, _, blue_nm, red_nm = true_band(centers, fwhms, heights)
    assert np.abs(features["PL_peak_nm"] - peak_nm).max() < 0.5
    assert np.abs(features["FWHM_nm"] / (red_nm - blue_nm) - 1).max() < 0.02
    assert np.allclose(features["PL_peak_eV"], 1239.84198 / features["PL_peak_nm"])
    fwhm_mev = 1000 * 1239.84198 * (1 / blue_nm - 1 / red_nm)
    assert np.abs(features["FWHM_meV"] / fwhm_mev - 1).max() < 0.02


def test_pl_intensity_and_area_match_the_true_band(bands):
    centers, fwhms, heights = bands
    pl = pl_batch(np.random.default_rng(2), centers, fwhms, heights, 0.01)
    features = extract_features(WL, pl)
    _, top, _, _ = true_band(centers, fwhms, heights)
    inside = (FINE >= 400.0) & (FINE <= 540.0)
    band = render_bands(FINE[inside], [Band(centers, fwhms, heights)], RESOLUTION_NM)
    area = np.trapezoid(band, FINE[inside])
    assert np.abs(features["PL_I"] / top - 1).max() < 0.01
    assert np.abs(features["PL_A"] / area - 1).max() < 0.01
    assert (features["SNR"] > 50).all() and not features["flag_noisy"].any()


def absorbance(edge_nm, scale=0.4, exciton_nm=292.0, noise=1e-3, grid=WL, seed=3):
    """Cs3Cu2I5-like absorbance: exciton band on a continuum ending at a smooth edge."""
    edge, scale = np.broadcast_arrays(np.atleast_1d(edge_nm).astype(float), scale)
    ones = np.ones_like(edge)
    exciton = render_bands(grid, [Band(exciton_nm * ones, 24.0 * ones, 0.75 * scale)], 0.8)
    clean = exciton + 0.5 * scale[:, None] / (1.0 + np.exp((grid - edge[:, None]) / 6.0))
    return clean, clean + noise * np.random.default_rng(seed).standard_normal(clean.shape)


def test_absorbance_at_300_nm_and_excitonic_peak():
    clean, noisy = absorbance(np.full(20, 318.0), scale=np.linspace(0.02, 0.6, 20))
    features = extract_features(WL, absorbance=noisy)
    truth = np.array([np.interp(300.0, WL, row) for row in clean])
    assert np.abs(features["Abs_300"] - truth).max() < 0.002
    strong = features["Abs_300"] > 0.1
    assert np.abs(features["Abs_peak_nm"][strong] - 292.0).max() < 1.0
    assert features["PL_I"].isna().all()  # no PL given


def test_onset_follows_the_absorption_edge():
    edges = np.arange(310.0, 328.0, 2.0)
    _, noisy = absorbance(edges)
    onset = extract_features(WL, absorbance=noisy)["Abs_onset_nm"].to_numpy()
    assert (np.diff(onset) > 0).all()
    assert 300.0 < onset[0] and onset[-1] < 340.0


def test_absorbance_may_use_its_own_grid():
    abs_grid = 200.0 + 600.0 * np.linspace(0.0, 1.0, 1500) ** 1.1  # another spectrometer
    clean, noisy = absorbance([318.0], grid=abs_grid)
    pl = pl_batch(np.random.default_rng(4), np.array([449.0]), np.array([66.0]), np.array([5e4]), 0.003)
    features = extract_features(WL, pl, noisy, abs_wavelengths_nm=abs_grid)
    assert abs(features["Abs_300"][0] - np.interp(300.0, abs_grid, clean[0])) < 0.002
    assert abs(features["PL_peak_nm"][0] - 449.0) < 0.5


def test_side_peak_ratio_grows_with_the_380_nm_band():
    m = 8
    side = np.linspace(0.0, 0.4, m) * 5e4
    extra = [Band(np.full(m, 380.0), np.full(m, 30.0), side)]
    main = np.full(m, 449.0), np.full(m, 66.0), np.full(m, 5e4)
    pl = pl_batch(np.random.default_rng(5), *main, 0.003, extra)
    features = extract_features(WL, pl)
    assert (np.diff(features["PL_380_ratio"]) > 0).all()
    assert features["flag_side_peak"].tolist() == (features["PL_380_ratio"] > 0.10).tolist()
    assert not features["flag_side_peak"].iloc[0] and features["flag_side_peak"].iloc[-1]


def test_noise_only_is_flagged_no_emission():
    pl = 50.0 * np.random.default_rng(6).standard_normal((10, WL.size))
    features = extract_features(WL, pl)
    assert features["flag_no_emission"].all() and features["flag_noisy"].all()


def test_a_batch_equals_spectra_one_by_one(bands):
    centers, fwhms, heights = (b[:12] for b in bands)
    pl = pl_batch(np.random.default_rng(8), centers, fwhms, heights, 0.01)
    _, ab = absorbance(np.linspace(312.0, 326.0, 12))
    batch = extract_features(WL, pl, ab)
    alone = pd.concat([extract_features(WL, pl[i], ab[i]) for i in range(12)], ignore_index=True)
    pd.testing.assert_frame_equal(batch, alone, rtol=1e-9)


def test_columns_are_the_dataset_schema():
    pl = pl_batch(np.random.default_rng(9), np.array([449.0]), np.array([66.0]), np.array([5e4]), 0.003)
    features = extract_features(WL, pl)
    assert list(features.columns) == feature_columns(FeatureSettings()) == [
        "PL_peak_nm", "PL_peak_eV", "PL_I", "PL_A", "FWHM_nm", "FWHM_meV", "Abs_300", "Abs_peak_nm",
        "Abs_onset_nm", "SNR", "PL_380_I", "PL_380_ratio", "PL_600_I", "PL_600_ratio",
        "flag_saturated", "flag_no_emission", "flag_noisy", "flag_side_peak", "flag_invalid",
    ]
    assert (features.dtypes.iloc[:14] == np.float64).all() and (features.dtypes.iloc[14:] == bool).all()
    assert features["Abs_300"].isna().all()  # no absorbance given


def test_settings_come_from_the_platform_config():
    assert FeatureSettings.from_config(PLATFORM.features) == FeatureSettings()


# --- bad input ------------------------------------------------------------------------------


def good_pl(m=6):
    rng = np.random.default_rng(10)
    return pl_batch(rng, np.full(m, 449.0), np.full(m, 66.0), np.full(m, 5e4), 0.003)


def good_abs(m=6):
    return absorbance(np.full(m, 318.0))[1]


def test_nan_raises_naming_the_spectrum():
    pl = good_pl()
    pl[4, 100:112] = np.nan
    with pytest.raises(InvalidSpectrum, match=r"spectrum 4 \(12 bad pixels\).*Check the acquisition"):
        extract_features(WL, pl)


def test_saturation_raises_with_advice():
    raw_max = np.array([1e4, 2e4, 65535.0, 3e4, 1e3, 5e3])
    with pytest.raises(SaturatedSpectrum, match=r"spectrum 2 .*Lower the integration time"):
        extract_features(WL, good_pl(), pl_raw_max_counts=raw_max, max_counts=65535)


def test_flag_mode_keeps_the_batch():
    pl = good_pl()
    pl[1, 500] = np.inf
    raw_max = np.array([1e4, 2e4, 65535.0, 3e4, 1e3, 5e3])
    features = extract_features(WL, pl, pl_raw_max_counts=raw_max, max_counts=65535, on_invalid="flag")
    assert features["flag_invalid"].tolist() == [False, True, False, False, False, False]
    assert features["flag_saturated"].tolist() == [False, False, True, False, False, False]
    assert features.iloc[1, :14].isna().all()
    assert abs(features["PL_peak_nm"][2] - 449.0) < 0.5  # saturated rows are still measured


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: extract_features(WL[:-1], good_pl()), "shape"),
        (lambda: extract_features(WL, good_pl(6), good_abs(5)), r"6 PL spectra .* 5 absorbance"),
        (lambda: extract_features(WL[::-1], good_pl()), "strictly increasing"),
        (lambda: extract_features(WL, good_pl()[:, :, None]), "shape"),
        (lambda: extract_features(WL), "no spectra"),
    ],
)
def test_wrong_shapes_always_raise(call, words):
    with pytest.raises(InvalidSpectrum, match=words):
        call()
