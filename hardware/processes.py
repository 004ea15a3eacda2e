"""Processes of this machine, as Linux's /proc shows them: is one still running, and is it the
same process that had its PID (a PID is reused after its process has gone)."""

from __future__ import annotations

import os
from pathlib import Path


def alive(pid: int) -> bool:
    """True if `pid` runs (a zombie, killed but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def start_ticks(pid: int) -> str | None:
    """When the process started (clock ticks since boot); None where /proc cannot tell."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
