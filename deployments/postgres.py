"""A PostgreSQL cluster of our own: `make postgres`, and the tests of the lab's multi-machine shape.

A lab runs one PostgreSQL for its Prefect server and its Optuna studies, set up by whoever keeps
the lab's servers. This module makes one on this machine from Debian's `postgresql` binaries: a
folder with the data, a loopback port, a user `sdfl` that needs no password (trust on loopback
only), and two databases, `prefect` and `optuna`. Run as root, the cluster belongs to the system
user `postgres` (PostgreSQL refuses to run as root).

    python deployments/postgres.py start --folder .prefect/postgres --port 5433
    python deployments/postgres.py stop --folder .prefect/postgres
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

USER = "sdfl"
DATABASES = ("prefect", "optuna")
SYSTEM_USER = "postgres"
"""The system user that owns a cluster made by root."""


class PostgresMissing(RuntimeError):
    """PostgreSQL's server programs (initdb, pg_ctl) are not installed."""


def bindir() -> Path:
    """The folder of initdb and pg_ctl: `pg_config --bindir`, else Debian's newest under /usr/lib/postgresql."""
    found = shutil.which("pg_config")
    if found:
        folder = Path(subprocess.run([found, "--bindir"], capture_output=True, text=True).stdout.strip())
        if (folder / "initdb").exists():
            return folder
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if versions:
        return versions[-1].parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise PostgresMissing("PostgreSQL's server programs (initdb, pg_ctl) are not installed: on Debian, "
                          "apt-get install postgresql (make postgres does it when run as root)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class Cluster:
    """A PostgreSQL cluster in `folder` (data in folder/data, its log and socket beside it)."""

    folder: Path
    port: int
    host: str = "127.0.0.1"

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "postgres.log"

    def url(self, database: str, driver: str = "psycopg") -> str:
        """SQLAlchemy URL of one database: driver `psycopg` (Optuna) or `asyncpg` (the Prefect server)."""
        return f"postgresql+{driver}://{USER}@{self.host}:{self.port}/{database}"

    def running(self) -> bool:
        return _run(self, [str(bindir() / "pg_ctl"), "-D", str(self.data), "status"], check=False).returncode == 0

    def start(self, timeout_s: float = 60.0) -> None:
        """Start the server (if it is not running) and wait until it takes connections."""
        if not self.running():
            _run(self, [str(bindir() / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                        "-t", str(int(timeout_s)), "-o", f"-p {self.port} -k {self.folder}", "start"])
        _wait_ready(self, timeout_s)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` ends sessions and shuts down cleanly; `immediate` is a crash."""
        if self.running():
            _run(self, [str(bindir() / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


def create(folder: Path, port: int | None = None, databases: tuple[str, ...] = DATABASES) -> Cluster:
    """Make a cluster in `folder` (which must not hold one), start it and create `databases`.

    The folder and every folder above it must be open to the system user `postgres` when root
    runs this (use a folder under /tmp, not under a private home).
    """
    folder = Path(folder).resolve()
    cluster = Cluster(folder, port or free_port())
    if cluster.data.exists():
        raise FileExistsError(f"{cluster.data} already holds a PostgreSQL cluster; start it, or remove the folder")
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        owner = pwd.getpwnam(SYSTEM_USER)
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    _run(cluster, [str(bindir() / "initdb"), "-D", str(cluster.data), "-U", USER, "--auth=trust", "-E", "UTF8",
                   "--locale=C", "--no-instructions"])
    with open(cluster.data / "postgresql.conf", "a") as conf:
        conf.write(f"\n# sdfl\nlisten_addresses = '{cluster.host}'\nport = {cluster.port}\n"
                   f"unix_socket_directories = '{folder}'\nmax_connections = 200\n")
    cluster.start()
    for name in databases:
        _psql(cluster, f"CREATE DATABASE {name}")
    return cluster


def open_or_create(folder: Path, port: int | None = None) -> Cluster:
    """The cluster in `folder`, started (made first if there is none)."""
    folder = Path(folder).resolve()
    config = folder / "data" / "postgresql.conf"
    if not config.exists():
        return create(folder, port)
    ports = [line.split("=")[1].split("#")[0].strip() for line in config.read_text().splitlines()
             if line.startswith("port =")]
    cluster = Cluster(folder, int(ports[-1]) if ports else 5432)
    cluster.start()
    return cluster


def _psql(cluster: Cluster, sql: str) -> str:
    psql = shutil.which("psql") or str(bindir() / "psql")
    done = _run(cluster, [psql, "-h", str(cluster.folder), "-p", str(cluster.port), "-U", USER, "-d", "postgres",
                          "-v", "ON_ERROR_STOP=1", "-Atc", sql])
    return done.stdout


def _wait_ready(cluster: Cluster, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((cluster.host, cluster.port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"PostgreSQL in {cluster.folder} takes no connections on port {cluster.port} "
                                   f"after {timeout_s:.0f} s; see {cluster.log}") from None
            time.sleep(0.2)


def _run(cluster: Cluster, command: list[str], check: bool = True) -> subprocess.CompletedProcess:
    """Run a PostgreSQL program, as the system user `postgres` when we are root."""
    program = Path(command[0]).name
    if os.geteuid() == 0:
        command = ["runuser", "-u", SYSTEM_USER, "--", *command]
    done = subprocess.run(command, capture_output=True, text=True, cwd=cluster.folder.parent,
                          stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise RuntimeError(f"{program} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-2000:]}")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("start", "stop", "urls"))
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--port", type=int, default=5433)
    args = parser.parse_args(argv)
    try:
        if args.action == "stop":
            if (args.folder / "data").exists():
                Cluster(args.folder.resolve(), args.port).stop()
                print(f"PostgreSQL in {args.folder} stopped")
            return 0
        cluster = open_or_create(args.folder, args.port)
    except (PostgresMissing, RuntimeError, TimeoutError, FileExistsError) as exc:
        print(f"postgres: {exc}", file=sys.stderr)
        return 2
    print(f"PostgreSQL of {cluster.folder} on {cluster.host}:{cluster.port}\n"
          f"  Prefect server: make server DB={cluster.url('prefect', 'asyncpg')}\n"
          f"  Optuna studies: sdfl optimize ... --storage {cluster.url('optuna')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
