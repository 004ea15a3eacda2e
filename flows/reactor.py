"""The reactor lock: one flow run at a time drives a rig, across processes, workers and machines.

With a Prefect server (PREFECT_API_URL set, as for every worker), the lock is a global concurrency
limit named `reactor-<platform name>` with one slot, taken strictly (a missing limit is created,
never skipped) with a lease the server frees if the holder dies. Without one (Prefect's temporary
local API) it is a file lock under PREFECT_HOME, which the OS frees if the holder dies: the
temporary API has no service that expires leases, so a killed run would keep the limit for ever.
A run that has to wait says so in its log.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

LEASE_SECONDS = 60.0
"""How long the server keeps the slot of a run that stopped renewing it (a killed process).
Renewed every 3/4 of it while held; 60 s is the server's minimum."""

WAIT_NOTICE_SECONDS = 1.0
"""A run still waiting for the reactor after this long logs that it is waiting."""

_HELD: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("sdfl_reactors_held", default=frozenset())


def limit_name(platform_name: str) -> str:
    """The lock's name: one per reactor (a platform file describes one rig)."""
    return f"reactor-{platform_name}"


@contextmanager
def reactor_lock(platform_name: str, logger: logging.Logger | logging.LoggerAdapter | None = None) -> Iterator[None]:
    """Hold the reactor of `platform_name` for the duration of the block.

    Waits as long as another run holds the reactor, and logs that it is waiting. Re-entrant
    within one flow run (a nested flow on the same reactor does not wait for itself).
    """
    name = limit_name(platform_name)
    held = _HELD.get()
    if name in held:
        yield
        return
    log = logger or logging.getLogger(__name__)
    with ExitStack() as stack:
        started = time.monotonic()
        if _prefect_server():
            _acquire_slot(stack, name, platform_name, log)
        else:
            _acquire_file_lock(stack, name, platform_name, log)
        if time.monotonic() - started >= WAIT_NOTICE_SECONDS:
            log.info("reactor %s acquired after %.1f s", platform_name, time.monotonic() - started)
        token = _HELD.set(held | {name})
        stack.callback(_HELD.reset, token)
        yield


def _prefect_server() -> bool:
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)


def ensure_reactor_limit(platform_name: str) -> bool:
    """Create the reactor's concurrency limit (1 slot) if it does not exist. True if created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    name = limit_name(platform_name)
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return False
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        except ObjectAlreadyExists:  # another run created it in the meantime
            return False
    return True


def _acquire_slot(stack: ExitStack, name: str, platform_name: str, log) -> None:
    """Take the limit's slot, creating the limit first if it does not exist yet."""
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError

    notice = threading.Timer(WAIT_NOTICE_SECONDS, log.info,
                             ("reactor %s is busy with another run; waiting", platform_name))
    notice.daemon = True
    notice.start()
    try:
        try:
            stack.enter_context(_slot(name))
        except ConcurrencySlotAcquisitionError as exc:
            if exc.__cause__ is not None:  # an HTTP or connection error, not a missing limit
                raise
            if ensure_reactor_limit(platform_name):
                log.info("created the concurrency limit %s (1 slot)", name)
            stack.enter_context(_slot(name))
    finally:
        notice.cancel()


def _slot(name: str):
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.concurrency.sync import concurrency
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    holder = ConcurrencyLeaseHolder(type="flow_run", id=run_id) if run_id else None
    return concurrency(name, occupy=1, strict=True, lease_duration=LEASE_SECONDS, holder=holder)


def _acquire_file_lock(stack: ExitStack, name: str, platform_name: str, log) -> None:
    """An exclusive flock on <PREFECT_HOME>/reactor-locks/<name>.lock, which names its holder."""
    import fcntl

    from prefect.runtime import flow_run
    from prefect.settings import get_current_settings

    folder = Path(get_current_settings().home).expanduser() / "reactor-locks"
    folder.mkdir(parents=True, exist_ok=True)
    handle = stack.enter_context(open(folder / f"{name}.lock", "a+"))
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another run"
        log.info("reactor %s is busy with another run (%s); waiting", platform_name, holder)
        fcntl.flock(handle, fcntl.LOCK_EX)
    stack.callback(fcntl.flock, handle, fcntl.LOCK_UN)
    handle.truncate(0)
    handle.write(f"pid {os.getpid()}, flow run {flow_run.get_id() or '-'}\n")
    handle.flush()
