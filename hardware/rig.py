"""A rig: the instruments of one platform, by role, and the routine that makes them safe.

`open_rig(platform)` returns the live rig for this process (one per platform and seed), so a
flow, its retries and its failure hooks all drive the same instruments.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from hardware.errors import InstrumentError, PlatformConfigError
from hardware.interfaces import Clock, LightSource, Spectrometer, SyringePump, TemperatureController
from hardware.platform import PlatformConfig

log = logging.getLogger(__name__)

SAFE_STATE_ATTEMPTS = 3


@dataclass
class Rig:
    platform: PlatformConfig
    clock: Clock
    pumps: dict[str, SyringePump]
    heater: TemperatureController
    spectrometers: dict[str, Spectrometer]
    light_sources: dict[str, LightSource]
    lab: object | None = None
    """The VirtualLab behind a virtual rig (None for real hardware)."""
    lock: threading.RLock = field(default_factory=threading.RLock)
    reference: object | None = None
    """The latest solvent reference of the absorbance cell (set by the acquisition step)."""

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
        """Pumps stopped, heater to standby, light sources off. Never raises.

        Returns the problems met (empty when everything is safe), so callers can log them.
        """
        problems = [f"pump {n} did not confirm stop" for n in self.stop_pumps()]
        if not _attempt(self.heater.standby):
            problems.append(f"heater {self.heater.name} did not confirm standby")
        for role, source in self.light_sources.items():
            if not _attempt(source.off):
                problems.append(f"light source {role} did not confirm off")
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
        if platform.platform.kind == "virtual":
            rig = virtual_rig(platform, seed)
        else:
            raise PlatformConfigError(
                f"{platform.source}: platform {platform.platform.name!r} is a real rig, and this version of sdfl "
                "has no real instrument drivers yet; use a platform with kind = 'virtual'"
            )
        _RIGS[key] = rig
        return rig


def close_rig(platform_name: str, seed: int | None = None) -> None:
    """Forget a rig (the next `open_rig` builds a fresh one)."""
    with _RIGS_LOCK:
        _RIGS.pop((platform_name, seed), None)


def virtual_rig(platform: PlatformConfig, seed: int | None = None) -> Rig:
    from hardware.virtual.lab import VirtualLab

    lab = VirtualLab(platform, seed=seed)
    return Rig(
        platform=platform,
        clock=lab.clock,
        pumps=dict(lab.pumps),
        heater=lab.heater,
        spectrometers=dict(lab.spectrometers),
        light_sources=dict(lab.light_sources),
        lab=lab,
    )
