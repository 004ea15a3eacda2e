"""What sdfl needs from each instrument, as small `typing.Protocol`s.

Real drivers and virtual devices both satisfy these, so tasks never know which one they
drive. Units are in the names: microlitres, minutes, degrees Celsius, milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Clock(Protocol):
    """Seconds on the platform's time line. Virtual labs advance it without waiting."""

    def now(self) -> float:
        """Seconds since the clock started."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait `seconds` on this clock."""
        ...


@dataclass(frozen=True)
class PumpStatus:
    """A snapshot of one syringe pump."""

    running: bool
    rate_ul_min: float
    dispensed_ul: float
    remaining_ul: float
    """Liquid left in the syringe."""
    pressure_kpa: float | None = None
    alarm: str | None = None
    """None when healthy; otherwise what the pump reports (stall, empty, clog)."""


@runtime_checkable
class SyringePump(Protocol):
    name: str
    syringe_volume_ul: float
    min_rate_ul_min: float
    max_rate_ul_min: float

    def infuse(self, rate_ul_min: float, volume_ul: float) -> None:
        """Program a finite infusion and start it."""
        ...

    def stop(self) -> None:
        ...

    def status(self) -> PumpStatus:
        ...


@runtime_checkable
class TemperatureController(Protocol):
    name: str
    max_setpoint_c: float

    def set_setpoint(self, celsius: float) -> None:
        ...

    def setpoint(self) -> float | None:
        """The active set point, or None in standby."""
        ...

    def read_temperature(self) -> float:
        """The process value in degrees Celsius."""
        ...

    def standby(self) -> None:
        """Stop heating (control off)."""
        ...


@runtime_checkable
class Spectrometer(Protocol):
    name: str
    serial_number: str
    min_integration_ms: float
    max_integration_ms: float
    max_counts: float
    """Full scale of the detector (65535 for a 16-bit converter)."""

    def wavelengths(self) -> np.ndarray:
        ...

    def set_integration_time_ms(self, ms: float) -> None:
        ...

    def integration_time_ms(self) -> float:
        ...

    def intensities(self, scans: int = 1) -> np.ndarray:
        """Raw counts averaged over `scans` consecutive scans (no dark correction)."""
        ...


@runtime_checkable
class Valve(Protocol):
    """An on/off valve, e.g. the argon purge line. Closed is its safe state."""

    name: str

    def open(self) -> None:
        ...

    def close(self) -> None:
        ...

    def is_open(self) -> bool:
        ...


class LightSource(Protocol):
    name: str

    def on(self) -> None:
        ...

    def off(self) -> None:
        ...

    def is_on(self) -> bool:
        ...
