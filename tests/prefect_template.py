"""A Prefect database migrated once, copied into the home of each Prefect server the tests start.

A Prefect server on an empty SQLite file first runs every migration: about half of its start,
some 12 CPU-s on a 2-core machine. The suite starts a dozen SQLite servers (the test harness of
each test process, the shared lab, the lease test's server, the temporary servers of `sdfl` runs
without one); each now starts from a copy of one database migrated once per Prefect version.
A copy is what a server finds after its first start anywhere else: nothing about it is special
to the tests.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DATABASE = "prefect.db"
"""The SQLite file a Prefect server keeps in its PREFECT_HOME."""


def migrated_database() -> Path:
    """The migrated database of this Prefect version, made on first use (under a lock, so the
    test processes that start together make it once)."""
    import prefect

    folder = Path(tempfile.gettempdir()) / "sdfl-test-prefect"
    folder.mkdir(exist_ok=True)
    ready = folder / f"prefect-{prefect.__version__}.db"
    if ready.exists():
        return ready
    with open(folder / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not ready.exists():
            scratch = Path(tempfile.mkdtemp(dir=folder))
            env = {**os.environ, "PREFECT_HOME": str(scratch), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
            for name in ("PREFECT_API_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL",
                         "PREFECT_API_DATABASE_CONNECTION_URL"):
                env.pop(name, None)
            subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"], env=env,
                           check=True, capture_output=True, timeout=900, stdin=subprocess.DEVNULL)
            (scratch / DATABASE).replace(ready)  # in place only once complete
            shutil.rmtree(scratch, ignore_errors=True)
    return ready


def seed_home(home: Path | str) -> Path:
    """`home` with a migrated Prefect database in it (kept if it has one already)."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    if not (home / DATABASE).exists():
        shutil.copyfile(migrated_database(), home / DATABASE)
    return home


def seeded_folder() -> str:
    """A new temporary folder holding a migrated database under the name Prefect's test harness
    gives its own (`prefect-test.db`): the harness makes its folder with this instead of
    `tempfile.mkdtemp` (conftest.py). Under another name the harness simply migrates as before."""
    folder = tempfile.mkdtemp()
    shutil.copyfile(migrated_database(), Path(folder) / "prefect-test.db")
    return folder
