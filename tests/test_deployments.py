"""The real client: a Prefect server on loopback, the deployments of deployments/prefect.yaml, a
process worker, runs triggered through the REST API as the UI does, and invalid parameters.
Everything it starts, it stops. (A worker killed mid-campaign: tests/test_lab_postgres.py.)
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from prefect_lab import BUDGET, CAMPAIGN, REACTOR, REPO, local

from flows.settings import bounds_text, centred
from hardware.platform import load_platform
from hardware.units import unit_label

pytestmark = pytest.mark.slow

BOUNDS = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")


def form_fields(schema: dict, path: str = ""):
    """Every field of a run form, the condition's own fields included, as (path, field)."""
    for name, field in schema.get("properties", {}).items():
        yield path + name, field
        yield from form_fields(field, f"{path}{name}.")


def every_form(ui_lab) -> dict[str, dict]:
    """The run form of each deployment, by flow name."""
    flows = {f["id"]: f["name"] for f in ui_lab.http.post("/flows/filter", json={}).json()}
    deployments = ui_lab.http.post("/deployments/filter", json={}).json()
    return {flows[d["flow_id"]]: d["parameter_openapi_schema"] for d in deployments}


def test_the_deployments_show_typed_forms_on_the_reactor_pool(ui_lab):
    names = {flow: ui_lab.deployment(flow) for flow in ("optimize", "explore", "residence-time-study", "manufacture")}
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
    pool = ui_lab.http.get(f"/work_pools/reactor-{REACTOR}").json()
    assert pool["type"] == "process"
    limit = ui_lab.http.get(f"/v2/concurrency_limits/reactor-{REACTOR}").json()
    assert limit["limit"] == 1 and limit["active"]


def test_the_other_reactors_get_their_own_pools_and_deployments(ui_lab):
    green = ui_lab.deployment("seek-target")
    assert green["work_pool_name"] == "reactor-virtual-cspbbr3-oaoam"
    assert green["parameters"]["target_peak_nm"] == 516.0 and green["parameters"]["max_fwhm_nm"] == 18.0
    assert "target_peak_ev" in green["parameter_openapi_schema"]["properties"]
    cascade = ui_lab.deployment("rig-procedure")
    assert cascade["work_pool_name"] == "reactor-virtual-inp-zns"
    assert cascade["parameter_openapi_schema"]["properties"]["procedure"]["enum"] == ["startup", "shutdown"]
    for reactor in ("virtual-cspbbr3-oaoam", "virtual-inp-zns"):
        assert ui_lab.http.get(f"/v2/concurrency_limits/reactor-{reactor}").json()["limit"] == 1


def test_every_field_of_every_form_is_one_plain_field(ui_lab):
    """Prefect 3.8.8's UI draws `anyOf` [X, null] as type tabs over 'Property is type "None"', and
    sends a default of null as null, which a plain type refuses: no field of the seven forms has either."""
    forms = every_form(ui_lab)
    assert len(forms) == 7
    for flow, form in forms.items():
        for path, field in form_fields(form):
            where = f"{flow}: {path}"
            assert not any(option.get("type") == "null" for option in field.get("anyOf", [])), where
            assert not isinstance(field.get("type"), list), where
            assert "default" not in field or field["default"] is not None, where


def test_every_number_field_shows_its_range_and_unit(ui_lab):
    """The form shows a field's description but not its bounds: the description says them, and the unit."""
    for flow, form in every_form(ui_lab).items():
        for path, field in form_fields(form):
            numbers = field if field.get("type") in ("number", "integer") else field.get("items") or {}
            if numbers.get("type") not in ("number", "integer"):
                continue
            bounds = {word: numbers[word] for word in BOUNDS if word in numbers}
            assert bounds, f"{flow}: {path} has no bounds"
            assert bounds_text(bounds) in field["description"], f"{flow}: {path}: {field['description']}"
            if "unit" in field:
                assert f"({field['unit']})" in field["description"], f"{flow}: {path}: {field['description']}"


def test_no_text_of_a_deployment_is_in_angle_brackets(ui_lab):
    """The UI reads descriptions as Markdown and drops `<data root>` as an unknown HTML tag."""
    tag = re.compile(r"<[A-Za-z][^>]*>")
    for deployment in ui_lab.http.post("/deployments/filter", json={}).json():
        texts = [deployment["description"], *(field.get("description", "") for _, field in
                                                 form_fields(deployment["parameter_openapi_schema"]))]
        assert not [text for text in texts if tag.search(text or "")], deployment["name"]


def test_the_run_experiment_form_has_one_field_per_parameter_of_its_platform(ui_lab):
    """Name, unit, range and description from the platform file; default: the centre, as `sdfl experiment`."""
    platform = load_platform(REACTOR)
    condition = ui_lab.deployment("run-experiment")["parameter_openapi_schema"]["properties"]["condition"]
    assert condition["type"] == "object" and condition["additionalProperties"] is False
    assert list(condition["properties"]) == platform.parameter_names
    centre = centred(platform, {})
    for parameter in platform.parameters:
        field = condition["properties"][parameter.name]
        assert field["type"] == "number" and field["title"] == parameter.name
        assert (field["minimum"], field["maximum"]) == (parameter.low, parameter.high)
        assert field["default"] == pytest.approx(centre[parameter.name], abs=1e-12)
        assert parameter.description in field["description"]
        assert unit_label(parameter.unit) in field["title"] + field["description"]


def test_a_run_of_the_run_experiment_form_completes(ui_lab):
    """What the form sends: the condition's fields (a changed one among the centres), the empty
    fields left out. An API client may send null for an empty field instead (flows/remote.py sends
    seed=None); a value outside the platform's range is refused naming it."""
    form = ui_lab.deployment("run-experiment")["parameter_openapi_schema"]["properties"]
    condition = {name: field["default"] for name, field in form["condition"]["properties"].items()}
    condition["temperature_c"] = 141.0
    root = ui_lab.data / "form"
    reply = ui_lab.trigger("run-experiment", {"condition": condition, "campaign": "form", "data_root": str(root),
                                           "seed": None, "steady_check": None})
    assert reply.status_code == 201, reply.text
    state = ui_lab.wait(reply.json()["id"])
    assert state["type"] == "COMPLETED", ui_lab.logs(reply.json()["id"])[-3000:]
    rows = pd.read_parquet(root / "experiments")
    assert list(rows["status"]) == ["completed"] and rows["temperature_c"].iloc[0] == 141.0

    too_hot = ui_lab.trigger("run-experiment", {"condition": {**condition, "temperature_c": 500.0}})
    assert too_hot.status_code == 409
    assert "Validation failed for field 'condition.temperature_c'" in too_hot.json()["detail"]


def test_make_worker_serves_every_reactor_of_the_deployment_file(ui_lab):
    """`make worker` (local.py worker without --reactor): one worker per reactor named in prefect.yaml,
    so no deployment shows Not Ready. The ones it added are stopped again: more workers polling the
    session's SQLite server make it answer 503 (database is locked) now and then."""
    port = ui_lab.api.rsplit(":", 1)[1].split("/")[0]
    reactors = local.reactors()
    assert {REACTOR, "virtual-cspbbr3-oaoam", "virtual-inp-zns"} <= set(reactors)
    try:
        assert local.main(["worker", "--home", str(ui_lab.home), "--port", port]) == 0
        assert all(local.running(f"worker-{reactor}", ui_lab.home) for reactor in reactors)
        deadline = time.monotonic() + 60
        while {ui_lab.http.get(f"/work_pools/reactor-{reactor}").json()["status"] for reactor in reactors} != {"READY"}:
            assert time.monotonic() < deadline, "a reactor's pool is still not ready"
            time.sleep(1)
    finally:
        added = [pid for reactor in reactors if reactor != REACTOR and (pid := local.running(f"worker-{reactor}", ui_lab.home))]
        for pid in added:
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while any(local.alive(pid) for pid in added) and time.monotonic() < deadline:
            time.sleep(0.2)


def test_a_run_started_like_the_ui_records_parquet_and_artifacts(ui_lab):
    """The optimization of `ui_lab.report_runs()`, started as the UI's run form starts it (campaign,
    budget and seed given, the other settings at the form's defaults) and run by the reactor's
    worker: every experiment in the dataset, the progress at 100 % and the report as artifacts of
    the run. (Its plots are checked in a browser by tests/test_ui_browser.py.)"""
    runs = ui_lab.report_runs()
    run, root = runs["optimize"], runs["root"]

    rows = pd.read_parquet(root / "experiments")
    assert sorted(rows["experiment_id"]) == [f"{CAMPAIGN}-t{n:04d}" for n in range(BUDGET)]
    assert set(rows["status"]) == {"completed"} and (rows["PL_I"] > 0).all()
    artifacts = ui_lab.http.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}).json()
    by_type = {}
    for artifact in artifacts:
        by_type.setdefault(artifact["type"], []).append(artifact)
    assert by_type["progress"][0]["data"] == pytest.approx(100.0)
    keys = {a["key"] for a in artifacts if a["key"]}
    assert {f"{CAMPAIGN}-best-so-far", f"{CAMPAIGN}-summary"} <= keys
    summary = next(a for a in artifacts if a["key"] == f"{CAMPAIGN}-summary")
    assert f"Experiments: {BUDGET} ({BUDGET} completed)" in summary["data"]


@pytest.mark.parametrize("parameters, field, reason", [
    ({"campaign": "bad", "budget": 0}, "budget", "0 is less than the minimum of 1"),
    ({"campaign": "bad", "policy": "simulated-annealing"}, "policy", "is not one of"),
    ({"campaign": "../escape"}, "campaign", "does not match"),
    ({"campaign": "bad", "kappa": -1}, "kappa", "less than or equal to the minimum of 0"),
])
def test_an_invalid_parameter_is_refused_at_creation_naming_the_field(ui_lab, parameters, field, reason):
    """Prefect 3.8.8 validates the parameters against the deployment's schema: HTTP 409, no run."""
    before = len(ui_lab.http.post("/flow_runs/filter", json={}).json())
    reply = ui_lab.trigger("optimize", parameters)
    assert reply.status_code == 409
    detail = reply.json()["detail"]
    assert f"Validation failed for field '{field}'" in detail and reason in detail, detail
    assert len(ui_lab.http.post("/flow_runs/filter", json={}).json()) == before


def test_a_missing_required_parameter_is_refused(ui_lab):
    reply = ui_lab.trigger("optimize", {"budget": 3})
    assert reply.status_code == 409 and "'campaign' is a required property" in reply.json()["detail"]


def test_without_schema_enforcement_the_flow_itself_fails_the_run_naming_the_field(ui_lab):
    """A client may switch enforcement off per run: the flow's own check fails it before the rig moves."""
    reply = ui_lab.trigger("optimize", {"campaign": "unchecked", "budget": 0, "data_root": str(ui_lab.data / "unchecked")},
                        enforce_parameter_schema=False)
    assert reply.status_code == 201, reply.text
    state = ui_lab.wait(reply.json()["id"])
    assert state["type"] == "FAILED"
    assert "SdflInputError: budget must be at least 1, got 0" in state["message"]
    assert not (ui_lab.data / "unchecked" / "experiments").exists()
    text, deadline = "", time.monotonic() + 20  # the run's logs reach the server in batches
    while "budget must be at least 1" not in text and time.monotonic() < deadline:
        time.sleep(0.5)
        logs = ui_lab.http.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [reply.json()["id"]]}}}).json()
        text = "\n".join(entry["message"] for entry in logs)
    assert "budget must be at least 1" in text and "Traceback" not in text, text  # what the UI shows: one line


def test_without_a_server_the_lock_is_a_file_lock_the_os_frees_when_its_holder_dies(tmp_path, caplog):
    """Prefect's temporary API cannot expire a killed run's slot, so `sdfl` runs without a server
    share a file lock instead, whatever their Prefect settings (two people at one rig PC, each with
    a PREFECT_HOME of their own): a second run waits and names the holder, and a SIGKILL frees it."""
    import contextvars
    import logging
    import threading

    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    from flows.reactor import reactor_lock

    (tmp_path / "ana").mkdir()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "ana"), "PREFECT_API_URL": ""}
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

        with temporary_settings({PREFECT_HOME: tmp_path / "ben", PREFECT_API_URL: None}), \
                caplog.at_level(logging.INFO):
            thread = threading.Thread(target=contextvars.copy_context().run, args=(second_run,))
            thread.start()
            assert not acquired.wait(1.5)
            os.killpg(holder.pid, signal.SIGKILL)
            assert acquired.wait(10)
            thread.join(10)
        assert f"busy with another run (pid {holder.pid}, flow run -); waiting" in caplog.text
        assert "It has held the reactor since" in caplog.text
        assert "reactor virtual-cs3cu2i5 acquired after" in caplog.text
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(10)


def run_on_lab(lab, script: str) -> subprocess.CompletedProcess:
    """Run `script` in a Python process whose Prefect client talks only to `lab`; it must succeed."""
    env = {**os.environ, "PREFECT_API_URL": lab.api, "PREFECT_HOME": str(lab.home)}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_a_campaign_runs_its_experiments_on_a_reactor_through_its_deployment(ui_lab):
    """The campaign process keeps the study; each experiment is a run of the reactor's
    run-experiment deployment, executed by the reactor's worker, and lands in the shared dataset.
    Run in a subprocess so its Prefect client talks only to this server."""
    root = ui_lab.data / "remote"
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
    run_on_lab(ui_lab, script)

    rows = pd.read_parquet(root / "experiments")
    assert sorted(rows["experiment_id"]) == ["remote-t0000", "remote-t0001", "remote-t0002"]
    assert set(rows["status"]) == {"completed"}
    runs = [ui_lab.http.get(f"/flow_runs/{run_id}").json() for run_id in rows["flow_run_id"]]
    assert all(r["deployment_id"] == ui_lab.deployment("run-experiment")["id"] for r in runs)  # the worker ran them


def test_a_remote_reactor_tells_the_campaign_what_kind_of_failure_it_was(ui_lab):
    """A request the reactor refuses (an experiment id its dataset already holds) fails the flow
    run on the worker; the run is labelled with the kind of failure, and the campaign's side
    raises the matching error (a refusal: recorded against the trial, the campaign goes on)
    instead of reading the kind from the error's text."""
    root = ui_lab.data / "kinds"
    script = (
        "from flows.characterize import centre_condition\n"
        "from flows.remote import DeploymentReactor\n"
        "from hardware.errors import SdflInputError\n"
        "from hardware.platform import load_platform\n"
        f"reactor = DeploymentReactor('run-experiment/{REACTOR}', load_platform({REACTOR!r}), timeout_s=120)\n"
        f"request = dict(condition=centre_condition(reactor.platform), campaign='kinds', experiment_id='kinds-1',\n"
        f"               data_root={str(root)!r}, seed=1)\n"
        "print('first:', reactor.conduct(**request)['status'])\n"
        "try:\n"
        "    reactor.conduct(**request)\n"
        "except SdflInputError as exc:\n"
        "    print('refused:', exc)\n"
    )
    done = run_on_lab(ui_lab, script)
    assert "first: completed" in done.stdout, done.stdout
    assert "refused: run-experiment/" in done.stdout and "already recorded" in done.stdout, done.stdout

    runs = ui_lab.http.post("/flow_runs/filter", json={
        "flow_runs": {"deployment_id": {"any_": [ui_lab.deployment("run-experiment")["id"]]},
                      "state": {"type": {"any_": ["FAILED"]}}},
        "sort": "EXPECTED_START_TIME_DESC", "limit": 1}).json()
    assert runs and runs[0]["labels"].get("sdfl.failure-kind") == "refused", runs
    assert len(pd.read_parquet(root / "experiments")) == 1  # the recorded experiment was left as it was
