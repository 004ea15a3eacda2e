"""The flow run's own heartbeat, more often than Prefect's.

A lab server marks a flow run Crashed when it goes silent for a minute (the automation that
`make deploy` creates). Prefect's heartbeat comes every 30 s at best, so one beat lost while the
server restarts (its events are not taken while it is away) is enough to take a healthy run for
dead. Every sdfl flow therefore also says it is alive every BEAT_S, while its body runs, paused
for an operator included: a server away for up to about 40 s loses no run.

The beat runs only where Prefect's heartbeats are on (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, which
the lab's workers set): only there does anyone watch for silence.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from collections.abc import Iterator

BEAT_EVENT = "sdfl.flow-run.heartbeat"
"""The event's name; the crash automation expects it as it expects Prefect's own heartbeat."""
BEAT_S = 10.0

_log = logging.getLogger(__name__)


def _flow_run_id() -> str | None:
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return str(context.flow_run.id) if context is not None and context.flow_run is not None else None


def _watched() -> bool:
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    return bool(settings.api.url) and settings.flows.heartbeat_frequency is not None


@contextlib.contextmanager
def beating(interval_s: float = BEAT_S) -> Iterator[None]:
    """Emit BEAT_EVENT for the current flow run every `interval_s` while the block runs. Stops
    before the block ends, so no beat follows the run's final state."""
    run_id = _flow_run_id()
    if run_id is None or not _watched():
        yield
        return
    from prefect.events import emit_event

    stop = threading.Event()
    resource = {"prefect.resource.id": f"prefect.flow-run.{run_id}"}

    def beat_until_stopped() -> None:
        while not stop.wait(interval_s):
            try:
                emit_event(event=BEAT_EVENT, resource=resource)
            except Exception as exc:  # noqa: BLE001 - a lost beat is made up by the next one
                _log.debug("flow-run heartbeat not sent: %s", exc)

    # The thread sees this run's Prefect settings (its API URL), as Prefect's own heartbeat does.
    thread = threading.Thread(target=contextvars.copy_context().run, args=(beat_until_stopped,),
                              name="sdfl-flow-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
