"""The names of the optical features and where in the spectra they are looked for: what the
dataset's columns and an objective may name. Light on purpose (no numpy, no Prefect), so a
mistyped objective is refused at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hardware.platform import FeaturesConfig

Window = tuple[float, float]


@dataclass(frozen=True)
class FeatureSettings:
    """Where to look in the spectra (nm) and when to raise a flag."""

    pl_window: Window = (400.0, 540.0)
    abs_wavelength: float = 300.0
    abs_peak_window: Window = (260.0, 320.0)
    onset_window: Window = (290.0, 380.0)
    baseline_window: Window = (450.0, 550.0)
    quiet_window: Window = (850.0, 1000.0)
    side_peaks: tuple[tuple[str, float], ...] = (("PL_380", 380.0), ("PL_600", 600.0))
    side_peak_ratio_flag: float = 0.10
    min_snr: float = 10.0

    @classmethod
    def from_config(cls, cfg: FeaturesConfig) -> FeatureSettings:
        """Settings from the [features] section of a platform config."""
        return cls(
            pl_window=tuple(cfg.pl_window),
            abs_wavelength=cfg.abs_wavelength,
            abs_peak_window=tuple(cfg.abs_peak_window),
            onset_window=tuple(cfg.onset_window),
            baseline_window=tuple(cfg.baseline_window),
            quiet_window=tuple(cfg.quiet_window),
            side_peaks=tuple(cfg.side_peaks.items()),
            side_peak_ratio_flag=cfg.side_peak_ratio_flag,
            min_snr=cfg.min_snr,
        )


FLAGS = ["flag_saturated", "flag_no_emission", "flag_noisy", "flag_side_peak", "flag_invalid"]
PL_COLUMNS = ["PL_peak_nm", "PL_peak_eV", "PL_I", "PL_A", "FWHM_nm", "FWHM_meV"]
ABS_COLUMNS = ["Abs_300", "Abs_peak_nm", "Abs_onset_nm"]


def feature_columns(settings: FeatureSettings = FeatureSettings()) -> list[str]:
    """The output columns of `extract_features`, in order."""
    sides = [f"{name}_{what}" for name, _ in settings.side_peaks for what in ("I", "ratio")]
    return PL_COLUMNS + ABS_COLUMNS + ["SNR"] + sides + FLAGS
