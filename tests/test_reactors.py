"""One campaign on several reactors: a batch of distinct conditions, one dataset, one study."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.campaign import CampaignPlan, run_campaign
from flows.experiment import PLAIN_STEPS
from hardware.clock import SimClock
from hardware.errors import PumpStalled, SdflInputError
from hardware.rig import open_rig
from tasks.storage import read_experiments

REPO = Path(__file__).resolve().parents[1]


def reactors(platform, n, first_seed=50):
    return [open_rig(platform, seed=first_seed + k) for k in range(n)]


def test_three_reactors_share_one_campaign_without_duplicates(platform, tmp_path):
    rigs = reactors(platform, 3)
    plan = CampaignPlan(campaign="three", policy="ei", budget=9, initial=3, seed=2, data_root=str(tmp_path))

    state = run_campaign(rigs, plan, PLAIN_STEPS)

    rows = read_experiments(str(tmp_path), "three")
    assert sorted(rows["experiment_id"]) == [f"three-t{i:04d}" for i in range(9)]  # every trial once
    assert len(state.values) == 9 and all(v == v for v in state.values)
    conditions = {tuple(round(v, 9) for v in r) for r in rows[platform.parameter_names].to_numpy()}
    assert len(conditions) == 9  # the reactors never ran one condition twice
    used = [r for r in rigs if r.clock.now() > 0]
    assert len(used) == 3  # every reactor worked
    for rig in rigs:  # and each ends safe
        assert not any(p.status().running for p in rig.pumps.values())
        assert rig.heater.setpoint() is None


def test_a_reactor_with_a_fatal_fault_leaves_the_others_to_finish(platform, tmp_path):
    rigs = reactors(platform, 2, first_seed=60)
    rigs[1].lab.faults.plan.stall_pump = "cui"  # this reactor's CuI pump stalls during its second run
    rigs[1].lab.faults.plan.stall_at_s = 500.0
    plan = CampaignPlan(campaign="two", policy="ei", budget=6, initial=2, seed=3, data_root=str(tmp_path))

    with pytest.raises(PumpStalled):
        run_campaign(rigs, plan, PLAIN_STEPS)

    rows = read_experiments(str(tmp_path), "two")
    assert rows["experiment_id"].is_unique and len(rows) == 6
    assert (rows["status"] == "failed").sum() == 1
    assert all(not p.status().running for r in rigs for p in r.pumps.values())


def test_a_paced_clock_makes_virtual_waits_cost_wall_time():
    clock = SimClock(pace=1000.0)
    t0 = time.perf_counter()
    clock.sleep(100.0)
    assert clock.now() == 100.0
    assert time.perf_counter() - t0 >= 0.09
    with pytest.raises(ValueError, match="pace"):
        SimClock(pace=0)


@pytest.mark.usefixtures("prefect_harness")
def test_the_optimize_flow_spreads_a_campaign_over_virtual_reactors(tmp_path):
    from flows.campaign import optimize

    summary = optimize(campaign="pair", budget=4, initial=2, seed=5, data_root=str(tmp_path), explain=False,
                       reactors=2)

    assert summary["experiments"] == 4 and summary["completed"] == 4
    assert read_experiments(str(tmp_path), "pair")["experiment_id"].is_unique


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize(("settings", "message"), [
    ({"reactors": 0}, "reactors must be at least 1"),
    ({"remote_reactors": ["reactor-2"]}, "'<flow name>/<deployment name>'"),
    ({"remote_reactors": ["run-experiment/nowhere"]}, "no such deployment"),
])
def test_bad_reactor_settings_are_refused_before_anything_runs(tmp_path, settings, message):
    from flows.campaign import optimize

    with pytest.raises(SdflInputError, match=message):
        optimize(campaign="bad", budget=3, initial=2, data_root=str(tmp_path), explain=False, **settings)
    assert not (tmp_path / "experiments").exists()  # nothing was run or recorded


PACED_PLATFORM = """[platform]
name = "paced-cs3cu2i5"
base = "virtual-cs3cu2i5"

[virtual]
pace = 120.0  # simulated seconds per wall second: an experiment keeps the rig for 5 s and more
"""
"""The reactor of both runs. Its pace keeps an experiment on the rig for 5 s plus its computing, so
that the second run finds the reactor taken: the two runs reach it 1-2 s apart, and up to about 10 s
apart on a machine loaded five times over, where the computing alone keeps the rig 7-12 s. Not
longer: the second run's experiment costs the test as much wall time."""


@pytest.mark.slow
def test_two_sdfl_runs_with_their_own_prefect_settings_take_turns_on_one_reactor(tmp_path):
    """Two people start `sdfl experiment` on the same reactor at the same time, each with their own
    PREFECT_HOME (so each its own temporary Prefect server) and data root. The reactor is one lock
    whatever the Prefect settings: one run waits for the other and says who holds the reactor."""
    platform_file = tmp_path / "paced.toml"
    platform_file.write_text(PACED_PLATFORM)
    runs = {}
    for who in ("ana", "ben"):
        (tmp_path / who).mkdir()  # Prefect creates PREFECT_HOME, not its parent folders
        env = {**os.environ, "PREFECT_HOME": str(tmp_path / who / "prefect"), "SDFL_LOCK_DIR": str(tmp_path / "locks")}
        env.pop("PREFECT_API_URL", None)
        runs[who] = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "experiment", "--platform", str(platform_file), "--campaign", "turns",
             "--data-root", str(tmp_path / who / "data")],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output = {who: run.communicate(timeout=400)[0] for who, run in runs.items()}
    finally:
        for run in runs.values():
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
    for who, run in runs.items():
        assert run.returncode == 0, output[who][-3000:]

    rows = {who: read_experiments(tmp_path / who / "data", "turns").iloc[0] for who in runs}
    first, second = sorted(runs, key=lambda who: rows[who]["started_at"])
    assert rows[first]["finished_at"] <= rows[second]["started_at"]  # never both on the rig at once
    waited = output[second]
    assert f"reactor paced-cs3cu2i5 is busy with another run (pid {runs[first].pid}, flow run " in waited, waited
    assert "It has held the reactor since" in waited and "reactor paced-cs3cu2i5 acquired after" in waited
