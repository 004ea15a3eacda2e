"""Ocean Insight spectrometers (the HDX and kin) through python-seabreeze.

`OceanSpectrometer.open(serial)` finds a unit by serial number and satisfies the `Spectrometer`
protocol: raw counts averaged in software, nonlinearity-corrected where the unit stores
coefficients, never electric-dark corrected (the HDX has no dark pixels; take darks with the
light source off, see `OceanSpectrometer.dark`).

Facts from seabreeze 2.11 that shape this module:
- one backend per process, chosen by `seabreeze.use()` before the first device is opened; the HDX
  is supported only by the pure-Python `pyseabreeze` backend (needs pyusb and libusb-1.0);
- there is no integration-time getter, so the driver remembers what it set; the device's upper
  limit is exclusive (`min <= us < max`);
- the first spectrum after an integration-time change was exposed with the previous time;
- pyseabreeze checks every USB message (start bytes, protocol version, lengths): a corrupted
  transfer raises a `SeaBreezeError` naming the check, which this driver calls a garbled reply.

Reading a spectrum and setting the integration time are safe to repeat: each is tried again after a
USB timeout or a garbled transfer (hardware/retry.py).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import sys
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from hardware.errors import (
    GarbledReply,
    InstrumentDisconnected,
    InstrumentError,
    InstrumentTimeout,
    PlatformConfigError,
    SafetyLimitExceeded,
    SpectrometerNotFound,
)
from hardware.interfaces import LightSource
from hardware.retry import RetryCounter, retry

log = logging.getLogger(__name__)

BACKENDS = ("pyseabreeze", "cseabreeze")
DEFAULT_INTEGRATION_MS = 100.0
GARBLED_TRANSFER = ("start_bytes wrong", "protocol version wrong", "header has wrong length",
                    "packet length mismatch", "received message <")
"""Words of pyseabreeze's protocol checks (lower case): the USB message arrived but is corrupted."""
DEVICE_KEYS = ("backend", "discard_after_change", "nonlinearity")
"""Keys allowed in a platform file's `[spectrometers.<role>.device]` table."""

_backend_lock = threading.Lock()
_backend: str | None = None


def open_backend(backend: str = "pyseabreeze"):
    """Select seabreeze's backend for this process and return the `seabreeze.spectrometers` module.

    seabreeze can use one backend per process: asking for another one later is a config error.
    """
    global _backend
    if backend not in BACKENDS:
        raise PlatformConfigError(f"seabreeze backend {backend!r} is unknown; use one of {', '.join(BACKENDS)}")
    with _backend_lock:
        active = _backend or _loaded_backend()
        if active is not None and active != backend:
            raise PlatformConfigError(
                f"seabreeze backend {backend!r} was asked for, but this process already uses {active!r}; "
                "seabreeze drives all spectrometers of a process through one backend: give every spectrometer "
                "the same `device.backend` (an HDX needs 'pyseabreeze')"
            )
        if _backend is None:
            if active is None:
                import seabreeze

                seabreeze.use(backend)
            _backend = backend
    import seabreeze.spectrometers

    return seabreeze.spectrometers


def _loaded_backend() -> str | None:
    """The backend seabreeze has already instantiated in this process (by anyone), if any."""
    module = sys.modules.get("seabreeze.spectrometers")
    if module is None:
        return None
    loaded = module.__dict__.get("_lib")  # set by list_devices()
    if loaded is None:
        try:
            loaded = module.Spectrometer.__dict__["_backend"]._backend  # set by opening a Spectrometer
        except (AttributeError, KeyError):
            return None
    return None if loaded is None else loaded.__name__.rsplit(".", 1)[-1]


def _not_found(serial: str, backend: str, found: list[str]) -> str:
    listed = ", ".join(found) if found else "none found"
    return (
        f"no spectrometer with serial number {serial!r} on seabreeze backend {backend!r} (attached: {listed}). "
        "Check the USB cable and the unit's power; on Linux install the udev rules once with "
        "`seabreeze_os_setup` and replug; an HDX is seen only by the 'pyseabreeze' backend "
        "(set device.backend = \"pyseabreeze\"); the serial number is printed on the unit"
    )


class OceanSpectrometer:
    """One Ocean Insight spectrometer; satisfies `hardware.interfaces.Spectrometer`.

    `discard_after_change`: after an integration-time change the next read first takes and drops
    one spectrum (it was exposed with the old time), so every spectrum returned is clean. The drop
    happens lazily, at the first read after the change, so several changes cost one drop.
    """

    def __init__(self, device: Any, *, name: str | None = None, api: Any = None, backend: str = "pyseabreeze",
                 min_integration_ms: float | None = None, max_integration_ms: float | None = None,
                 discard_after_change: bool = True, nonlinearity: bool = True,
                 initial_integration_ms: float = DEFAULT_INTEGRATION_MS, retries: RetryCounter | None = None):
        self._dev = device
        self.retries = retries if retries is not None else RetryCounter()
        """USB commands sent again after a timeout or a garbled transfer (its light sources count here too)."""
        self.serial_number = str(device.serial_number)
        self.model = str(device.model)
        self.name = name or f"{self.model}-{self.serial_number}"
        self.backend = backend
        self.discard_after_change = discard_after_change
        self._errors = (getattr(api, "SeaBreezeError", None) or _seabreeze_error(), OSError, RuntimeError)
        self._lock = threading.RLock()
        self._closed = False
        with self.guarded("reading its configuration"):
            lo_us, hi_us = device.integration_time_micros_limits
            self._wavelengths = np.array(device.wavelengths(), dtype=float)
            self.pixels = int(device.pixels)
            self.raw_full_scale = float(device.max_intensity)
        device_min, device_max = lo_us / 1e3, (hi_us - 1) / 1e3  # seabreeze's upper bound is exclusive
        self.min_integration_ms = max(device_min, min_integration_ms or device_min)
        self.max_integration_ms = min(device_max, max_integration_ms or device_max)
        if self.min_integration_ms >= self.max_integration_ms:
            raise PlatformConfigError(
                f"{self.name}: configured integration range [{min_integration_ms}, {max_integration_ms}] ms does not "
                f"overlap the unit's [{device_min:g}, {device_max:g}] ms"
            )
        self._dark_pixels = self._electric_dark_pixels()
        self._nc = self._nonlinearity() if nonlinearity else None
        full = self.raw_full_scale
        self.max_counts = full if self._nc is None else float(full / np.polyval(self._nc, full))
        """Full scale as this driver reports it: a saturated pixel reads exactly this value."""
        self._integration_ms: float | None = None
        self._stale = False
        self.set_integration_time_ms(float(np.clip(initial_integration_ms, self.min_integration_ms,
                                                   self.max_integration_ms)))

    # --- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, serial_number: str, *, name: str | None = None, api: Any = None, backend: str = "pyseabreeze",
             **options) -> OceanSpectrometer:
        """Open the unit with this serial number.

        `api` is anything with `list_devices()` and `Spectrometer.from_serial_number(sn)`: the real
        `seabreeze.spectrometers` (selected with `open_backend(backend)`) by default, a fake in tests.
        `options` go to the constructor (integration limits, discard_after_change, nonlinearity).
        """
        serial = str(serial_number)
        label = name or serial
        api = open_backend(backend) if api is None else api
        errors = (getattr(api, "SeaBreezeError", None) or _seabreeze_error(), OSError, RuntimeError)
        try:
            found = [str(d.serial_number) for d in api.list_devices()]
        except ImportError as exc:
            raise SpectrometerNotFound(label, (
                f"seabreeze backend {backend!r} cannot load ({exc}); for 'pyseabreeze' install "
                "`seabreeze[pyseabreeze]` (pyusb) and the system package libusb-1.0-0")) from exc
        except errors as exc:
            raise SpectrometerNotFound(label, f"listing USB spectrometers failed ({exc}); "
                                       + _not_found(serial, backend, [])) from exc
        if serial not in found:
            raise SpectrometerNotFound(label, _not_found(serial, backend, found))
        try:
            device = api.Spectrometer.from_serial_number(serial)
        except errors as exc:
            raise SpectrometerNotFound(label, (
                f"spectrometer {serial!r} is attached but could not be opened ({exc}); another program "
                "(OceanView, a second sdfl worker) may hold it: close it, or unplug and replug the unit")) from exc
        return cls(device, name=name, api=api, backend=backend, **options)

    @classmethod
    def from_config(cls, config, api: Any = None, retries: RetryCounter | None = None) -> OceanSpectrometer:
        """Open the unit a platform file's `[spectrometers.<role>]` table describes.

        Its `device` table may set `backend`, `discard_after_change` and `nonlinearity`.
        """
        device = dict(config.device)
        unknown = sorted(set(device) - set(DEVICE_KEYS))
        if unknown:
            raise PlatformConfigError(
                f"spectrometer {config.name!r}: unknown device keys {unknown}; allowed: {', '.join(DEVICE_KEYS)}")
        spectrometer = cls.open(
            config.serial_number, name=config.name, api=api, backend=device.get("backend", "pyseabreeze"),
            min_integration_ms=config.min_integration * 1e3, max_integration_ms=config.max_integration * 1e3,
            discard_after_change=bool(device.get("discard_after_change", True)),
            nonlinearity=bool(device.get("nonlinearity", True)), retries=retries,
        )
        if spectrometer.pixels != config.pixels or spectrometer.raw_full_scale != config.max_counts:
            log.warning("%s: the unit has %d pixels and full scale %g; the platform file says %d and %g",
                        spectrometer.name, spectrometer.pixels, spectrometer.raw_full_scale,
                        config.pixels, config.max_counts)
        return spectrometer

    # --- the Spectrometer protocol -------------------------------------------------------------
    def wavelengths(self) -> np.ndarray:
        return self._wavelengths.copy()

    def integration_time_ms(self) -> float:
        return float(self._integration_ms)

    def set_integration_time_ms(self, ms: float) -> None:
        ms = float(ms)
        if not (np.isfinite(ms) and self.min_integration_ms <= ms <= self.max_integration_ms):
            raise SafetyLimitExceeded(self.name, (
                f"integration time {ms:g} ms is outside [{self.min_integration_ms:g}, "
                f"{self.max_integration_ms:g}] ms"))
        micros = int(round(ms * 1e3))
        if self._integration_ms is not None and micros == int(round(self._integration_ms * 1e3)):
            return
        self.retried(f"setting the integration time to {ms:g} ms",
                     lambda: self._dev.integration_time_micros(micros))
        self._integration_ms = micros / 1e3
        self._stale = True

    def intensities(self, scans: int = 1) -> np.ndarray:
        """Raw counts averaged over `scans` reads (no dark correction)."""
        scans = int(scans)
        if scans < 1:
            raise ValueError(f"scans must be at least 1, not {scans}")
        with self._lock:
            if self._stale and self.discard_after_change:
                self._read()  # exposed with the previous integration time
            self._stale = False
            total = np.zeros_like(self._wavelengths)
            for _ in range(scans):
                total += self._read()
        return total / scans

    # --- beyond the protocol -------------------------------------------------------------------
    def dark(self, source: LightSource, scans: int = 1) -> np.ndarray:
        """A dark spectrum: `source` off, one spectrum dropped (its exposure may have been lit),
        `scans` averaged, then the source back as it was."""
        was_on = source.is_on()
        if was_on:
            source.off()
        try:
            with self._lock:
                if was_on or (self._stale and self.discard_after_change):
                    self._read()
                    self._stale = False
                return self.intensities(scans)
        finally:
            if was_on:
                source.on()

    def identify(self) -> dict[str, Any]:
        """What `sdfl doctor` prints about this unit."""
        return {
            "name": self.name, "model": self.model, "serial_number": self.serial_number, "backend": self.backend,
            "pixels": self.pixels, "wavelength_min_nm": float(self._wavelengths.min()),
            "wavelength_max_nm": float(self._wavelengths.max()),
            "min_integration_ms": self.min_integration_ms, "max_integration_ms": self.max_integration_ms,
            "max_counts": self.max_counts, "nonlinearity_correction": self._nc is not None,
            "electric_dark_pixels": len(self._dark_pixels), "discard_after_change": self.discard_after_change,
        }

    def feature(self, identifier: str) -> Any | None:
        """A seabreeze feature of this unit (`strobe_lamp`, `gpio`, ...), or None if it has none."""
        with self.guarded(f"looking up its {identifier!r} feature"):
            return getattr(self._dev.f, identifier, None)

    def retried(self, doing: str, call, name: str | None = None):
        """`call()` under `guarded(doing)`, again after a USB timeout or a garbled transfer (for
        calls that are safe to repeat). `name` is who the retry is counted for (this unit by default)."""

        def once():
            with self.guarded(doing):
                return call()

        return retry(once, instrument=name or self.name, what=doing, counter=self.retries)

    @contextlib.contextmanager
    def guarded(self, doing: str) -> Iterator[None]:
        """Run device calls under this unit's lock, turning seabreeze/USB errors into sdfl errors."""
        with self._lock:
            if self._closed:
                raise InstrumentDisconnected(self.name, f"spectrometer {self.serial_number} was closed")
            try:
                yield
            except InstrumentError:
                raise
            except self._errors as exc:
                raise self._translate(exc, doing) from exc

    def close(self) -> None:
        """Release the USB device. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._dev.close()
            except self._errors as exc:
                log.warning("%s: closing %s: %s", self.name, self.serial_number, exc)

    def __enter__(self) -> OceanSpectrometer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<OceanSpectrometer {self.name} {self.model}:{self.serial_number}>"

    # --- internals -----------------------------------------------------------------------------
    def _read(self) -> np.ndarray:
        """One spectrum, linearized; read again after a USB timeout or a garbled transfer."""
        return self.retried("reading a spectrum", self._read_raw)

    def _read_raw(self) -> np.ndarray:
        raw = np.array(self._dev.intensities(correct_dark_counts=False, correct_nonlinearity=False), dtype=float)
        if raw.shape != self._wavelengths.shape:
            raise GarbledReply(self.name, f"spectrum of {raw.shape} values, expected {self._wavelengths.size}")
        return self._linearize(raw)

    def _translate(self, exc: BaseException, doing: str) -> InstrumentError:
        what = f"{doing} on {self.model} {self.serial_number}: {type(exc).__name__}: {exc}"
        if "Timeout" in type(exc).__name__ or getattr(exc, "errno", None) == errno.ETIMEDOUT:
            return InstrumentTimeout(self.name, f"no answer while {what}")
        if any(words in str(exc).lower() for words in GARBLED_TRANSFER):
            return GarbledReply(self.name, f"corrupted USB message while {what}")
        if "range" in str(exc) or "Integration not in" in str(exc):
            return SafetyLimitExceeded(self.name, f"the unit refused {what}")
        return InstrumentDisconnected(self.name, (
            f"USB spectrometer lost while {what}; check the cable and power, then reopen it"))

    def _electric_dark_pixels(self) -> list[int]:
        spectrometer = self.feature("spectrometer")
        if spectrometer is None:
            return []
        with self.guarded("reading its electric dark pixels"):
            return [int(i) for i in spectrometer.get_electric_dark_pixel_indices()]

    def _nonlinearity(self) -> np.ndarray | None:
        """Polynomial (highest power first) of the unit's stored nonlinearity correction, or None."""
        feature = self.feature("nonlinearity_coefficients")
        coefficients: list[float] = []
        if feature is not None:
            try:
                with self.guarded("reading its nonlinearity coefficients"):
                    coefficients = [float(c) for c in feature.get_nonlinearity_coefficients()]
            except InstrumentError as exc:
                log.info("%s: nonlinearity coefficients unreadable (%s)", self.name, exc)
        if len(coefficients) < 2 or (coefficients[0] == 1.0 and not any(coefficients[1:])):
            log.info("%s: no nonlinearity correction stored on %s; counts are not linearized",
                     self.name, self.serial_number)
            return None
        poly = np.array(coefficients[::-1])
        x = np.linspace(1.0, self.raw_full_scale, 2048)
        factor = np.polyval(poly, x)
        if np.any(factor <= 0) or np.any(np.diff(x / factor) <= 0):
            log.warning("%s: stored nonlinearity coefficients are not monotonic over the detector's range; "
                        "counts are not linearized", self.name)
            return None
        return poly

    def _linearize(self, raw: np.ndarray) -> np.ndarray:
        """seabreeze's correction (dark-pixel offset removed first), with saturated pixels pinned to
        the corrected full scale so `counts >= max_counts` still finds them."""
        if self._nc is None:
            return raw
        offset = float(raw[self._dark_pixels].mean()) if self._dark_pixels else 0.0
        shifted = raw - offset
        out = shifted / np.polyval(self._nc, shifted) + offset
        saturated = raw >= self.raw_full_scale
        out = np.minimum(out, np.nextafter(self.max_counts, 0.0))
        out[saturated] = self.max_counts
        return out


def _seabreeze_error() -> type[Exception]:
    from seabreeze.spectrometers import SeaBreezeError  # importing it loads no backend

    return SeaBreezeError
