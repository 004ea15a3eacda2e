"""An LCUS-type USB serial relay board played behind a real pseudo-terminal.

The driver opens `emulator.port` like /dev/ttyUSB0. The emulator records every frame, keeps each
channel's state, answers as the board's protocol does (see `hardware.drivers.light_sources`), and
can switch the virtual lab's light sources wired to its channels.
"""

from __future__ import annotations

from hardware.emulators.pty import PtyDevice

START = 0xA0
OP_OFF, OP_ON, OP_OFF_REPLY, OP_ON_REPLY, OP_QUERY = 0x00, 0x01, 0x02, 0x03, 0x05


class RelayEmulator(PtyDevice):
    """`channels` relays; `protocol` "lcus" (silent) or "lcus-feedback" (answers each frame).

    `wiring` maps a channel to a light source (anything with on()/off()) switched with it.
    `mute = True` makes a feedback board stop answering. Frames with a bad checksum are ignored,
    as boards do, and kept in `rejected`.
    """

    def __init__(self, channels: int = 4, protocol: str = "lcus", wiring: dict | None = None):
        self.channels = channels
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
            self._apply(channel, op)

    def _apply(self, channel: int, op: int) -> None:
        if op in (OP_ON, OP_ON_REPLY, OP_OFF, OP_OFF_REPLY):
            on = op in (OP_ON, OP_ON_REPLY)
            self.states[channel] = on
            source = self.wiring.get(channel)
            if source is not None:
                source.on() if on else source.off()
        if self.protocol == "lcus-feedback" and op in (OP_ON_REPLY, OP_OFF_REPLY, OP_QUERY) and not self.mute:
            state = int(self.states[channel])
            self.send(bytes([START, channel, state, (START + channel + state) & 0xFF]))
