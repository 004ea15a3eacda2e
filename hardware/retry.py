"""Command-level retries: repeat one instrument command after a transient error, when it is safe to.

A lost or garbled reply on one command should cost that command a second try, not the whole step
of the experiment. Only commands that are safe to repeat go through `retry`: queries, set points
whose read-back or echo is checked, and stop, pause, standby, off and close. A command that is
not safe to repeat blindly (a Chemyx `start`) needs its own check of what happened first.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

from hardware.errors import TransientInstrumentError

log = logging.getLogger(__name__)

COMMAND_ATTEMPTS = 3
"""Tries of one command (the first and two retries) before its transient error goes up."""

T = TypeVar("T")


class RetryCounter:
    """How many commands were retried, by instrument name. Shared by the instruments of a rig."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, instrument: str) -> None:
        with self._lock:
            self._counts[instrument] += 1

    @property
    def total(self) -> int:
        """Retries of every instrument together."""
        with self._lock:
            return sum(self._counts.values())

    def by_instrument(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def __repr__(self) -> str:
        return f"RetryCounter({self.by_instrument()})"


def retry(command: Callable[[], T], *, instrument: str, what: str, counter: RetryCounter | None = None,
          attempts: int | None = None, before_retry: Callable[[], None] | None = None) -> T:
    """Run `command`; after a transient error run it again, up to `attempts` tries in all
    (default COMMAND_ATTEMPTS, read at each call so a benchmark can compare without retries).

    `what` names the command in the debug log; `before_retry` runs before each new try (to drop
    stale input, for example). The last try's error goes up unchanged; any other error at once.
    """
    attempts = COMMAND_ATTEMPTS if attempts is None else attempts
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    for attempt in range(1, attempts + 1):
        try:
            return command()
        except TransientInstrumentError as exc:
            if attempt == attempts:
                raise
            log.debug("%s: %s failed (%s); try %d of %d", instrument, what, exc, attempt + 1, attempts)
            if counter is not None:
                counter.add(instrument)
            if before_retry is not None:
                before_retry()
    raise AssertionError("unreachable: the last try returns or raises")
