"""The virtual lab behaves like a rig: a simulated clock, pumps, heater, transport, noise, faults.

Everything runs on the lab's simulated clock, so an hour of pumping costs milliseconds. Tests
that need the physics without noise use a copy of the shipped platform config with the noise
switched off (`platform_with`); the others use the shipped config as it is.
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

from flows.characterize import centre_condition
from flows.experiment import _absorbance_for_features
from hardware.clock import SimClock
from hardware.errors import (
    SafetyLimitExceeded,
    SyringeEmpty,
)
from hardware.platform import PLATFORM_DIR, load_platform
from hardware.rig import virtual_rig
from hardware.virtual.faults import FaultPlan
from hardware.virtual.lab import VirtualLab
from tasks.acquisition import acquire, ensure_reference, set_integration
from tasks.equilibration import start_pumps
from tasks.features import FeatureSettings, extract_features
from tasks.formulation import formulate

NOISELESS = dict(process_noise=0, absorbance_noise=0, pl_noise=0, pump_accuracy=0, film_offset=0,
                 stock_decay_per_hour=0, lamp_drift_per_hour=0)


def platform_with(tmp_path, faults: dict | None = None, **virtual):
    """The shipped platform with some [virtual] numbers (and [virtual.faults] switches) replaced."""
    text = (PLATFORM_DIR / "virtual-cs3cu2i5.toml").read_text()
    for key, value in virtual.items():
        text, found = re.subn(rf"^{key} = \S+", f"{key} = {value!r}", text, flags=re.M)
        assert found == 1, f"{key} is not a [virtual] setting of the shipped config"
    for key, value in (faults or {}).items():
        text += f"\n{key} = {value!r}".replace("'", '"')
    path = tmp_path / "virtual-test.toml"
    path.write_text(text)
    return load_platform(path)


@pytest.fixture(scope="module")
def platform():
    return load_platform()


@pytest.fixture
def quiet(tmp_path):
    """The shipped platform without process, PL, absorbance and pump noise, drift or ageing."""
    return platform_with(tmp_path, **NOISELESS)


@pytest.fixture(scope="module")
def centre(platform):
    return centre_condition(platform)


def heat(rig, temperature_c, time_constants=10):
    """Set the reactor and wait until it has settled (no polling needed on a simulated clock)."""
    rig.heater.set_setpoint(temperature_c)
    rig.clock.sleep(time_constants * rig.platform.heater.time_constant)


def peak_pixel(spectrometer, nm=449.0):
    return int(np.argmin(np.abs(spectrometer.wavelengths() - nm)))


# --- the clock ----------------------------------------------------------------------------


def test_the_simulated_clock_moves_at_once():
    clock = SimClock()
    start = time.perf_counter()
    clock.sleep(3600.0)
    assert time.perf_counter() - start < 0.1
    assert clock.now() == 3600.0
    clock.advance(0.5)
    assert clock.now() == 3600.5
    with pytest.raises(ValueError, match="negative"):
        clock.sleep(-1.0)


# --- pumps --------------------------------------------------------------------------------


def test_a_pump_infuses_a_finite_volume_and_stops_by_itself(platform):
    lab = VirtualLab(platform, seed=1)
    pump = lab.pumps["cui"]
    lag_s = platform.virtual.pump_response_time
    pump.infuse(600.0, 100.0)  # 10 s at 600 uL/min

    lab.clock.sleep(5.0)
    status = pump.status()
    assert status.running and status.rate_ul_min == 600.0 and status.alarm is None
    # The flow follows the set rate with a short lag (syringe compliance).
    assert 600.0 / 60 * (5.0 - lag_s) <= status.dispensed_ul <= 600.0 / 60 * 5.0 * 1.01

    lab.clock.sleep(25.0)
    status = pump.status()
    assert not status.running and status.alarm is None
    assert status.dispensed_ul == pytest.approx(100.0, rel=0.01)  # within the pump accuracy
    assert status.remaining_ul == pytest.approx(pump.syringe_volume_ul - status.dispensed_ul)


def test_pump_limits_raise_named_errors_and_refill_restores_the_syringe(platform):
    lab = VirtualLab(platform, seed=1)
    pump = lab.pumps["cui"]
    with pytest.raises(SafetyLimitExceeded, match="outside"):
        pump.infuse(pump.min_rate_ul_min / 2, 10.0)
    with pytest.raises(SafetyLimitExceeded, match="outside"):
        pump.infuse(pump.max_rate_ul_min * 2, 10.0)
    with pytest.raises(SafetyLimitExceeded, match="volume"):
        pump.infuse(600.0, pump.syringe_volume_ul + 1.0)  # more than the syringe can ever hold

    pump.infuse(6000.0, 1000.0)
    with pytest.raises(SafetyLimitExceeded, match="stop the pump"):
        pump.refill()  # not while it infuses
    lab.clock.sleep(60.0)
    with pytest.raises(SyringeEmpty, match="refill"):
        pump.infuse(600.0, pump.syringe_volume_ul - 500.0)  # more than is left
    pump.refill()
    assert pump.status().remaining_ul == pump.syringe_volume_ul
    pump.infuse(600.0, pump.syringe_volume_ul - 500.0)
    assert pump.status().running


def test_a_pump_stopped_and_restarted_at_the_same_instant_runs_at_the_rate_asked(platform):
    """As when `start_pumps` follows `Rig.stop_pumps` (e.g. right after `ensure_reference`)."""
    lab = VirtualLab(platform, seed=1)
    pump = lab.pumps["ode_cu"]
    lab.clock.sleep(1.0)
    pump.infuse(600.0, 1000.0)
    lab.clock.sleep(10.0)
    pump.stop()
    before = pump.status().dispensed_ul
    pump.infuse(600.0, 1000.0)  # same simulated instant as the stop
    lab.clock.sleep(30.0)
    # 30 s at 600 uL/min is 300 uL (less a little for the lag); the bug dispenses 60 times more.
    assert pump.status().dispensed_ul - before == pytest.approx(300.0, rel=0.1)


def test_a_finished_infusion_is_not_mistaken_for_an_empty_syringe_when_polled_late(platform):
    """The result must not depend on when somebody asks: here nobody asks until 100 min later."""
    lab = VirtualLab(platform, seed=1)
    pump = lab.pumps["cui"]
    pump.infuse(600.0, 100.0)  # done after 10 s
    lab.clock.sleep(6000.0)  # at 600 uL/min the 50 mL syringe would have emptied after ~83 min
    status = pump.status()
    assert status.alarm is None
    assert status.dispensed_ul == pytest.approx(100.0, rel=0.01)


def test_a_stall_after_an_infusion_ended_does_not_touch_that_infusion(platform):
    lab = VirtualLab(platform, seed=1, faults=FaultPlan(stall_pump="cui", stall_at_s=100.0))
    pump = lab.pumps["cui"]
    pump.infuse(600.0, 100.0)  # done after 10 s, long before the stall
    lab.clock.sleep(200.0)
    status = pump.status()
    assert status.dispensed_ul == pytest.approx(100.0, rel=0.01)  # the bug: 1000 uL, pumped until 100 s
    assert status.alarm is None


# --- heater -------------------------------------------------------------------------------


def test_the_heater_settles_first_order_and_cools_in_standby(platform):
    lab = VirtualLab(platform, seed=1)
    heater, tau = lab.heater, platform.heater.time_constant
    ambient = platform.heater.ambient
    heater.set_setpoint(150.0)
    assert heater.setpoint() == 150.0
    for n in (1, 2, 5):
        lab.clock.sleep(tau * n - lab.clock.now())
        expected = 150.0 + (ambient - 150.0) * np.exp(-n)
        assert heater.read_temperature() == pytest.approx(expected, abs=0.15)
    lab.clock.sleep(tau)
    assert heater.read_temperature() == pytest.approx(150.0, abs=0.5)  # after 6 time constants

    heater.standby()
    assert heater.setpoint() is None
    cooled = []
    for _ in range(3):
        lab.clock.sleep(tau)
        cooled.append(heater.read_temperature())
    assert 150.0 > cooled[0] > cooled[1] > cooled[2] > ambient
    # Passive cooling: first order too, three times slower than heating.
    assert cooled[2] == pytest.approx(ambient + (150.0 - ambient) * np.exp(-1.0), abs=0.5)


def test_a_set_point_above_the_platform_limit_is_refused(platform):
    lab = VirtualLab(platform, seed=1)
    limit = platform.rules.max_temperature
    assert lab.heater.max_setpoint_c == limit
    with pytest.raises(SafetyLimitExceeded, match="above the platform limit"):
        lab.heater.set_setpoint(limit + 1.0)
    with pytest.raises(SafetyLimitExceeded):
        lab.heater.set_setpoint(float("nan"))
    assert lab.heater.setpoint() is None  # nothing was set


def test_a_faulty_heater_overshoots_its_set_point(platform):
    lab = VirtualLab(platform, seed=1, faults=FaultPlan(heater_overshoot=True))
    lab.heater.set_setpoint(130.0)
    profile = lab.heater.temperature_at(np.arange(0.0, 600.0, 1.0))
    assert profile.max() > 130.0 + 10.0
    lab.clock.sleep(1200.0)
    assert lab.heater.read_temperature() == pytest.approx(130.0, abs=0.5)  # it still settles


# --- transport ------------------------------------------------------------------------------


def test_from_a_solvent_filled_rig_the_product_arrives_at_tau_and_is_steady_by_1_25_tau(quiet, centre):
    rig = virtual_rig(quiet, seed=1)
    plan = formulate(centre, quiet)
    heat(rig, plan.temperature_c)
    pixel = peak_pixel(rig.spectrometers["pl"])
    rig.light_sources["pl"].on()
    t0 = start_pumps(rig, plan)

    def pl_at(multiple):
        rig.clock.sleep(t0 + multiple * plan.tau_s - rig.clock.now())
        return float(rig.lab.signal_cps("pl")[pixel])

    multiples = [0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0, 1.05, 1.25, 1.5, 2.0]
    pl = dict(zip(multiples, [pl_at(m) for m in multiples]))
    final = pl[2.0]
    assert final > 0
    assert all(pl[m] < 1e-3 * final for m in (0.3, 0.5, 0.7, 0.8))  # only solvent so far
    assert all(0.05 * final < pl[m] < 0.95 * final for m in (0.95, 1.0, 1.05))  # old and new droplets
    assert pl[1.25] == pytest.approx(final, rel=0.01)
    assert pl[1.5] == pytest.approx(final, rel=1e-3)
    # The steady state is the one the twin computes directly.
    steady, _, _ = rig.lab.steady_state_signals(plan.flows_ul_min, plan.temperature_c, plan.reaction_time_s)
    assert final == pytest.approx(steady[0, pixel], rel=0.01)


def test_after_a_step_between_conditions_the_cell_holds_a_mix_at_0_95_tau(quiet, centre):
    rig = virtual_rig(quiet, seed=1)
    dim, bright = (formulate({**centre, "cui_fraction": x}, quiet) for x in (0.2, 0.5))
    assert dim.tau_s == pytest.approx(bright.tau_s)  # same reaction time, same flows
    heat(rig, dim.temperature_c)
    pixel = peak_pixel(rig.spectrometers["pl"])
    rig.light_sources["pl"].on()
    start_pumps(rig, dim)
    rig.clock.sleep(2.0 * dim.tau_s)
    old = float(rig.lab.signal_cps("pl")[pixel])

    t_switch = start_pumps(rig, bright)  # no stop: the new flows push the old droplets out
    rig.clock.sleep(t_switch + 0.95 * bright.tau_s - rig.clock.now())
    mixed = float(rig.lab.signal_cps("pl")[pixel])
    rig.clock.sleep(t_switch + 2.0 * bright.tau_s - rig.clock.now())
    new = float(rig.lab.signal_cps("pl")[pixel])
    assert new > 1.2 * old
    assert old < mixed < new


# --- noise and drift ----------------------------------------------------------------------


def measure(rig, plan, replicates):
    """Reference (flushing solvent), then the condition to 1.2 tau, then `replicates` spectra."""
    reference = ensure_reference(rig)
    heat(rig, plan.temperature_c)
    start_pumps(rig, plan, run_time_s=plan.t_E_s + replicates * 10.0 + 120.0)
    rig.clock.sleep(plan.t_E_s)
    acquired = acquire(rig, reference, replicates=replicates)
    rig.stop_pumps()
    return extract_features(
        acquired.pl[0].wavelength_nm, acquired.pl_cps(), _absorbance_for_features(acquired),
        FeatureSettings.from_config(rig.platform.features),
        abs_wavelengths_nm=acquired.abs_samples[0].wavelength_nm,
        pl_raw_max_counts=acquired.pl_raw_max(), max_counts=rig.spectrometers["pl"].max_counts,
    )


def test_steady_state_noise_is_about_one_percent_as_in_the_paper(platform, centre):
    table = measure(virtual_rig(platform, seed=5), formulate(centre, platform), replicates=30)
    relative_sd = table[["PL_I", "Abs_300"]].std() / table[["PL_I", "Abs_300"]].mean()
    assert 0.005 < relative_sd["PL_I"] < 0.02, relative_sd  # paper: ~1.1 %
    assert 0.005 < relative_sd["Abs_300"] < 0.025, relative_sd  # paper: ~1.3 %


def test_ageing_stocks_make_the_yield_drift_down_over_hours(tmp_path, centre):
    abs_300 = {}
    for decay in (0.0, 0.05):
        platform = platform_with(tmp_path, **{**NOISELESS, "stock_decay_per_hour": decay})
        rig = virtual_rig(platform, seed=3)
        plan = formulate(centre, platform)
        fresh = measure(rig, plan, replicates=5)["Abs_300"].mean()
        rig.clock.sleep(6 * 3600.0)
        aged = measure(rig, plan, replicates=5)["Abs_300"].mean()
        abs_300[decay] = aged / fresh
    assert abs_300[0.0] == pytest.approx(1.0, abs=0.02)  # detector noise only
    assert abs_300[0.05] < 0.8, abs_300  # 6 h at 5 %/h: 30 % less precursor


# --- seeds ---------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_spectra(platform, centre):
    def spectra(seed):
        rig = virtual_rig(platform, seed=seed)
        plan = formulate(centre, platform)
        heat(rig, plan.temperature_c)
        start_pumps(rig, plan)
        rig.clock.sleep(1.5 * plan.tau_s)
        rig.light_sources["pl"].on()
        rig.light_sources["abs"].on()
        set_integration(rig.spectrometers["abs"], 10.0)
        return rig.spectrometers["pl"].intensities(3), rig.spectrometers["abs"].intensities(3)

    first, again, other = spectra(7), spectra(7), spectra(8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not any(np.array_equal(a, b) for a, b in zip(first, other))


# --- spectrometer ---------------------------------------------------------------------------


def test_the_first_spectrum_after_an_integration_change_is_stale(platform):
    """Like a real HDX, the first read after a change was exposed with the previous time;
    `tasks.acquisition.set_integration` changes the time and throws that read away."""
    lab = VirtualLab(platform, seed=1)
    spectrometer = lab.spectrometers["abs"]
    lab.light_sources["abs"].on()  # lamp through the solvent-filled cell: a steady signal
    set_integration(spectrometer, 10.0)
    at_10_ms = spectrometer.intensities(5).max()

    spectrometer.set_integration_time_ms(20.0)
    stale, fresh = spectrometer.intensities(5).max(), spectrometer.intensities(5).max()
    assert stale == pytest.approx(at_10_ms, rel=0.05)
    assert fresh == pytest.approx(2 * at_10_ms, rel=0.05)

    set_integration(spectrometer, 10.0)  # discards the stale read itself
    assert spectrometer.intensities(5).max() == pytest.approx(at_10_ms, rel=0.05)
    with pytest.raises(SafetyLimitExceeded, match="integration time"):
        spectrometer.set_integration_time_ms(spectrometer.min_integration_ms / 2)
    with pytest.raises(SafetyLimitExceeded, match="integration time"):
        spectrometer.set_integration_time_ms(spectrometer.max_integration_ms * 2)
