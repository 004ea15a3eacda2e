"""A reactor's slot on the Prefect server, held by a lease that outlives a server restart.

The server frees the slot of a run that stops renewing its lease (a killed process) LEASE_SECONDS
after the last renewal. Prefect's own `concurrency()` renews at 3/4 of the lease and, for a strict
limit, cancels the run when three quick renewals fail: a Prefect server restarted while a run was
due to renew (15 s away is enough) took a healthy experiment down with it. Here the lease is
renewed every RENEW_EVERY_S and a failed renewal is tried again every few seconds, so a server
away for up to about 45 s costs nothing. Only a lease the server no longer knows, or one that
went unrenewed for LEASE_SECONDS, counts as lost: then the slot may be someone else's, and the
run is interrupted (KeyboardInterrupt in its main thread), so two runs never drive one rig.
"""

from __future__ import annotations

import _thread
import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Iterator
from uuid import UUID

LEASE_SECONDS = 60.0
"""How long the server keeps the slot of a run that stopped renewing it (60 s is its minimum)."""
RENEW_EVERY_S = 15.0
RETRY_S = 2.0
"""A renewal that failed (the server away) is tried again this often."""
BUSY_RETRY_S = 1.0
"""A run refused the slot asks again after this long, unless the server says when."""

_log = logging.getLogger(__name__)


class LimitMissing(Exception):
    """The reactor's concurrency limit does not exist on the server (yet)."""


def take_slot(name: str, holder=None) -> UUID:
    """Wait for the slot of limit `name` and return its lease. LimitMissing if there is no such limit."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError

    with get_client(sync_client=True) as client:
        while True:
            try:
                response = client.increment_concurrency_slots_with_lease(
                    names=[name], slots=1, mode="concurrency", lease_duration=LEASE_SECONDS, holder=holder)
            except PrefectHTTPStatusError as exc:
                if exc.response.status_code != 423:  # 423: the slot is taken; wait as the server says
                    raise
                time.sleep(float(exc.response.headers.get("Retry-After", BUSY_RETRY_S)))
                continue
            body = response.json()
            if not body.get("limits"):
                raise LimitMissing(name)
            return UUID(str(body["lease_id"]))


def release_slot(lease_id: UUID) -> None:
    """Give the slot back (the server frees it anyway when its lease runs out)."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            client.release_concurrency_slots_with_lease(lease_id)
    except Exception as exc:  # noqa: BLE001 - the lease runs out on its own
        _log.warning("the reactor's slot was not released (%s); the server frees it within %.0f s",
                     exc, LEASE_SECONDS)


def lease_gone(exc: BaseException) -> bool:
    """True when the server answered that it does not know the lease (it expired and was freed)."""
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None) in (404, 410)


class LeaseKeeper:
    """Renews a lease from a daemon thread while the block runs (see the module's rules)."""

    def __init__(self, lease_id: UUID, what: str, on_lost=_thread.interrupt_main):
        self.lease_id, self.what, self.on_lost = lease_id, what, on_lost
        self.lost = False
        self._stop = threading.Event()
        # The thread sees the run's Prefect settings (its API URL), as Prefect's own threads do.
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._keep,),
                                        name="sdfl-reactor-lease", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _keep(self) -> None:
        from prefect.client.orchestration import get_client

        renewed = time.monotonic()
        wait = RENEW_EVERY_S
        while not self._stop.wait(wait):
            try:
                with get_client(sync_client=True) as client:
                    client.renew_concurrency_lease(self.lease_id, lease_duration=LEASE_SECONDS)
                renewed, wait = time.monotonic(), RENEW_EVERY_S
                continue
            except Exception as exc:  # noqa: BLE001 - judged below
                gone = lease_gone(exc)
                error = exc
            if not gone and time.monotonic() - renewed < LEASE_SECONDS:
                _log.warning("the lease on %s could not be renewed (%s); trying again in %.0f s",
                             self.what, str(error).splitlines()[0] if str(error) else type(error).__name__, RETRY_S)
                wait = RETRY_S
                continue
            if self._stop.is_set():
                return
            self.lost = True
            _log.error("the lease on %s is lost (%s): the slot may be another run's now; stopping this run",
                       self.what, "the server no longer knows it" if gone else f"not renewed for {LEASE_SECONDS:.0f} s")
            self.on_lost()
            return


@contextlib.contextmanager
def held_slot(name: str, holder=None) -> Iterator[LeaseKeeper]:
    """Take the slot of limit `name`, keep its lease while the block runs, and give it back."""
    lease_id = take_slot(name, holder)
    try:
        with LeaseKeeper(lease_id, name) as keeper:
            yield keeper
    finally:
        release_slot(lease_id)
