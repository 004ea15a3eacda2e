"""How a flow run shows in the terminal of the `sdfl` command: its own log lines, without the
task-run chatter (-v brings it back) or Python tracebacks (--debug); the whole log, tracebacks
included, goes to a file under the data root.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager


class _QuietTaskRuns(logging.Filter):
    """Drop the task-run chatter (created, finished in state Completed or Cached) from the terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        message = str(record.msg)
        return not (message.startswith("Finished in state") or message.startswith("Created task run"))


def _without_traceback(handler: logging.Handler):
    """Make `handler` print records without their traceback (the log file keeps it); returns a
    function that undoes it. The record itself is left as it was, for the other handlers."""
    original = handler.format

    def format(record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return original(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved

    handler.format = format
    return lambda: vars(handler).pop("format", None)


def _terminal_handlers():
    """Handlers that print to the terminal (Prefect's console handler and plain stream handlers)."""
    seen = []
    for logger in [logging.getLogger(), *[logging.getLogger(n) for n in list(logging.root.manager.loggerDict)]]:
        for handler in getattr(logger, "handlers", []):
            stream = getattr(handler, "stream", None)
            if stream in (sys.stderr, sys.stdout) and not isinstance(handler, logging.FileHandler) \
                    and handler not in seen:
                seen.append(handler)
    return seen


@contextmanager
def terminal_run(args):
    """Prefect for one interactive run: no flow-run heartbeats (they add ~1 s per run), the task-run
    chatter off unless -v, tracebacks only in the log file unless --debug."""
    from flows.prefect_server import use_sdfl_temporary_server

    use_sdfl_temporary_server()  # Prefect's temporary server, if one is needed, goes when sdfl goes
    from prefect.logging.configuration import setup_logging
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    setup_logging()
    quiet, undo = _QuietTaskRuns(), []
    handlers = _terminal_handlers()
    for handler in handlers:
        if not args.verbose:
            handler.addFilter(quiet)
        if not args.debug:
            undo.append(_without_traceback(handler))
    log_file = _log_file(args)
    try:
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)
        for step in undo:
            step()
        if log_file is not None:
            logging.getLogger().removeHandler(log_file)
            logging.getLogger("prefect").removeHandler(log_file)
            log_file.close()


def _log_file(args) -> logging.Handler | None:
    """Everything a run logs, tracebacks included, into <data root>/logs/; its path in args.log_path."""
    from tasks.storage import data_root

    folder = data_root(getattr(args, "data_root", None)) / "logs"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"sdfl-{args.command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError:
        return None  # the run's own checks say what is wrong with the data root
    handler.setLevel(logging.DEBUG if args.debug else logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("", "prefect"):  # Prefect's loggers do not pass records on to the root logger
        logging.getLogger(name).addHandler(handler)
    args.log_path = str(path)
    return handler
