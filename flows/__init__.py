"""Prefect flows of sdfl. Importing this package turns Prefect's anonymous usage analytics off
unless the environment already decided (set PREFECT_SERVER_ANALYTICS_ENABLED=true to keep them),
and keeps tracebacks out of flow and task run logs for sdfl's named errors: a bad input or a
rig that needs a person is reported in one clear line (the run still fails, with that message)."""

import logging
import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


class _NamedErrorsInOneLine(logging.Filter):
    """Drop the traceback from a run log record whose exception is one of sdfl's named errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        from hardware.errors import SdflError

        if record.exc_info and isinstance(record.exc_info[1], SdflError):
            record.exc_info, record.exc_text = None, None
        return True


for _name in ("prefect.flow_runs", "prefect.task_runs"):
    logging.getLogger(_name).addFilter(_NamedErrorsInOneLine())
