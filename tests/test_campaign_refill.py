"""Running out of reagent is a state of the rig, not a bad condition: a campaign spends no budget
on experiments that never ran, and either waits for a refill (a form in the Prefect UI, or a
callback from Python) or stops with a message saying how to resume."""

from __future__ import annotations

import threading

import optuna
import pytest
from conftest import assert_rig_safe, no_traceback, paused_run_id
from optuna.trial import TrialState

from flows.campaign_loop import CampaignPlan, run_campaign
from flows.experiment import PLAIN_STEPS
from flows.operator import perform_refill
from hardware.errors import RefillNeeded
from hardware.platform import PLATFORM_DIR
from hardware.rig import open_rig
from tasks import ledger
from tasks.formulation import formulate
from tasks.storage import read_experiments


def short_of_carrier(rig, experiments: float) -> None:
    """Load the PFO syringe with enough for about `experiments` runs at the centre of the space."""
    from flows.characterize import centre_condition

    need = formulate(centre_condition(rig.platform), rig.platform).volumes_ul["pfo"]
    pump = rig.lab.pumps["pfo"]
    pump.refill(need * rig.platform.rules.volume_margin * experiments)


def study_of(root, campaign):
    return optuna.load_study(study_name=campaign, storage=ledger.storage_url(root))


def test_without_a_refill_the_campaign_stops_spends_no_budget_and_resumes(platform, tmp_path):
    rig = open_rig(platform, 50)
    short_of_carrier(rig, 2.6)
    plan = CampaignPlan(campaign="dry", budget=5, initial=5, seed=50, data_root=str(tmp_path))

    with pytest.raises(RefillNeeded, match=r"stopped after \d of 5 experiments.*pfo needs.*run the campaign again"):
        run_campaign(rig, plan, PLAIN_STEPS)

    assert_rig_safe(rig)
    study = study_of(tmp_path, "dry")
    done = ledger.finished(study)
    not_run = [t for t in study.trials if t.user_attrs.get("not_run")]
    assert len(not_run) == 1 and "RefillNeeded" in not_run[0].user_attrs["failure_reason"]
    assert len(read_experiments(tmp_path, "dry")) == len(done) >= 1  # no record for what never ran
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert not_run[0].params in [t.system_attrs["fixed_params"] for t in waiting]  # it waits for the refill

    rig.lab.refill_all()  # the operator refills; the campaign is started again
    run_campaign(rig, plan, PLAIN_STEPS)
    study = study_of(tmp_path, "dry")
    assert len(ledger.finished(study)) == 5
    assert all(t.state == TrialState.COMPLETE for t in ledger.finished(study))
    assert len(read_experiments(tmp_path, "dry")) == 5


def test_a_refill_callback_lets_the_campaign_finish_its_budget(platform, tmp_path):
    rig = open_rig(platform, 51)
    short_of_carrier(rig, 2.6)
    asked = []

    def operator(reactor, need: RefillNeeded) -> bool:
        asked.append(need.pumps)
        assert reactor.rig is rig
        assert not any(p.status().running for p in rig.lab.pumps.values())  # stopped before anyone refills
        perform_refill(rig, need.pumps)
        return True

    run_campaign(rig, CampaignPlan(campaign="fed", budget=5, initial=3, seed=51, data_root=str(tmp_path)),
                 PLAIN_STEPS, confirm_refill=operator)

    assert asked == [["pfo"]]
    study = study_of(tmp_path, "fed")
    assert [t.state for t in ledger.finished(study)] == [TrialState.COMPLETE] * 5
    assert len(read_experiments(tmp_path, "fed")) == 5


def test_a_refill_the_operator_refuses_stops_the_campaign_with_how_to_resume(platform, tmp_path):
    rig = open_rig(platform, 53)
    short_of_carrier(rig, 1.6)
    with pytest.raises(RefillNeeded, match="run the campaign again"):
        run_campaign(rig, CampaignPlan(campaign="no", budget=4, initial=2, seed=53, data_root=str(tmp_path)),
                     PLAIN_STEPS, confirm_refill=lambda rig, need: False)
    assert_rig_safe(rig)
    assert len(ledger.finished(study_of(tmp_path, "no"))) == len(read_experiments(tmp_path, "no")) == 1


def test_with_a_server_the_campaign_pauses_for_the_operator_and_goes_on(prefect_harness, platform, tmp_path):
    """The Prefect UI shows a refill form; the operator's answer lets the campaign go on."""
    from prefect.flow_runs import resume_flow_run

    from flows.campaign import optimize

    rig = open_rig(platform, 52)  # the rig the flow will open
    short_of_carrier(rig, 1.6)  # the first experiment runs, the second waits for the refill
    outcome: dict = {}

    def run():
        try:
            outcome["summary"] = optimize(campaign="ui-refill", budget=2, initial=2, seed=52, data_root=str(tmp_path),
                                          explain=False)
        except BaseException as exc:  # reported by the assertions below
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    resume_flow_run(paused_run_id(), run_input={"refilled": True, "note": "new PFO syringe"})
    thread.join(180)

    assert "error" not in outcome, outcome.get("error")
    assert outcome["summary"]["experiments"] == 2 and outcome["summary"]["completed"] == 2
    assert len(read_experiments(tmp_path, "ui-refill")) == 2


def test_the_command_line_stops_with_how_to_resume(sdfl, tmp_path):
    """Without a Prefect server nobody can answer a form: `sdfl` stops, says what to refill and
    how to resume, and exits non-zero."""
    small = tmp_path / "small-pfo.toml"  # a 7 mL carrier syringe: enough for two or three experiments
    small.write_text((PLATFORM_DIR / "virtual-cs3cu2i5.toml").read_text().replace(
        'syringe_volume = "100 mL"', 'syringe_volume = "7 mL"'))
    root = tmp_path / "data"

    stopped = sdfl("optimize", "--campaign", "dry", "--budget", "6", "--initial", "3", "--no-explain",
                   "--platform", str(small), "--data-root", str(root), "--seed", "4", server=False)

    out = no_traceback(stopped)
    assert stopped.returncode != 0, out
    last = [line for line in out.splitlines() if line.startswith("sdfl optimize:")][-1]
    assert "RefillNeeded" in last and "pfo needs" in last and "run the campaign again" in last
    assert 1 <= len(read_experiments(root, "dry")) < 6
