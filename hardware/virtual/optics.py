"""Optics and detector of the virtual lab: bands to spectra, spectra to counts.

Spectra live on an HDX-like pixel grid (a quadratic wavelength calibration). A detector reading
is counts = offset + dark current x t + signal x t, with shot and read noise, clipped at full
scale per scan and averaged over scans, as a real CCD spectrometer reports it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hardware.platform import SpectrometerConfig
from hardware.virtual.chemistry import Band, OpticalOutcome

HC_EV_NM = 1239.84198
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
FLOW_CELL_PATH_CM = 0.1016  # 0.04" ID FEP tubing [P3:L90]


def wavelength_grid(config: SpectrometerConfig) -> np.ndarray:
    """Pixel centres in nm, from a slightly curved calibration as real spectrometers have."""
    x = np.linspace(0.0, 1.0, config.pixels)
    span = config.wavelength_max - config.wavelength_min
    return config.wavelength_min + span * (1.06 * x - 0.06 * x**2)


def render_bands(wavelengths: np.ndarray, bands: list[Band], resolution_nm: float = 0.0) -> np.ndarray:
    """Sum of bands, each Gaussian in photon energy; fields may be arrays of shape (m,).

    Returns shape (m, pixels) (m = 1 for scalar bands). The instrument resolution adds in
    quadrature to each band's width.
    """
    energy = HC_EV_NM / wavelengths[None, :]
    total = None
    for band in bands:
        center = np.atleast_1d(np.asarray(band.center_nm, dtype=float))[:, None]
        fwhm = np.atleast_1d(np.asarray(band.fwhm_nm, dtype=float))[:, None]
        height = np.atleast_1d(np.asarray(band.height, dtype=float))[:, None]
        fwhm = np.sqrt(fwhm**2 + resolution_nm**2)
        e0 = HC_EV_NM / center
        sigma_e = HC_EV_NM * fwhm / center**2 / FWHM_PER_SIGMA
        part = height * np.exp(-0.5 * ((energy - e0) / sigma_e) ** 2)
        total = part if total is None else total + part
    if total is None:
        return np.zeros((1, wavelengths.size))
    return total


def absorbance_per_cm(wavelengths: np.ndarray, outcome: OpticalOutcome, resolution_nm: float = 0.0) -> np.ndarray:
    """Absorbance per cm of a droplet's content, shape (m, pixels)."""
    spectrum = render_bands(wavelengths, outcome.absorption, resolution_nm)
    edge_nm = np.atleast_1d(np.asarray(outcome.edge_nm, dtype=float))[:, None]
    edge_h = np.atleast_1d(np.asarray(outcome.edge_height, dtype=float))[:, None]
    width = np.atleast_1d(np.asarray(outcome.edge_width_nm, dtype=float))[:, None]
    spectrum = spectrum + edge_h / (1.0 + np.exp((wavelengths[None, :] - edge_nm) / width))
    scatter = np.atleast_1d(np.asarray(outcome.scattering_at_400nm, dtype=float))[:, None]
    return spectrum + scatter * (400.0 / wavelengths[None, :]) ** 4


def lamp_spectrum(wavelengths: np.ndarray) -> np.ndarray:
    """Relative output of a balanced deuterium-halogen source (DH-2000-BAL), max ~1."""
    wl = wavelengths
    deuterium = np.exp(-0.5 * ((wl - 235.0) / 55.0) ** 2) + 0.25 * np.exp(-(wl - 240.0).clip(0) / 120.0)
    deuterium *= 1.0 / (1.0 + np.exp(-(wl - 205.0) / 4.0))  # window cut-off
    lines = 0.08 * np.exp(-0.5 * ((wl - 486.0) / 0.6) ** 2) + 0.15 * np.exp(-0.5 * ((wl - 656.1) / 0.6) ** 2)
    # Halogen: Planck at 2900 K, normalised at its peak, seen above ~350 nm.
    x = 1.4388e7 / (wl * 2900.0)
    planck = (1.0 / wl**5) / np.expm1(x)
    planck /= planck.max()
    halogen = 0.7 * planck / (1.0 + np.exp(-(wl - 360.0) / 15.0))
    total = deuterium + lines + halogen
    return total / total.max()


def led_spectrum(wavelengths: np.ndarray, center_nm: float = 300.0, fwhm_nm: float = 12.0) -> np.ndarray:
    return np.exp(-0.5 * ((wavelengths - center_nm) / (fwhm_nm / FWHM_PER_SIGMA)) ** 2)


@dataclass
class Detector:
    """A CCD readout: fixed-pattern dark, dark current, shot and read noise, 16-bit clipping."""

    max_counts: float
    dark_offset: np.ndarray
    """Per-pixel offset in counts (fixed pattern of this unit)."""
    dark_current_cps: float = 80.0
    read_noise_counts: float = 6.0
    electrons_per_count: float = 1.0

    @classmethod
    def for_pixels(cls, pixels: int, max_counts: float, rng: np.random.Generator) -> Detector:
        pattern = 1500.0 + 25.0 * rng.standard_normal(pixels)
        return cls(max_counts=max_counts, dark_offset=pattern)

    def read(self, signal_cps: np.ndarray, seconds: float, scans: int, rng: np.random.Generator) -> np.ndarray:
        """Counts averaged over `scans`, each scan clipped at full scale."""
        mean_signal = np.maximum(signal_cps, 0.0) * seconds + self.dark_current_cps * seconds
        shot_sd = np.sqrt(mean_signal / self.electrons_per_count)
        noise = rng.standard_normal((scans, signal_cps.size))
        scans_counts = self.dark_offset + mean_signal + noise * np.sqrt(shot_sd**2 + self.read_noise_counts**2)
        scans_counts = np.clip(np.round(scans_counts), 0.0, self.max_counts)
        return scans_counts.mean(axis=0)
