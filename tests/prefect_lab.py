"""A Prefect server on loopback with the deployments of deployments/prefect.yaml and a worker on
the default reactor: what `make server deploy worker` makes, started once per test session and
stopped at its end. The `ui_lab` fixture (tests/conftest.py) hands it to the tests that need it.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prefect_template import seed_home

REPO = Path(__file__).resolve().parents[1]
REACTOR = "virtual-cs3cu2i5"
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
CAMPAIGN = "browser"
"""The campaign of `Lab.report_runs`: its artifacts are `browser-summary`, `browser-shap`, ..."""
BUDGET = 10
"""Its experiments: the 9 Latin-hypercube ones of the form's default, then one of the policy. Enough
for the SHAP table to show effects of both signs (tests/test_ui_browser.py), few enough for the
summary's caveat (fewer than 21 experiments for 7 inputs)."""

_spec = importlib.util.spec_from_file_location("sdfl_local_prefect", REPO / "deployments" / "local.py")
local = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(local)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RetryWhenBusy(httpx.HTTPTransport):
    """Send a request again when the server answers 503: its SQLite database was locked by a
    worker writing at the same moment. Prefect's own client (and so its UI's server calls through
    it) retries 429, 502 and 503 the same way, with backoff."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(6):
            response = super().handle_request(request)
            if response.status_code != 503:
                return response
            response.read()
            response.close()
            time.sleep(0.5 * 2**attempt)
        return response


class Lab:
    """The server's REST API, as the UI calls it."""

    def __init__(self, api: str, home: Path, data: Path, processes: list[subprocess.Popen]):
        self.api, self.home, self.data, self.processes = api, home, data, processes
        self.http = httpx.Client(base_url=api, timeout=30, transport=RetryWhenBusy())
        self._report_runs: dict | str | None = None

    def start_worker(self) -> None:
        self.processes.append(local.start_worker(self.home, self.api, REACTOR, PREFECT_WORKER_QUERY_SECONDS=WORKER_QUERY_S))

    def deployment(self, flow_name: str, name: str | None = None) -> dict:
        """The deployment of `flow_name` (named `name`, where the flow has several)."""
        flows = {f["id"]: f["name"] for f in self.http.post("/flows/filter", json={}).json()}
        found = [d for d in self.http.post("/deployments/filter", json={}).json()
                 if flows[d["flow_id"]] == flow_name and name in (None, d["name"])]
        assert len(found) == 1, found
        return found[0]

    def trigger(self, flow_name: str, parameters: dict, name: str | None = None, **extra) -> httpx.Response:
        """What the UI's "Run" form sends."""
        deployment = self.deployment(flow_name, name)
        return self.http.post(f"/deployments/{deployment['id']}/create_flow_run",
                              json={"parameters": parameters, **extra})

    def state(self, run_id: str) -> dict:
        return self.http.get(f"/flow_runs/{run_id}").json()["state"]

    def wait(self, run_id: str, timeout_s: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while (state := self.state(run_id))["type"] not in FINAL:
            assert time.monotonic() < deadline, f"flow run still {state['type']} after {timeout_s:.0f} s"
            time.sleep(0.5)
        return state

    def history(self, run_id: str) -> str:
        """The run's states, one line each: when, what, why."""
        states = self.http.get("/flow_run_states/", params={"flow_run_id": run_id}).json()
        return "\n".join(f"{s['timestamp']} {s['type']} {s.get('message') or ''}"
                         for s in sorted(states, key=lambda s: s["timestamp"]))

    def logs(self, run_id: str) -> str:
        logs = self.http.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}},
                                                    "sort": "TIMESTAMP_ASC", "limit": 200}).json()
        return "\n".join(entry["message"] for entry in logs)

    def restart_server(self) -> float:
        """Stop the server (SIGTERM, as a service manager does) and start it again with the same
        settings; returns the seconds it was away. Only for a lab that knows them (`server`)."""
        pid = local.running("server", self.home)
        started = time.monotonic()
        local._end([pid], groups={pid}, grace_s=20)
        self.processes.append(local.start_server(**self.server))
        return time.monotonic() - started

    def reactor_slots(self, reactor: str = REACTOR) -> int:
        return self.http.get(f"/v2/concurrency_limits/reactor-{reactor}").json()["active_slots"]

    def report_runs(self) -> dict:
        """The flows that publish plots, started at once as the UI starts them (through their
        deployments) on the reactor, which they take in turn, and run to completion: a
        BUDGET-experiment optimization of CAMPAIGN, a residence-time study and a 1 h lot. Returns
        each flow's run by flow name, and their data root as "root".

        Started on first call and shared by the session: test_deployments.py checks what the
        optimization records, test_ui_browser.py what the UI shows of all three (one campaign
        through a deployment instead of two). A failure is reported again to every later caller."""
        if self._report_runs is None:
            self._report_runs = "the flows did not finish"  # what a later call reports if this one fails
            root = self.data / CAMPAIGN
            started = {}
            for flow, parameters in (
                    ("optimize", {"campaign": CAMPAIGN, "budget": BUDGET, "seed": 0}),
                    # two reaction times, a reading every 3 s: the plot of a study, from a third of the readings
                    ("residence-time-study", {"reaction_times_s": [25.0, 42.0], "follow_tau": 2.0, "interval_s": 3.0}),
                    ("manufacture", {"lot": f"{CAMPAIGN}-lot", "recipe": {"temperature_c": 145.0}, "duration_h": 1.0,
                                     "qualification_min": 20.0, "qualification_points": 10, "qc_every_min": 5.0,
                                     "on_alarm": "continue", "auto_refill": True})):
                reply = self.trigger(flow, {**parameters, "platform": REACTOR, "data_root": str(root)})
                assert reply.status_code == 201, reply.text
                started[flow] = reply.json()
            for flow, run in started.items():
                state = self.wait(run["id"], timeout_s=400)
                if state["type"] != "COMPLETED":
                    self._report_runs = f"{flow} ended {state['type']}:\n{self.logs(run['id'])[-3000:]}"
                    raise AssertionError(self._report_runs)
            self._report_runs = {**started, "root": root}
        if isinstance(self._report_runs, str):
            raise AssertionError(self._report_runs)
        return self._report_runs


WORKER_QUERY_S = "2"
"""How often the lab's workers ask for runs to start (Prefect's default is 10 s): runs start
within about a second on average, and the polling of four workers costs the server and the
workers half what asking every second did (about 1.6 CPU-s a minute a worker)."""


def running_lab(tmp_path_factory):
    """Server, work pool, reactor limit, deployments and a worker; all stopped at the end."""
    home = seed_home(tmp_path_factory.mktemp("prefect-home"))
    data = tmp_path_factory.mktemp("ui-data")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    processes: list[subprocess.Popen] = []
    try:
        # A run refused a reactor's slot asks again after ~1 s, not after as long as the slot is
        # held on average (up to 30 s, +30 % jitter: the server's default): the flows started at
        # once take the reactor in turn with no idle gaps.
        processes.append(local.start_server(home, "127.0.0.1", port,
                                            PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS="1"))
        subprocess.run([sys.executable, str(REPO / "deployments" / "local.py"), "deploy", "--home", str(home),
                        "--port", str(port)], cwd=REPO, check=True, timeout=300,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        lab = Lab(api, home, data, processes)
        lab.start_worker()
        yield lab
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"deploy failed:\n{exc.stdout.decode()[-4000:]}")
    finally:
        stop_lab(home, processes)


REACTOR_DEPLOYMENTS = """
import sys
sys.path.insert(0, {deployments!r})
import local
print("\\n".join(local.deploy_reactors({platforms!r})))
"""
"""Run with the lab's environment, so its Prefect client talks to the lab's server only."""


def running_postgres_lab(tmp_path_factory, cluster, reactors: dict[str, str]):
    """A lab as a lab runs it: the Prefect server on PostgreSQL (database `prefect` of `cluster`),
    and for each reactor (name -> platform file) its work pool, reactor limit, optimize and
    run-experiment deployments and a worker; the server's crash automation. Stopped at the end."""
    home = tmp_path_factory.mktemp("prefect-postgres-home")
    data = tmp_path_factory.mktemp("postgres-lab-data")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    processes: list[subprocess.Popen] = []
    try:
        # The repossessor frees the slots of expired leases (a killed run) every second, not 15 s.
        server = dict(home=home, host="127.0.0.1", port=port, database=cluster.url("prefect", "asyncpg"),
                      PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS="1",
                      PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS="1")
        processes.append(local.start_server(**server))
        script = REACTOR_DEPLOYMENTS.format(deployments=str(REPO / "deployments"), platforms=reactors)
        subprocess.run([sys.executable, "-c", script], cwd=REPO, env=local.environment(home, api), check=True,
                       timeout=300, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        lab = Lab(api, home, data, processes)
        lab.server = server
        for name in reactors:
            processes.append(local.start_worker(home, api, name, PREFECT_WORKER_QUERY_SECONDS=WORKER_QUERY_S))
        yield lab
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"deploy failed:\n{exc.stdout.decode()[-4000:]}")
    finally:
        stop_lab(home, processes)


def stop_lab(home: Path, processes: list[subprocess.Popen]) -> None:
    """Stop everything a lab started, reap it (no zombie either), and check nothing is left."""
    stopped = local.stop(home, grace_s=10)
    for process in processes:
        if process is not None:
            process.wait(10)
    left = [pid for pid in local.tagged_processes(home) if local.alive(pid)]
    assert not left, f"processes still running after stop: {left} (stopped {stopped})"


def descendants(pid: int) -> list[int]:
    """The processes below `pid` (children, their children, ...), from /proc."""
    parents = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [], [pid]
    while frontier:
        frontier = [p for p, parent in parents.items() if parent in frontier]
        found += frontier
    return found
