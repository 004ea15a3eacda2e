"""The real client: a Prefect server on loopback, the deployments of deployments/prefect.yaml, a
process worker, runs triggered through the REST API as the UI does, invalid parameters, and a
worker killed in the middle of a campaign. Everything it starts, it stops.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from prefect_lab import FINAL, REACTOR, REPO, local

from tasks.ledger import storage_url

pytestmark = pytest.mark.slow


def test_the_deployments_show_typed_forms_on_the_reactor_pool(lab):
    names = {flow: lab.deployment(flow) for flow in ("optimize", "explore", "residence-time-study", "manufacture")}
    for deployment in names.values():
        assert deployment["name"] == REACTOR and deployment["work_pool_name"] == f"reactor-{REACTOR}"
        assert f"reactor:{REACTOR}" in deployment["tags"] and deployment["enforce_parameter_schema"]
        assert deployment["pull_steps"] == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
    budget = names["optimize"]["parameter_openapi_schema"]["properties"]["budget"]
    assert budget["type"] == "integer" and budget["minimum"] == 1 and "experiments" in budget["description"]
    policy = names["optimize"]["parameter_openapi_schema"]["properties"]["policy"]
    assert "ei" in policy["enum"] and "expected improvement" in policy["description"]
    schedules = names["manufacture"]["schedules"]
    assert schedules and all(not s["active"] and s["schedule"]["timezone"] for s in schedules)
    pool = lab.http.get(f"/work_pools/reactor-{REACTOR}").json()
    assert pool["type"] == "process"
    limit = lab.http.get(f"/v2/concurrency_limits/reactor-{REACTOR}").json()
    assert limit["limit"] == 1 and limit["active"]


def test_the_other_reactors_get_their_own_pools_and_deployments(lab):
    green = lab.deployment("seek-target")
    assert green["work_pool_name"] == "reactor-virtual-cspbbr3-oaoam"
    assert green["parameters"]["target_peak_nm"] == 516.0 and green["parameters"]["max_fwhm_nm"] == 18.0
    assert "target_peak_ev" in green["parameter_openapi_schema"]["properties"]
    cascade = lab.deployment("rig-procedure")
    assert cascade["work_pool_name"] == "reactor-virtual-inp-zns"
    assert cascade["parameter_openapi_schema"]["properties"]["procedure"]["enum"] == ["startup", "shutdown"]
    for reactor in ("virtual-cspbbr3-oaoam", "virtual-inp-zns"):
        assert lab.http.get(f"/v2/concurrency_limits/reactor-{reactor}").json()["limit"] == 1


def test_a_run_started_like_the_ui_records_parquet_and_artifacts(lab):
    root = lab.data / "ui"
    reply = lab.trigger("optimize", {"campaign": "ui", "budget": 3, "initial": 2, "platform": REACTOR,
                                     "data_root": str(root), "explain": False})
    assert reply.status_code == 201, reply.text
    run = reply.json()
    state = lab.wait(run["id"])
    assert state["type"] == "COMPLETED", lab.logs(run["id"])[-3000:]

    rows = pd.read_parquet(root / "experiments")
    assert sorted(rows["experiment_id"]) == ["ui-t0000", "ui-t0001", "ui-t0002"]
    assert set(rows["status"]) == {"completed"} and (rows["PL_I"] > 0).all()
    artifacts = lab.http.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}).json()
    by_type = {}
    for artifact in artifacts:
        by_type.setdefault(artifact["type"], []).append(artifact)
    assert by_type["progress"][0]["data"] == pytest.approx(100.0)
    keys = {a["key"] for a in artifacts if a["key"]}
    assert {"ui-best-so-far", "ui-summary"} <= keys
    summary = next(a for a in artifacts if a["key"] == "ui-summary")
    assert "experiments: 3 (3 completed)" in summary["data"]


@pytest.mark.parametrize("parameters, field, reason", [
    ({"campaign": "bad", "budget": 0}, "budget", "0 is less than the minimum of 1"),
    ({"campaign": "bad", "policy": "simulated-annealing"}, "policy", "is not one of"),
    ({"campaign": "../escape"}, "campaign", "does not match"),
    ({"campaign": "bad", "kappa": -1}, "kappa", "less than or equal to the minimum of 0"),
])
def test_an_invalid_parameter_is_refused_at_creation_naming_the_field(lab, parameters, field, reason):
    """Prefect 3.8.8 validates the parameters against the deployment's schema: HTTP 409, no run."""
    before = len(lab.http.post("/flow_runs/filter", json={}).json())
    reply = lab.trigger("optimize", parameters)
    assert reply.status_code == 409
    detail = reply.json()["detail"]
    assert f"Validation failed for field '{field}'" in detail and reason in detail, detail
    assert len(lab.http.post("/flow_runs/filter", json={}).json()) == before


def test_a_missing_required_parameter_is_refused(lab):
    reply = lab.trigger("optimize", {"budget": 3})
    assert reply.status_code == 409 and "'campaign' is a required property" in reply.json()["detail"]


def test_without_schema_enforcement_the_flow_itself_fails_the_run_naming_the_field(lab):
    """A client may switch enforcement off per run: the flow's own check fails it before the rig moves."""
    reply = lab.trigger("optimize", {"campaign": "unchecked", "budget": 0, "data_root": str(lab.data / "unchecked")},
                        enforce_parameter_schema=False)
    assert reply.status_code == 201, reply.text
    state = lab.wait(reply.json()["id"])
    assert state["type"] == "FAILED"
    assert "SdflInputError: budget must be at least 1, got 0" in state["message"]
    assert not (lab.data / "unchecked" / "experiments").exists()
    text, deadline = "", time.monotonic() + 20  # the run's logs reach the server in batches
    while "budget must be at least 1" not in text and time.monotonic() < deadline:
        time.sleep(0.5)
        logs = lab.http.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [reply.json()["id"]]}}}).json()
        text = "\n".join(entry["message"] for entry in logs)
    assert "budget must be at least 1" in text and "Traceback" not in text, text  # what the UI shows: one line


def _descendants(pid: int) -> list[int]:
    parents = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def test_a_worker_killed_mid_campaign_leaves_it_resumable_and_the_reactor_comes_back(lab):
    """SIGKILL of the worker and its flow run (a machine that dies): nothing runs the hooks.

    What Prefect 3.8.8 reports: the killed run stays RUNNING (nothing marks it crashed), and its
    reactor slot stays taken until the lease (60 s) expires and the server frees it. The same
    campaign started again from the UI waits for the reactor, says so, and resumes: no recorded
    experiment lost, none duplicated, the one in flight recorded as crashed.
    """
    root = lab.data / "killed"
    run = lab.trigger("optimize", {"campaign": "killed", "budget": 8, "initial": 4, "platform": REACTOR,
                                   "data_root": str(root), "explain": False}).json()
    folder = root / "experiments" / "campaign=killed"
    deadline = time.monotonic() + 120
    while len(list(folder.glob("*.parquet"))) < 2:
        assert lab.state(run["id"])["type"] not in FINAL, lab.logs(run["id"])[-3000:]
        assert time.monotonic() < deadline, "the campaign did not record two experiments in time"
        time.sleep(0.1)
    worker = local.running(f"worker-{REACTOR}", lab.home)
    victims = [worker, *_descendants(worker)]
    assert len(victims) >= 2  # the worker and the flow run's process (a session of its own)
    for sig in (signal.SIGSTOP, signal.SIGKILL):  # freeze all first, so none can report anything
        for pid in victims:
            os.kill(pid, sig)
    before = pd.read_parquet(root / "experiments")
    assert lab.reactor_slots() == 1  # still held by the dead run's lease
    assert lab.state(run["id"])["type"] == "RUNNING"

    lab.start_worker()
    again = lab.trigger("optimize", {"campaign": "killed", "budget": 8, "initial": 4, "platform": REACTOR,
                                     "data_root": str(root), "explain": False}).json()
    state = lab.wait(again["id"], timeout_s=150)
    logs = lab.logs(again["id"])
    assert state["type"] == "COMPLETED", logs[-3000:]
    assert f"reactor {REACTOR} is busy with another run; waiting" in logs
    assert f"reactor {REACTOR} acquired after" in logs

    rows = pd.read_parquet(root / "experiments")
    assert rows["experiment_id"].is_unique and len(rows) == 8
    assert set(before["experiment_id"]) <= set(rows["experiment_id"])
    assert (rows["status"] == "crashed").sum() <= 1 and set(rows["status"]) <= {"completed", "crashed"}
    study = optuna.load_study(study_name="killed", storage=storage_url(str(root)))
    assert len(study.trials) == 8
    assert lab.reactor_slots() == 0
    assert lab.state(run["id"])["type"] == "RUNNING"  # Prefect never learns that the first run died


def test_without_a_server_the_lock_is_a_file_lock_the_os_frees_when_its_holder_dies(tmp_path, caplog):
    """Prefect's temporary API cannot expire a killed run's slot, so `sdfl` runs without a server
    share a file lock instead: a second run waits and names the holder, and a SIGKILL frees it."""
    import contextvars
    import logging
    import threading

    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    from flows.reactor import reactor_lock

    env = {**os.environ, "PREFECT_HOME": str(tmp_path), "PREFECT_API_URL": ""}
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom flows.reactor import reactor_lock\n"
         "with reactor_lock('virtual-cs3cu2i5'):\n    print('held', flush=True)\n    time.sleep(300)\n"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        acquired = threading.Event()

        def second_run():
            with reactor_lock("virtual-cs3cu2i5", logging.getLogger("second")):
                with reactor_lock("virtual-cs3cu2i5", logging.getLogger("second")):  # re-entrant
                    acquired.set()

        with temporary_settings({PREFECT_HOME: tmp_path, PREFECT_API_URL: None}), caplog.at_level(logging.INFO):
            thread = threading.Thread(target=contextvars.copy_context().run, args=(second_run,))
            thread.start()
            assert not acquired.wait(1.5)
            os.killpg(holder.pid, signal.SIGKILL)
            assert acquired.wait(10)
            thread.join(10)
        assert f"busy with another run (pid {holder.pid}, flow run -); waiting" in caplog.text
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(10)


def test_a_campaign_runs_its_experiments_on_a_reactor_through_its_deployment(lab):
    """The campaign process keeps the study; each experiment is a run of the reactor's
    run-experiment deployment, executed by the reactor's worker, and lands in the shared dataset.
    Run in a subprocess so its Prefect client talks only to this server."""
    root = lab.data / "remote"
    script = (
        "from flows.campaign import CampaignPlan, run_campaign\n"
        "from flows.experiment import PLAIN_STEPS\n"
        "from flows.remote import DeploymentReactor\n"
        "from hardware.platform import load_platform\n"
        f"platform = load_platform({REACTOR!r})\n"
        f"reactors = [DeploymentReactor('run-experiment/{REACTOR}', platform, timeout_s=120) for _ in range(2)]\n"
        f"plan = CampaignPlan(campaign='remote', policy='ei', budget=3, initial=2, seed=4, data_root={str(root)!r})\n"
        "state = run_campaign(reactors, plan, PLAIN_STEPS)\n"
        "print('values', state.values)\n"
    )
    env = {**os.environ, "PREFECT_API_URL": lab.api, "PREFECT_HOME": str(lab.home)}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    rows = pd.read_parquet(root / "experiments")
    assert sorted(rows["experiment_id"]) == ["remote-t0000", "remote-t0001", "remote-t0002"]
    assert set(rows["status"]) == {"completed"}
    runs = [lab.http.get(f"/flow_runs/{run_id}").json() for run_id in rows["flow_run_id"]]
    assert all(r["deployment_id"] == lab.deployment("run-experiment")["id"] for r in runs)  # the worker ran them
