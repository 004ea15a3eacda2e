"""Acquisition: dark, PL and absorbance spectra at steady state, with replicates.

The integration time of each spectrometer is chosen so the brightest pixel sits near
`target_fill` of full scale; the first spectrum after a change is discarded (it was exposed
with the previous time). Absorbance is taken against a solvent reference recorded with the
flow cell full of solvent droplets (`take_reference`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from hardware.errors import SaturatedSpectrum
from hardware.interfaces import Spectrometer
from hardware.rig import Rig
from tasks.equilibration import start_pumps, wait_on_clock
from tasks.formulation import solvent_flush
from tasks.retry import INSTRUMENT_RETRIES, INSTRUMENT_RETRY_DELAYS_S, is_transient

MAX_AUTORANGE_STEPS = 8
REFERENCE_MAX_AGE_S = 8 * 3600.0
NO_LIGHT_FRACTION = 0.005
"""Reference pixels below this share of the reference maximum carry no absorbance information."""


@dataclass
class Spectrum:
    kind: str
    """pl, pl_dark, abs_sample, abs_dark, abs_reference, abs_reference_dark."""
    role: str
    replicate: int
    t_platform_s: float
    integration_ms: float
    scans: int
    serial_number: str
    wavelength_nm: np.ndarray
    counts: np.ndarray

    def row(self, quantity: str = "counts", value: np.ndarray | None = None) -> dict:
        return {
            "kind": self.kind, "replicate": self.replicate, "quantity": quantity,
            "spectrometer": self.serial_number, "t_platform_s": self.t_platform_s,
            "integration_ms": self.integration_ms, "scans": self.scans,
            "wavelength_nm": self.wavelength_nm, "value": self.counts if value is None else value,
        }


@dataclass
class Reference:
    """Lamp light through the flow cell full of solvent, and its dark."""

    light: Spectrum
    dark: Spectrum


@dataclass
class Acquisition:
    pl_dark: Spectrum
    pl: list[Spectrum]
    abs_dark: Spectrum
    abs_samples: list[Spectrum]
    reference: Reference
    spectra: list[Spectrum] = field(default_factory=list)

    def pl_cps(self) -> np.ndarray:
        """Dark-subtracted PL in counts per second, one row per replicate."""
        seconds = self.pl_dark.integration_ms / 1e3
        return np.stack([(s.counts - self.pl_dark.counts) / seconds for s in self.pl])

    def absorbance(self) -> np.ndarray:
        """Absorbance against the reference, one row per replicate; NaN where the lamp is dark."""
        return np.stack([absorbance(s, self.abs_dark, self.reference) for s in self.abs_samples])

    def pl_raw_max(self) -> np.ndarray:
        return np.array([s.counts.max() for s in self.pl])

    def rows(self) -> list[dict]:
        """Raw spectra and the derived PL (cps) and absorbance, as storage rows."""
        rows = [s.row() for s in self.spectra]
        for i, (s, cps) in enumerate(zip(self.pl, self.pl_cps())):
            rows.append({**s.row("cps", cps), "kind": "pl_cps", "replicate": i})
        for i, (s, a) in enumerate(zip(self.abs_samples, self.absorbance())):
            rows.append({**s.row("absorbance", a), "kind": "absorbance", "replicate": i})
        return rows


def absorbance(sample: Spectrum, dark: Spectrum, reference: Reference) -> np.ndarray:
    """-log10 of the transmitted over the reference light, both in counts per second."""
    sample_cps = (sample.counts - dark.counts) / (sample.integration_ms / 1e3)
    ref_cps = (reference.light.counts - reference.dark.counts) / (reference.light.integration_ms / 1e3)
    lit = ref_cps > NO_LIGHT_FRACTION * ref_cps.max()
    ratio = np.where(lit, sample_cps / np.where(lit, ref_cps, 1.0), np.nan)
    return -np.log10(np.clip(ratio, 1e-4, None))


def check_saturation(acquired: Acquisition, max_counts: dict[str, float]) -> None:
    """Raise SaturatedSpectrum if any sample or dark reached full scale (its values are clipped)."""
    clipped = [
        f"{s.kind}#{s.replicate} ({s.role}, {s.integration_ms:.0f} ms)"
        for s in [*acquired.pl, acquired.pl_dark, *acquired.abs_samples, acquired.abs_dark]
        if s.counts.max() >= max_counts[s.role]
    ]
    if clipped:
        raise SaturatedSpectrum(
            f"{len(clipped)} spectrum(s) reached full scale: {', '.join(clipped)}; their peaks are clipped. "
            "Lower the integration time, or shield the flow cell from room light and repeat"
        )


def choose_integration_ms(spectrometer: Spectrometer, target_fill: float, max_ms: float | None = None) -> float:
    """Set the integration time so the brightest pixel sits near `target_fill` of full scale.

    `max_ms` caps it below the spectrometer's own limit (to keep a sampling cadence).
    """
    full = spectrometer.max_counts
    longest = min(spectrometer.max_integration_ms, max_ms or np.inf)
    t = float(np.clip(spectrometer.integration_time_ms(), spectrometer.min_integration_ms, longest))
    for _ in range(MAX_AUTORANGE_STEPS):
        set_integration(spectrometer, t)
        counts = spectrometer.intensities(1)
        peak = float(counts.max())
        floor = float(np.percentile(counts, 1))
        if peak >= full:
            if t <= spectrometer.min_integration_ms:
                raise SaturatedSpectrum(
                    f"{spectrometer.name}: saturated even at the shortest integration time "
                    f"({spectrometer.min_integration_ms:g} ms); attenuate the light (neutral density filter)"
                )
            t = max(t / 4.0, spectrometer.min_integration_ms)
            continue
        signal = max(peak - floor, 1.0)
        wanted = t * (target_fill * full - floor) / signal
        wanted = float(np.clip(wanted, spectrometer.min_integration_ms, longest))
        if abs(wanted - t) <= 0.1 * t:
            return t
        t = wanted
    set_integration(spectrometer, t)
    return t


def set_integration(spectrometer: Spectrometer, ms: float) -> None:
    """Change the integration time and discard the first (stale) spectrum after a change."""
    if spectrometer.integration_time_ms() != ms:
        spectrometer.set_integration_time_ms(ms)
        spectrometer.intensities(1)


def read(rig: Rig, role: str, kind: str, replicate: int, scans: int) -> Spectrum:
    """One averaged reading, stamped at the middle of its exposure on the platform clock."""
    spectrometer = rig.spectrometers[role]
    start = rig.clock.now()
    counts = spectrometer.intensities(scans)
    t = 0.5 * (start + rig.clock.now())
    return Spectrum(kind, role, replicate, t, spectrometer.integration_time_ms(), scans,
                    spectrometer.serial_number, spectrometer.wavelengths(), np.asarray(counts, dtype=float))


def take_reference(rig: Rig, scans: int | None = None) -> Reference:
    """Lamp through the cell as it is now (it must hold solvent), then the lamp-off dark."""
    scans = scans or rig.platform.acquisition.scans
    lamp = rig.light_sources["abs"]
    lamp.on()
    try:
        choose_integration_ms(rig.spectrometers["abs"], rig.platform.acquisition.target_fill)
        light = read(rig, "abs", "abs_reference", -1, scans)
    finally:
        lamp.off()
    dark = read(rig, "abs", "abs_reference_dark", -1, scans)
    return Reference(light=light, dark=dark)


def ensure_reference(rig: Rig, max_age_s: float = REFERENCE_MAX_AGE_S) -> Reference:
    """The rig's solvent reference; flushes the cell with solvent and records one when there is
    none or it is older than `max_age_s` on the platform clock."""
    reference = getattr(rig, "reference", None)
    if reference is not None and rig.clock.now() - reference.light.t_platform_s <= max_age_s:
        return reference
    flush = solvent_flush(rig.platform)
    start_pumps(rig, flush)
    try:
        wait_on_clock(rig, flush, flush.t_E_s, rig.platform.equilibration.poll_interval)
        reference = take_reference(rig)
    finally:
        rig.stop_pumps()
    rig.reference = reference
    return reference


def pl_reading(rig: Rig) -> float:
    """One quick PL reading (sum over the PL window, above the spectrum floor), for steady checks."""
    spectrometer = rig.spectrometers["pl"]
    led = rig.light_sources["pl"]
    lo, hi = rig.platform.features.pl_window
    wl = spectrometer.wavelengths()
    window = (wl >= lo) & (wl <= hi)
    led.on()
    try:
        counts = spectrometer.intensities(1)
    finally:
        led.off()
    return float(np.sum(counts[window] - np.percentile(counts, 1)))


def acquire(rig: Rig, reference: Reference, replicates: int | None = None, scans: int | None = None) -> Acquisition:
    """Dark + PL and absorbance replicates, each replicate `replicate_interval` apart."""
    cfg = rig.platform.acquisition
    replicates = replicates or cfg.replicates
    scans = scans or cfg.scans
    led, lamp = rig.light_sources["pl"], rig.light_sources["abs"]
    spectra: list[Spectrum] = [reference.light, reference.dark]
    try:
        led.on()
        choose_integration_ms(rig.spectrometers["pl"], cfg.target_fill)
        lamp.on()
        choose_integration_ms(rig.spectrometers["abs"], cfg.target_fill)
        pl, samples = [], []
        for replicate in range(replicates):
            if replicate:
                rig.clock.sleep(cfg.replicate_interval)
            pl.append(read(rig, "pl", "pl", replicate, scans))
            samples.append(read(rig, "abs", "abs_sample", replicate, scans))
    finally:
        led.off()
        lamp.off()
    pl_dark = read(rig, "pl", "pl_dark", -1, scans)
    abs_dark = read(rig, "abs", "abs_dark", -1, scans)
    spectra += [*pl, *samples, pl_dark, abs_dark]
    return Acquisition(pl_dark=pl_dark, pl=pl, abs_dark=abs_dark, abs_samples=samples,
                       reference=reference, spectra=spectra)


@dataclass
class Trace:
    """Spectra taken at a steady cadence while a transient plays out (mid-exposure times)."""

    t_pl_s: np.ndarray
    t_abs_s: np.ndarray
    pl_wavelength_nm: np.ndarray
    pl_cps: np.ndarray
    abs_wavelength_nm: np.ndarray
    absorbance: np.ndarray


def monitor(rig: Rig, reference: Reference, duration_s: float, interval_s: float, scans: int = 1,
            check=None) -> Trace:
    """PL and absorbance every `interval_s` for `duration_s`, with the lights on throughout.

    Integration times follow the signal (re-ranged when the peak leaves 30-90 % of full scale)
    but stay below a third of the interval, so the cadence holds; a dark is recorded afterwards
    for each integration time used. `check()` runs between samples (for example a pump check).
    """
    cfg = rig.platform.acquisition
    led, lamp = rig.light_sources["pl"], rig.light_sources["abs"]
    longest = max(interval_s * 1e3 / 3.0 / scans, min(s.min_integration_ms for s in rig.spectrometers.values()))
    samples: dict[str, list[tuple[float, np.ndarray, float]]] = {"pl": [], "abs": []}
    end = rig.clock.now() + duration_s
    try:
        led.on()
        lamp.on()
        for role in ("pl", "abs"):
            choose_integration_ms(rig.spectrometers[role], cfg.target_fill, longest)
        while rig.clock.now() < end:
            t = rig.clock.now()
            for role in ("pl", "abs"):
                spectrometer = rig.spectrometers[role]
                start = rig.clock.now()
                counts = spectrometer.intensities(scans)
                ms = spectrometer.integration_time_ms()
                samples[role].append((0.5 * (start + rig.clock.now()), counts, ms))
                _track_range(spectrometer, counts, cfg.target_fill, longest)
            if check is not None:
                check()
            rig.clock.sleep(max(interval_s - (rig.clock.now() - t), 0.0))
    finally:
        led.off()
        lamp.off()
    darks: dict[tuple[str, float], np.ndarray] = {}
    for role, rows in samples.items():
        for ms in sorted({ms for _, _, ms in rows}):
            set_integration(rig.spectrometers[role], ms)
            darks[(role, ms)] = rig.spectrometers[role].intensities(max(scans, cfg.scans))
    ref_cps = (reference.light.counts - reference.dark.counts) / (reference.light.integration_ms / 1e3)
    lit = ref_cps > NO_LIGHT_FRACTION * ref_cps.max()
    pl_cps = [(c - darks[("pl", ms)]) / (ms / 1e3) for _, c, ms in samples["pl"]]
    absorb = []
    for _, c, ms in samples["abs"]:
        ratio = np.where(lit, (c - darks[("abs", ms)]) / (ms / 1e3) / np.where(lit, ref_cps, 1.0), 1.0)
        absorb.append(-np.log10(np.clip(ratio, 1e-4, None)))
    return Trace(
        t_pl_s=np.array([r[0] for r in samples["pl"]]),
        t_abs_s=np.array([r[0] for r in samples["abs"]]),
        pl_wavelength_nm=rig.spectrometers["pl"].wavelengths(),
        pl_cps=np.array(pl_cps),
        abs_wavelength_nm=rig.spectrometers["abs"].wavelengths(),
        absorbance=np.array(absorb),
    )


def _track_range(spectrometer: Spectrometer, counts: np.ndarray, target_fill: float, longest_ms: float) -> None:
    full = spectrometer.max_counts
    peak, floor = float(counts.max()), float(np.percentile(counts, 1))
    fill = (peak - floor) / (full - floor)
    if 0.3 <= fill <= 0.9:
        return
    t = spectrometer.integration_time_ms()
    wanted = t / 4.0 if peak >= full else t * target_fill / max(fill, 1e-3)
    wanted = float(np.clip(wanted, spectrometer.min_integration_ms, longest_ms))
    if abs(wanted - t) > 0.1 * t:
        set_integration(spectrometer, wanted)


# --- Prefect tasks --------------------------------------------------------------------------


_instrument = dict(
    cache_policy=NO_CACHE, retries=INSTRUMENT_RETRIES,
    retry_delay_seconds=INSTRUMENT_RETRY_DELAYS_S, retry_condition_fn=is_transient,
)
reference_task = task(name="solvent-reference", **_instrument)(ensure_reference)
acquire_task = task(name="acquire", **_instrument)(acquire)
