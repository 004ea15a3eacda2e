"""A rig: the instruments of one platform, by role, and the routine that makes them safe.

`open_rig(platform)` returns the live rig for this process (one per platform and seed), so a
flow, its retries and its failure hooks all drive the same instruments. A virtual platform gets
simulated instruments; an emulated one the real drivers talking to protocol emulators driven by
the virtual lab; a real one the drivers of its device tables (hardware/instruments.py).

On the driver-based rigs every instrument is wrapped so that a fatal error from any of them puts
the whole rig in its safe state before the error goes up: the rig is safe even when the caller
is not a flow with failure hooks.

A transient error (a lost or garbled reply) costs one command a retry, not the step: the drivers
retry their own commands where that is safe, and on a virtual rig a thin proxy does the same for
the simulated instruments. `rig.retries` counts them.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from hardware.errors import FatalInstrumentError, InstrumentError
from hardware.interfaces import Clock, LightSource, Spectrometer, SyringePump, TemperatureController, Valve
from hardware.platform import PlatformConfig
from hardware.retry import RetryCounter, retry

log = logging.getLogger(__name__)

SAFE_STATE_ATTEMPTS = 3


@dataclass
class Rig:
    platform: PlatformConfig
    clock: Clock
    pumps: dict[str, SyringePump]
    heater: TemperatureController | None
    """The heater of the reactor zone (None on a room-temperature platform)."""
    spectrometers: dict[str, Spectrometer]
    light_sources: dict[str, LightSource]
    heaters: dict[str, TemperatureController] = field(default_factory=dict)
    """Every heater, by zone (a CSTR cascade has one per stage)."""
    valves: dict[str, Valve] = field(default_factory=dict)
    """On/off valves (gas purge lines); closed is safe."""
    lab: object | None = None
    """The VirtualLab behind a virtual rig (None for real hardware)."""
    lock: threading.RLock = field(default_factory=threading.RLock)
    reference: object | None = None
    """The latest solvent reference of the absorbance cell (set by the acquisition step)."""
    instruments: object | None = None
    """Driver-based rigs: the `hardware.instruments.Instruments` to close (and their emulators)."""
    retries: RetryCounter = field(default_factory=RetryCounter)
    """Commands retried after a transient error, by instrument."""
    held: bool = False
    """An experiment left the flows and heaters on for the next one; `safe_state` clears it."""
    _making_safe: bool = False

    def __post_init__(self) -> None:
        if not self.heaters and self.heater is not None:
            self.heaters = {"reactor": self.heater}

    def close(self) -> None:
        """Safe state, then close every driver and emulator."""
        self.safe_state()
        if self.instruments is not None:
            self.instruments.close()

    def all_heaters(self) -> list[TemperatureController]:
        """Every heater once (the reactor heater is also in `heaters`)."""
        out = list(self.heaters.values())
        if self.heater is not None and not any(h is self.heater for h in out):
            out.insert(0, self.heater)
        return out

    @property
    def name(self) -> str:
        return self.platform.platform.name

    def remaining_ul(self) -> dict[str, float]:
        return {name: pump.status().remaining_ul for name, pump in self.pumps.items()}

    def stop_pumps(self) -> list[str]:
        """Stop every pump, retrying each a few times. Returns the pumps that would not stop."""
        failed = []
        for name, pump in self.pumps.items():
            if not _attempt(lambda p=pump: p.stop()):
                failed.append(name)
        return failed

    def safe_state(self) -> list[str]:
        """Pumps stopped, heaters to standby, valves closed, light sources off. Never raises.

        Returns the problems met (empty when everything is safe), so callers can log them.
        """
        if self._making_safe:  # a guarded instrument failed inside safe_state itself
            return []
        self._making_safe = True
        try:
            problems = [f"pump {n} did not confirm stop" for n in self.stop_pumps()]
            for heater in self.all_heaters():
                if not _attempt(heater.standby):
                    problems.append(f"heater {heater.name} did not confirm standby")
            for key, valve in self.valves.items():
                if not _attempt(valve.close):
                    problems.append(f"valve {key} did not confirm closed")
            for role, source in self.light_sources.items():
                if not _attempt(source.off):
                    problems.append(f"light source {role} did not confirm off")
        finally:
            self._making_safe = False
            self.held = False
        for problem in problems:
            log.error("safe state: %s", problem)
        return problems


def _attempt(action) -> bool:
    for _ in range(SAFE_STATE_ATTEMPTS):
        try:
            action()
            return True
        except InstrumentError as exc:
            log.warning("safe state: retrying after %s", exc)
    return False


_RIGS: dict[tuple[str, int | None], Rig] = {}
_RIGS_LOCK = threading.Lock()


def open_rig(platform: PlatformConfig, seed: int | None = None) -> Rig:
    """The rig of `platform` in this process, built on first use."""
    key = (platform.platform.name, seed)
    with _RIGS_LOCK:
        rig = _RIGS.get(key)
        if rig is not None and rig.platform.sha256 == platform.sha256:
            return rig
        if rig is not None:
            rig.close()
        kind = platform.platform.kind
        rig = {"virtual": virtual_rig, "emulated": emulated_rig}[kind](platform, seed) if kind != "real" \
            else real_rig(platform)
        _RIGS[key] = rig
        return rig


def close_rig(platform_name: str, seed: int | None = None) -> None:
    """Make a rig safe, close its drivers and forget it (the next `open_rig` builds a fresh one)."""
    with _RIGS_LOCK:
        rig = _RIGS.pop((platform_name, seed), None)
    if rig is not None:
        rig.close()


def close_all_rigs() -> None:
    with _RIGS_LOCK:
        rigs = list(_RIGS.values())
        _RIGS.clear()
    for rig in rigs:
        rig.close()


RETRIED_VIRTUAL_COMMANDS = {
    "pump": frozenset({"infuse", "stop", "status"}),
    "heater": frozenset({"set_setpoint", "read_temperature", "standby", "setpoint"}),
    "spectrometer": frozenset({"intensities", "set_integration_time_ms"}),
    "light source": frozenset({"on", "off"}),
    "valve": frozenset({"open", "close"}),
}
"""The commands of simulated instruments that are safe to repeat. A virtual pump programs and
starts a run in one step, so repeating `infuse` programs the same run again from now."""


def virtual_rig(platform: PlatformConfig, seed: int | None = None) -> Rig:
    """Simulated instruments of a virtual lab, each behind a proxy that retries its safe commands."""
    from hardware.virtual.lab import VirtualLab

    lab = VirtualLab(platform, seed=seed)
    counter = RetryCounter()

    def retried(kind: str, instruments: dict) -> dict:
        commands = RETRIED_VIRTUAL_COMMANDS[kind]
        return {key: RetryingInstrument(i, commands, counter) for key, i in instruments.items()}

    heaters = retried("heater", lab.heaters)
    return Rig(
        platform=platform,
        clock=lab.clock,
        pumps=retried("pump", lab.pumps),
        heater=heaters[platform.reactor.zone] if platform.reactor.zone else None,
        heaters=heaters,
        spectrometers=retried("spectrometer", lab.spectrometers),
        light_sources=retried("light source", lab.light_sources),
        valves=retried("valve", lab.valves),
        lab=lab,
        retries=counter,
    )


def emulated_rig(platform: PlatformConfig, seed: int | None = None) -> Rig:
    """The real drivers against protocol emulators driven by a virtual lab (simulated clock)."""
    from hardware.instruments import emulated_instruments
    from hardware.virtual.lab import VirtualLab

    lab = VirtualLab(platform, seed=seed)
    return _guarded_rig(platform, emulated_instruments(platform, lab), lab.clock, lab)


def real_rig(platform: PlatformConfig) -> Rig:
    from hardware.clock import WallClock
    from hardware.instruments import real_instruments

    return _guarded_rig(platform, real_instruments(platform), WallClock(), None)


def _guarded_rig(platform, instruments, clock, lab) -> Rig:
    """The drivers, each made safe-on-fatal. They retry their own commands: no second retry here."""
    rig = Rig(platform=platform, clock=clock, pumps={}, heater=None, spectrometers={}, light_sources={}, lab=lab,
              instruments=instruments, retries=instruments.retries)
    rig.pumps = {n: SafeOnFatal(p, rig) for n, p in instruments.pumps.items()}
    if instruments.heater is not None:
        rig.heater = SafeOnFatal(instruments.heater, rig)
        rig.heaters = {"reactor": rig.heater}
    rig.spectrometers = {r: SafeOnFatal(s, rig) for r, s in instruments.spectrometers.items()}
    rig.light_sources = {r: SafeOnFatal(s, rig) for r, s in instruments.light_sources.items()}
    return rig


class SafeOnFatal:
    """An instrument whose fatal errors first put the whole rig in its safe state."""

    def __init__(self, instrument, rig: Rig):
        object.__setattr__(self, "_instrument", instrument)
        object.__setattr__(self, "_rig", rig)

    def __getattr__(self, name):
        value = getattr(self._instrument, name)
        if not callable(value):
            return value

        def guarded(*args, **kwargs):
            try:
                return value(*args, **kwargs)
            except FatalInstrumentError as exc:
                log.error("%s: fatal instrument error, making the rig safe", exc)
                self._rig.safe_state()
                raise

        return guarded

    def __setattr__(self, name, value):
        setattr(self._instrument, name, value)

    def __repr__(self) -> str:
        return f"SafeOnFatal({self._instrument!r})"


class RetryingInstrument:
    """A simulated instrument whose safe commands (`commands`) are retried after a transient error,
    as the real drivers retry theirs. Everything else passes straight through."""

    def __init__(self, instrument, commands: frozenset[str], counter: RetryCounter):
        object.__setattr__(self, "_instrument", instrument)
        object.__setattr__(self, "_commands", commands)
        object.__setattr__(self, "_counter", counter)

    def __getattr__(self, name):
        value = getattr(self._instrument, name)
        if name not in self._commands:
            return value

        def retried(*args, **kwargs):
            return retry(lambda: value(*args, **kwargs), instrument=self._instrument.name, what=name,
                         counter=self._counter)

        return retried

    def __setattr__(self, name, value):
        setattr(self._instrument, name, value)

    def __repr__(self) -> str:
        return f"RetryingInstrument({self._instrument!r})"
