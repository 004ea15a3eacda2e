"""The virtual lab's faults: lost and garbled commands, stalls, clogs, short syringes, lost
spectrometers, light leaks; the retries of a virtual rig; and the safe state.

Everything runs on the lab's simulated clock. A lost command (timeout) is not executed; a garbled
reply comes after the command took effect, as on a real wire.
"""

from __future__ import annotations

import pytest
from conftest import assert_rig_safe
from test_virtual_lab import platform_with

from flows.characterize import centre_condition
from hardware.errors import (
    ClogDetected,
    GarbledReply,
    InstrumentDisconnected,
    InstrumentTimeout,
    PumpStalled,
    RefillNeeded,
    SaturatedSpectrum,
    SyringeEmpty,
)
from hardware.platform import load_platform
from hardware.retry import COMMAND_ATTEMPTS
from hardware.rig import SAFE_STATE_ATTEMPTS, virtual_rig
from hardware.virtual.faults import FaultPlan
from hardware.virtual.lab import CLOG_STALL_AFTER_S, NORMAL_PRESSURE_KPA_PER_UL_MIN, VirtualLab
from tasks.acquisition import choose_integration_ms, set_integration
from tasks.equilibration import check_pumps, start_pumps, wait_on_clock
from tasks.formulation import formulate


@pytest.fixture(scope="module")
def platform():
    return load_platform()


@pytest.fixture(scope="module")
def centre(platform):
    return centre_condition(platform)


# --- lost and garbled commands ----------------------------------------------------------------


def test_injected_timeouts_hit_the_next_commands_then_stop(platform):
    lab = VirtualLab(platform, seed=1, faults=FaultPlan(timeouts_next=2))
    pump = lab.pumps["cui"]
    for _ in range(2):
        with pytest.raises(InstrumentTimeout):
            pump.status()
    assert not pump.status().running
    lab.faults.plan.timeouts_next = 1  # switched on at run time
    with pytest.raises(InstrumentTimeout):
        lab.heater.read_temperature()
    lab.heater.read_temperature()


def test_a_garbled_reply_comes_after_the_command_took_effect(platform):
    lab = VirtualLab(platform, seed=1, faults=FaultPlan(garbled_probability=1.0))
    with pytest.raises(GarbledReply):
        lab.pumps["cui"].status()
    with pytest.raises(GarbledReply):
        lab.heater.set_setpoint(130.0)
    assert lab.heater.setpoint() == 130.0  # done; only the answer was lost
    with pytest.raises(GarbledReply):
        lab.spectrometers["pl"].intensities()
    assert lab.faults.reads["pl"] == 1  # the spectrum was taken
    lab.faults.plan.garbled_probability = 0.0
    lab.heater.set_setpoint(140.0)
    assert lab.heater.setpoint() == 140.0


def test_a_lost_command_is_not_executed(platform):
    lab = VirtualLab(platform, seed=1, faults=FaultPlan(timeouts_next=3))
    with pytest.raises(InstrumentTimeout):
        lab.heater.set_setpoint(130.0)
    with pytest.raises(InstrumentTimeout):
        lab.pumps["cui"].infuse(500.0, 1000.0)
    with pytest.raises(InstrumentTimeout):
        lab.spectrometers["pl"].intensities()
    assert lab.heater.setpoint() is None and not lab.pumps["cui"].status().running
    assert lab.faults.reads.get("pl", 0) == 0 and lab.clock.now() == 0.0  # no exposure either


# --- command retries on the virtual rig -------------------------------------------------------


def test_a_repeated_infuse_after_a_garbled_reply_programs_the_run_again(platform):
    """The virtual rig retries `infuse`: the pump took the first one, so the second programs the
    same run again from the same instant; the volume is not counted twice."""
    rig = virtual_rig(platform, seed=1)
    rig.lab.faults.plan.garbled_next = 1
    rig.pumps["cui"].infuse(1000.0, 500.0)
    assert rig.retries.by_instrument() == {"cui": 1}
    rig.clock.sleep(120.0)
    status = rig.pumps["cui"].status()
    assert not status.running and status.dispensed_ul == pytest.approx(500.0, rel=0.01)
    assert status.remaining_ul == pytest.approx(49_500.0, rel=0.001)


@pytest.mark.parametrize("fault", ["timeouts_next", "garbled_next"])
def test_a_spectrum_read_again_after_a_fault_is_a_fresh_spectrum(platform, fault):
    rig = virtual_rig(platform, seed=1)
    spectrometer, lamp = rig.spectrometers["abs"], rig.light_sources["abs"]
    lamp.on()  # lamp through the solvent-filled cell: a steady signal
    set_integration(spectrometer, 10.0)
    at_10_ms = spectrometer.intensities(5).max()
    set_integration(spectrometer, 20.0)
    setattr(rig.lab.faults.plan, fault, 1)
    start = rig.clock.now()
    counts = spectrometer.intensities(5)
    assert counts.shape == spectrometer.wavelengths().shape
    assert counts.max() == pytest.approx(2 * at_10_ms, rel=0.05)  # exposed for 20 ms, not stale
    exposures = 2 if fault == "garbled_next" else 1  # a garbled read was taken, then read again
    assert rig.clock.now() - start == pytest.approx(exposures * 5 * 0.020)
    assert rig.retries.total == 1


def test_a_virtual_rig_retries_each_safe_command_a_bounded_number_of_times(platform):
    rig = virtual_rig(platform, seed=1)
    rig.lab.faults.plan.timeouts_next = COMMAND_ATTEMPTS
    with pytest.raises(InstrumentTimeout):
        rig.heater.set_setpoint(130.0)
    assert rig.lab.faults.plan.timeouts_next == 0 and rig.heater.setpoint() is None
    rig.lab.faults.plan.timeouts_next = COMMAND_ATTEMPTS - 1
    rig.heater.set_setpoint(130.0)
    assert rig.heater.setpoint() == 130.0
    assert rig.retries.total == 2 * (COMMAND_ATTEMPTS - 1)
    rig.pumps["cui"].refill(1000.0)  # everything else passes straight through to the lab's pump
    assert rig.lab.pumps["cui"].remaining_ul() == 1000.0


def test_a_stalled_pump_stops_with_an_alarm_and_the_pump_check_names_it(platform, centre):
    rig = virtual_rig(platform, seed=1)
    plan = formulate(centre, platform)
    rig.lab.faults.plan.stall_pump = "cui"
    rig.lab.faults.plan.stall_at_s = 30.0
    start_pumps(rig, plan)
    with pytest.raises(PumpStalled, match="cui"):
        wait_on_clock(rig, plan, plan.t_E_s, poll_s=5.0)
    assert 30.0 <= rig.clock.now() <= 35.0  # caught at the first poll after the stall
    status = rig.pumps["cui"].status()
    assert not status.running and "stalled" in status.alarm
    rig.clock.sleep(30.0)  # the syringe relaxes for a few seconds (its lag), then nothing moves
    stalled = rig.pumps["cui"].status().dispensed_ul
    rig.clock.sleep(30.0)
    assert rig.pumps["cui"].status().dispensed_ul == pytest.approx(stalled)
    assert stalled < plan.flows_ul_min["cui"] * 40.0 / 60.0
    assert rig.pumps["ode_cu"].status().running  # the others carry on until told


def test_a_clog_raises_the_pressure_then_stops_every_pump(platform, centre):
    rig = virtual_rig(platform, seed=1)
    plan = formulate(centre, platform)
    rig.lab.faults.plan.clog_at_s = 30.0
    start_pumps(rig, plan)
    rig.clock.sleep(20.0)
    normal = rig.pumps["cui"].status().pressure_kpa
    rig.clock.sleep(20.0)  # 10 s into the clog
    rising = rig.pumps["cui"].status()
    assert rising.running and rising.pressure_kpa > 3 * normal
    check_pumps(rig, plan)  # still infusing: nothing to report yet
    rig.clock.sleep(10.0)
    with pytest.raises(ClogDetected, match="pressure"):
        check_pumps(rig, plan)
    for pump in rig.pumps.values():
        status = pump.status()
        assert not status.running and "clogged" in status.alarm


def test_a_clog_while_the_pumps_are_idle_stalls_the_next_infusion_until_cleared(platform, centre):
    rig = virtual_rig(platform, seed=1)
    plan = formulate(centre, platform)
    normal_kpa = 20.0 + NORMAL_PRESSURE_KPA_PER_UL_MIN * sum(plan.flows_ul_min.values())
    rig.lab.faults.plan.clog_at_s = 30.0
    rig.clock.sleep(100.0)  # the line blocks while nothing flows
    start_pumps(rig, plan)
    rig.clock.sleep(CLOG_STALL_AFTER_S - 5.0)
    check_pumps(rig, plan)  # still pushing
    assert rig.pumps["cui"].status().pressure_kpa > 3 * normal_kpa
    rig.clock.sleep(10.0)
    with pytest.raises(ClogDetected, match="pressure"):
        check_pumps(rig, plan)
    statuses = [pump.status() for pump in rig.pumps.values()]
    assert all(not s.running and "clogged" in s.alarm for s in statuses)
    assert statuses[0].pressure_kpa > 300.0  # the blocked line holds its pressure (idle: 20 kPa)

    rig.lab.faults.plan.clog_at_s = None  # the operator cleared the line
    for pump in rig.pumps.values():
        pump.alarm = None
    assert rig.pumps["cui"].status().pressure_kpa < normal_kpa
    start_pumps(rig, plan)
    rig.clock.sleep(60.0)
    check_pumps(rig, plan)
    assert all(pump.status().running for name, pump in rig.pumps.items() if plan.flows_ul_min[name] > 0)


def run_until_dry(rig, plan) -> None:
    """Start the pumps and poll them as equilibration does until a syringe runs dry."""
    start_pumps(rig, plan)
    with pytest.raises(SyringeEmpty, match="ran dry"):
        for _ in range(200):
            rig.clock.sleep(5.0)
            check_pumps(rig, plan)


def test_a_syringe_loaded_short_runs_dry_mid_run(tmp_path, centre):
    """The pump believes its syringe is full, but it holds only 400 uL: formulation passes,
    the pump runs dry during the run, and the pump check names the empty syringe."""
    platform = platform_with(tmp_path, faults={"empty_pump": "cui", "empty_fill_ul": 400.0})
    rig = virtual_rig(platform, seed=1)
    assert rig.remaining_ul()["cui"] == 50000.0  # what the pump counts
    run_until_dry(rig, formulate(centre, platform, remaining_ul=rig.remaining_ul()))
    status = rig.pumps["cui"].status()
    assert status.alarm == "syringe empty" and status.remaining_ul == 0.0 and not status.running
    # It ran dry when its 400 uL were gone (plus the last of the compliance lag), not at the end
    # of the programmed infusion.
    assert rig.pumps["cui"].dispensed_ul() == pytest.approx(400.0, rel=0.01)
    rig.safe_state()
    rig.pumps["cui"].refill()
    assert rig.pumps["cui"].status().alarm is None


def test_a_syringe_loaded_short_switched_on_at_run_time_runs_dry_until_refilled(platform, centre):
    rig = virtual_rig(platform, seed=1)
    rig.lab.faults.plan.empty_pump, rig.lab.faults.plan.empty_fill_ul = "cui", 400.0
    plan = formulate(centre, platform, remaining_ul=rig.remaining_ul())
    run_until_dry(rig, plan)
    assert rig.pumps["cui"].dispensed_ul() == pytest.approx(400.0, rel=0.01)
    rig.safe_state()
    rig.pumps["cui"].refill()  # really full now: the fault is gone with the old syringe
    assert rig.lab.faults.plan.empty_pump is None and rig.pumps["cui"].status().alarm is None
    run_s = 1000.0 / plan.flows_ul_min["cui"] * 60.0  # 1000 uL of this pump: well past 400
    start_pumps(rig, plan, run_time_s=2 * run_s)
    wait_on_clock(rig, plan, run_s, poll_s=5.0)
    assert rig.pumps["cui"].dispensed_ul() > 900.0


def test_a_syringe_that_holds_too_little_is_refused_before_the_run(platform, centre):
    rig = virtual_rig(platform, seed=1)
    remaining = {**rig.remaining_ul(), "cui": 100.0}
    with pytest.raises(RefillNeeded, match="refill") as refused:
        formulate(centre, platform, remaining_ul=remaining)
    assert refused.value.rule == "syringe_volume" and refused.value.pumps == ["cui"]
    pump = rig.pumps["cui"]
    pump.refill(100.0)  # the operator loaded 100 uL
    with pytest.raises(SyringeEmpty, match="holds 100 uL"):
        pump.infuse(100.0, 5000.0)  # the pump itself refuses more than it holds


def test_a_spectrometer_disconnects_after_n_reads(platform):
    faults = FaultPlan(disconnect_spectrometer="pl", disconnect_after_reads=3)
    lab = VirtualLab(platform, seed=1, faults=faults)
    spectrometer = lab.spectrometers["pl"]
    for _ in range(3):
        spectrometer.intensities()
    with pytest.raises(InstrumentDisconnected, match="vanished"):
        spectrometer.intensities()
    with pytest.raises(InstrumentDisconnected, match="not connected"):
        spectrometer.set_integration_time_ms(50.0)
    lab.spectrometers["abs"].intensities()  # the other one is fine


def test_a_light_leak_saturates_the_pl_detector(platform):
    lab = VirtualLab(platform, seed=1, faults=FaultPlan(light_leak_at_s=100.0))
    spectrometer = lab.spectrometers["pl"]
    assert spectrometer.intensities().max() < spectrometer.max_counts  # dark: LED off, no leak yet
    lab.clock.sleep(100.0)
    assert spectrometer.intensities().max() == spectrometer.max_counts
    with pytest.raises(SaturatedSpectrum, match="shortest integration time"):
        choose_integration_ms(spectrometer, target_fill=0.75)


# --- the safe state -------------------------------------------------------------------------


@pytest.fixture
def busy_rig(platform, centre):
    """A rig with every pump infusing, the reactor hot and both lights on."""
    rig = virtual_rig(platform, seed=1)
    rig.heater.set_setpoint(140.0)
    start_pumps(rig, formulate(centre, platform))
    for light in rig.light_sources.values():
        light.on()
    rig.clock.sleep(20.0)
    assert all(pump.status().running for pump in rig.pumps.values())
    return rig


assert_safe = assert_rig_safe  # tests/conftest.py


def test_safe_state_stops_pumps_heater_and_lights(busy_rig):
    assert busy_rig.safe_state() == []
    assert_safe(busy_rig)


def test_safe_state_retries_through_transient_faults(busy_rig):
    busy_rig.lab.faults.plan.timeouts_next = 2
    assert busy_rig.safe_state() == []
    assert busy_rig.lab.faults.plan.timeouts_next == 0
    assert_safe(busy_rig)


def test_safe_state_reports_what_would_not_obey_and_never_raises(busy_rig):
    # the first pump fails every try of every attempt
    busy_rig.lab.faults.plan.timeouts_next = SAFE_STATE_ATTEMPTS * COMMAND_ATTEMPTS
    assert busy_rig.safe_state() == ["pump cui did not confirm stop"]
    assert busy_rig.pumps["cui"].status().running
    assert busy_rig.heater.setpoint() is None
