"""A serial line shared by drivers: one command out, one framed reply back, every byte logged.

`SerialLink` talks to a real port (or any pyserial URL); `ByteLog` records the traffic and saves
it as JSON lines; `ReplayLink` plays a saved log back so a recorded experiment runs through a
driver without the instrument.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import serial
import serial.tools.list_ports

from hardware.errors import InstrumentDisconnected

try:  # termios.error is what a hung-up tty raises on flush; it is not an OSError
    import termios

    _TTY_ERRORS: tuple[type[BaseException], ...] = (serial.SerialException, OSError, termios.error)
except ImportError:  # pragma: no cover - Windows
    _TTY_ERRORS = (serial.SerialException, OSError)


STALE_SETTLE_S = 0.05
"""How long `discard_input` waits for the rest of a late reply (about 50 characters at 9600 baud)."""

WRITE_TIMEOUT_S = 2.0
"""How long a write may block before the port counts as stuck. A command of a few dozen bytes
leaves in milliseconds; this only catches a port that stops taking bytes. It is kept apart from
the (short) read timeout because pyserial on POSIX checks the write deadline after a successful
`os.write`: a process paused by a busy machine past a short deadline reported a write that went
through as timed out."""


class Link(Protocol):
    """What a driver needs from a line: a port name, a lock, `exchange`, `discard_input` and `close`."""

    port: str
    lock: threading.RLock

    def exchange(self, command: bytes, terminator: bytes = b">") -> bytes:
        ...

    def discard_input(self) -> None:
        """Drop input no command is waiting for (a late reply), before a command is sent again."""
        ...

    def close(self) -> None:
        ...


# --- the byte log ------------------------------------------------------------------------


@dataclass(frozen=True)
class LogEntry:
    t: float
    """Seconds since the log started."""
    direction: str
    """"tx" (to the instrument) or "rx" (from it)."""
    data: bytes


@dataclass
class ByteLog:
    """Every byte written and read on a link, with its time and direction."""

    meta: dict = field(default_factory=dict)
    entries: list[LogEntry] = field(default_factory=list)
    _t0: float = field(default_factory=time.monotonic, repr=False)

    def record(self, direction: str, data: bytes) -> None:
        if direction not in ("tx", "rx"):
            raise ValueError(f"direction must be 'tx' or 'rx', not {direction!r}")
        self.entries.append(LogEntry(round(time.monotonic() - self._t0, 6), direction, bytes(data)))

    def sent(self) -> list[bytes]:
        """The bytes of every write, in order."""
        return [e.data for e in self.entries if e.direction == "tx"]

    def save(self, path: str | Path) -> Path:
        """Write JSON lines: an optional {"meta": ...} line, then one line per write or read.

        Bytes are stored as hex; "text" is a readable copy for people and is ignored on load.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            if self.meta:
                f.write(json.dumps({"meta": self.meta}) + "\n")
            for e in self.entries:
                text = e.data.decode("ascii", errors="backslashreplace")
                f.write(json.dumps({"t": e.t, "dir": e.direction, "hex": e.data.hex(), "text": text}) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> ByteLog:
        log = cls()
        for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                if "meta" in item:
                    log.meta = dict(item["meta"])
                    continue
                log.entries.append(LogEntry(float(item["t"]), str(item["dir"]), bytes.fromhex(item["hex"])))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: not a byte-log line ({exc}): {line[:80]!r}") from exc
        return log


# --- a real port -----------------------------------------------------------------------------


def available_ports() -> list[str]:
    """Serial ports the system knows, with their descriptions."""
    return [f"{p.device} ({p.description})" for p in serial.tools.list_ports.comports()]


class SerialLink:
    """One open serial port (8N1). `exchange` holds the lock, so several drivers (the channels of
    one multi-channel pump) can share it; hold `lock` yourself to keep a sequence together."""

    def __init__(self, port_or_url: str, baudrate: int = 9600, timeout_s: float = 1.0, *,
                 log: ByteLog | None = None):
        self.port = str(port_or_url)
        self.timeout_s = float(timeout_s)
        self.log = log
        self.lock = threading.RLock()
        try:
            self._serial = serial.serial_for_url(
                self.port, baudrate=baudrate, bytesize=serial.EIGHTBITS, parity=serial.PARITY_NONE,
                stopbits=serial.STOPBITS_ONE, timeout=self.timeout_s,
                write_timeout=max(self.timeout_s, WRITE_TIMEOUT_S),
            )
        except _TTY_ERRORS as exc:
            ports = available_ports()
            listed = "; ".join(ports) if ports else "none found"
            raise InstrumentDisconnected(
                self.port,
                f"cannot open serial port {self.port!r} ({exc}). Available ports: {listed}. Fix: check the "
                "cable and that the instrument is on, then put the right port in the platform config "
                "(the pump's device.port); on Linux your user may need to be in the 'dialout' group.",
            ) from exc

    def exchange(self, command: bytes, terminator: bytes = b">") -> bytes:
        """Write `command`, read until `terminator` or the timeout; return what came back.

        A reply that does not end with `terminator` is a short read (the caller decides what it
        means). Stale input is dropped before writing.
        """
        with self.lock:
            try:
                self._serial.reset_input_buffer()
                self._serial.write(command)
                self._serial.flush()
                if self.log is not None:
                    self.log.record("tx", command)
                reply = self._serial.read_until(terminator)
            except _TTY_ERRORS as exc:
                raise InstrumentDisconnected(self.port, f"serial port {self.port!r} failed: {exc}") from exc
            if self.log is not None:
                self.log.record("rx", reply)
            return bytes(reply)

    def discard_input(self, settle_s: float = STALE_SETTLE_S) -> None:
        """Drop what the instrument sent that no command waits for: a reply that came too late,
        or the rest of a garbled one. Waits `settle_s` for it to finish arriving."""
        with self.lock:
            try:
                timeout = self._serial.timeout
                self._serial.timeout = settle_s
                try:
                    stale = self._serial.read(4096)
                finally:
                    self._serial.timeout = timeout
            except _TTY_ERRORS as exc:
                raise InstrumentDisconnected(self.port, f"serial port {self.port!r} failed: {exc}") from exc
            if stale and self.log is not None:
                self.log.record("rx", stale)

    def close(self) -> None:
        with self.lock:
            try:
                self._serial.close()
            except _TTY_ERRORS:
                pass


# --- replay ------------------------------------------------------------------------------------


class ReplayMismatch(AssertionError):
    """A replayed driver sent something other than what the recording holds."""

    def __init__(self, step: int, expected: bytes | None, got: bytes):
        self.step, self.expected, self.got = step, expected, got
        want = "nothing more (the recording ended)" if expected is None else repr(expected)
        super().__init__(f"replay step {step}: expected {want}, got {got!r}")


class ReplayLink:
    """Plays a saved `ByteLog` back: each `exchange` must send the recorded bytes and gets the
    recorded reply (including recorded silences and garbage)."""

    def __init__(self, log: ByteLog | str | Path):
        if not isinstance(log, ByteLog):
            self.port = f"replay://{log}"
            log = ByteLog.load(log)
        else:
            self.port = "replay://memory"
        self.lock = threading.RLock()
        self.steps: list[tuple[bytes, bytes]] = []
        for e in log.entries:
            if e.direction == "tx":
                self.steps.append((e.data, b""))
            elif self.steps:
                tx, rx = self.steps[-1]
                self.steps[-1] = (tx, rx + e.data)
        self.position = 0

    @property
    def finished(self) -> bool:
        """True when every recorded step was replayed."""
        return self.position == len(self.steps)

    def exchange(self, command: bytes, terminator: bytes = b">") -> bytes:
        with self.lock:
            if self.position >= len(self.steps):
                raise ReplayMismatch(self.position, None, command)
            expected, reply = self.steps[self.position]
            if command != expected:
                raise ReplayMismatch(self.position, expected, command)
            self.position += 1
            return reply

    def discard_input(self) -> None:
        """Late input was recorded as part of the reply before it: nothing to drop."""

    def close(self) -> None:
        """A replay holds no port: nothing to release."""
