"""A local Prefect server and reactor workers for the UI: `make server`, `deploy`, `worker`, `ui-stop`.

Everything started here runs in its own session, logs to <home>/<name>.log, keeps its PID in
<home>/<name>.pid and carries SDFL_LOCAL_PREFECT=<home> in its environment, so `stop` finds the
server, the workers and any flow run they started (flow runs get sessions of their own).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "deployments"
BIN = Path(sys.executable).parent
TAG = "SDFL_LOCAL_PREFECT"
LEASES_ON_DISK = "prefect.server.concurrency.lease_storage.filesystem"

sys.path.insert(0, str(REPO))
from hardware.processes import alive  # noqa: E402

HEARTBEAT_S = 30
"""Seconds between a flow run's heartbeats (Prefect's shortest)."""
SILENCE_S = 60
"""A flow run whose heartbeat stops for this long is marked Crashed (`ensure_crash_automation`)."""
CRASH_AUTOMATION = "sdfl: mark flow runs that stopped beating as crashed"


def environment(home: Path, api_url: str, **extra: str) -> dict[str, str]:
    """The environment of everything started against the local server."""
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": api_url,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", TAG: str(home), **extra}
    env.setdefault("PREFECT_WORKER_QUERY_SECONDS", "2")  # pick up a run within ~2 s (default 10)
    env.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", str(HEARTBEAT_S))  # flow runs of the workers beat
    # While the server's database restarts, the server answers 500 (its transaction rolled back):
    # the clients ask again, with back-off, as they do for 502 and 503, instead of failing the run.
    env.setdefault("PREFECT_CLIENT_RETRY_EXTRA_CODES", "500")
    return env


def spawn(name: str, command: list[str], env: dict[str, str], home: Path) -> subprocess.Popen:
    """Start `command` in a new session, output to <home>/<name>.log, PID to <home>/<name>.pid."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / f"{name}.log", "ab") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    (home / f"{name}.pid").write_text(str(process.pid))
    return process


def running(name: str, home: Path) -> int | None:
    """PID of a process started by `spawn` that is still running, else None.

    A PID file left by a process that has gone (a reboot) may name someone else's process now:
    where /proc shows environments, only a process carrying our tag counts.
    """
    try:
        pid = int((home / f"{name}.pid").read_text())
    except (OSError, ValueError):
        return None
    if not alive(pid):
        return None
    try:
        tagged = f"{TAG}={home}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return pid  # no /proc (macOS): trust the PID file
    return pid if tagged else None


def healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as reply:
            return reply.status == 200 and json.loads(reply.read() or b"false") is True
    except (OSError, ValueError):
        return False


class ServerDidNotStart(RuntimeError):
    """The Prefect server exited while starting (a wrong database URL, a port in use, ...)."""


def _last_error(log: Path) -> str:
    """The last line of the server's log that names an error (its cause, for the user)."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b:", line)]
    return raised[-1].rstrip(".") if raised else ""


def wait_healthy(api_url: str, timeout_s: float = 120.0, process: subprocess.Popen | None = None) -> float:
    """Wait until the API answers /health. Returns the seconds waited."""
    started = time.monotonic()
    while not healthy(api_url):
        if process is not None and process.poll() is not None:
            raise ServerDidNotStart(f"the Prefect server exited with code {process.returncode}")
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"no healthy Prefect API at {api_url} after {timeout_s:.0f} s")
        time.sleep(0.5)
    return time.monotonic() - started


def start_server(home: Path, host: str, port: int, database: str | None = None,
                 **extra_env: str) -> subprocess.Popen | None:
    """`prefect server start` in the background, then wait until healthy. None if already up.

    `database`: the server's database URL (`postgresql+asyncpg://user:password@host:5432/prefect`
    for a lab); None keeps Prefect's SQLite file in `home`.
    """
    api_url = f"http://{host}:{port}/api"
    if running("server", home) and healthy(api_url):
        return None
    if database:
        extra_env["PREFECT_API_DATABASE_CONNECTION_URL"] = database
    # Leases on disk, not in memory: a run that holds a reactor when the server stops has its slot
    # freed when its lease expires after the restart, instead of keeping the reactor taken for ever.
    env = environment(home, api_url, PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=LEASES_ON_DISK, **extra_env)
    process = spawn("server", [str(BIN / "prefect"), "server", "start", "--host", host, "--port", str(port),
                               "--analytics-off"], env, home)
    try:
        wait_healthy(api_url, process=process)
    except ServerDidNotStart as exc:
        cause = _last_error(home / "server.log")
        hint = (" Check the database URL (driver postgresql+asyncpg, user, password, host, port, database) and "
                "that PostgreSQL is running." if database else "")
        raise ServerDidNotStart(f"{exc}{': ' + cause if cause else ''}.{hint} Its log: {home / 'server.log'}") from None
    return process


def reactors(prefect_yaml: Path = HERE / "prefect.yaml") -> list[str]:
    """The reactors named by the work pools of the deployments (pool `reactor-<name>`)."""
    import yaml

    config = yaml.safe_load(prefect_yaml.read_text())
    pools = {(d.get("work_pool") or {}).get("name") for d in config.get("deployments") or []}
    return sorted(p.removeprefix("reactor-") for p in pools if p and p.startswith("reactor-"))


def prepare(names: list[str]) -> list[str]:
    """Create each reactor's process work pool and its concurrency limit (1 slot) if missing."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.workers.process import ProcessWorker

    sys.path.insert(0, str(REPO))
    from flows.reactor import ensure_reactor_limit, limit_name

    done = []
    with get_client(sync_client=True) as client:
        for name in names:
            try:
                client.create_work_pool(WorkPoolCreate(
                    name=f"reactor-{name}", type="process",
                    description=f"flow runs that drive the reactor {name} (one process worker on its host)",
                    base_job_template=ProcessWorker.get_default_base_job_template()))
                done.append(f"work pool reactor-{name} created")
            except ObjectAlreadyExists:
                done.append(f"work pool reactor-{name} exists")
            created = ensure_reactor_limit(name)
            done.append(f"concurrency limit {limit_name(name)} {'created' if created else 'exists'}")
    done.append(f"automation '{CRASH_AUTOMATION}' {ensure_crash_automation()}")
    return done


def ensure_crash_automation(silence_s: int = SILENCE_S) -> str:
    """The server's automation that marks a flow run Crashed when it goes silent (its worker's
    machine died, or it was killed): after a heartbeat (Prefect's, or the run's own every 10 s:
    flows/beat.py), the next one, or the run's end, is expected within `silence_s`. A run paused
    for an operator (a manufacturing lot waiting for a decision) goes on beating and is never
    caught. Returns what was done: created, updated (it differed from this definition) or exists."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    from flows.beat import BEAT_EVENT

    beats = {"prefect.flow-run.heartbeat", BEAT_EVENT}
    wanted = Automation(
        name=CRASH_AUTOMATION,
        description=(f"A flow run with no heartbeat for {silence_s} s (its process or machine died) is marked "
                     "Crashed, so it no longer shows as Running and its campaign can be resumed."),
        trigger=EventTrigger(
            after=beats,
            expect=beats | {"prefect.flow-run.Completed", "prefect.flow-run.Failed", "prefect.flow-run.Cancelled",
                            "prefect.flow-run.Crashed", "prefect.flow-run.Paused"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=silence_s),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message=(
            f"no heartbeat for {silence_s} s: the flow run's process or its machine stopped"))],
    )
    with get_client(sync_client=True) as client:
        found = client.read_automations_by_name(name=CRASH_AUTOMATION)
    if not found:
        wanted.create()
        return "created"
    current = found[0]
    if (current.trigger.after, current.trigger.expect, current.trigger.within, current.description) == (
            wanted.trigger.after, wanted.trigger.expect, wanted.trigger.within, wanted.description):
        return "exists"
    wanted.id = current.id
    wanted.update()
    return "updated"


def deploy_reactors(platforms: dict[str, str]) -> list[str]:
    """For each reactor (name -> its platform, a shipped name or a file on the worker's machine):
    its pool, lock and the crash automation (`prepare`), and its `optimize`, `run-experiment` and
    `manufacture` deployments on its pool, named after it. What prefect.yaml's entries do, without the file:
    for a lab that adds rigs from Python, and for the tests and benchmarks of several workers."""
    from prefect.deployments.runner import EntrypointType

    sys.path.insert(0, str(REPO))
    from flows.campaign import optimize
    from flows.experiment import run_experiment
    from flows.manufacture import manufacture

    done = prepare(sorted(platforms))
    for name, platform in platforms.items():
        for flow in (optimize, run_experiment, manufacture):
            flow.to_deployment(name=name, work_pool_name=f"reactor-{name}", parameters={"platform": platform},
                               entrypoint_type=EntrypointType.MODULE_PATH).apply()
            done.append(f"deployment {flow.name}/{name} on pool reactor-{name}")
    return done


def write_forms(prefect_yaml: Path = HERE / "prefect.yaml") -> list[str]:
    """Give each deployment of `prefect_yaml` its run form (`flows/forms.py`): plain fields, and the
    condition laid out for the deployment's platform."""
    import yaml
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate

    sys.path.insert(0, str(REPO))
    from flows.forms import run_form
    from flows.settings import FAMILIES
    from hardware.errors import PlatformConfigError
    from hardware.platform import load_platform

    ours = {(d["entrypoint"], d["name"]) for d in yaml.safe_load(prefect_yaml.read_text())["deployments"]}
    done = []
    with get_client(sync_client=True) as client:
        for deployment in client.read_deployments():
            if (deployment.entrypoint, deployment.name) not in ours:
                continue
            flow = client.read_flow(deployment.flow_id).name
            model = FAMILIES[flow]
            where = deployment.parameters.get("platform", model.model_fields["platform"].default)
            try:
                platform = load_platform(where)
            except PlatformConfigError as exc:  # a platform file on the worker's machine only
                platform = None
                done.append(f"{flow}/{deployment.name}: no platform here ({exc}); its condition stays a JSON box")
            form = run_form(model, deployment.parameter_openapi_schema, platform, deployment.parameters)
            client.update_deployment(deployment.id, DeploymentUpdate(parameter_openapi_schema=form))
            done.append(f"run form of {flow}/{deployment.name} written")
    return done


def deploy(env: dict[str, str]) -> None:
    """Pools and limits, `prefect --no-prompt deploy --all` from deployments/, then the run forms."""
    for line in prepare(reactors()):
        print(line)
    subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], cwd=HERE, env=env, check=True)
    for line in write_forms():
        print(line)


def start_worker(home: Path, api_url: str, reactor: str, **extra_env: str) -> subprocess.Popen | None:
    """A process worker on the reactor's pool, in the background. None if one is already running."""
    name = f"worker-{reactor}"
    if running(name, home):
        return None
    return spawn(name, [str(BIN / "prefect"), "worker", "start", "--pool", f"reactor-{reactor}", "--type", "process",
                        "--name", f"{reactor}-{os.uname().nodename}"], environment(home, api_url, **extra_env), home)


def tagged_processes(home: Path) -> list[int]:
    """PIDs whose environment carries SDFL_LOCAL_PREFECT=<home> (Linux /proc; empty elsewhere)."""
    marker = f"{TAG}={home}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return [pid for pid in found if pid != os.getpid()]


def stop(home: Path, grace_s: float = 15.0) -> list[int]:
    """Stop the flow runs, then the workers, then the server: SIGTERM, and SIGKILL after `grace_s`.

    Flow runs go first, while their worker and the server can still record how they ended.
    """
    server = running("server", home)
    workers = [pid for f in sorted(home.glob("worker-*.pid")) if (pid := running(f.stem, home))]
    sessions = {server, *workers} - {None}
    runs = [pid for pid in tagged_processes(home) if _session(pid) not in sessions]
    # A flow run stopped before its worker reports Crashed and releases its reactor; stopped
    # together with it, it dies before it can.
    stopped = _end(runs, groups=set(), grace_s=grace_s)
    stopped += _end([*workers, *(p for p in tagged_processes(home) if _session(p) in set(workers))],
                    groups=set(workers), grace_s=grace_s)
    if server:
        stopped += _end([server, *(p for p in tagged_processes(home) if _session(p) == server)], {server}, grace_s)
    for pidfile in home.glob("*.pid"):
        if not running(pidfile.stem, home):
            pidfile.unlink(missing_ok=True)
    return sorted(set(stopped))


def _end(pids: list[int], groups: set[int], grace_s: float) -> list[int]:
    """SIGTERM each (whole session for those in `groups`), wait, then SIGKILL what is left."""
    pids = [p for p in dict.fromkeys(pids) if alive(p)]
    for pid in pids:
        _signal(pid, signal.SIGTERM, group=pid in groups)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if alive(pid):
            _signal(pid, signal.SIGKILL, group=pid in groups)
    return pids


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _signal(pid: int, sig: int, group: bool) -> None:
    try:
        os.killpg(pid, sig) if group else os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _shown(url: str) -> str:
    """A database URL without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL the server will refuse with its own message
        return url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deployments/local.py", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["server", "deploy", "worker", "stop"])
    parser.add_argument("--home", type=Path, default=REPO / ".prefect", help="PREFECT_HOME of the local server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4200)
    parser.add_argument("--reactor", help="worker: this reactor only (default: every reactor of prefect.yaml)")
    parser.add_argument("--database", default=os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL") or None,
                        help="server: its database URL, e.g. postgresql+asyncpg://sdfl@127.0.0.1:5433/prefect "
                             "(default: an SQLite file in --home)")
    args = parser.parse_args(argv)
    home = args.home.resolve()
    api_url = f"http://{args.host}:{args.port}/api"
    if args.command == "server":
        try:
            started = start_server(home, args.host, args.port, database=args.database)
        except (ServerDidNotStart, TimeoutError) as exc:
            print(f"make server: {exc}", file=sys.stderr)
            return 2
        where = _shown(args.database) if args.database else f"SQLite in {home}"
        print(f"Prefect server {'started' if started else 'already running'}: UI http://{args.host}:{args.port}, "
              f"API {api_url}, database {where}; log {home / 'server.log'}")
    elif args.command == "deploy":
        if not healthy(api_url):
            raise SystemExit(f"no Prefect server at {api_url}: run `make server` first")
        os.environ.update(environment(home, api_url))
        deploy(dict(os.environ))
    elif args.command == "worker":
        if not healthy(api_url):
            raise SystemExit(f"no Prefect server at {api_url}: run `make server` first")
        for reactor in [args.reactor] if args.reactor else reactors():
            process = start_worker(home, api_url, reactor)
            print(f"worker for reactor {reactor} {'started' if process else 'already running'} "
                  f"on pool reactor-{reactor}; log {home / f'worker-{reactor}.log'}")
    else:
        stopped = stop(home)
        print(f"stopped {len(stopped)} process(es)" if stopped else "nothing was running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
