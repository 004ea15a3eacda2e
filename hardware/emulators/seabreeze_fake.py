"""A stand-in for python-seabreeze's API (`seabreeze.spectrometers`), backed by the virtual lab.

This is the ONLY mock in sdfl. A USB spectrometer cannot exist on a test machine and seabreeze
ships no simulator, so tests cross the seabreeze boundary here instead of on a wire. Everything
behind the boundary is the virtual lab's physics (`VirtualSpectrometer` for the light, the noise,
the stale first spectrum after an integration change, its fault switches); names, signatures and
error types follow seabreeze 2.11: `SeaBreezeError` from `seabreeze.spectrometers` for bad calls,
a USB error (`usb.core.USBError` when pyusb is installed, an `OSError` with the same errno
otherwise) when a unit is gone.

The fake plays an HDX: spectrometer and nonlinearity features, no electric dark pixels. A real HDX
under pyseabreeze has no `strobe_lamp` or `gpio` feature; pass `lamp_wiring` / `gpio_wiring` to
give a unit those features (as models served by cseabreeze have), wired to the lab's light sources.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Any

import numpy as np
from seabreeze.spectrometers import SeaBreezeError  # importing it selects no backend

from hardware.errors import GarbledReply, InstrumentDisconnected, InstrumentTimeout, SafetyLimitExceeded

try:
    from usb.core import USBError as _USBError
except ImportError:  # pyusb is an extra of seabreeze (seabreeze[pyseabreeze])

    class _USBError(OSError):
        """Shaped like pyusb's `usb.core.USBError` (an IOError with errno and backend_error_code)."""

        def __init__(self, strerror: str, error_code: int | None = None, errno: int | None = None):
            super().__init__(errno, strerror)
            self.backend_error_code = error_code


USBError = _USBError
GPIO_PINS = 10
HDX_NONLINEARITY = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
"""Identity coefficients: the virtual detector is linear."""


def _usb_gone() -> Exception:
    return USBError("No such device (it may have been disconnected)", -4, errno.ENODEV)


def _usb_timeout() -> Exception:
    return USBError("Operation timed out", -7, errno.ETIMEDOUT)


@dataclass
class FakeDevice:
    """What `list_devices()` returns: a `SeaBreezeDevice` look-alike."""

    serial_number: str
    model: str
    is_open: bool = False

    def __repr__(self) -> str:
        return f"<SeaBreezeDevice {self.model}:{self.serial_number}>"


class FakeSeabreezeAPI:
    """`list_devices()` and `Spectrometer.from_serial_number()` over a `VirtualLab`.

    `lamp_wiring` maps a serial number to the light-source role its lamp-enable line switches;
    `gpio_wiring` maps a serial number to {pin: role}. `nonlinearity` maps a serial number to the
    coefficients its EEPROM holds (c0 first); identity by default.
    """

    SeaBreezeError = SeaBreezeError

    def __init__(self, lab, *, model: str = "HDX", lamp_wiring: dict[str, str] | None = None,
                 gpio_wiring: dict[str, dict[int, str]] | None = None,
                 nonlinearity: dict[str, list[float] | None] | None = None):
        self.lab = lab
        self.model = model
        self.lamp_wiring = dict(lamp_wiring or {})
        self.gpio_wiring = {sn: dict(pins) for sn, pins in (gpio_wiring or {}).items()}
        self.nonlinearity = dict(nonlinearity or {})
        self.devices = {vs.serial_number: FakeDevice(vs.serial_number, model) for vs in lab.spectrometers.values()}
        self.virtual = {vs.serial_number: vs for vs in lab.spectrometers.values()}
        self.hidden: set[str] = set()
        self.unplugged: set[str] = set()
        self._reads_left: dict[str, int] = {}
        self.generation: dict[str, int] = {}
        """Bumped at each unplug: handles opened before it stay dead."""
        self.Spectrometer = _SpectrometerClass(self)

    # --- the seabreeze.spectrometers module surface ---------------------------------------------
    def list_devices(self) -> list[FakeDevice]:
        return [d for sn, d in self.devices.items() if sn not in self.hidden and sn not in self.unplugged]

    # --- fault switches -------------------------------------------------------------------------
    def unplug(self, serial: str, after_reads: int = 0) -> None:
        """The unit vanishes from the bus after `after_reads` more spectra: the next call raises a USB error."""
        if after_reads:
            self._reads_left[serial] = after_reads
        else:
            self._pull(serial)

    def _pull(self, serial: str) -> None:
        self.unplugged.add(serial)
        self.generation[serial] = self.generation.get(serial, 0) + 1

    def replug(self, serial: str) -> None:
        """Listed again; handles opened before the unplug stay dead (reopen it), as on a real bus."""
        self.unplugged.discard(serial)
        self._reads_left.pop(serial, None)
        self.devices[serial].is_open = False

    def hide(self, serial: str) -> None:
        """Not listed (wrong backend, missing udev rules, cable out before start)."""
        self.hidden.add(serial)

    def count_read(self, serial: str) -> None:
        left = self._reads_left.get(serial)
        if left is not None:
            if left <= 0:
                del self._reads_left[serial]
                self._pull(serial)
            else:
                self._reads_left[serial] = left - 1


class _SpectrometerClass:
    """Plays the `Spectrometer` class: its constructors, bound to one fake API."""

    def __init__(self, api: FakeSeabreezeAPI):
        self._api = api

    def from_serial_number(self, serial: str | None = None) -> FakeSpectrometer:
        if serial is None:
            return self.from_first_available()
        for device in self._api.list_devices():
            if device.serial_number == str(serial):
                if device.is_open:
                    raise SeaBreezeError("Device already opened.")
                return FakeSpectrometer(self._api, device)
        raise SeaBreezeError(f"No device attached with serial number '{serial}'.")

    def from_first_available(self) -> FakeSpectrometer:
        for device in self._api.list_devices():
            if not device.is_open:
                return FakeSpectrometer(self._api, device)
        raise SeaBreezeError("No unopened device found.")


class _Features:
    """`spectrometer.f`: one attribute per feature identifier, None when the unit lacks it."""

    IDENTIFIERS = ("acquisition_delay", "continuous_strobe", "eeprom", "gpio", "light_source",
                   "nonlinearity_coefficients", "shutter", "spectrometer", "spectrum_processing",
                   "strobe_lamp", "temperature", "thermo_electric")

    def __init__(self, present: dict[str, Any]):
        for identifier in self.IDENTIFIERS:
            setattr(self, identifier, present.get(identifier))


class FakeSpectrometer:
    """A `seabreeze.spectrometers.Spectrometer` look-alike over one `VirtualSpectrometer`."""

    def __init__(self, api: FakeSeabreezeAPI, device: FakeDevice):
        self._api = api
        self._device = device
        self._virtual = api.virtual[device.serial_number]
        config = self._virtual.config
        # Like seabreeze's HDX: (6000, 10_000_000) us, the upper bound exclusive.
        self._limits = (int(round(config.min_integration * 1e6)), int(round(config.max_integration * 1e6)))
        self._closed = False
        self._generation = api.generation.get(device.serial_number, 0)
        self._integration_us = int(round(self._virtual.integration_time_ms() * 1e3))
        present: dict[str, Any] = {"spectrometer": _SpectrometerFeature(self)}
        coefficients = api.nonlinearity.get(device.serial_number, HDX_NONLINEARITY)
        if coefficients is not None:
            present["nonlinearity_coefficients"] = _NonlinearityFeature(self, coefficients)
        if device.serial_number in api.lamp_wiring:
            present["strobe_lamp"] = _StrobeLampFeature(self, api.lamp_wiring[device.serial_number])
        if device.serial_number in api.gpio_wiring:
            present["gpio"] = _GPIOFeature(self, api.gpio_wiring[device.serial_number])
        self._features = present
        self.open()

    # --- attributes -----------------------------------------------------------------------------
    @property
    def serial_number(self) -> str:
        return self._device.serial_number

    @property
    def model(self) -> str:
        return self._device.model

    @property
    def pixels(self) -> int:
        return int(self._virtual.wavelengths().size)

    @property
    def max_intensity(self) -> float:
        return float(self._virtual.max_counts)

    @property
    def integration_time_micros_limits(self) -> tuple[int, int]:
        return self._limits

    @property
    def features(self) -> dict[str, list[Any]]:
        return {k: ([self._features[k]] if k in self._features else []) for k in _Features.IDENTIFIERS}

    @property
    def f(self) -> _Features:
        return _Features(self._features)

    # --- methods --------------------------------------------------------------------------------
    def wavelengths(self) -> np.ndarray:
        return self._virtual.wavelengths()

    def integration_time_micros(self, integration_time_micros: int) -> None:
        self._check()
        lo, hi = self._limits
        if not lo <= integration_time_micros < hi:
            raise SeaBreezeError(f"Integration not in [{lo:d}, {hi:d}]")
        self._call(self._virtual.set_integration_time_ms, integration_time_micros / 1e3)
        self._integration_us = int(integration_time_micros)

    def intensities(self, correct_dark_counts: bool = False, correct_nonlinearity: bool = False) -> np.ndarray:
        if correct_dark_counts:
            raise SeaBreezeError("This device does not support dark count correction.")
        nc = self._features.get("nonlinearity_coefficients")
        if correct_nonlinearity and nc is None:
            raise SeaBreezeError("This device does not support nonlinearity correction.")
        self._check()
        self._api.count_read(self.serial_number)
        self._check()
        out = np.array(self._call(self._virtual.intensities, 1), dtype=np.float64)
        if correct_nonlinearity:
            out = out / np.polyval(nc.coefficients[::-1], out)
        return out

    def spectrum(self, correct_dark_counts: bool = False, correct_nonlinearity: bool = False) -> np.ndarray:
        return np.vstack((self.wavelengths(), self.intensities(correct_dark_counts, correct_nonlinearity)))

    def trigger_mode(self, mode: int) -> None:
        self._check()
        if mode not in (0, 1, 2, 3):
            raise SeaBreezeError(f"Trigger mode {mode} is not supported by this device.")

    def open(self) -> None:
        if self.serial_number in self._api.unplugged:
            raise _usb_gone()
        self._device.is_open = True

    def close(self) -> None:
        self._device.is_open = False
        self._closed = True

    def __repr__(self) -> str:
        return f"<Spectrometer {self.model}:{self.serial_number}>"

    # --- internals ------------------------------------------------------------------------------
    def _check(self) -> None:
        if self.serial_number in self._api.unplugged or self._generation != self._api.generation.get(
                self.serial_number, 0):
            raise _usb_gone()
        if self._closed:
            raise RuntimeError("device not opened")  # what pyseabreeze's transport raises

    def _call(self, method, *args):
        """Call the virtual device; its sdfl errors come back out as what seabreeze would raise."""
        try:
            return method(*args)
        except InstrumentDisconnected:
            self._api._pull(self.serial_number)
            raise _usb_gone() from None
        except InstrumentTimeout:
            raise _usb_timeout() from None
        except GarbledReply:
            raise SeaBreezeError('Header start_bytes wrong: "143"') from None
        except SafetyLimitExceeded as exc:
            raise SeaBreezeError(str(exc)) from None


class _SpectrometerFeature:
    identifier = "spectrometer"

    def __init__(self, owner: FakeSpectrometer):
        self._owner = owner

    def get_electric_dark_pixel_indices(self) -> list[int]:
        return []  # the HDX has none

    def get_integration_time_micros_limits(self) -> tuple[int, int]:
        return self._owner.integration_time_micros_limits

    def get_maximum_intensity(self) -> float:
        return self._owner.max_intensity

    def get_wavelengths(self) -> np.ndarray:
        return self._owner.wavelengths()

    def get_intensities(self) -> np.ndarray:
        return self._owner.intensities()


class _NonlinearityFeature:
    identifier = "nonlinearity_coefficients"

    def __init__(self, owner: FakeSpectrometer, coefficients: list[float]):
        self._owner = owner
        self.coefficients = list(coefficients)

    def get_nonlinearity_coefficients(self) -> list[float]:
        self._owner._check()
        return list(self.coefficients)


class _StrobeLampFeature:
    """The lamp-enable line, wired to one of the lab's light sources."""

    identifier = "strobe_lamp"

    def __init__(self, owner: FakeSpectrometer, role: str):
        self._owner = owner
        self.role = role

    def enable_lamp(self, state: bool) -> None:
        self._owner._check()
        source = self._owner._api.lab.light_sources[self.role]
        self._owner._call(source.on if state else source.off)


class _GPIOFeature:
    """Digital pins; output pins wired in `pins` switch the lab's light sources (high = on)."""

    identifier = "gpio"

    def __init__(self, owner: FakeSpectrometer, pins: dict[int, str]):
        self._owner = owner
        self._pins = pins
        self._enable = 0
        self._value = 0

    def get_number_of_gpio_pins(self) -> int:
        self._owner._check()
        return GPIO_PINS

    def get_gpio_output_enable_vector(self) -> int:
        self._owner._check()
        return self._enable

    def set_gpio_output_enable_vector(self, output_enable_vector: int, bit_mask: int) -> None:
        self._owner._check()
        self._enable = (self._enable & ~bit_mask) | (output_enable_vector & bit_mask)

    def get_gpio_value_vector(self) -> int:
        self._owner._check()
        return self._value & self._enable  # inputs read low: nothing drives them

    def set_gpio_value_vector(self, value_vector: int, bit_mask: int) -> None:
        self._owner._check()
        self._value = (self._value & ~bit_mask) | (value_vector & bit_mask)
        for pin, role in self._pins.items():
            if self._enable >> pin & 1:
                source = self._owner._api.lab.light_sources[role]
                self._owner._call(source.on if self._value >> pin & 1 else source.off)
