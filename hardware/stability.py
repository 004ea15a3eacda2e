"""The one "stable within +/- band for hold seconds" wait, shared by the heater drivers and the
equilibration step."""

from __future__ import annotations

from collections.abc import Callable

from hardware.errors import HeaterNotStable
from hardware.interfaces import Clock


def wait_until_stable(name: str, read_c: Callable[[], float], setpoint_c: float, band_c: float, hold_s: float,
                      max_wait_s: float, clock: Clock, poll_s: float) -> tuple[float, float]:
    """Poll `read_c` until it stays within +/- band_c of setpoint_c for hold_s seconds of `clock`.

    Returns (last reading, seconds waited). Raises HeaterNotStable, with the last reading, after
    max_wait_s. A simulated clock advances at once, so the virtual lab waits no wall time.
    """
    start = clock.now()
    stable_since = None
    while True:
        now = clock.now()
        reading = read_c()
        if abs(reading - setpoint_c) <= band_c:
            stable_since = now if stable_since is None else stable_since
            if now - stable_since >= hold_s:
                return reading, now - start
        else:
            stable_since = None
        if now - start > max_wait_s:
            raise HeaterNotStable(
                name, f"not within +/-{band_c:g} C of the set point {setpoint_c:g} C for {hold_s:g} s after waiting "
                      f"{now - start:.0f} s (limit {max_wait_s:g} s); last reading {reading:.2f} C. Check the heater, "
                      "its fuse and the thermocouple, or tune the PID")
        clock.sleep(poll_s)
