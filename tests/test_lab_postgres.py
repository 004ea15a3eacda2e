"""The lab's multi-machine shape on a real PostgreSQL: the Prefect server on it, one worker per
reactor, one campaign whose runs on every reactor draw from one study on it at once.

The PostgreSQL cluster is made by the `postgres` fixture (tests/conftest.py): Debian's server
programs, a temporary folder, a free loopback port; nothing is mocked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import optuna
import pytest
from conftest import CENTRE, REPO_DIR, no_traceback
from optuna.trial import TrialState
from prefect_lab import FINAL, descendants, free_port, local

from tasks import ledger
from tasks.storage import existing_record, read_experiments

REACTORS = ("rig-a", "rig-b", "rig-c")
LINE = "line-d"
"""A fourth reactor, making a lot that waits for an operator while the campaign runs."""


def paced_platform(name: str) -> str:
    """A virtual reactor of its own name that keeps an experiment about 5 s on the rig, as a real
    one keeps it minutes: the campaign processes overlap as they do in a lab."""
    return f'[platform]\nname = "{name}"\nbase = "virtual-cs3cu2i5"\n\n[virtual]\npace = 120.0\n'


def test_a_wrong_postgresql_address_is_named_with_the_fix(sdfl, postgres, tmp_path):
    """A storage URL on a port where no PostgreSQL listens: the campaign refuses before it runs."""
    wrong = postgres.url("optuna").replace(f":{postgres.port}/", f":{postgres.port + 1}/")
    done = sdfl("optimize", "--campaign", "c", "--budget", "2", "--initial", "2", "--storage", wrong,
                "--data-root", str(tmp_path / "data"), "--no-explain")
    out = no_traceback(done)
    assert done.returncode != 0
    assert "cannot be opened" in out and "check that the database server is running" in out, out
    assert not (tmp_path / "data" / "experiments").exists()


def test_a_server_database_that_does_not_answer_is_named_with_the_fix(tmp_path):
    """`make server DB=...` with PostgreSQL not listening: one message with the cause and the fix,
    no traceback, nothing left running."""
    home = tmp_path / "prefect"
    done = subprocess.run([sys.executable, os.path.join(REPO_DIR, "deployments", "local.py"), "server", "--home",
                           str(home), "--port", str(free_port()),
                           "--database", "postgresql+asyncpg://sdfl@127.0.0.1:1/prefect"],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    out = no_traceback(done)
    assert done.returncode == 2, out
    assert "the Prefect server exited" in out and "Connect call failed ('127.0.0.1', 1)" in out, out
    assert "Check the database URL" in out and str(home / "server.log") in out
    assert not local.running("server", home)


@pytest.fixture(scope="module")
def postgres_lab(tmp_path_factory, postgres):
    """The Prefect server on PostgreSQL with a worker and deployments for each of REACTORS."""
    from prefect_lab import running_postgres_lab

    folder = tmp_path_factory.mktemp("reactors")
    platforms = {}
    for name in REACTORS:
        (folder / f"{name}.toml").write_text(paced_platform(name))
        platforms[name] = str(folder / f"{name}.toml")
    (folder / f"{LINE}.toml").write_text(f'[platform]\nname = "{LINE}"\nbase = "virtual-cs3cu2i5"\n')
    platforms[LINE] = str(folder / f"{LINE}.toml")
    yield from running_postgres_lab(tmp_path_factory, postgres, platforms)


@pytest.mark.slow
def test_three_workers_run_one_campaign_through_restarts_and_a_dead_worker(postgres_lab, postgres):
    """The lab's shape: the Prefect server and the study on PostgreSQL, one worker per reactor,
    the campaign started on each reactor through its deployment (as from the UI). While it runs,
    PostgreSQL restarts, then the Prefect server restarts, then one worker's machine dies
    mid-experiment (SIGKILL of the worker and its flow run: no hook runs). Meanwhile a lot on a
    fourth reactor waits for an operator to refill a syringe.

    The campaign waits through both restarts; the other two workers finish it; the dead run is
    marked Crashed within 90 s; its reactor's slot is freed; the experiment it was running is
    recorded as crashed and its trial settled; no experiment is lost or duplicated, each design
    point runs once, no condition twice, and the study and the dataset agree. The paused lot is
    not taken for dead by the automation that caught the killed run, and ends as its operator says."""
    lab, storage = postgres_lab, postgres.url("optuna")
    root = lab.data / "lab"
    # PFO runs short at about 1.06 h of the lot, and nobody refills it on their own: the run pauses.
    lot = lab.trigger("manufacture", {"lot": "waits", "recipe": CENTRE, "duration_h": 1.5,
                                      "qc_every_min": 5.0, "qualification_min": 20.0, "qualification_points": 10,
                                      "segment_min": 60.0, "on_alarm": "continue", "auto_refill": False,
                                      "seed": 21, "data_root": str(lab.data / "lots")}, name=LINE)
    assert lot.status_code == 201, lot.text
    lot = lot.json()["id"]
    campaign = {"campaign": "lab", "budget": 12, "initial": 3, "seed": 4, "storage": storage,
                "data_root": str(root), "explain": False}
    runs = {}
    for name in REACTORS:
        reply = lab.trigger("optimize", campaign, name=name)
        assert reply.status_code == 201, reply.text
        runs[name] = reply.json()["id"]

    def recorded_at_least(n: int) -> None:
        deadline = time.monotonic() + 240
        while not (root / "experiments").exists() or len(read_experiments(root, "lab")) < n:
            for run in runs.values():
                assert lab.state(run)["type"] not in FINAL, lab.logs(run)[-3000:]
            assert time.monotonic() < deadline, f"fewer than {n} experiments recorded in time"
            time.sleep(0.5)

    recorded_at_least(2)
    postgres.stop("fast")  # ends every session, as a restart of the database server does
    time.sleep(3)
    postgres.start()
    recorded_at_least(4)
    print(f"{time.strftime('%H:%M:%S')} the Prefect server restarts; it was away {lab.restart_server():.0f} s")

    # rig-a has recorded an experiment and runs its next one: its machine dies now.
    worker = local.running("worker-rig-a", lab.home)
    deadline = time.monotonic() + 240
    while True:
        assert time.monotonic() < deadline, "rig-a never got into its second experiment"
        assert lab.state(runs["rig-a"])["type"] not in FINAL, lab.logs(runs["rig-a"])[-3000:]
        victims = [worker, *descendants(worker)]
        mine = in_flight(storage, "lab", victims)
        rows = read_experiments(root, "lab") if (root / "experiments").exists() else None
        if mine is not None and rows is not None and len(rows) and (rows["platform"] == "rig-a").any():
            break
        time.sleep(0.2)
    for pid in victims:  # freeze all first, so none can report anything
        os.kill(pid, signal.SIGSTOP)
    running = optuna.load_study(study_name="lab", storage=storage).trials[mine].user_attrs["experiment_id"]
    # Mid-experiment, or (rarely) between writing the experiment and telling the study.
    mid_experiment = existing_record(root, "lab", running) is None
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()

    for name in ("rig-b", "rig-c"):
        state = lab.wait(runs[name], timeout_s=300)
        assert state["type"] == "COMPLETED", f"{lab.history(runs[name])}\n{lab.logs(runs[name])[-3000:]}"
    while (state := lab.state(runs["rig-a"]))["type"] != "CRASHED":
        assert time.monotonic() - killed_at < 90, f"the dead run is still {state['type']} 90 s after the kill"
        time.sleep(1)
    crashed_after_s = time.monotonic() - killed_at
    print(f"marked Crashed {crashed_after_s:.0f} s after the kill")
    assert "no heartbeat" in state["message"]
    while lab.reactor_slots("rig-a"):  # the dead run's lease runs out (60 s) and the server frees the slot
        assert time.monotonic() - killed_at < 120, "rig-a's slot was never freed"
        time.sleep(1)

    study = optuna.load_study(study_name="lab", storage=storage)
    ran = ledger.finished(study)  # what spent the budget (not the trials set aside unrun)
    assert len(ran) == campaign["budget"] and not study.get_trials(states=(TrialState.RUNNING,))
    settled = study.trials[mine]
    rows = read_experiments(root, "lab")
    ids = [t.user_attrs["experiment_id"] for t in ran]
    assert rows["experiment_id"].is_unique and sorted(rows["experiment_id"]) == sorted(ids)
    by_id = rows.set_index("experiment_id")
    if mid_experiment:  # recorded as crashed by the runs that went on, its trial settled as failed
        assert settled.state == TrialState.FAIL and "interrupted" in settled.user_attrs["failure_reason"]
        assert by_id.loc[running, "status"] == "crashed"
    else:  # its record was written: the study is told what it says
        assert settled.state == TrialState.COMPLETE and by_id.loc[running, "status"] == "completed"
    assert (rows["status"] == "completed").sum() == campaign["budget"] - mid_experiment
    values = {t.user_attrs["experiment_id"]: t.value for t in ran if t.state == TrialState.COMPLETE}
    assert {i: by_id.loc[i, "PL_I"] for i in values} == pytest.approx(values)  # the study and the dataset agree
    design = Counter(t.user_attrs["design_index"] for t in ran if "design_index" in t.user_attrs)
    assert design == Counter({0: 1, 1: 1, 2: 1})  # each design point once, though every run planned it
    # Pending points honoured: no condition measured twice. The killed experiment gave no result,
    # so its condition may be proposed again once its trial is settled (the optimum often sits
    # on a corner of the box, which the proposal then finds again exactly).
    measured = [tuple(round(v, 9) for v in t.params.values()) for t in ran if t.state == TrialState.COMPLETE]
    assert len(set(measured)) == len(measured)
    assert set(rows["platform"]) == set(REACTORS)

    # The lot has waited for its operator longer than a silent run is given, and is still waiting.
    while (state := lab.state(lot))["type"] == "PAUSED" and paused_for(state) < local.SILENCE_S + 5:
        time.sleep(1)
    assert state["type"] == "PAUSED", f"the lot is {state['type']}: {state['message']}\n{lab.logs(lot)[-3000:]}"
    print(f"the lot waited {paused_for(state):.0f} s for its operator")
    reply = lab.http.post(f"/flow_runs/{lot}/resume", json={"run_input": {"refilled": False, "note": "end of shift"}})
    assert reply.status_code == 201 and reply.json()["status"] == "ACCEPT", reply.text
    assert lab.wait(lot, timeout_s=120)["type"] == "COMPLETED", lab.logs(lot)[-3000:]


def paused_for(state: dict) -> float:
    """Seconds since a run entered `state`."""
    from datetime import UTC, datetime

    return (datetime.now(UTC) - datetime.fromisoformat(state["timestamp"])).total_seconds()


def in_flight(storage: str, campaign: str, pids: list[int]) -> int | None:
    """The number of the trial that one of `pids` runs now, if any."""
    try:
        study = optuna.load_study(study_name=campaign, storage=storage)
    except KeyError:  # not created yet
        return None
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        parts = str(trial.user_attrs.get("owner", "")).split("|")
        if len(parts) == 5 and parts[2].isdigit() and int(parts[2]) in pids:
            return trial.number
    return None
