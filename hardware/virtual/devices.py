"""Simulated instruments. They satisfy the protocols in hardware/interfaces.py and keep their
state on the lab's simulated clock: a pump knows what it has dispensed, a heater where its
temperature is heading, a spectrometer what light falls on it.

Every command runs inside `lab.faults.command(name)`: a lost command is not executed, a garbled
reply comes after the command took effect (see hardware/virtual/faults.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from hardware.errors import InstrumentDisconnected, SafetyLimitExceeded, SyringeEmpty
from hardware.interfaces import PumpStatus
from hardware.platform import HeaterConfig, LightSourceConfig, PumpConfig, SpectrometerConfig
from hardware.virtual.optics import wavelength_grid

if TYPE_CHECKING:
    from hardware.virtual.lab import VirtualLab


class VirtualPump:
    """A syringe pump on the virtual rig: finite infusions, rate limits, volume bookkeeping."""

    def __init__(self, config: PumpConfig, lab: VirtualLab):
        self.name = config.name
        self.config = config
        self.syringe_volume_ul = config.syringe_volume
        self.min_rate_ul_min = config.min_rate
        self.max_rate_ul_min = config.max_rate
        self._lab = lab
        self._fill_ul = config.syringe_volume
        self._dispensed_before_fill = 0.0
        self._set_rate = 0.0
        self._stop_at: float | None = None
        self.alarm: str | None = None

    # -- bookkeeping used by the lab -------------------------------------------------------
    def dispensed_ul(self, t: float | None = None) -> float:
        t = self._lab.clock.now() if t is None else t
        return float(self._lab.path.tracks[self.name].volume(t)) - self._dispensed_before_fill

    def remaining_ul(self, t: float | None = None) -> float:
        """Liquid left as the pump counts it (fill minus dispensed)."""
        return max(self._fill_ul - self.dispensed_ul(t), 0.0)

    def liquid_left_ul(self, t: float | None = None) -> float:
        """Liquid really left (less than `remaining_ul` when the syringe was loaded short)."""
        return max(self._liquid_loaded_ul() - self.dispensed_ul(t), 0.0)

    def _liquid_loaded_ul(self) -> float:
        """What the syringe really held at its last fill: the fill, or less while the fault plan
        says this pump was loaded short (`empty_pump`, `empty_fill_ul`; read at every call, so a
        fault switched on at run time takes effect)."""
        plan = self._lab.faults.plan
        if plan.empty_pump == self.name and plan.empty_fill_ul is not None:
            return min(plan.empty_fill_ul, self._fill_ul)
        return self._fill_ul

    def scheduled_stop(self) -> float | None:
        return self._stop_at

    def halt(self, t: float, alarm: str | None = None) -> None:
        """Stop at time `t` (used for automatic stops and faults)."""
        self._lab.path.set_rate(self.name, t, 0.0)
        self._set_rate = 0.0
        self._stop_at = None
        if alarm:
            self.alarm = alarm

    def refill(self, volume_ul: float | None = None) -> None:
        """An operator reloads the syringe (full by default). The syringe then really holds what
        the pump counts: this pump's loaded-short fault is cleared."""
        self._lab.sync()
        if self._set_rate > 0:
            raise SafetyLimitExceeded(self.name, "stop the pump before refilling its syringe")
        self._dispensed_before_fill += self.dispensed_ul()
        self._fill_ul = self.syringe_volume_ul if volume_ul is None else float(volume_ul)
        plan = self._lab.faults.plan
        if plan.empty_pump == self.name:
            plan.empty_pump = plan.empty_fill_ul = None
        if self.alarm == "syringe empty":
            self.alarm = None

    # -- the SyringePump protocol --------------------------------------------------------
    def infuse(self, rate_ul_min: float, volume_ul: float) -> None:
        """Program a finite infusion and start it. Repeated, it programs the run again from now."""
        self._lab.sync()
        with self._lab.faults.command(self.name):
            self._infuse(rate_ul_min, volume_ul)

    def _infuse(self, rate_ul_min: float, volume_ul: float) -> None:
        if self.alarm:
            raise SafetyLimitExceeded(self.name, f"pump is in alarm ({self.alarm}); clear it before infusing")
        if not (self.min_rate_ul_min <= rate_ul_min <= self.max_rate_ul_min):
            raise SafetyLimitExceeded(
                self.name,
                f"rate {rate_ul_min:.4g} uL/min is outside [{self.min_rate_ul_min:g}, {self.max_rate_ul_min:g}]",
            )
        if not (0 < volume_ul <= self.syringe_volume_ul):
            raise SafetyLimitExceeded(self.name, f"volume {volume_ul:.4g} uL must be in (0, {self.syringe_volume_ul:g}]")
        if volume_ul > self.remaining_ul():
            raise SyringeEmpty(
                self.name, f"asked for {volume_ul:.0f} uL but the syringe holds {self.remaining_ul():.0f} uL; refill it"
            )
        now = self._lab.clock.now()
        self._set_rate = rate_ul_min
        self._lab.path.set_rate(self.name, now, rate_ul_min * self._lab.accuracy_factor())
        self._stop_at = now + volume_ul / rate_ul_min * 60.0
        self._lab.on_pumps_programmed(now)

    def stop(self) -> None:
        self._lab.sync()
        with self._lab.faults.command(self.name):
            if self._set_rate > 0 or self._stop_at is not None:
                self.halt(self._lab.clock.now())

    def status(self) -> PumpStatus:
        self._lab.sync()
        with self._lab.faults.command(self.name):
            return self._status()

    def _status(self) -> PumpStatus:
        return PumpStatus(
            running=self._set_rate > 0 and self.alarm is None,
            rate_ul_min=self._set_rate,
            dispensed_ul=self.dispensed_ul(),
            remaining_ul=0.0 if self.alarm == "syringe empty" else self.remaining_ul(),
            pressure_kpa=self._lab.pressure_kpa(),
            alarm=self.alarm,
        )


class VirtualHeater:
    """Reactor plate under PID control: first-order settling (or an overshoot when faulted)."""

    def __init__(self, config: HeaterConfig, max_setpoint_c: float, lab: VirtualLab):
        self.name = config.name
        self.config = config
        self.max_setpoint_c = max_setpoint_c
        self._lab = lab
        # History: (start time, set point or None for standby, temperature at start).
        self._history: list[tuple[float, float | None, float]] = [(-1e12, None, config.ambient)]

    def _temperature(self, t):
        t = np.asarray(t, dtype=float)
        starts = np.array([h[0] for h in self._history])
        i = np.clip(np.searchsorted(starts, t, side="right") - 1, 0, len(self._history) - 1)
        out = np.empty_like(t)
        for k in np.unique(i):
            start, setpoint, t0 = self._history[k]
            dt = np.maximum(t[i == k] - start, 0.0)
            out[i == k] = self._response(setpoint, t0, dt)
        return out

    def _response(self, setpoint, t0, dt):
        tau = self.config.time_constant
        if setpoint is None:  # standby: passive cooling, three times slower
            target = self.config.ambient
            return target + (t0 - target) * np.exp(-dt / (3.0 * tau))
        if self._lab.faults.plan.heater_overshoot:
            zeta, omega = 0.5, 2.0 / tau
            wd = omega * np.sqrt(1 - zeta**2)
            envelope = np.exp(-zeta * omega * dt)
            return setpoint + (t0 - setpoint) * envelope * (np.cos(wd * dt) + zeta / np.sqrt(1 - zeta**2) * np.sin(wd * dt))
        return setpoint + (t0 - setpoint) * np.exp(-dt / tau)

    def temperature_at(self, t):
        return self._temperature(np.atleast_1d(t))

    def set_setpoint(self, celsius: float) -> None:
        self._lab.sync()
        with self._lab.faults.command(self.name):
            if not np.isfinite(celsius) or celsius > self.max_setpoint_c:
                raise SafetyLimitExceeded(
                    self.name, f"set point {celsius} C is above the platform limit of {self.max_setpoint_c:g} C"
                )
            self._record(float(celsius))

    def _record(self, setpoint: float | None) -> None:
        now = self._lab.clock.now()
        current = float(self._temperature(np.array([now]))[0])
        if self._history[-1][0] == now:
            self._history[-1] = (now, setpoint, current)
        else:
            self._history.append((now, setpoint, current))

    def setpoint(self) -> float | None:
        return self._history[-1][1]

    def read_temperature(self) -> float:
        self._lab.sync()
        with self._lab.faults.command(self.name):
            value = float(self._temperature(np.array([self._lab.clock.now()]))[0])
            return value + 0.03 * self._lab.rng.standard_normal()

    def standby(self) -> None:
        self._lab.sync()
        with self._lab.faults.command(self.name):
            self._record(None)


class VirtualValve:
    """An on/off valve on the virtual rig (the gas itself is not simulated)."""

    def __init__(self, name: str, lab: VirtualLab):
        self.name = name
        self._lab = lab
        self._open = False
        self.opened_s: list[tuple[float, float | None]] = []
        """(opened at, closed at) on the lab clock, for tests and logs."""

    def open(self) -> None:
        with self._lab.faults.command(self.name):
            if not self._open:
                self.opened_s.append((self._lab.clock.now(), None))
            self._open = True

    def close(self) -> None:
        with self._lab.faults.command(self.name):
            if self._open:
                self.opened_s[-1] = (self.opened_s[-1][0], self._lab.clock.now())
            self._open = False

    def is_open(self) -> bool:
        return self._open


class VirtualLightSource:
    def __init__(self, config: LightSourceConfig, lab: VirtualLab):
        self.name = config.name
        self.config = config
        self._lab = lab
        self._on = False

    def on(self) -> None:
        with self._lab.faults.command(self.name):
            self._on = True

    def off(self) -> None:
        with self._lab.faults.command(self.name):
            self._on = False

    def is_on(self) -> bool:
        return self._on


class VirtualSpectrometer:
    """An HDX-like spectrometer looking at one flow cell.

    Like a real unit, the first spectrum after an integration-time change was exposed with the
    previous time; callers discard it.
    """

    def __init__(self, role: str, config: SpectrometerConfig, lab: VirtualLab):
        self.role = role
        self.name = config.name
        self.serial_number = config.serial_number
        self.config = config
        self.min_integration_ms = config.min_integration * 1e3
        self.max_integration_ms = config.max_integration * 1e3
        self.max_counts = config.max_counts
        self._lab = lab
        self._wavelengths = wavelength_grid(config)
        self._integration_ms = 100.0
        self._stale_ms: float | None = None
        self.connected = True

    def wavelengths(self) -> np.ndarray:
        return self._wavelengths.copy()

    def set_integration_time_ms(self, ms: float) -> None:
        self._check_connected()
        if not (self.min_integration_ms <= ms <= self.max_integration_ms):
            raise SafetyLimitExceeded(
                self.name, f"integration time {ms:g} ms is outside [{self.min_integration_ms:g}, {self.max_integration_ms:g}] ms"
            )
        if ms != self._integration_ms:
            self._stale_ms = self._integration_ms
        self._integration_ms = float(ms)

    def integration_time_ms(self) -> float:
        return self._integration_ms

    def intensities(self, scans: int = 1) -> np.ndarray:
        self._check_connected()
        with self._lab.faults.command(self.name):
            return self._read(scans)

    def _read(self, scans: int) -> np.ndarray:
        if self._lab.faults.count_read(self.role):
            self.connected = False
            raise InstrumentDisconnected(self.name, f"USB device {self.serial_number} vanished (injected fault)")
        exposure_ms = self._integration_ms
        if self._stale_ms is not None:
            exposure_ms, self._stale_ms, scans = self._stale_ms, None, 1
        # The light is sampled at mid-exposure, where the reading's time stamp belongs.
        window_s = scans * self._integration_ms / 1e3
        self._lab.clock.advance(window_s / 2)
        self._lab.sync()
        signal = self._lab.signal_cps(self.role)
        if self._lab.faults.light_leak(self.role, self._lab.clock.now()):
            signal = signal + 5e7
        counts = self._lab.detectors[self.role].read(signal, exposure_ms / 1e3, scans, self._lab.rng)
        self._lab.clock.advance(window_s / 2)
        return counts

    def _check_connected(self) -> None:
        if not self.connected:
            raise InstrumentDisconnected(self.name, f"spectrometer {self.serial_number} is not connected")
