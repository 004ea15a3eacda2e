"""Clocks: the wall clock for real rigs, a simulated clock for the virtual lab."""

from __future__ import annotations

import threading
import time


class WallClock:
    """Real seconds since construction; `sleep` really waits."""

    def __init__(self) -> None:
        self._t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self._t0

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class SimClock:
    """Simulated seconds shared by every virtual instrument.

    `sleep` moves time forward at once, so an hour-long equilibration costs no wall time.
    Devices read `now()` and compute their state from it (heater temperature, dispensed
    volume, what is in the flow cell).
    """

    def __init__(self, start: float = 0.0, pace: float | None = None) -> None:
        """`pace`: simulated seconds per wall second. None (default): time moves at once. A pace
        makes every wait also cost wall time, so several virtual reactors overlap their waits
        the way real ones do (used to measure multi-reactor speed-ups)."""
        if pace is not None and not pace > 0:
            raise ValueError(f"pace must be a positive number of simulated seconds per wall second, got {pace}")
        self._t = float(start)
        self._lock = threading.Lock()
        self.pace = pace

    def now(self) -> float:
        return self._t

    def sleep(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"cannot sleep a negative time ({seconds} s)")
        with self._lock:
            self._t += float(seconds)
        if self.pace is not None:
            time.sleep(seconds / self.pace)

    def advance(self, seconds: float) -> None:
        """Same as `sleep`; reads better when a device spends time (an integration)."""
        self.sleep(seconds)
