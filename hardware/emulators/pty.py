"""Devices on a real pseudo-terminal: the base of the serial instrument emulators.

The driver opens `device.port` (the pty's slave device, e.g. /dev/pts/7) exactly as it would
open a USB-serial adapter; a daemon thread reads from the master side. `PtyDevice` hands over
raw bytes (binary protocols: the relay board, Modbus RTU); `PtyServer` cuts them into command
lines and writes the replies that `handle_line` returns. `close()` (or `disconnect()`) hangs the line up, which
the driver sees as a vanished port.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import tty
from abc import ABC, abstractmethod

log = logging.getLogger(__name__)

POLL_S = 0.02
"""How often the server thread checks whether it should stop."""


class PtyDevice(ABC):
    """A device on one pseudo-terminal. Subclasses implement `handle_bytes(chunk)`.

    A daemon thread reads what the driver writes and hands it over as it arrives; `write` sends
    bytes back. Use it as a context manager, or call `close()`.
    """

    def __init__(self, *, name: str = "pty-device"):
        self.errors: list[BaseException] = []
        """Exceptions raised while answering (the thread keeps serving after one)."""
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self.name = name
        self._stopping = threading.Event()
        self._closed = False
        self._close_lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name=f"{name} {self.port}", daemon=True)
        self._thread.start()

    @abstractmethod
    def handle_bytes(self, chunk: bytes) -> None:
        """Bytes from the driver, in the order they came (frames may be split or joined)."""

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                ready, _, _ = select.select([self._master], [], [], POLL_S)
                if not ready:
                    continue
                chunk = os.read(self._master, 4096)
            except (OSError, ValueError):  # the fd was closed under us: the line is gone
                return
            if not chunk:
                return
            try:
                self.handle_bytes(chunk)
            except Exception as exc:  # a bug in one answer must not kill the device
                log.exception("%s: error while handling %r", self.name, chunk)
                self.errors.append(exc)

    def send(self, data: bytes) -> None:
        """Send bytes to the driver (from the server thread or a test)."""
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._master, view)
            except OSError:
                return
            view = view[written:]

    def close(self) -> None:
        """Stop the thread and close both ends: the driver's port goes dead (EIO)."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._stopping.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=2.0)
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:  # already closed: nothing left to release
                pass

    disconnect = close
    """Pull the cable: the same as `close()`, named for what a test means by it."""

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PtyServer(PtyDevice):
    """A line-based device. Subclasses implement `handle_line(line) -> bytes | None`.

    Lines end with CR, LF or CR LF; empty lines are ignored. A `None` reply sends nothing.
    """

    def __init__(self, *, name: str = "pty-server"):
        self._buffer = b""
        super().__init__(name=name)

    @abstractmethod
    def handle_line(self, line: bytes) -> bytes | None:
        """The reply to one command line, or None for no reply."""

    def handle_bytes(self, chunk: bytes) -> None:
        self._buffer += chunk
        while True:
            cut = min((i for i in (self._buffer.find(b"\r"), self._buffer.find(b"\n")) if i >= 0), default=-1)
            if cut < 0:
                return
            line, self._buffer = self._buffer[:cut], self._buffer[cut + 1:]
            if line.strip() and not self._stopping.is_set():
                self._answer(line.strip())

    def _answer(self, line: bytes) -> None:
        try:
            reply = self.handle_line(line)
        except Exception as exc:  # a bug in one reply must not kill the device
            log.exception("%s: error while answering %r", self.name, line)
            self.errors.append(exc)
            return
        if reply:
            self.send(reply)
