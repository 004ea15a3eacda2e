"""The reactor lock: one flow run at a time drives a rig, whoever starts it and however Prefect is set up.

Every run takes a file lock first: an exclusive lock on `<lock folder>/reactor-<platform name>.lock`.
The lock folder is one per machine: `sdfl-reactor-locks` in the system's temporary folder (`/tmp` on
Linux), sticky and writable by every user like `/tmp` itself; set SDFL_LOCK_DIR to use another folder
(every user who drives the reactor must use the same one). The OS frees the lock when its holder
dies, even after `kill -9`. The file names its holder (pid, user, host, flow run, since when), and a
run that has to wait logs who holds the reactor.

With a Prefect server (PREFECT_API_URL set, as for every worker), the run then also takes the
server's global concurrency limit `reactor-<platform name>`, which spans machines: one slot, taken
strictly (a missing limit is created, never skipped), with a lease the server frees if the holder
dies. Always file lock first, then the server's slot: with one fixed order, two runs can never each
hold one and wait for the other.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import re
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path

from hardware.errors import ReactorLockUnusable

LOCK_DIR_ENV = "SDFL_LOCK_DIR"
"""Environment variable naming the folder of the reactor lock files (default: see `lock_folder`)."""

WAIT_NOTICE_SECONDS = 1.0
"""A run still waiting for the reactor after this long logs that it is waiting."""

_HELD: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("sdfl_reactors_held", default=frozenset())


def limit_name(platform_name: str) -> str:
    """The lock's name: one per reactor (a platform file describes one rig)."""
    return f"reactor-{platform_name}"


def lock_folder() -> Path:
    """The folder of the reactor lock files: $SDFL_LOCK_DIR, or `sdfl-reactor-locks` in the system's
    temporary folder. One folder per machine, whatever the Prefect settings of the run."""
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "sdfl-reactor-locks").expanduser()


def lock_file(platform_name: str) -> Path:
    """The lock file of one reactor."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", limit_name(platform_name))
    return lock_folder() / f"{safe}.lock"


@contextmanager
def reactor_lock(platform_name: str, logger: logging.Logger | logging.LoggerAdapter | None = None) -> Iterator[None]:
    """Hold the reactor of `platform_name` for the duration of the block.

    Waits as long as another run holds the reactor, and logs who holds it. Re-entrant within one
    flow run (a nested flow on the same reactor does not wait for itself).
    """
    name = limit_name(platform_name)
    held = _HELD.get()
    if name in held:
        yield
        return
    log = logger or logging.getLogger(__name__)
    with ExitStack() as stack:
        started = time.monotonic()
        _acquire_file_lock(stack, platform_name, log)
        if _prefect_server():
            _acquire_slot(stack, name, platform_name, log)
        if time.monotonic() - started >= WAIT_NOTICE_SECONDS:
            log.info("reactor %s acquired after %.1f s", platform_name, time.monotonic() - started)
        token = _HELD.set(held | {name})
        stack.callback(_HELD.reset, token)
        yield


def _prefect_server() -> bool:
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)


# --- the file lock (always) ---------------------------------------------------------------------------
def _acquire_file_lock(stack: ExitStack, platform_name: str, log) -> None:
    """Take the reactor's lock file (waiting while another run holds it), then write our name in it."""
    import fcntl

    path = lock_file(platform_name)
    fd = _open_lock_file(path)
    stack.callback(os.close, fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.info("%s", _busy_message(platform_name, _current_holder(fd), path))
        fcntl.flock(fd, fcntl.LOCK_EX)
    stack.callback(_release_file_lock, fd)
    _write_holder(fd)


def _open_lock_file(path: Path) -> int:
    """Open (or create, readable and writable by every user) the lock file; never follow a symlink."""
    try:
        _make_lock_folder(path.parent)
        while True:
            try:  # an existing file: no O_CREAT (Linux refuses it on other users' files in sticky folders)
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
            except FileNotFoundError:
                try:
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
                except FileExistsError:  # another run created it in the meantime
                    continue
                os.fchmod(fd, 0o666)  # whatever the umask: other users' runs write their name in it
            except PermissionError:  # another user's file we may not write: locking needs only reading
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            break
    except OSError as exc:
        raise ReactorLockUnusable(
            f"cannot use the reactor lock file {path}: {exc.strerror or exc}. Every user who drives this "
            f"reactor needs to write in {path.parent}; fix its permissions, or set {LOCK_DIR_ENV} to a folder "
            "all of them can write to") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ReactorLockUnusable(f"the reactor lock file {path} is not a regular file; remove it, or set "
                                  f"{LOCK_DIR_ENV} to another folder")
    return fd


def _make_lock_folder(folder: Path) -> None:
    """Create the lock folder if missing: sticky and writable by every user, like /tmp."""
    if folder.is_dir():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir()
    except FileExistsError:  # created by another run in the meantime (or not a folder: open() will say)
        return
    os.chmod(folder, 0o1777)


def _write_holder(fd: int) -> None:
    """Write who holds the reactor into the lock file (skipped if the file is read-only for us)."""
    from prefect.context import FlowRunContext
    from prefect.runtime import flow_run

    context = FlowRunContext.get()
    holder = {"pid": os.getpid(), "user": _user(), "host": socket.gethostname(),
              "flow_run_id": flow_run.get_id(), "flow_run_name": context.flow_run.name if context else None,
              "since": datetime.now().astimezone().isoformat(timespec="seconds")}
    with contextlib.suppress(OSError):  # another user's lock file, read-only for us: the lock still holds
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)


def _release_file_lock(fd: int) -> None:
    import fcntl

    with contextlib.suppress(OSError):  # a free reactor names no holder (if we may write the file)
        os.ftruncate(fd, 0)
    fcntl.flock(fd, fcntl.LOCK_UN)


def _current_holder(fd: int) -> dict:
    """The holder named in the lock file; a run that took the reactor an instant ago gets 0.2 s to write it."""
    holder = _read_holder(fd)
    if not holder:
        time.sleep(0.2)
        holder = _read_holder(fd)
    return holder


def _read_holder(fd: int) -> dict:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _busy_message(platform_name: str, holder: dict, path: Path) -> str:
    """What a run that has to wait logs: who holds the reactor, since when, and where the lock file is."""
    if not holder.get("pid"):
        return f"reactor {platform_name} is busy with another run (not named in {path}); waiting"
    run = holder.get("flow_run_id") or "-"
    if holder.get("flow_run_name"):
        run += f" '{holder['flow_run_name']}'"
    since = str(holder.get("since", "?"))
    with contextlib.suppress(ValueError):  # a holder line of another version: show it as it is
        since += f", {time.time() - datetime.fromisoformat(since).timestamp():.0f} s ago"
    return (f"reactor {platform_name} is busy with another run (pid {holder['pid']}, flow run {run}); waiting. "
            f"It has held the reactor since {since}, user {holder.get('user', '?')} on {holder.get('host', '?')} "
            f"(lock file {path})")


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no user name for this uid (some containers)
        return str(os.getuid())


# --- the server's concurrency limit (with a Prefect server) --------------------------------------------
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
    """Take the limit's slot (flows/lease.py), creating the limit first if it does not exist yet."""
    from flows.lease import LimitMissing

    notice = threading.Timer(WAIT_NOTICE_SECONDS, log.info,
                             ("reactor %s is busy with another run; waiting", platform_name))
    notice.daemon = True
    notice.start()
    try:
        try:
            stack.enter_context(_slot(name))
        except LimitMissing:
            if ensure_reactor_limit(platform_name):
                log.info("created the concurrency limit %s (1 slot)", name)
            stack.enter_context(_slot(name))
    finally:
        notice.cancel()


def _slot(name: str):
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.runtime import flow_run

    from flows.lease import held_slot

    run_id = flow_run.get_id()
    holder = ConcurrencyLeaseHolder(type="flow_run", id=run_id) if run_id else None
    return held_slot(name, holder)
