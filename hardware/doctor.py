"""`sdfl doctor`: ask every instrument of a platform who it is, and report what answered.

Each instrument is opened and queried on its own, so one missing device does not hide the state
of the others. Only harmless queries are sent (status, limits, process value); nothing moves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hardware.errors import SdflError
from hardware.platform import PlatformConfig


@dataclass(frozen=True)
class Check:
    role: str
    name: str
    driver: str
    ok: bool
    answer: str
    """What the instrument said (identify), or the error that names what is wrong and how to fix it."""


def _describe(answer: Any) -> str:
    if isinstance(answer, dict):
        return ", ".join(f"{k}={v}" for k, v in answer.items() if k != "name")
    return str(answer)


def _probe(role: str, name: str, driver: str, open_and_identify) -> Check:
    try:
        return Check(role, name, driver, True, _describe(open_and_identify()))
    except (SdflError, OSError) as exc:
        return Check(role, name, driver, False, f"{type(exc).__name__}: {exc}")


def check_platform(platform: PlatformConfig, seed: int | None = None) -> list[Check]:
    """One Check per instrument: pumps, heater, spectrometers, light sources."""
    if platform.platform.kind == "real":
        return _check_real(platform)
    from hardware.rig import open_rig

    rig = open_rig(platform, seed)
    driver = "virtual" if platform.platform.kind == "virtual" else "emulated"
    checks = []
    for name, pump in rig.pumps.items():
        checks.append(_probe("pump", name, driver, getattr(pump, "identify", lambda p=pump: p.status())))
    for heater in rig.all_heaters():
        checks.append(_probe("heater", heater.name, driver, getattr(
            heater, "identify", lambda h=heater: {"process_value_c": round(h.read_temperature(), 2),
                                                  "setpoint_c": h.setpoint()})))
    for role, spec in rig.spectrometers.items():
        checks.append(_probe(f"spectrometer {role}", spec.name, driver, getattr(
            spec, "identify", lambda s=spec: {"serial_number": s.serial_number, "pixels": len(s.wavelengths())})))
    for role, source in rig.light_sources.items():
        checks.append(_probe(f"light {role}", source.name, driver, lambda s=source: {"on": s.is_on()}))
    return checks


def _check_real(platform: PlatformConfig) -> list[Check]:
    from hardware import instruments as inst

    checks, opened = [], []

    def open_then_identify(open_):
        device = open_()
        opened.append(device)
        return device.identify() if hasattr(device, "identify") else {"on": device.is_on()}

    try:
        for pump in platform.pumps:
            checks.append(_probe("pump", pump.name, "chemyx", lambda p=pump: open_then_identify(
                lambda: inst.open_pump(p))))
        if platform.heater is not None:
            checks.append(_probe("heater", platform.heater.name, "watlow", lambda: open_then_identify(
                lambda: inst.open_heater(platform))))
        spectrometers = {}
        for role, config in platform.spectrometers.items():
            def open_spec(role=role):
                spectrometers[role] = inst.open_spectrometer(platform, role)
                return spectrometers[role]
            checks.append(_probe(f"spectrometer {role}", config.name, "seabreeze",
                                 lambda o=open_spec: open_then_identify(o)))
        for role, config in platform.light_sources.items():
            driver = config.device.get("driver", "relay")
            checks.append(_probe(f"light {role}", config.name, driver, lambda r=role: open_then_identify(
                lambda: inst.open_light_source(platform, r, spectrometers))))
    finally:
        for device in reversed(opened):
            try:
                device.close()
            except Exception:  # noqa: BLE001 - best effort
                pass
    return checks
