"""Light sources switched by the rig: the PL excitation LED and the DH-2000-BAL's shutter.

Three ways to switch one, each satisfying `hardware.interfaces.LightSource`:
- `SpectrometerLampSource`: the spectrometer's lamp-enable (strobe) line, seabreeze's
  `strobe_lamp` feature;
- `GpioLightSource`: one GPIO pin of the spectrometer, seabreeze's `gpio` feature (read back);
- `SerialRelaySource`: one channel of an LCUS-type USB serial relay board (pyserial).

seabreeze 2.11's pyseabreeze backend implements neither `strobe_lamp` nor `gpio`, and the HDX
(pyseabreeze only) exposes only its spectrometer, nonlinearity and raw-USB features there, so on an
HDX rig the relay is the way; the first two serve units whose backend has those features.

DH-2000-BAL: its deuterium and halogen lamps stay lit (they need ~30 min to stabilise); "on" and
"off" open and close its shutter, which follows a TTL level on its shutter input. Feed that input
from a GPIO/lamp-enable line of the spectrometer, or switch it through a relay channel; if the
shutter opens on a low level, pass `active_high=False` / `invert=True`.

Switching is safe to repeat (on twice is on), so each switch and each read of a line's state is
sent again after a lost or garbled reply (hardware/retry.py). A plain `lcus` board never answers:
it cannot report a fault, and its frames are never retried.
"""

from __future__ import annotations

import logging
import threading
import time

import serial

from hardware.drivers.oceaninsight import OceanSpectrometer
from hardware.drivers.serial_link import WRITE_TIMEOUT_S
from hardware.errors import (
    FatalInstrumentError,
    GarbledReply,
    InstrumentDisconnected,
    InstrumentTimeout,
    PlatformConfigError,
)
from hardware.retry import RetryCounter, retry

log = logging.getLogger(__name__)

NO_FEATURE_HINT = (
    "seabreeze's pyseabreeze backend implements neither 'strobe_lamp' nor 'gpio' (and cseabreeze cannot "
    "drive an HDX): switch this source with a serial relay channel (SerialRelaySource) instead"
)


def _require(spectrometer: OceanSpectrometer, identifier: str, source: str):
    feature = spectrometer.feature(identifier)
    if feature is None:
        raise PlatformConfigError(
            f"light source {source!r}: {spectrometer.model} {spectrometer.serial_number} on backend "
            f"{spectrometer.backend!r} has no {identifier!r} feature; {NO_FEATURE_HINT}"
        )
    return feature


class SpectrometerLampSource:
    """A source on the spectrometer's lamp-enable line. The line cannot be read back, so `is_on`
    is the last state set. Switched off when built, so the state is known."""

    def __init__(self, spectrometer: OceanSpectrometer, name: str):
        self.name = name
        self.spectrometer = spectrometer
        self._feature = _require(spectrometer, "strobe_lamp", name)
        self._on = False
        self.off()

    def _set(self, on: bool) -> None:
        try:
            self.spectrometer.retried(f"switching lamp-enable for {self.name} {'on' if on else 'off'}",
                                      lambda: self._feature.enable_lamp(bool(on)), self.name)
        except NotImplementedError as exc:
            raise PlatformConfigError(f"light source {self.name!r}: {NO_FEATURE_HINT}") from exc
        self._on = on

    def on(self) -> None:
        self._set(True)

    def off(self) -> None:
        self._set(False)

    def is_on(self) -> bool:
        return self._on


class GpioLightSource:
    """A source (or the DH-2000's TTL shutter input) on one GPIO pin of the spectrometer.

    The pin is made an output when built and switched off; each switch is read back.
    """

    def __init__(self, spectrometer: OceanSpectrometer, pin: int, name: str, active_high: bool = True):
        self.name = name
        self.spectrometer = spectrometer
        self.pin = int(pin)
        self.active_high = active_high
        self._mask = 1 << self.pin
        self._gpio = _require(spectrometer, "gpio", name)
        try:
            with spectrometer.guarded(f"making GPIO pin {pin} an output for {name}"):
                pins = int(self._gpio.get_number_of_gpio_pins())
                if not 0 <= self.pin < pins:
                    raise PlatformConfigError(
                        f"light source {name!r}: GPIO pin {pin} does not exist on {spectrometer.model} "
                        f"{spectrometer.serial_number} (pins 0-{pins - 1})")
                self._gpio.set_gpio_output_enable_vector(self._mask, self._mask)
        except NotImplementedError as exc:
            raise PlatformConfigError(f"light source {name!r}: {NO_FEATURE_HINT}") from exc
        self.off()

    def _level(self) -> bool:
        return self.spectrometer.retried(f"reading GPIO pin {self.pin} of {self.name}",
                                         lambda: bool(int(self._gpio.get_gpio_value_vector()) & self._mask),
                                         self.name)

    def _set(self, on: bool) -> None:
        level = on == self.active_high
        self.spectrometer.retried(f"switching {self.name} {'on' if on else 'off'} on GPIO pin {self.pin}",
                                  lambda: self._gpio.set_gpio_value_vector(self._mask if level else 0, self._mask),
                                  self.name)
        if self._level() != level:
            raise FatalInstrumentError(self.name, (
                f"GPIO pin {self.pin} of {self.spectrometer.serial_number} did not go "
                f"{'high' if level else 'low'}; check that nothing else drives it and the wiring"))

    def on(self) -> None:
        self._set(True)

    def off(self) -> None:
        self._set(False)

    def is_on(self) -> bool:
        return self._level() == self.active_high


# --- USB serial relay boards ----------------------------------------------------------------

PROTOCOLS = ("lcus", "lcus-feedback")
"""LCUS-type boards (CH340 USB-serial, 9600 8N1) take 4-byte frames A0 <channel> <op> <sum>, the
last byte being (A0 + channel + op) & 0xFF, channels from 1. `lcus`: op 01 on, 00 off, no reply.
`lcus-feedback` (boards that answer): op 03 on / 02 off, each answered by A0 <channel> <state>
<sum>, and op 05 asks a channel's state."""

START = 0xA0
OP_OFF, OP_ON, OP_OFF_REPLY, OP_ON_REPLY, OP_QUERY = 0x00, 0x01, 0x02, 0x03, 0x05


def frame(channel: int, op: int) -> bytes:
    return bytes([START, channel, op, (START + channel + op) & 0xFF])


class RelayBoard:
    """One relay board on one serial port, shared by the sources on its channels."""

    _boards: dict[str, RelayBoard] = {}
    _boards_lock = threading.Lock()

    def __init__(self, port: str, protocol: str = "lcus", baudrate: int = 9600, timeout_s: float = 0.5,
                 retries: RetryCounter | None = None):
        if protocol not in PROTOCOLS:
            raise PlatformConfigError(f"relay protocol {protocol!r} is unknown; use one of {', '.join(PROTOCOLS)}")
        self.port = port
        self.protocol = protocol
        self.retries = retries if retries is not None else RetryCounter()
        """Frames sent again after a lost or garbled answer (the first user's counter, for a shared board)."""
        self._lock = threading.Lock()
        self._users = 0
        try:
            self._serial = serial.serial_for_url(port, baudrate=baudrate, timeout=timeout_s,
                                                 write_timeout=max(timeout_s, WRITE_TIMEOUT_S))
        except (serial.SerialException, OSError, ValueError) as exc:
            raise InstrumentDisconnected(f"relay {port}", (
                f"cannot open the relay board's port: {exc}; check the USB cable and the port name "
                "(ls /dev/ttyUSB* /dev/serial/by-id/), and that your user is in the dialout group")) from exc

    @classmethod
    def shared(cls, port: str, protocol: str = "lcus", **options) -> RelayBoard:
        """The open board on `port` (opened on first use)."""
        with cls._boards_lock:
            board = cls._boards.get(port)
            if board is None or not board._serial.is_open:
                board = cls._boards[port] = cls(port, protocol, **options)
            elif board.protocol != protocol:
                raise PlatformConfigError(
                    f"relay board {port} is used with protocol {board.protocol!r} and {protocol!r}; pick one")
            board._users += 1
            return board

    def release(self) -> None:
        """One user less; the port closes with the last one."""
        with self._boards_lock:
            self._users -= 1
            if self._users <= 0:
                self._boards.pop(self.port, None)
                self._serial.close()

    def switch(self, channel: int, on: bool) -> bool | None:
        """Switch a channel; returns the state the board reports, or None if it cannot report."""
        if self.protocol == "lcus":
            self._exchange(frame(channel, OP_ON if on else OP_OFF), reply=False)
            return None
        op = OP_ON_REPLY if on else OP_OFF_REPLY
        return self._ask(channel, op, f"switch channel {channel} {'on' if on else 'off'}")

    def state(self, channel: int) -> bool | None:
        """The channel's state as the board reports it, or None if it cannot report."""
        if self.protocol == "lcus":
            return None
        return self._ask(channel, OP_QUERY, f"state of channel {channel}")

    def _ask(self, channel: int, op: int, what: str) -> bool:
        """Send a frame that the board answers with the channel's state; again after a transient error."""
        return retry(lambda: self._reply_state(channel, self._exchange(frame(channel, op))),
                     instrument=f"relay {self.port}", what=what, counter=self.retries,
                     before_retry=self._discard_input)

    def _discard_input(self, settle_s: float = 0.02) -> None:
        """Drop a late or partial answer before the frame is sent again."""
        with self._lock:
            try:
                timeout, self._serial.timeout = self._serial.timeout, settle_s
                try:
                    self._serial.read(64)
                finally:
                    self._serial.timeout = timeout
            except (serial.SerialException, OSError) as exc:
                raise InstrumentDisconnected(f"relay {self.port}",
                                             f"serial port failed ({exc}); check the USB cable") from exc

    def _exchange(self, request: bytes, reply: bool = True) -> bytes:
        who = f"relay {self.port}"
        with self._lock:
            try:
                self._serial.reset_input_buffer()
                self._serial.write(request)
                self._serial.flush()
                answer = self._serial.read(4) if reply else b""
            except (serial.SerialException, OSError) as exc:
                raise InstrumentDisconnected(who, f"serial port failed ({exc}); check the USB cable") from exc
        if reply and len(answer) < 4:
            raise InstrumentTimeout(who, f"no answer to {request.hex(' ')} (got {answer.hex(' ') or 'nothing'})")
        return answer

    def _reply_state(self, channel: int, answer: bytes) -> bool:
        start, ch, state, total = answer
        if start != START or ch != channel or state not in (0, 1) or total != (start + ch + state) & 0xFF:
            raise GarbledReply(f"relay {self.port}", f"answer {answer.hex(' ')} for channel {channel} does not parse")
        return bool(state)


class SerialRelaySource:
    """A source switched by channel `channel` (from 1) of an LCUS-type USB relay board.

    With protocol `lcus-feedback` each switch is confirmed by the board and `is_on` asks it; with
    plain `lcus` the board cannot answer and `is_on` is the last state set. `invert=True` for a
    source that is on while the relay is released. Switched off when built.
    """

    def __init__(self, port: str, channel: int, name: str, protocol: str = "lcus", invert: bool = False,
                 baudrate: int = 9600, timeout_s: float = 0.5, settle_s: float = 0.05,
                 retries: RetryCounter | None = None):
        if not 1 <= int(channel) <= 8:
            raise PlatformConfigError(f"light source {name!r}: relay channel {channel} is not in 1-8")
        self.name = name
        self.channel = int(channel)
        self.invert = invert
        self.settle_s = settle_s
        """Wait after a switch the board cannot confirm: the frame is still on the wire, the contact
        bounces for a few ms and the lamp or shutter needs a moment before a spectrum is taken."""
        self.board = RelayBoard.shared(port, protocol, baudrate=baudrate, timeout_s=timeout_s, retries=retries)
        self._on = False
        self.off()

    def _set(self, on: bool) -> None:
        energised = on != self.invert
        reported = self.board.switch(self.channel, energised)
        if reported is None and self.settle_s > 0:
            time.sleep(self.settle_s)
        if reported is not None and reported != energised:
            raise FatalInstrumentError(self.name, (
                f"relay channel {self.channel} on {self.board.port} reports "
                f"{'closed' if reported else 'open'} after it was switched {'on' if energised else 'off'}"))
        self._on = on

    def on(self) -> None:
        self._set(True)

    def off(self) -> None:
        self._set(False)

    def is_on(self) -> bool:
        reported = self.board.state(self.channel)
        return self._on if reported is None else reported != self.invert

    def close(self) -> None:
        self.board.release()
