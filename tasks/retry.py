"""Retry policy shared by the tasks that talk to instruments: retry transient I/O only."""

from __future__ import annotations

from hardware.errors import TransientInstrumentError

INSTRUMENT_RETRIES = 3
INSTRUMENT_RETRY_DELAYS_S = [1.0, 2.0, 4.0]


def exception_of(state) -> BaseException | None:
    data = getattr(state, "data", None)
    if isinstance(data, BaseException):
        return data
    try:
        result = state.result(raise_on_failure=False)
    except Exception as exc:  # the result itself could not be read
        return exc
    return result if isinstance(result, BaseException) else None


def is_transient(task, task_run, state) -> bool:
    """Prefect retry condition: retry timeouts and garbled replies, never anything else."""
    return isinstance(exception_of(state), TransientInstrumentError)
