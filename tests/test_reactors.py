"""One campaign on several reactors: a batch of distinct conditions, one dataset, one study."""

from __future__ import annotations

import time

import pytest

from flows.campaign import CampaignPlan, run_campaign
from flows.experiment import PLAIN_STEPS
from hardware.clock import SimClock
from hardware.errors import PumpStalled, SdflInputError
from hardware.rig import open_rig
from tasks.storage import read_experiments


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

