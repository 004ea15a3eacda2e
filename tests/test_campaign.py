"""Closed-loop campaigns through real Prefect, real Parquet and a real Optuna SQLite study."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from conftest import sdfl_environment
from optuna.trial import TrialState

from flows.campaign import CampaignPlan, explore, optimize, run_campaign, validate
from flows.experiment import PLAIN_STEPS
from hardware.errors import PumpStalled, SdflInputError
from hardware.platform import PLATFORM_DIR, load_platform
from hardware.rig import open_rig
from tasks.ledger import storage_url
from tasks.storage import read_experiments

pytestmark = pytest.mark.usefixtures("prefect_harness")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """One data root for the module."""
    return str(tmp_path_factory.mktemp("campaigns"))


def study_of(root, campaign):
    return optuna.load_study(study_name=campaign, storage=storage_url(root))


def test_optimize_runs_records_and_explains(root):
    """Five Latin-hypercube points (the fewest the report explains with SHAP), then a proposal."""
    summary = optimize(campaign="opt", budget=6, initial=5, seed=3, data_root=root)

    assert summary["experiments"] == 6 and summary["completed"] == 6
    rows = read_experiments(root, "opt")
    assert sorted(rows["experiment_id"]) == [f"opt-t{i:04d}" for i in range(6)]
    study = study_of(root, "opt")
    values = {t.user_attrs["experiment_id"]: t.value for t in study.trials}
    for row in rows.to_dict(orient="records"):  # the ledger and the dataset agree
        assert values[row["experiment_id"]] == pytest.approx(row["PL_I"])
    assert summary["best_value"] == pytest.approx(rows["PL_I"].max())
    assert 0 < summary["best_vs_optimum"] <= 1.01
    folder = Path(summary["folder"])
    for name in ("model.pkl", "trials.csv", "best_so_far.png", "shap_beeswarm.png", "shap_bar.png",
                 "response_surface.png", "shap_ranking.csv"):
        assert (folder / name).exists(), name
    assert len(summary["shap_top"]) == 2 and "mc_r2" in summary


def test_running_the_same_campaign_again_continues_to_the_new_budget(root):
    """The second run adds fewer experiments than the initial design has points: a design enqueued
    again would leave points waiting in the study, more trials than the budget."""
    first = optimize(campaign="grow", budget=4, initial=3, seed=4, data_root=root, explain=False)
    assert "policy_changed" not in first
    summary = optimize(campaign="grow", budget=5, initial=3, seed=4, data_root=root, explain=False, policy="ucb")
    assert summary["experiments"] == 5
    assert summary["policy_changed"] == {"before": "ei", "now": "ucb"}  # said, not changed silently
    rows = read_experiments(root, "grow")
    assert len(rows) == 5 and rows["experiment_id"].is_unique
    assert len(study_of(root, "grow").trials) == 5  # no second initial design


@pytest.mark.parametrize("settings, message", [
    ({"policy": "simulated-annealing"}, "policy"),
    ({"budget": 0}, "budget"),
    ({"objective": "PLQY_percent"}, "unknown feature"),
    ({"initial": 50, "budget": 10}, r"initial \(50\) must be at most the budget \(10\)"),
    ({"prior_campaign": "nothing-here"}, "no experiments"),
])
def test_bad_settings_are_refused_and_start_nothing(root, settings, message):
    with pytest.raises(Exception, match=message):
        optimize(campaign="bad", data_root=root, explain=False, **settings)
    names = {s.study_name for s in optuna.get_all_study_summaries(storage_url(root))}
    assert "bad" not in names
    assert read_experiments(root, "bad").empty


def test_a_prior_from_another_parameter_space_is_refused(root, platform, tmp_path):
    """A campaign recorded on a rig with other inputs cannot inform this one."""
    text = (PLATFORM_DIR / "virtual-cs3cu2i5.toml").read_text().replace('name = "oa_cs_fraction"', 'name = "oleic_cs"')
    other = tmp_path / "other.toml"
    other.write_text(text)
    # One experiment is a recorded campaign; the plain loop records it without the flow's report.
    run_campaign(open_rig(load_platform(str(other)), 2),
                 CampaignPlan(campaign="other-space", budget=1, initial=1, data_root=root), PLAIN_STEPS)
    assert len(read_experiments(root, "other-space")) == 1
    with pytest.raises(SdflInputError, match="different parameter space"):
        validate(CampaignPlan(campaign="informed", prior_campaign="other-space", data_root=root), platform)


def test_explore_then_an_informed_optimization(root):
    """Explore checks its cross-validated R^2 after its ten-point design (not yet 0.99, so its policy
    proposes the last experiment); then an optimization with no design of its own learns from the
    saved twin."""
    twin = explore(campaign="twin", budget=11, initial=10, target_r2=0.99, seed=5, data_root=root, explain=False)
    assert twin["experiments"] == 11 and Path(twin["model"]).exists()
    informed = optimize(campaign="informed", prior_model=twin["model"], budget=2, initial=0, seed=5,
                        data_root=root, explain=False)
    assert informed["experiments"] == 2
    study = study_of(root, "informed")
    assert all(t.state == TrialState.COMPLETE for t in study.trials)


def test_a_fatal_fault_stops_the_campaign_safely_and_it_resumes(root, platform):
    rig = open_rig(platform, 6)
    rig.lab.faults.plan.stall_pump = "cui"
    rig.lab.faults.plan.stall_at_s = 1500.0  # during the third or fourth experiment
    with pytest.raises(PumpStalled):
        optimize(campaign="stall", budget=5, initial=3, seed=6, data_root=root, explain=False)
    assert not any(p.status().running for p in rig.pumps.values()) and rig.heater.setpoint() is None
    study = study_of(root, "stall")
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and "PumpStalled" in failed[0].user_attrs["failure_reason"]
    rig.lab.faults.plan.stall_pump = None  # the operator fixed the pump
    rig.pumps["cui"].alarm = None
    summary = optimize(campaign="stall", budget=5, initial=3, seed=6, data_root=root, explain=False)
    assert summary["experiments"] == 5 and summary["completed"] == 4
    assert set(read_experiments(root, "stall")["status"]) == {"completed", "failed"}


def test_a_campaign_killed_mid_run_resumes_without_losing_or_duplicating(tmp_path):
    """SIGKILL (no hook runs) in the middle of an experiment, then start the campaign again."""
    # `sdfl` reports to this session's Prefect server, which never takes back the reactor slot of a
    # killed run (a real server does when its lease runs out): the slow rig is a reactor of its own
    # name, so the campaign resumes on the default one at once.
    slow = tmp_path / "slow.toml"
    slow.write_text((PLATFORM_DIR / "virtual-cs3cu2i5.toml").read_text().replace(
        'model = "hardware.virtual.cs3cu2i5:Cs3Cu2I5Chemistry"',
        'model = "slow_chemistry:SlowChemistry"\noptions = { seconds_per_call = 0.05 }').replace(
        'name = "virtual-cs3cu2i5"', f'name = "slow-{tmp_path.name.lower().replace("_", "-")}"', 1))
    data = tmp_path / "data"
    marker = tmp_path / "chemistry-called"  # touched whenever the detectors look at the chemistry
    env = sdfl_environment(tmp_path / "prefect", SDFL_TEST_MARKER=str(marker))
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "optimize", "--campaign", "killed", "--budget", "4", "--initial", "3",
         "--platform", str(slow), "--data-root", str(data), "--no-explain"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def wait_for(condition, what: str, every_s: float) -> None:
        deadline = time.monotonic() + 240
        while not condition():
            assert process.poll() is None, process.communicate()[0][-3000:]
            assert time.monotonic() < deadline, f"the campaign did not {what} in time"
            time.sleep(every_s)

    try:
        wait_for(lambda: len(read_experiments(data, "killed")) >= 2, "record two experiments", 0.2)
        marker.unlink()  # the second experiment is recorded: it looks at the chemistry no more
        wait_for(marker.exists, "start its third experiment", 0.02)  # now inside the third experiment
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    before = read_experiments(data, "killed")
    running = [t for t in study_of(data, "killed").trials if t.state == TrialState.RUNNING]

    summary = optimize(campaign="killed", budget=4, initial=3, data_root=str(data), explain=False)

    rows = read_experiments(data, "killed")
    study = study_of(data, "killed")
    assert len(study.trials) == 4 and summary["experiments"] == 4
    assert rows["experiment_id"].is_unique and len(rows) == 4
    assert set(before["experiment_id"]) <= set(rows["experiment_id"])  # nothing recorded was lost
    completed = {t.user_attrs["experiment_id"]: t.value for t in study.trials if t.state == TrialState.COMPLETE}
    done_rows = rows[rows["status"] == "completed"]
    assert set(done_rows["experiment_id"]) == set(completed)
    assert np.allclose([completed[e] for e in done_rows["experiment_id"]], done_rows["PL_I"])
    # The experiment in flight when the process died is recorded as crashed and told FAIL.
    crashed = rows[rows["status"] == "crashed"]
    assert len(crashed) == len(running) <= 1
    assert summary["completed"] == 4 - len(crashed)
