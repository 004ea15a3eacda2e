"""Several campaign processes on one study: which running trials still have a process behind
them, and one proposal at a time.

Several campaign processes can share one study: one per reactor, on one machine or on several
(the study then lives on PostgreSQL). Each process marks a trial it runs with its owner (machine,
boot, process, run) and keeps a heartbeat on it while the experiment runs: the time, written to
the trial every HEARTBEAT_S. A RUNNING trial is abandoned, and any process may settle it, when

- its owner is a process of this machine that has gone (or a run of this process that ended):
  at once, so a campaign killed on a one-machine lab resumes without waiting;
- its owner is elsewhere and its last heartbeat (or its start, before the first beat) is older
  than GRACE_S. The machines' clocks must agree to well within that (NTP);
- no process claimed it and it started more than UNCLAIMED_S ago (`unclaimed`).

A proposal sees the conditions that run elsewhere as pending points, but only once they are in
the study: `proposal_lock` makes the processes of one campaign propose one after the other, so
two of them asking at the same moment never get the same condition.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from hardware.processes import alive, start_ticks

HEARTBEAT_S = 10.0
"""How often a running trial's heartbeat is written."""
GRACE_S = 60.0
"""How long a trial of another machine may go without a heartbeat before it counts as abandoned."""
UNCLAIMED_S = 15.0
"""How long after its start a trial that no process claimed counts as abandoned (`unclaimed`)."""
OWNER, BEAT = "owner", "heartbeat_at"
"""The trial's user attributes: who runs it, and when it last said so (Unix time)."""

_log = logging.getLogger(__name__)
_live_runs: set[str] = set()
"""The runs (`Heartbeat` objects) alive in this process, by token."""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def owner_mark(run: str) -> str:
    """This process's mark for a trial of run `run`: host|boot|pid|start|run."""
    pid = os.getpid()
    return "|".join([socket.gethostname(), _boot_id(), str(pid), start_ticks(pid) or "", run])


def owner_gone(mark: str | None) -> bool | None:
    """True when the owner is known to be gone, False when it runs, None when this machine cannot tell."""
    parts = (mark or "").split("|")
    if len(parts) != 5:
        return None
    host, boot, pid, start, run = parts
    if host != socket.gethostname() or boot != _boot_id() or not pid.isdigit():
        return None
    if int(pid) == os.getpid():
        return run not in _live_runs
    return not alive(int(pid)) or (bool(start) and start_ticks(int(pid)) != start)


def abandoned(trial: FrozenTrial, now: float | None = None, grace_s: float = GRACE_S) -> bool:
    """True if no process runs this RUNNING trial any more (see the module's rules)."""
    if unclaimed(trial):
        grace_s = UNCLAIMED_S
    gone = owner_gone(trial.user_attrs.get(OWNER))
    if gone is not None:
        return gone
    last = trial.user_attrs.get(BEAT)
    if last is None:
        last = trial.datetime_start.timestamp() if trial.datetime_start is not None else 0.0
    return (time.time() if now is None else now) - float(last) > grace_s


def unclaimed(trial: FrozenTrial) -> bool:
    """A trial no process marked as its own: its ask was cut short (the database went away
    between creating the trial and the claim that follows within milliseconds), or it comes from
    a release before owners were recorded. Its experiment never started under this release."""
    return OWNER not in trial.user_attrs


class Heartbeat:
    """The heartbeats of the trials one campaign run holds, written by a daemon thread.

    A failed write (the database restarting) is logged and tried again at the next beat; a
    trial of another machine is only taken for abandoned after GRACE_S without one.
    """

    def __init__(self, study: optuna.Study, interval_s: float = HEARTBEAT_S):
        self.study = study
        self.interval_s = interval_s
        self.token = uuid.uuid4().hex[:12]
        self._trials: dict[int, int] = {}  # trial number -> trial id
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        _live_runs.add(self.token)
        self._thread = threading.Thread(target=self._beat_forever, name="trial-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        _live_runs.discard(self.token)

    def claim(self, trial: optuna.Trial) -> None:
        """Mark `trial` as this run's and give it its first beat."""
        trial.set_user_attr(OWNER, owner_mark(self.token))
        trial.set_user_attr(BEAT, time.time())
        with self._lock:
            self._trials[trial.number] = trial._trial_id

    def release(self, trial) -> None:
        with self._lock:
            self._trials.pop(trial.number, None)

    def _beat_forever(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                held = list(self._trials.values())
            for trial_id in held:
                try:
                    self.study._storage.set_trial_user_attr(trial_id, BEAT, time.time())
                except Exception as exc:  # noqa: BLE001 - a beat that fails is tried again; never fatal
                    if "finished" not in str(exc).lower():
                        _log.warning("heartbeat of trial id %d not written (%s); trying again in %.0f s",
                                     trial_id, str(exc).splitlines()[0], self.interval_s)


@contextlib.contextmanager
def proposal_lock(url: str, campaign: str) -> Iterator[None]:
    """Hold the campaign's proposal lock: on PostgreSQL an advisory lock of the database (freed by
    the server when the holder's connection dies), on SQLite a file lock beside the database file
    (freed by the OS when the holder dies). Other databases propose without one."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///") + ".proposal.lock")
        with open(path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    else:
        with database_lock(url, f"sdfl proposal: {campaign}"):
            yield


@contextlib.contextmanager
def database_lock(url: str, key: str) -> Iterator[None]:
    """An advisory lock named `key` of a PostgreSQL database (freed by the server when the holder's
    connection dies); no lock on other databases."""
    if not url.startswith("postgresql"):
        yield
        return
    import sqlalchemy

    with _engine(url).connect() as connection:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(hashtext(:key))"), {"key": key})
        try:
            yield
        finally:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(hashtext(:key))"), {"key": key})


@functools.lru_cache(maxsize=8)
def _engine(url: str):
    import sqlalchemy

    return sqlalchemy.create_engine(url, pool_pre_ping=True, pool_size=1, max_overflow=2)
