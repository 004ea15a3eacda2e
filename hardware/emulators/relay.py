"""An LCUS-type USB serial relay board played behind a real pseudo-terminal.

The driver opens `emulator.port` like /dev/ttyUSB0. The emulator records every frame, keeps each
channel's state, answers as the board's protocol does (see `hardware.drivers.light_sources`), and
can switch the virtual lab's light sources wired to its channels.

Given the lab, a feedback board's frames follow the lab's fault plan (a lost frame is not executed
and not answered; a garbled one is executed and answered with noise). A plain board answers
nothing, so its frames are always executed: a contact switching a lamp is a wire, not a command.
"""

from __future__ import annotations

import contextlib

from hardware.emulators.pty import PtyDevice
from hardware.errors import GarbledReply, InstrumentTimeout

START = 0xA0
OP_OFF, OP_ON, OP_OFF_REPLY, OP_ON_REPLY, OP_QUERY = 0x00, 0x01, 0x02, 0x03, 0x05
GARBAGE = bytes([0xA0, 0x8F, 0x3F, 0x00])
"""A four-byte answer that does not parse (wrong channel and state, bad checksum)."""


class RelayEmulator(PtyDevice):
    """`channels` relays; `protocol` "lcus" (silent) or "lcus-feedback" (answers each frame).

    `wiring` maps a channel to a light source (anything with on()/off()) switched with it; `lab`
    (optional) is the virtual lab whose fault plan spoils a feedback board's frames.
    `mute = True` makes a feedback board stop answering. Frames with a bad checksum are ignored,
    as boards do, and kept in `rejected`.
    """

    def __init__(self, channels: int = 4, protocol: str = "lcus", wiring: dict | None = None, lab=None):
        self.channels = channels
        self.lab = lab
        self.protocol = protocol
        self.wiring = dict(wiring or {})
        self.states = {ch: False for ch in range(1, channels + 1)}
        self.frames: list[bytes] = []
        self.rejected: list[bytes] = []
        self.mute = False
        self._buffer = b""
        super().__init__(name="relay-emulator")

    def handle_bytes(self, chunk: bytes) -> None:
        self._buffer += chunk
        self._parse()

    def _parse(self) -> None:
        while len(self._buffer) >= 4:
            if self._buffer[0] != START:  # resynchronise on the start byte
                self._buffer = self._buffer[1:]
                continue
            request, self._buffer = self._buffer[:4], self._buffer[4:]
            start, channel, op, total = request
            if total != (start + channel + op) & 0xFF or channel not in self.states:
                self.rejected.append(request)
                continue
            self.frames.append(request)
            self._frame(channel, op)

    def _frame(self, channel: int, op: int) -> None:
        """Execute one frame under the lab's fault plan (feedback boards) and answer it."""
        try:
            with self._faults():
                reply = self._apply(channel, op)
        except InstrumentTimeout:  # lost on the way: not executed, not answered
            return
        except GarbledReply:  # executed; the answer is noise
            reply = GARBAGE if self._answers(op) else None
        if reply is not None and not self.mute:
            self.send(reply)

    def _faults(self):
        if self.lab is None:
            return contextlib.nullcontext()
        if self.protocol == "lcus-feedback":
            return self.lab.faults.command(self.name)
        return self.lab.faults.fault_free()

    def _answers(self, op: int) -> bool:
        return self.protocol == "lcus-feedback" and op in (OP_ON_REPLY, OP_OFF_REPLY, OP_QUERY)

    def _apply(self, channel: int, op: int) -> bytes | None:
        """Switch (and the wired source with it); the board's answer, or None."""
        if op in (OP_ON, OP_ON_REPLY, OP_OFF, OP_OFF_REPLY):
            on = op in (OP_ON, OP_ON_REPLY)
            self.states[channel] = on
            source = self.wiring.get(channel)
            if source is not None:
                source.on() if on else source.off()
        if not self._answers(op):
            return None
        state = int(self.states[channel])
        return bytes([START, channel, state, (START + channel + state) & 0xFF])
