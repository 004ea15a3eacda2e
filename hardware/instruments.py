"""Build the instruments of a real or emulated platform from its `device` tables.

A real platform names, per instrument, the driver and where it is connected:

    [[pumps]]                                   # merged by name over the base platform
    name = "cui"
    device = { driver = "chemyx", port = "serial-number:FT5ZQ0A1" }

    [heater.device]
    driver = "watlow"; model = "f4t"; host = "192.168.10.20"

    [light_sources.pl.device]
    driver = "relay"; port = "serial-number:A50285BI"; channel = 1

An emulated platform needs no device tables: every instrument gets a protocol emulator driven by
the virtual lab (Chemyx on a pseudo-terminal, Watlow over Modbus TCP on loopback, a relay board on
a pseudo-terminal, the seabreeze API faked) and the same drivers a real rig uses talk to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hardware.errors import InstrumentDisconnected, PlatformConfigError
from hardware.platform import PlatformConfig, PumpConfig
from hardware.retry import RetryCounter

SERIAL_NUMBER_PREFIX = "serial-number:"


class _Device(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PumpDevice(_Device):
    driver: Literal["chemyx"] = "chemyx"
    port: str = Field(description="a device path, 'serial-number:<usb serial>' or a pyserial URL")
    channel: int | None = Field(default=None, ge=1, le=4, description="channel of a multi-channel pump")
    baudrate: int = 9600
    timeout_s: float = Field(default=1.0, gt=0)


class HeaterDevice(_Device):
    driver: Literal["watlow"] = "watlow"
    model: Literal["f4t", "pm", "pm-map2"] = "f4t"
    host: str | None = Field(default=None, description="Modbus TCP address (F4T Ethernet)")
    tcp_port: int = 502
    port: str | None = Field(default=None, description="Modbus RTU serial port (EZ-ZONE PM, F4T RS-485)")
    baudrate: int | None = None
    loop: int = Field(default=1, ge=1, le=4)
    unit_id: int = Field(default=1, ge=1, le=247)
    units: Literal["auto", "C", "F"] = "auto"
    timeout_s: float = Field(default=1.0, gt=0)


class LightDevice(_Device):
    driver: Literal["relay", "lamp", "gpio"] = "relay"
    port: str | None = Field(default=None, description="relay board port (driver 'relay')")
    channel: int = Field(default=1, ge=1, le=8)
    protocol: Literal["lcus", "lcus-feedback"] = "lcus"
    invert: bool = False
    spectrometer: Literal["pl", "abs"] | None = Field(default=None, description="whose lamp/GPIO line (lamp, gpio)")
    pin: int = Field(default=0, ge=0)
    active_high: bool = True


def _device(model: type[_Device], table: dict, where: str) -> Any:
    try:
        return model.model_validate(table)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or where}: {e['msg']}" for e in exc.errors())
        raise PlatformConfigError(f"{where}.device: {problems}") from None


def resolve_port(port: str, instrument: str) -> str:
    """A device path for `serial-number:<sn>` (found among the USB serial ports), else `port`."""
    if not port.startswith(SERIAL_NUMBER_PREFIX):
        return port
    from serial.tools import list_ports

    wanted = port.removeprefix(SERIAL_NUMBER_PREFIX)
    found = list(list_ports.comports())
    for info in found:
        if info.serial_number == wanted:
            return info.device
    seen = ", ".join(f"{i.device} (serial {i.serial_number}, {i.description})" for i in found) or "none"
    raise InstrumentDisconnected(instrument, (
        f"no USB serial port with serial number {wanted!r}; ports found: {seen}. Check the cable and the "
        "adapter, or run `python -m serial.tools.list_ports -v` and fix the port in the platform file"))


# --- one instrument at a time (sdfl doctor opens them one by one) ------------------------------


def open_pump(config: PumpConfig, *, port: str | None = None, link=None, retries: RetryCounter | None = None):
    from hardware.drivers.chemyx import ChemyxPump

    where = f"pumps[{config.name}]"
    if port is None and link is None:
        if not config.device:
            raise PlatformConfigError(f"{where}: a real platform needs a device table for every pump "
                                      "(driver = 'chemyx', port = ...)")
        device = _device(PumpDevice, config.device, where)
        port = resolve_port(device.port, config.name)
    else:
        device = PumpDevice(port=port or "link")
    return ChemyxPump(port, name=config.name, syringe_volume_ul=config.syringe_volume,
                      syringe_inner_diameter_mm=config.syringe_inner_diameter, min_rate_ul_min=config.min_rate,
                      max_rate_ul_min=config.max_rate, channel=device.channel, baudrate=device.baudrate,
                      timeout_s=device.timeout_s, link=link, retries=retries)


def open_heater(platform: PlatformConfig, *, host: str | None = None, tcp_port: int | None = None,
                retries: RetryCounter | None = None):
    from hardware.drivers.watlow import WatlowController

    config = platform.heater
    device = _device(HeaterDevice, config.device or {"host": host or ""}, "heater")
    host = host or device.host
    limit = platform.rules.max_temperature
    common = dict(model=device.model, loop=device.loop, unit_id=device.unit_id, name=config.name,
                  max_setpoint_c=limit, timeout_s=device.timeout_s, units=device.units, retries=retries)
    if host:
        return WatlowController.tcp(host, tcp_port or device.tcp_port, **common)
    if device.port:
        return WatlowController.rtu(resolve_port(device.port, config.name), baudrate=device.baudrate, **common)
    raise PlatformConfigError("heater.device: give host (Modbus TCP) or port (Modbus RTU) for the controller")


def open_spectrometer(platform: PlatformConfig, role: str, *, api=None, retries: RetryCounter | None = None):
    from hardware.drivers.oceaninsight import OceanSpectrometer

    config = platform.spectrometers[role]
    # The acquisition task discards the first spectrum after a change itself.
    device = {"discard_after_change": False, **config.device}
    return OceanSpectrometer.from_config(config.model_copy(update={"device": device}), api=api, retries=retries)


def open_light_source(platform: PlatformConfig, role: str, spectrometers: dict, *, port: str | None = None,
                      retries: RetryCounter | None = None):
    from hardware.drivers.light_sources import GpioLightSource, SerialRelaySource, SpectrometerLampSource

    config = platform.light_sources[role]
    where = f"light_sources.{role}"
    device = _device(LightDevice, config.device or {"port": port}, where)
    if device.driver == "relay":
        if not (port or device.port):
            raise PlatformConfigError(f"{where}.device: a relay needs port = ...")
        return SerialRelaySource(port or resolve_port(device.port, config.name), device.channel, config.name,
                                 protocol=device.protocol, invert=device.invert, retries=retries)
    owner = spectrometers.get(device.spectrometer or role)
    if owner is None:
        raise PlatformConfigError(f"{where}.device: spectrometer {device.spectrometer or role!r} is not open")
    if device.driver == "lamp":
        return SpectrometerLampSource(owner, config.name)
    return GpioLightSource(owner, device.pin, config.name, active_high=device.active_high)


# --- whole rigs ------------------------------------------------------------------------------


@dataclass
class Instruments:
    """What a rig is built from, plus what must be closed with it."""

    pumps: dict[str, Any]
    heater: Any
    spectrometers: dict[str, Any]
    light_sources: dict[str, Any]
    closers: list[Callable[[], None]] = field(default_factory=list)
    byte_logs: dict[str, Any] = field(default_factory=dict)
    """Pump name -> the ByteLog of its line (emulated rigs)."""
    emulators: dict[str, Any] = field(default_factory=dict)
    """Emulated rigs only: the emulator behind each instrument (for fault injection in tests)."""
    retries: RetryCounter = field(default_factory=RetryCounter)
    """Commands the drivers retried after a transient error (one counter for all of them)."""

    def close(self) -> None:
        for close in reversed(self.closers):
            try:
                close()
            except Exception:  # noqa: BLE001 - closing is best effort; the next one must still run
                pass


def real_instruments(platform: PlatformConfig) -> Instruments:
    """Open every instrument of a real platform; on any failure close what was opened and raise."""
    out = Instruments({}, None, {}, {})
    try:
        for pump in platform.pumps:
            out.pumps[pump.name] = open_pump(pump, retries=out.retries)
            out.closers.append(out.pumps[pump.name].close)
        if platform.heater is not None:  # a room-temperature rig has no controller
            out.heater = open_heater(platform, retries=out.retries)
            out.closers.append(out.heater.close)
        for role in platform.spectrometers:
            out.spectrometers[role] = open_spectrometer(platform, role, retries=out.retries)
            out.closers.append(out.spectrometers[role].close)
        for role in platform.light_sources:
            out.light_sources[role] = open_light_source(platform, role, out.spectrometers, retries=out.retries)
            out.closers.append(getattr(out.light_sources[role], "close", lambda: None))
    except BaseException:
        out.close()
        raise
    return out


def emulated_instruments(platform: PlatformConfig, lab) -> Instruments:
    """Emulators for every instrument of `lab`, and the real drivers connected to them."""
    from hardware.drivers.serial_link import ByteLog, SerialLink
    from hardware.emulators.chemyx import ChemyxEmulator
    from hardware.emulators.relay import RelayEmulator
    from hardware.emulators.seabreeze_fake import FakeSeabreezeAPI
    from hardware.emulators.watlow import WatlowTcpEmulator

    out = Instruments({}, None, {}, {})
    try:
        for pump in platform.pumps:
            emulator = ChemyxEmulator(lab.pumps[pump.name])
            out.closers.append(emulator.close)
            out.emulators[f"pump:{pump.name}"] = emulator
            # Every byte on every pump line is logged, so a run can be saved and replayed.
            link = SerialLink(emulator.port, 9600, 1.0, log=ByteLog(meta={"pump": pump.name}))
            out.closers.append(link.close)
            out.byte_logs[pump.name] = link.log
            out.pumps[pump.name] = open_pump(pump, link=link, retries=out.retries)
        if lab.heater is not None:
            controller = WatlowTcpEmulator(lab.heater, model="f4t")
            out.closers.append(controller.close)
            out.emulators["heater"] = controller
            heater_platform = platform.model_copy(update={"heater": platform.heater.model_copy(update={"device": {
                "model": "f4t", "host": controller.host, "tcp_port": controller.port, "units": "C"}})})
            out.heater = open_heater(heater_platform, retries=out.retries)
            out.closers.append(out.heater.close)
        api = FakeSeabreezeAPI(lab)
        out.emulators["seabreeze"] = api
        for role in platform.spectrometers:
            out.spectrometers[role] = open_spectrometer(platform, role, api=api, retries=out.retries)
            out.closers.append(out.spectrometers[role].close)
        roles = list(platform.light_sources)
        relay = RelayEmulator(channels=max(len(roles), 1),
                              wiring={i + 1: lab.light_sources[role] for i, role in enumerate(roles)}, lab=lab)
        out.closers.append(relay.close)
        out.emulators["relay"] = relay
        for i, role in enumerate(roles):
            table = {"driver": "relay", "port": relay.port, "channel": i + 1}
            sources = platform.model_copy(update={"light_sources": {
                **platform.light_sources, role: platform.light_sources[role].model_copy(update={"device": table})}})
            out.light_sources[role] = open_light_source(sources, role, out.spectrometers, retries=out.retries)
            out.closers.append(out.light_sources[role].close)
    except BaseException:
        out.close()
        raise
    return out
