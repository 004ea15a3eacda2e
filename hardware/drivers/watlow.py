"""Watlow temperature controllers over Modbus: the F4T (Modbus TCP or RTU) and the EZ-ZONE PM (RTU).

`WatlowController` satisfies `TemperatureController`: it works in degrees Celsius, refuses unsafe set
points before writing anything, and reads back every write.

Register numbers are Modbus *relative* addresses (0-based, as sent on the wire; add 40001 for the
"4xxxx" notation). Where each number comes from:

- F4T: set point 2782, process value 2820, control mode 2730, each + 160 per loop (loops 1-4):
  from ESPEC's ChamberConnectLibrary F4T driver (a chamber maker's public driver) and our
  dependency notes. The F4T manual's Modbus table confirms the + 160 per loop for the registers
  next to these ("Control Loop n: 2846+((n-1)*160)"), but the page with these three was not
  found. Temperature units 6730 over TCP and 14080 over RTU: from that library only.
- EZ-ZONE PM, Modbus data map 1 (the default "legacy" map): process value 360 and closed-loop set
  point 2160 (low word in 2160, high word in 2161) from the EZ-ZONE communications manual; control
  mode 1880 from the PM manual's programmable-memory-block example ("Pointer 1 = 1880 & 1881 Loop
  Control Mode"). Communications temperature units 2490 (write 15 for C, 30 for F; PM firmware 2.0
  or newer) from the communications manual, which also warns that the PM answers in F by default.
- EZ-ZONE PM, data map 2: set point 2640 and control mode 2360, from ORNL's EPICS support for the
  PM (not checked against the manual); its units register is not known.
- Enumerations shared by all Watlow controllers: control mode 10 auto, 54 manual, 62 off; units
  15 C, 30 F. Floats are IEEE 754 in two registers, low word first (the factory default of both
  controllers; it can be swapped in the Communications menu, see `RegisterMap.word_order`).
- Default RTU baud rates are assumptions (38400 for the F4T as in ESPEC's examples, 9600 for the
  PM): set them to what the controller's Communications menu shows.

Retries: register reads and writes (set point, control mode) are idempotent, so each request is
sent again after a lost or garbled reply or a "busy" exception (hardware/retry.py); every write is
still read back.

Units: with `units="auto"` (the default) the driver reads the controller's temperature-units
register once and converts F to C if needed; pass `units="C"` or `"F"` when the register map has no
known units register. None of this has been tried on a real controller.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, replace
from typing import Literal

from pymodbus.client import ModbusSerialClient, ModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from hardware.errors import (
    CommandRejected,
    FatalInstrumentError,
    GarbledReply,
    HeaterNotStable,
    InstrumentDisconnected,
    InstrumentTimeout,
    SafetyLimitExceeded,
    TransientInstrumentError,
    ValueClamped,
    WrongDevice,
)
from hardware.interfaces import Clock
from hardware.retry import RetryCounter, retry
from hardware.stability import wait_until_stable

MODE_AUTO, MODE_MANUAL, MODE_OFF = 10, 54, 62
MODE_NAMES = {MODE_AUTO: "auto", MODE_MANUAL: "manual", MODE_OFF: "off"}
UNITS_C, UNITS_F = 15, 30
UNIT_CODES = {UNITS_C: "C", UNITS_F: "F"}
STABLE_POLL_S = 2.0

# pymodbus logs each timeout or refused connection at ERROR, with a dump of recent frames, before the
# driver raises its own named error; keep its logger quiet unless the application chose a level.
if logging.getLogger("pymodbus").level == logging.NOTSET:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


@dataclass(frozen=True)
class RegisterMap:
    """Where one controller model keeps loop 1's registers (see the module docstring for sources)."""

    model: str
    process_value: int
    """Float, read only: the loop's input in the controller's units."""
    setpoint: int
    """Float: the closed-loop set point."""
    control_mode: int
    """Unsigned 16-bit: 10 auto, 54 manual, 62 off."""
    loop_offset: int = 0
    """Added per loop after the first (F4T: 160)."""
    loops: int = 1
    units: int | None = None
    """Temperature units register (15 C, 30 F); None when unknown."""
    units_rtu: int | None = None
    """Where the units register differs over RTU (F4T); None: same as `units`."""
    word_order: Literal["little", "big"] = "little"
    """"little": low word first, the Watlow default."""
    default_baudrate: int = 9600

    def for_loop(self, loop: int) -> RegisterMap:
        """This map with the loop registers moved to loop `loop` (1-based)."""
        if not 1 <= loop <= self.loops:
            raise ValueError(f"{self.model} has loops 1 to {self.loops}, not {loop}")
        shift = self.loop_offset * (loop - 1)
        return replace(self, process_value=self.process_value + shift, setpoint=self.setpoint + shift,
                       control_mode=self.control_mode + shift)

    def describe(self, address: int) -> str:
        names = {self.process_value: "process value", self.setpoint: "closed-loop set point",
                 self.control_mode: "control mode", self.units: "temperature units",
                 self.units_rtu: "temperature units"}
        return names.get(address, "register")


F4T = RegisterMap("F4T", process_value=2820, setpoint=2782, control_mode=2730, loop_offset=160, loops=4,
                  units=6730, units_rtu=14080, default_baudrate=38400)
PM = RegisterMap("EZ-ZONE PM", process_value=360, setpoint=2160, control_mode=1880, units=2490)
PM_MAP2 = RegisterMap("EZ-ZONE PM (data map 2)", process_value=360, setpoint=2640, control_mode=2360)
MODELS = {"f4t": F4T, "pm": PM, "pm-map2": PM_MAP2}


def registers_to_float(registers: list[int], word_order: str = "little") -> float:
    """Two 16-bit registers -> an IEEE 754 float (low word first by default)."""
    return float(ModbusTcpClient.convert_from_registers(
        registers, ModbusTcpClient.DATATYPE.FLOAT32, word_order=word_order))


def float_to_registers(value: float, word_order: str = "little") -> list[int]:
    return ModbusTcpClient.convert_to_registers(float(value), ModbusTcpClient.DATATYPE.FLOAT32, word_order=word_order)


EXCEPTION_NAMES = {1: "illegal function", 2: "illegal data address", 3: "illegal data value",
                   4: "server device failure", 5: "acknowledge", 6: "server device busy"}


class ModbusLink:
    """The transport seam: read and write holding registers, with pymodbus errors made sdfl errors.

    Each request is sent again after a transient error (reads and writes of these registers are
    idempotent); `retries` counts it."""

    def __init__(self, client, *, where: str, unit_id: int, name: str, fix: str, registers: RegisterMap,
                 retries: RetryCounter | None = None):
        self.client = client
        self.retries = retries if retries is not None else RetryCounter()
        self.where = where
        self.unit_id = unit_id
        self.name = name
        self.fix = fix
        self.registers = registers
        self._lock = threading.Lock()

    def connect(self) -> None:
        if not self.client.connect():
            raise InstrumentDisconnected(self.name, f"cannot open Modbus connection to {self.where}; {self.fix}")

    def read(self, address: int, count: int) -> list[int]:
        return retry(lambda: self._read_once(address, count), instrument=self.name, counter=self.retries,
                     what=f"read of register {address} ({self.registers.describe(address)})")

    def write(self, address: int, values: list[int]) -> None:
        retry(lambda: self._write_once(address, values), instrument=self.name, counter=self.retries,
              what=f"write of register {address} ({self.registers.describe(address)})")

    def _read_once(self, address: int, count: int) -> list[int]:
        reply = self._call(address, lambda: self.client.read_holding_registers(
            address, count=count, device_id=self.unit_id))
        self._check(reply, address, write=False)
        registers = list(getattr(reply, "registers", []) or [])
        if len(registers) != count:
            raise GarbledReply(self.name, f"asked {self.where} for {count} registers at {address}, got {len(registers)}")
        return registers

    def _write_once(self, address: int, values: list[int]) -> None:
        reply = self._call(address, lambda: self.client.write_registers(address, values, device_id=self.unit_id))
        self._check(reply, address, write=True)
        if getattr(reply, "address", address) != address or getattr(reply, "count", len(values)) != len(values):
            raise GarbledReply(self.name, f"write of {len(values)} registers at {address} was acknowledged as "
                                          f"{getattr(reply, 'count', '?')} at {getattr(reply, 'address', '?')}")

    def close(self) -> None:
        with self._lock:
            self.client.close()

    def _call(self, address: int, request):
        what = f"register {address} ({self.registers.describe(address)})"
        try:
            with self._lock:
                return request()
        except ConnectionException as exc:
            raise InstrumentDisconnected(self.name, f"lost the Modbus connection to {self.where} at {what} "
                                                    f"({exc}); {self.fix}") from exc
        except ModbusIOException as exc:
            if "no response" in str(exc).lower():
                raise InstrumentTimeout(self.name, f"no reply from unit {self.unit_id} at {self.where} for {what} "
                                                   f"within {self.client.comm_params.timeout_connect:g} s") from exc
            raise GarbledReply(self.name, f"unreadable reply from {self.where} for {what}: {exc}") from exc
        except ModbusException as exc:
            raise GarbledReply(self.name, f"bad reply from {self.where} for {what}: {exc}") from exc
        except OSError as exc:  # a reset connection that pymodbus does not wrap
            raise InstrumentDisconnected(self.name, f"lost the Modbus connection to {self.where} at {what} "
                                                    f"({exc}); {self.fix}") from exc

    def _check(self, reply, address: int, *, write: bool) -> None:
        if not reply.isError():
            return
        code = int(getattr(reply, "exception_code", 0))
        what = f"register {address} ({self.registers.describe(address)} of the {self.registers.model} map)"
        said = f"{self.where} answered Modbus exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')}) for {what}"
        if code in (1, 2) or (code == 3 and not write):
            raise WrongDevice(self.name, f"{said}: the controller does not have this register. Check the model "
                                         f"(f4t, pm, pm-map2: the PM's Setup > Communications > Data Map), the loop "
                                         f"number and the unit id")
        if code == 3:
            raise CommandRejected(self.name, f"{said}: the controller refused the value (outside its own limits, "
                                             f"or the loop is not configured)")
        if code == 4:
            raise CommandRejected(self.name, f"{said}: the controller reports a failure; read the error on its "
                                             f"display")
        raise TransientInstrumentError(self.name, f"{said}; try again")


class WatlowController:
    """One control loop of a Watlow F4T or EZ-ZONE PM. Build it with `tcp(...)` or `rtu(...)`."""

    def __init__(self, link: ModbusLink, registers: RegisterMap, *, name: str, max_setpoint_c: float,
                 loop: int = 1, units: Literal["auto", "C", "F"] = "auto", rtu: bool = False):
        if units not in ("auto", "C", "F"):
            raise ValueError(f"units must be 'auto', 'C' or 'F', not {units!r}")
        self.name = name
        self.max_setpoint_c = float(max_setpoint_c)
        self.loop = loop
        self.registers = registers
        self.link = link
        self._units = None if units == "auto" else units
        self._units_register = (registers.units_rtu or registers.units) if rtu else registers.units

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def tcp(cls, host: str, port: int = 502, *, model: str | RegisterMap = "f4t", loop: int = 1, unit_id: int = 1,
            name: str | None = None, max_setpoint_c: float, timeout_s: float = 1.0,
            units: Literal["auto", "C", "F"] = "auto", retries: RetryCounter | None = None) -> WatlowController:
        """Connect over Modbus TCP (the F4T's Ethernet port; Modbus TCP must be enabled on it)."""
        key, registers = _model(model)
        registers = registers.for_loop(loop)
        name = name or f"watlow-{key}"
        client = ModbusTcpClient(host, port=port, timeout=timeout_s, retries=0, reconnect_delay=0)
        fix = (f"check that the controller is powered, on the network at {host}, serves Modbus TCP on port {port} "
               "(F4T: Settings > Network > Modbus TCP enabled), and that no other program holds its connection")
        link = ModbusLink(client, where=f"{host}:{port}", unit_id=unit_id, name=name, fix=fix, registers=registers,
                          retries=retries)
        link.connect()
        return cls(link, registers, name=name, max_setpoint_c=max_setpoint_c, loop=loop, units=units)

    @classmethod
    def rtu(cls, port: str, *, model: str | RegisterMap = "pm", loop: int = 1, unit_id: int = 1,
            baudrate: int | None = None, parity: str = "N", stopbits: int = 1, name: str | None = None,
            max_setpoint_c: float, timeout_s: float = 1.0,
            units: Literal["auto", "C", "F"] = "auto", retries: RetryCounter | None = None) -> WatlowController:
        """Connect over Modbus RTU (RS-485 through a USB adapter), 8 data bits."""
        key, registers = _model(model)
        registers = registers.for_loop(loop)
        name = name or f"watlow-{key}"
        baudrate = baudrate or registers.default_baudrate
        client = ModbusSerialClient(port, baudrate=baudrate, parity=parity, stopbits=stopbits, timeout=timeout_s,
                                    retries=0, reconnect_delay=0)
        fix = (f"check the USB-RS485 adapter is plugged in as {port}, that no other program has it open, and that "
               f"baud rate {baudrate}, parity {parity} and unit id {unit_id} match the controller's Communications menu")
        link = ModbusLink(client, where=port, unit_id=unit_id, name=name, fix=fix, registers=registers,
                          retries=retries)
        link.connect()
        return cls(link, registers, name=name, max_setpoint_c=max_setpoint_c, loop=loop, units=units, rtu=True)

    @property
    def retries(self) -> RetryCounter:
        """Requests sent again after a transient error."""
        return self.link.retries

    # --- TemperatureController --------------------------------------------------------------------
    def set_setpoint(self, celsius: float) -> None:
        """Write the closed-loop set point, read it back, and switch the loop to auto."""
        celsius = float(celsius)
        if not math.isfinite(celsius) or celsius > self.max_setpoint_c:
            raise SafetyLimitExceeded(
                self.name, f"set point {celsius} C refused: the limit for this heater is {self.max_setpoint_c:g} C "
                           f"(what the reactor tubing and the carrier solvent stand, rules.max_temperature); "
                           f"nothing was written")
        address = self.registers.setpoint
        self.link.write(address, float_to_registers(self._to_device(celsius), self.registers.word_order))
        kept = self._read_float(address)
        if abs(kept - celsius) > 0.01:
            raise ValueClamped(self.name, f"wrote set point {celsius:.2f} C to register {address}, the controller "
                                          f"kept {kept:.2f} C: check its set point low/high limits")
        if self._read_mode() != MODE_AUTO:
            self._write_mode(MODE_AUTO)

    def setpoint(self) -> float | None:
        """The closed-loop set point, or None unless the loop is in auto (off or manual: none active)."""
        if self._read_mode() != MODE_AUTO:
            return None
        return self._read_float(self.registers.setpoint)

    def read_temperature(self) -> float:
        value = self._read_float(self.registers.process_value)
        if not math.isfinite(value):
            raise FatalInstrumentError(self.name, f"process value reads {value}: the input is in error "
                                                  "(open or shorted thermocouple?); check the sensor wiring")
        return value

    def standby(self) -> None:
        """Control mode off: the outputs stop heating."""
        self._write_mode(MODE_OFF)

    # --- more -----------------------------------------------------------------------------------
    def control_mode(self) -> str:
        """'auto', 'manual', 'off' (or 'unknown (N)')."""
        mode = self._read_mode()
        return MODE_NAMES.get(mode, f"unknown ({mode})")

    def units(self) -> str:
        """'C' or 'F': what the controller sends over Modbus (read once from its units register)."""
        if self._units is None:
            address = self._units_register
            if address is None:
                raise WrongDevice(self.name, f"the {self.registers.model} register map has no known temperature-units "
                                             "register: pass units='C' or units='F' to match the controller")
            try:
                code = self.link.read(address, 1)[0]
            except WrongDevice as exc:
                raise WrongDevice(self.name, f"{exc}. If only the units register is missing (PM firmware before "
                                             "2.0), pass units='C' or units='F' to match the controller") from exc
            if code not in UNIT_CODES:
                raise GarbledReply(self.name, f"temperature-units register {address} reads {code}, expected 15 (C) "
                                              "or 30 (F)")
            self._units = UNIT_CODES[code]
        return self._units

    def wait_until_stable(self, band_c: float, hold_s: float, max_wait_s: float, clock: Clock,
                          poll_s: float = STABLE_POLL_S) -> float:
        """Poll until the reading stays within +/- band_c of the set point for hold_s; return the last reading.

        Waits on `clock` (a simulated clock advances at once). Raises HeaterNotStable after max_wait_s.
        """
        setpoint = self.setpoint()
        if setpoint is None:
            raise HeaterNotStable(self.name, f"loop {self.loop} is in {self.control_mode()} mode: no set point to "
                                             "settle at; call set_setpoint first")
        reading, _ = wait_until_stable(self.name, self.read_temperature, setpoint, band_c, hold_s, max_wait_s, clock,
                                       poll_s)
        return reading

    def identify(self) -> dict:
        """What `sdfl doctor` prints: model, loop, connection, units, PV, set point and mode."""
        return {
            "name": self.name,
            "model": self.registers.model,
            "loop": self.loop,
            "connection": self.link.where,
            "unit_id": self.link.unit_id,
            "units": self.units(),
            "process_value_c": round(self.read_temperature(), 3),
            "setpoint_c": self.setpoint(),
            "control_mode": self.control_mode(),
            "registers": {"process_value": self.registers.process_value, "setpoint": self.registers.setpoint,
                          "control_mode": self.registers.control_mode},
        }

    def close(self) -> None:
        self.link.close()

    def __enter__(self) -> WatlowController:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- helpers --------------------------------------------------------------------------------
    def _read_float(self, address: int) -> float:
        raw = registers_to_float(self.link.read(address, 2), self.registers.word_order)
        return (raw - 32.0) / 1.8 if self.units() == "F" else raw

    def _to_device(self, celsius: float) -> float:
        return celsius * 1.8 + 32.0 if self.units() == "F" else celsius

    def _read_mode(self) -> int:
        return self.link.read(self.registers.control_mode, 1)[0]

    def _write_mode(self, mode: int) -> None:
        address = self.registers.control_mode
        self.link.write(address, [mode])
        kept = self._read_mode()
        if kept != mode:
            raise CommandRejected(self.name, f"wrote control mode {MODE_NAMES[mode]} ({mode}) to register {address}, "
                                             f"it reads back {MODE_NAMES.get(kept, kept)} ({kept})")


def _model(model: str | RegisterMap) -> tuple[str, RegisterMap]:
    """(short name, register map) for a model name or a map."""
    if isinstance(model, RegisterMap):
        return model.model.split()[0].lower(), model
    try:
        return model.lower(), MODELS[model.lower()]
    except KeyError:
        raise ValueError(f"unknown Watlow model {model!r}; known: {', '.join(MODELS)}") from None
