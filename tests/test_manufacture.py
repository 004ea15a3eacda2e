"""Manufacturing runs on the virtual lab: a short lot end to end, a step change caught and the rig
left safe, refill prompts before a syringe runs dry, a fatal fault, bad input refused before
anything moves, and the real Prefect flow pausing for an operator's decision."""

from __future__ import annotations

import threading

import pandas as pd
import pytest
from conftest import assert_rig_safe, paused_run_id

from flows.manufacture import (
    AlarmDecision,
    LotPlan,
    decision_from_input,
    lot_name,
    manufacture,
    policy_decision,
    recipe_from_campaign,
    run_lot,
    validate_lot,
)
from flows.manufacture_report import build_report
from hardware.errors import SdflInputError
from hardware.platform import load_platform
from hardware.rig import open_rig, virtual_rig
from tasks import features, lots, storage
from tasks.records import experiment_row, now_utc

SHORT = dict(duration_h=2.0, qc_every_min=10.0, qualification_min=30.0, qualification_points=10)


assert_safe = assert_rig_safe  # tests/conftest.py


def step_change(rig, at_s: float, change: float = -0.08) -> None:
    """A weaker CuI stock from `at_s` on (platform time of droplet formation)."""
    plan = rig.lab.faults.plan
    plan.stock_step_species = ["Cu", "I"]
    plan.stock_step_change = change
    plan.stock_step_at_s = at_s


def kinds(events: pd.DataFrame) -> list[str]:
    return list(events["kind"])


def test_a_short_lot_runs_refills_before_a_syringe_runs_dry_and_reports(platform, condition, data_root):
    rig = virtual_rig(platform, seed=3)
    record = run_lot(rig, LotPlan(lot="lot-a", recipe=condition, on_alarm="continue", auto_refill=True,
                                  data_root=str(data_root), seed=3, **SHORT))

    assert record["status"] == "completed", record["reason"]
    tables = lots.read_lot(data_root, "lot-a")
    samples, events = tables["samples"], tables["events"]
    assert len(samples) == record["samples"] >= 10 + 8  # qualification, then every 10 min
    assert list(samples["sample_id"]) == [lots.sample_id("lot-a", i) for i in range(1, len(samples) + 1)]
    assert set(samples["phase"]) == {"qualification", "production"}
    assert samples["PL_I"].gt(0).all() and samples["PL_peak_nm"].between(447, 452).all()
    # The PFO syringe (100 mL at 840 uL/min) lasts ~2 h: it is refilled before it runs dry.
    order = kinds(events)
    assert order[0] == "start" and order[-1] == "end"
    assert "refill_request" in order and order.index("refill_request") < order.index("refill")
    refill = events[events["kind"] == "refill"].iloc[0]
    assert "pfo" in refill["detail"] and refill["by"] == "auto" and record["refills"] >= 1
    remaining = samples[[c for c in samples if c.startswith("remaining_")]]
    assert remaining.min().min() > 0
    assert order.index("equilibrated", order.index("refill")) > order.index("refill")  # re-equilibrated after it
    # The lot's dataset and its report.
    assert pd.read_parquet(lots.lot_folder(data_root, "lot-a") / "samples")["sample"].is_unique
    assert set(tables["limits"]["feature"]) == {"PL_I", "PL_peak_nm", "FWHM_nm"}
    summary = build_report(data_root, "lot-a")
    assert summary["status"] == "completed" and 0.8 < summary["uptime"] <= 1.0
    assert summary["limiting_species"] == "I" and 0 < summary["yield_g_h"] < summary["yield_theoretical_g_h"]
    for name in ("control_charts.png", "syringes.png", "report.md"):
        assert (lots.lot_folder(data_root, "lot-a") / name).stat().st_size > 0
    assert_safe(rig)
    with pytest.raises(SdflInputError, match="already exists"):  # a lot name is used once
        run_lot(virtual_rig(platform, seed=3), LotPlan(lot="lot-a", recipe=condition, on_alarm="continue",
                                                       data_root=str(data_root), **SHORT))


def test_a_step_change_raises_an_alarm_soon_and_stop_leaves_the_rig_safe(platform, condition, data_root):
    rig = virtual_rig(platform, seed=4)
    step_change(rig, at_s=3600.0)
    record = run_lot(rig, LotPlan(lot="lot-step", recipe=condition, on_alarm="stop", auto_refill=True,
                                  data_root=str(data_root), **SHORT))

    assert record["status"] == "stopped" and "alarm" in record["reason"]
    events = lots.read_lot(data_root, "lot-step")["events"]
    alarms = events[events["kind"] == "alarm"]
    assert alarms["t_platform_s"].min() > 3600.0  # nothing before the step
    delay_min = (alarms["t_platform_s"].min() - 3600.0) / 60.0
    assert delay_min <= 2 * SHORT["qc_every_min"]  # within two QC intervals
    assert "PL_I" in set(alarms["feature"])
    decision = events[events["kind"] == "decision"].iloc[0]
    assert decision["action"] == "stop" and decision["by"] == "policy"
    assert_safe(rig)


def test_a_refill_nobody_confirms_stops_the_lot_safely(platform, condition, data_root):
    rig = virtual_rig(platform, seed=5)
    asked = []
    record = run_lot(rig, LotPlan(lot="lot-dry", recipe=condition, on_alarm="continue", data_root=str(data_root),
                                  **SHORT), confirm_refill=lambda request: asked.append(request) or False)

    assert record["status"] == "stopped" and "not confirmed" in record["reason"]
    assert asked and "pfo" in asked[0].short and asked[0].remaining_ul["pfo"] > 0  # asked before it ran dry
    assert "refill_request" in kinds(lots.read_lot(data_root, "lot-dry")["events"])
    assert_safe(rig)


def test_a_fatal_fault_leaves_the_rig_safe_and_the_lot_failed(platform, condition, data_root):
    rig = virtual_rig(platform, seed=6)
    rig.lab.faults.plan.stall_pump = "cs_oleate"
    rig.lab.faults.plan.stall_at_s = 3000.0
    with pytest.raises(Exception, match="cs_oleate"):
        run_lot(rig, LotPlan(lot="lot-stall", recipe=condition, on_alarm="continue", auto_refill=True,
                             data_root=str(data_root), **SHORT))
    tables = lots.read_lot(data_root, "lot-stall")
    assert tables["lot"].loc[0, "status"] == "failed"
    assert "PumpStalled" in tables["lot"].loc[0, "reason"]
    assert "fault" in kinds(tables["events"])
    assert_safe(rig)


@pytest.mark.parametrize(("change", "field"), [
    ({"recipe": {"temperature_c": 140.0, "bogus_fraction": 0.1}}, "recipe"),
    ({"duration_h": 0.0}, "duration_h"),
    ({"duration_h": -1.0}, "duration_h"),
    ({"qc_every_min": 200.0}, "qc_every_min"),
    ({"qualification_points": 4}, "qualification_points"),
    ({"spc_features": ("PL_I", "colour")}, "spc_features"),
    ({"lot": "../escape"}, "lot"),
])
def test_bad_input_is_refused_before_anything_moves(platform, condition, data_root, change, field):
    rig = virtual_rig(platform, seed=7)
    settings = {"lot": "lot-bad", "recipe": condition, "on_alarm": "continue", "data_root": str(data_root),
                **SHORT, **change}
    with pytest.raises(SdflInputError, match=field):
        run_lot(rig, LotPlan(**settings))
    assert rig.clock.now() == 0.0 and rig.heater.setpoint() is None  # nothing moved
    assert not (data_root / "lots").exists()  # nothing written


def test_decisions_from_the_policy_and_from_the_operator_form():
    assert policy_decision("continue").action == "continue" and policy_decision("pause") is None
    answer = AlarmDecision(action="re-equilibrate", requalify=True, note="new CuI bottle")
    decision = decision_from_input(answer, 60)
    assert (decision.action, decision.requalify, decision.by) == ("re-equilibrate", True, "operator")
    timed_out = decision_from_input(None, 60)
    assert timed_out.action == "stop" and timed_out.by == "timeout" and "60 min" in timed_out.note


def test_lot_names_fill_in_the_date_and_refuse_unsafe_names(platform, condition):
    assert lot_name("cs3-{date}").startswith("cs3-20") and lot_name("plain") == "plain"
    with pytest.raises(SdflInputError, match="lot"):
        lot_name("{user}")
    with pytest.raises(SdflInputError, match="auto_refill"):  # nobody may pretend a real syringe was refilled
        validate_lot(LotPlan(lot="x", recipe=condition, auto_refill=True), load_platform("rig-cs3cu2i5"))


def test_the_command_line_takes_a_lot_and_its_settings():
    from flows.cli import build_parser
    from flows.cli_options import settings_from
    from flows.settings import ManufactureSettings

    args = build_parser().parse_args(["manufacture", "--lot", "L-{date}", "--set", "temperature_c=145",
                                      "--hours", "12", "--qc-every", "5", "--on-alarm", "continue", "--auto-refill"])
    settings = settings_from(args, ManufactureSettings)
    assert (settings.lot, settings.duration_h, settings.qc_every_min, settings.on_alarm, settings.auto_refill) == \
        ("L-{date}", 12.0, 5.0, "continue", True)
    assert settings.recipe == {"temperature_c": 145.0}
    assert args.func.__name__ == "cmd_manufacture"


def test_the_recipe_can_come_from_a_campaign_best(platform, data_root):
    schema = storage.experiment_schema(platform, features.feature_columns(
        features.FeatureSettings.from_config(platform.features)))
    centre = {p.name: 0.5 * (p.low + p.high) for p in platform.parameters}
    for i, pl in enumerate([1.0e5, 1.8e5, 1.2e5]):
        row = experiment_row(experiment_id=f"c-t{i}", status="completed", platform=platform, started_at=now_utc(),
                             t_platform_start_s=0.0, t_platform_end_s=1.0,
                             condition={**centre, "temperature_c": 130.0 + i}, features={"PL_I": pl})
        storage.write_experiment(row, [], schema, "camp", data_root)
    assert recipe_from_campaign(data_root, "camp", platform)["temperature_c"] == 131.0
    with pytest.raises(SdflInputError, match="from_campaign"):
        recipe_from_campaign(data_root, "nothing-here", platform)


# --- the Prefect flow ----------------------------------------------------------------------
def test_the_flow_pauses_for_a_refill_then_for_an_alarm_and_obeys_the_operator(prefect_harness, platform,
                                                                                condition, data_root):
    from prefect.flow_runs import resume_flow_run

    rig = open_rig(platform, seed=21)  # the rig the flow will open: inject the fault on it
    step_change(rig, at_s=1.2 * 3600)
    outcome: dict = {}

    def run():
        try:
            outcome["summary"] = manufacture(lot="lot-ui", recipe=condition, duration_h=1.5, qc_every_min=5.0,
                                             qualification_min=20.0, qualification_points=10, segment_min=60.0,
                                             on_alarm="pause", auto_refill=False, seed=21, data_root=str(data_root))
        except BaseException as exc:  # reported by the assertions below
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    # 1. PFO (60 min x 840 uL/min x 1.25 per segment) runs short at ~1.06 h: the run asks for a refill.
    resume_flow_run(paused_run_id(), run_input={"refilled": True, "note": "PFO syringe swapped"})
    # 2. The CuI stock steps down at 1.2 h: an alarm, and the operator stops the lot.
    resume_flow_run(paused_run_id(), run_input={"action": "stop", "note": "bad CuI bottle"})
    thread.join(90)

    assert "error" not in outcome, outcome.get("error")
    summary = outcome["summary"]
    assert summary["status"] == "stopped" and "bad CuI bottle" in summary["reason"]
    assert summary["refills"] == 1 and summary["alarm_samples"][0]["t_platform_s"] > 1.2 * 3600
    assert summary["decisions"][0]["by"] == "operator" and summary["decisions"][0]["action"] == "stop"
    events = lots.read_lot(data_root, "lot-ui")["events"]
    assert events.loc[events["kind"] == "refill", "by"].tolist() == ["operator"]
    assert (lots.lot_folder(data_root, "lot-ui") / "control_charts.png").exists()
    assert_safe(rig)


def test_the_flow_refuses_bad_parameters_naming_the_field(prefect_harness, condition, data_root):
    with pytest.raises(Exception, match="duration_h"):
        manufacture(lot="lot-x", recipe=condition, duration_h=0.0, on_alarm="continue", data_root=str(data_root))
    with pytest.raises(SdflInputError, match="qc_every_min"):
        manufacture(lot="lot-x", recipe=condition, duration_h=1.0, qc_every_min=90.0, on_alarm="continue",
                    data_root=str(data_root))
    assert not (data_root / "lots").exists()
