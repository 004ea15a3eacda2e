"""run_experiment end to end on the virtual lab, through real Prefect and real Parquet files.

The virtual lab's fault switches stand in for instrument trouble: a transient timeout is
retried by the task, a fatal fault leaves the rig safe and the experiment recorded as failed.
"""

from __future__ import annotations

import pytest

from flows.experiment import run_experiment
from hardware.errors import (
    InfeasibleCondition,
    InstrumentDisconnected,
    InvalidCondition,
    PumpStalled,
    RefillNeeded,
    SaturatedSpectrum,
    SdflInputError,
)
from hardware.platform import load_platform
from hardware.rig import open_rig
from tasks.storage import experiment_path, read_experiments, read_spectra

pytestmark = pytest.mark.usefixtures("prefect_harness")


def assert_rig_safe(rig):
    for name, pump in rig.pumps.items():
        assert not pump.status().running, f"pump {name} still running"
    assert rig.heater.setpoint() is None, "heater not in standby"
    assert not any(source.is_on() for source in rig.light_sources.values()), "a light is on"


def test_one_condition_is_run_recorded_and_the_rig_left_safe(platform, condition, data_root):
    row = run_experiment(condition=condition, campaign="c1", data_root=str(data_root), seed=11)

    assert row["status"] == "completed"
    assert 447 < row["PL_peak_nm"] < 452  # Cs3Cu2I5 self-trapped exciton emission
    assert row["PL_I"] > 0 and row["Abs_300"] > 0
    assert row["t_E_s"] == pytest.approx(1.2 * row["tau_s"])
    # Spectra are taken after t_E on the platform clock.
    assert row["t_first_spectrum_s"] - row["t_pumps_on_s"] >= row["t_E_s"]
    assert row["q_pfo_ul_min"] == pytest.approx(row["precursor_flow_ul_min"])

    table = read_experiments(data_root, "c1")
    assert list(table["experiment_id"]) == [row["experiment_id"]]
    assert table.loc[0, "platform_sha256"] == platform.sha256 and table.loc[0, "sdfl_version"]
    spectra = read_spectra(data_root, "c1")
    kinds = spectra["kind"].value_counts().to_dict()
    assert kinds == {"pl": 3, "abs_sample": 3, "pl_cps": 3, "absorbance": 3, "pl_dark": 1, "abs_dark": 1,
                     "abs_reference": 1, "abs_reference_dark": 1}
    assert len(spectra["wavelength_nm"].iloc[0]) == 2068
    assert_rig_safe(open_rig(platform, 11))


def test_the_paper_flowrate_form_gives_the_same_record_fields(platform, data_root):
    flows = {"cui": 135.0, "oa_cu": 24.0, "oam": 12.0, "ode_cu": 129.0, "cs_oleate": 105.0, "oa_cs": 36.0}
    row = run_experiment(flowrates_ul_min=flows, temperature_c=140.0, campaign="flows",
                         data_root=str(data_root), seed=12)
    assert row["status"] == "completed"
    assert row["q_ode_cs_ul_min"] == pytest.approx(300.0 - 105.0 - 36.0)  # 1:1 streams
    assert row["cui_fraction"] == pytest.approx(135.0 / 300.0)
    assert row["reaction_time_s"] == pytest.approx(840.0 / 1200.0 * 60.0)


def test_out_of_bounds_condition_is_rejected_before_the_rig_moves(platform, condition, data_root):
    condition["temperature_c"] = 190.0
    with pytest.raises(InvalidCondition, match=r"temperature_c = 190 is outside \[120, 150\]"):
        run_experiment(condition=condition, campaign="bad", data_root=str(data_root), seed=13)
    assert not (data_root / "experiments").exists()
    assert open_rig(platform, 13).clock.now() == 0.0  # nothing was run


def test_infeasible_flowrates_name_the_rule_and_write_nothing(data_root):
    flows = {"cui": 100.0, "oa_cu": 20.0, "oam": 10.0, "ode_cu": 70.0, "cs_oleate": 150.0, "oa_cs": 60.0}
    with pytest.raises(InfeasibleCondition, match="equal_stream_flows") as info:
        run_experiment(flowrates_ul_min=flows, temperature_c=140.0, data_root=str(data_root), seed=14)
    assert info.value.rule == "equal_stream_flows"
    assert not data_root.exists()


def test_transient_timeouts_are_retried_and_the_experiment_completes(platform, condition, data_root):
    rig = open_rig(platform, 15)
    rig.lab.faults.plan.timeouts_next = 2  # the next two instrument commands time out
    row = run_experiment(condition=condition, campaign="retry", data_root=str(data_root), seed=15)
    assert row["status"] == "completed"
    assert rig.lab.faults.plan.timeouts_next == 0
    assert len(read_experiments(data_root, "retry")) == 1


def test_a_stalled_pump_stops_the_rig_and_records_a_failure(platform, condition, data_root):
    rig = open_rig(platform, 16)
    # The reference flush and heater settling take a few hundred simulated seconds; stall during t_E.
    rig.lab.faults.plan.stall_pump = "cui"
    rig.lab.faults.plan.stall_at_s = 600.0  # pumps start at ~575 s
    with pytest.raises(PumpStalled, match="cui"):
        run_experiment(condition=condition, campaign="stall", data_root=str(data_root), seed=16)
    assert_rig_safe(rig)
    table = read_experiments(data_root, "stall")
    assert list(table["status"]) == ["failed"]
    assert "PumpStalled" in table.loc[0, "failure_reason"]
    assert table.loc[0, "temperature_c"] == condition["temperature_c"]  # the condition is kept


def test_a_saturated_spectrum_fails_the_experiment_and_keeps_the_raw_spectra(platform, condition, data_root):
    rig = open_rig(platform, 17)
    rig.lab.faults.plan.light_leak_at_s = 640.0  # room light floods the PL cell mid-acquisition (~630-650 s)
    with pytest.raises(SaturatedSpectrum, match="integration time|attenuate"):
        run_experiment(condition=condition, campaign="sat", data_root=str(data_root), seed=17)
    assert_rig_safe(rig)
    table = read_experiments(data_root, "sat")
    assert list(table["status"]) == ["failed"] and table["PL_I"].isna().all()
    assert "SaturatedSpectrum" in table.loc[0, "failure_reason"]
    assert (read_spectra(data_root, "sat")["kind"] == "pl").sum() == 3  # raw data kept for diagnosis


def test_a_spectrometer_that_disconnects_fails_the_experiment_safely(platform, condition, data_root):
    rig = open_rig(platform, 18)
    rig.lab.faults.plan.disconnect_spectrometer = "abs"
    rig.lab.faults.plan.disconnect_after_reads = 8
    with pytest.raises(InstrumentDisconnected):
        run_experiment(condition=condition, campaign="usb", data_root=str(data_root), seed=18)
    assert_rig_safe(rig)
    assert list(read_experiments(data_root, "usb")["status"]) == ["failed"]


def test_a_recorded_experiment_id_is_never_reused(platform, condition, data_root):
    """Running an id that is already recorded is refused before anything moves: the record stays."""
    first = run_experiment(condition=condition, campaign="again", experiment_id="exp-fixed",
                           data_root=str(data_root), seed=19)
    rig = open_rig(platform, 19)
    pumped = rig.lab.pumps["cui"].dispensed_ul()
    with pytest.raises(SdflInputError, match="already recorded"):
        run_experiment(condition={**condition, "temperature_c": 130.0}, campaign="again",
                       experiment_id="exp-fixed", data_root=str(data_root), seed=19)
    table = read_experiments(data_root, "again")
    assert list(table["experiment_id"]) == ["exp-fixed"]
    assert table.loc[0, "temperature_c"] == first["temperature_c"] == condition["temperature_c"]
    assert rig.lab.pumps["cui"].dispensed_ul() == pumped  # nothing moved
    assert experiment_path(data_root.resolve(), "again", "exp-fixed").exists()
    assert len(read_spectra(data_root, "again", "exp-fixed")) == 16


def test_hold_keeps_the_rig_running_for_the_next_condition(platform, condition, data_root):
    run_experiment(condition=condition, finish="hold", data_root=str(data_root), seed=20)
    rig = open_rig(platform, 20)
    assert rig.pumps["cui"].status().running and rig.heater.setpoint() == condition["temperature_c"]
    condition["temperature_c"] = 130.0
    row = run_experiment(condition=condition, data_root=str(data_root), seed=20)
    assert row["status"] == "completed"
    assert_rig_safe(rig)


def test_a_bad_campaign_name_is_rejected(condition, data_root):
    with pytest.raises(ValueError, match="campaign"):
        run_experiment(condition=condition, campaign="../escape", data_root=str(data_root), seed=21)


def test_the_spectral_steady_state_check_confirms_steady_state(condition, data_root):
    """With steady_check, PL readings after t_E must settle (mean of the last 3 vs the 3 before
    within 2 %) before the spectra are taken."""
    row = run_experiment(condition=condition, steady_check=True, data_root=str(data_root), seed=22)
    assert row["steady"] is True
    assert row["steady_extra_wait_s"] >= 0
    assert row["t_first_spectrum_s"] - row["t_pumps_on_s"] >= row["t_E_s"] + row["steady_extra_wait_s"]


def test_syringes_drained_by_held_flows_fail_the_experiment_not_the_rig(data_root):
    """Levels are checked again just before the pumps start: a held flow that drains a syringe
    while the heaters settle stops the experiment before its pumps start (a refill is needed),
    records nothing, and leaves the rig safe."""
    from flows.experiment import conduct_experiment
    from tasks.formulation import formulate

    platform = load_platform("virtual-inp-zns")
    rig = open_rig(platform, seed=8)
    first = {"core_temperature_c": 180.0, "shell_temperature_c": 240.0, "core_time_min": 5.0,
             "in_cl_fraction": 0.2, "in_i_fraction": 0.05, "phosphine_fraction": 0.3, "sulfur_fraction": 0.5}
    conduct_experiment(rig, condition=first, campaign="held", data_root=str(data_root), finish="hold")
    # Load the phosphine syringe with just enough for the next run at formulation time; the held
    # flow (720 uL/min) keeps running while the shell heats by 80 K.
    second = {**first, "shell_temperature_c": 320.0}
    need = formulate(second, platform).volumes_ul["phosphine"] * platform.rules.volume_margin
    pump = rig.lab.pumps["phosphine"]
    rate = pump.status().rate_ul_min
    pump.stop()
    pump.refill(need + 2000.0)
    pump.infuse(rate, need + 2000.0)
    with pytest.raises(RefillNeeded) as caught:
        conduct_experiment(rig, condition=second, campaign="held", data_root=str(data_root))
    assert caught.value.pumps == ["phosphine"] and "phosphine needs" in str(caught.value)
    rows = read_experiments(str(data_root), "held")
    assert list(rows["status"]) == ["completed"]  # the second condition never ran
    assert all(not p.status().running for p in rig.pumps.values())
