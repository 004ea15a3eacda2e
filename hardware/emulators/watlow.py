"""A Watlow F4T / EZ-ZONE PM played on a real Modbus connection, its physics from the virtual lab's heater.

`WatlowTcpEmulator` serves Modbus TCP on 127.0.0.1 (a free port) with pymodbus's own server;
`WatlowRtuEmulator` serves Modbus RTU on a pseudo-terminal (the driver opens `emulator.device`
like a USB-RS485 adapter), framing with pymodbus's RTU framer. Both answer from the same register
model: reading the process value asks `VirtualHeater.read_temperature()`, writing the set point or
the control mode calls `set_setpoint` / `standby`. Only the registers of the chosen model and loop
exist; any other address gets the "illegal data address" exception, as on a real controller.
The lab's clock is simulated, so nothing here ever sleeps for physics.

Fault switches: `silent = N` (the next N requests go unheard), `garble = N` (the next N requests
are served but their replies are malformed: one register too many, or a wrong write echo), `reply_exception(code, times)`
(Modbus exception replies), `disconnect()` (the controller goes away), `clamp_setpoint_c` (the set
point is silently clamped, which the driver's read-back catches). The lab's own faults work
too: `lab.faults.plan.heater_overshoot = True`, and its transient faults act on every request: a
lost one (`timeouts_next`, `timeout_probability`) goes unanswered and is not executed, a garbled
one (`garbled_probability`) is executed and answered with a malformed reply. One client at a time.
"""

from __future__ import annotations

import asyncio
import math
import struct
import threading
from abc import ABC, abstractmethod

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ExceptionResponse
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from hardware.drivers.watlow import MODE_AUTO, MODE_MANUAL, MODE_OFF, MODELS, UNITS_C, UNITS_F, RegisterMap
from hardware.emulators.pty import PtyDevice
from hardware.errors import GarbledReply, InstrumentTimeout, SafetyLimitExceeded
from hardware.virtual.devices import VirtualHeater

POLL_S = 0.02


def float_registers(value: float, word_order: str = "little") -> list[int]:
    """An IEEE 754 float as two registers, low word first by default (written apart from the driver's)."""
    high, low = struct.unpack(">HH", struct.pack(">f", value))
    return [low, high] if word_order == "little" else [high, low]


def registers_float(registers: list[int], word_order: str = "little") -> float:
    low, high = registers if word_order == "little" else registers[::-1]
    return struct.unpack(">f", struct.pack(">HH", high, low))[0]


class WatlowEmulator(ABC):
    """The register model and fault switches shared by the TCP and RTU emulators."""

    def __init__(self, heater: VirtualHeater, *, model: str | RegisterMap = "f4t", loop: int = 1,
                 units: str = "C", rtu: bool = False):
        base = model if isinstance(model, RegisterMap) else MODELS[model]
        self.registers = base.for_loop(loop)
        self.heater = heater
        self.units_code = UNITS_F if units == "F" else UNITS_C
        self.silent = 0
        self.garble = 0
        self.clamp_setpoint_c: float | None = None
        """Set: the set point high limit clamps instead of refusing (as some controllers do)."""
        self.writes: list[tuple[int, list[int]]] = []
        """Every write the controller applied: (address, registers)."""
        self.requests = 0
        self._exceptions: list[int] = []
        self._fault: str | int | None = None
        active = heater.setpoint()
        self._mode = MODE_OFF if active is None else MODE_AUTO
        self._setpoint_c = heater.config.ambient if active is None else active
        regs = self.registers
        units = (regs.units_rtu or regs.units) if rtu else regs.units
        # address -> (name, number of registers)
        self._points = {regs.setpoint: ("setpoint", 2), regs.process_value: ("process_value", 2),
                        regs.control_mode: ("control_mode", 1)}
        if units is not None:
            self._points[units] = ("units", 1)

    # --- fault switches -------------------------------------------------------------------------
    def reply_exception(self, code: int = ExcCodes.DEVICE_BUSY, times: int = 1) -> None:
        """Answer the next `times` requests with Modbus exception `code`."""
        self._exceptions.extend([int(code)] * times)

    @property
    def mode(self) -> int:
        return self._mode

    # --- register model -------------------------------------------------------------------------
    def read(self, address: int, count: int) -> list[int] | int:
        """Registers address..address+count-1, or a Modbus exception code."""
        out: list[int] = []
        for name, _ in self._span(address, count):
            if name is None:
                return ExcCodes.ILLEGAL_ADDRESS
            out += self._get(name)
        return out

    def write(self, address: int, values: list[int]) -> int | None:
        """Apply a write; None when done, else a Modbus exception code."""
        spans = self._span(address, len(values))
        if any(name is None for name, _ in spans):
            return ExcCodes.ILLEGAL_ADDRESS
        for name, start in spans:
            words = values[start - address:start - address + self._points[start][1]]
            code = self._set(name, words)
            if code:
                return code
        self.writes.append((address, list(values)))
        return None

    def _span(self, address: int, count: int) -> list[tuple[str | None, int]]:
        """Split a request into whole points; (None, a) where it starts or ends inside nothing."""
        spans, a = [], address
        while a < address + count:
            point = self._points.get(a)
            if point is None or a + point[1] > address + count:
                return [(None, a)]
            spans.append((point[0], a))
            a += point[1]
        return spans

    def _get(self, name: str) -> list[int]:
        order = self.registers.word_order
        if name == "process_value":
            return float_registers(self._to_device(self.heater.read_temperature()), order)
        if name == "setpoint":
            return float_registers(self._to_device(self._setpoint_c), order)
        return [self._mode if name == "control_mode" else self.units_code]

    def _set(self, name: str, words: list[int]) -> int | None:
        if name == "process_value":
            return ExcCodes.ILLEGAL_ADDRESS  # read only
        if name == "units":
            if words[0] not in (UNITS_C, UNITS_F):
                return ExcCodes.ILLEGAL_VALUE
            self.units_code = words[0]
            return None
        if name == "setpoint":
            value = registers_float(words, self.registers.word_order)
            celsius = (value - 32.0) / 1.8 if self.units_code == UNITS_F else value
            if not math.isfinite(celsius) or celsius > self.heater.max_setpoint_c:
                return ExcCodes.ILLEGAL_VALUE  # the controller's own set point high limit
            if self.clamp_setpoint_c is not None:
                celsius = min(celsius, self.clamp_setpoint_c)
            try:
                if self._mode == MODE_AUTO:
                    self.heater.set_setpoint(celsius)
            except SafetyLimitExceeded:
                return ExcCodes.ILLEGAL_VALUE
            self._setpoint_c = celsius
            return None
        mode = words[0]
        if mode not in (MODE_AUTO, MODE_MANUAL, MODE_OFF):
            return ExcCodes.ILLEGAL_VALUE
        try:
            if mode == MODE_AUTO:
                self.heater.set_setpoint(self._setpoint_c)
            else:  # manual (open-loop power) is not modelled: the heater stops regulating
                self.heater.standby()
        except SafetyLimitExceeded:
            return ExcCodes.ILLEGAL_VALUE
        self._mode = mode
        return None

    def _to_device(self, celsius: float) -> float:
        return celsius * 1.8 + 32.0 if self.units_code == UNITS_F else celsius

    # --- per request, from the server's hooks ---------------------------------------------------
    def _on_request(self) -> None:
        self.requests += 1
        self._fault = None
        if self.silent > 0:
            self.silent -= 1
            self._fault = "silent"
        elif self.garble > 0:
            self.garble -= 1
            self._fault = "garble"
        elif self._exceptions:
            self._fault = self._exceptions.pop(0)

    async def _action(self, function_code, start_address, address, count, registers, set_values):
        """pymodbus calls this for every register request (the block spans all addresses)."""
        if self._fault == "silent" or isinstance(self._fault, int):
            return None  # unheard, or refused with an exception by the reply hook
        try:
            with self.heater._lab.faults.command(self.heater.name):  # the lab's fault plan, once per request
                return self._apply_request(start_address, address, count, registers, set_values)
        except InstrumentTimeout:  # lost: not executed, no reply
            self._fault = "silent"
        except GarbledReply:  # executed; the reply is malformed
            self._fault = "garble"
        return None

    def _apply_request(self, start_address, address, count, registers, set_values) -> ExcCodes | None:
        if set_values is None:
            result = self.read(address, count)
            if isinstance(result, int):
                return ExcCodes(result)
            registers[address - start_address:address - start_address + count] = result
            return None
        code = self.write(address, list(set_values))
        return None if code is None else ExcCodes(code)

    def _on_reply(self, pdu):
        if isinstance(self._fault, int):
            return ExceptionResponse(pdu.function_code & 0x7F, self._fault, device_id=pdu.dev_id,
                                     transaction=pdu.transaction_id)
        if self._fault == "garble":
            if pdu.registers:
                pdu.registers = list(pdu.registers) + [0xBAD]
            else:
                pdu.address += 1
        return pdu

    def _simdevice(self, device_id: int) -> SimDevice:
        return SimDevice(id=device_id, action=self._action,
                         simdata=[SimData(0, count=65536, values=0, datatype=DataType.REGISTERS)])

    @abstractmethod
    def close(self) -> None:
        """Stop serving (each transport closes its own way)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class WatlowTcpEmulator(WatlowEmulator):
    """Modbus TCP on 127.0.0.1:`port` (any unit id), served by pymodbus in a background thread."""

    def __init__(self, heater: VirtualHeater, *, model: str | RegisterMap = "f4t", loop: int = 1, units: str = "C"):
        super().__init__(heater, model=model, loop=loop, units=units)
        self.host = "127.0.0.1"
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: ModbusTcpServer | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="watlow-tcp-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(5.0) or self._error:
            raise RuntimeError(f"the Watlow emulator did not start: {self._error}")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(self._start())
            self.port = self._server.transport.sockets[0].getsockname()[1]
        except BaseException as exc:  # reported to the constructor
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> ModbusTcpServer:
        server = _TcpServer(self._simdevice(0), address=(self.host, 0), trace_pdu=self._trace_pdu,
                            trace_packet=self._trace_packet)
        await server.serve_forever(background=True)
        return server

    def _trace_pdu(self, sending: bool, pdu):
        if not sending:
            self._on_request()
            return pdu
        return self._on_reply(pdu)

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        return b"" if sending and self._fault == "silent" else data

    def disconnect(self) -> None:
        """The controller goes away: listener and open connections close."""
        if self._server is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5.0)

    async def _shutdown(self) -> None:
        # A client that has just connected is accepted, and its transport made, a few loop turns
        # later: let that happen first, or the connection outlives the shutdown half-open.
        for _ in range(5):
            await asyncio.sleep(0)
        await self._server.shutdown()
        for handler in self._server.handlers:
            if handler.transport:
                handler.transport.abort()
        for _ in range(5):  # let the socket closes run before disconnect() returns
            await asyncio.sleep(0)

    def close(self) -> None:
        if not self._loop.is_closed():
            self.disconnect()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5.0)
            self._loop.close()


class _TcpServer(ModbusTcpServer):
    """pymodbus's TCP server, remembering its connection handlers so `disconnect()` can cut them all."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.handlers: list = []

    def callback_new_connection(self):
        handler = super().callback_new_connection()
        self.handlers.append(handler)
        return handler


class WatlowRtuEmulator(PtyDevice, WatlowEmulator):
    """Modbus RTU on a pseudo-terminal: the driver opens `device`. Requests for other unit ids go unanswered."""

    def __init__(self, heater: VirtualHeater, *, model: str | RegisterMap = "pm", loop: int = 1, unit_id: int = 1,
                 units: str = "C"):
        WatlowEmulator.__init__(self, heater, model=model, loop=loop, units=units, rtu=True)
        self.unit_id = unit_id
        self._core = SimCore(self._simdevice(unit_id))
        self._framer = FramerRTU(DecodePDU(True))
        self._frames = b""
        self._loop: asyncio.AbstractEventLoop | None = None
        PtyDevice.__init__(self, name="watlow-rtu-emulator")
        self.device = self.port

    def handle_bytes(self, chunk: bytes) -> None:
        """Frames from the driver (runs in the server thread, which owns the event loop)."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        self._frames += chunk
        used, request = self._framer.handleFrame(self._frames, 0, 0)
        self._frames = self._frames[used:]
        if request is None or request.dev_id != self.unit_id:
            return
        self._on_request()
        reply = self._loop.run_until_complete(request.datastore_update(self._core, request.dev_id))
        reply.dev_id = request.dev_id
        reply = self._on_reply(reply)
        if self._fault != "silent":
            self.send(self._framer.buildFrame(reply))

    def close(self) -> None:
        """Hang up the line (as if the adapter were unplugged) and free the event loop."""
        PtyDevice.close(self)
        if self._loop is not None and not self._thread.is_alive():
            self._loop.close()
            self._loop = None

    disconnect = close
