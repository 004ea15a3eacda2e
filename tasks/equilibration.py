"""Equilibration: heater stable, pumps on, wait t_E = 1.2 tau; optionally confirm steady state from
the spectra themselves.

All waits run on the platform clock (simulated on the virtual lab). While waiting, the pumps
are polled so a stall, a clog or an empty syringe stops the experiment at once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from hardware.errors import ClogDetected, PumpStalled, SyringeEmpty
from hardware.interfaces import Clock, TemperatureController
from hardware.rig import Rig
from hardware.stability import wait_until_stable
from tasks.formulation import Formulation, check_levels
from tasks.retry import INSTRUMENT_RETRIES, INSTRUMENT_RETRY_DELAYS_S, is_transient

HEATER_POLL_S = 2.0


@dataclass
class EquilibrationReport:
    heater_wait_s: float
    temperature_c: float
    t_pumps_on_s: float
    t_E_s: float
    steady: bool | None = None
    """None without a spectral check; else whether the spectra settled before the limit."""
    steady_extra_wait_s: float = 0.0
    steady_changes: list[float] = field(default_factory=list)
    zone_temperatures_c: dict[str, float] = field(default_factory=dict)
    """Each heater zone's reading once t_E has passed."""
    t_done_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def zone_setpoints(rig: Rig, formulation: Formulation) -> dict[str, float]:
    """Setpoint of each heater of the rig for this formulation."""
    if formulation.temperatures_c:
        return {zone: formulation.temperatures_c[zone] for zone in rig.heaters}
    return {zone: formulation.temperature_c for zone in rig.heaters}


def heat_zones(rig: Rig, formulation: Formulation, poll_s: float = HEATER_POLL_S) -> float:
    """Set every heater zone, then wait until each is stable. Returns the total wait (s).

    All setpoints go out first so the zones heat together; a room-temperature rig waits 0 s."""
    start = rig.clock.now()
    setpoints = zone_setpoints(rig, formulation)
    for zone, setpoint in setpoints.items():
        rig.heaters[zone].set_setpoint(setpoint)
    for zone, setpoint in setpoints.items():
        cfg = rig.platform.heaters[zone]
        wait_heater_stable(rig.heaters[zone], rig.clock, setpoint, cfg.stable_band, cfg.stable_hold,
                           cfg.max_wait, poll_s)
    return rig.clock.now() - start


def wait_heater_stable(
    heater: TemperatureController,
    clock: Clock,
    setpoint_c: float,
    band_c: float,
    hold_s: float,
    max_wait_s: float,
    poll_s: float = HEATER_POLL_S,
) -> float:
    """Set the heater and wait until it stays within +/- band_c for hold_s. Returns the wait."""
    heater.set_setpoint(setpoint_c)
    _, waited_s = wait_until_stable(heater.name, heater.read_temperature, setpoint_c, band_c, hold_s, max_wait_s,
                                    clock, poll_s)
    return waited_s


def start_pumps(rig: Rig, formulation: Formulation, run_time_s: float | None = None) -> float:
    """Program each pump with a finite infusion (need x volume margin) and start it.

    Pumps that this condition does not use are stopped. `run_time_s` overrides how long the
    pumps should be able to run. Returns the platform time of the start.
    """
    margin = rig.platform.rules.volume_margin
    scale = 1.0 if run_time_s is None else run_time_s / formulation.run_time_s
    # Held flows keep emptying the syringes while the heaters settle and the reference is taken,
    # so the levels checked at formulation may no longer hold: check again before any pump moves.
    wanted = {name: formulation.volumes_ul[name] * margin * scale for name in rig.pumps
              if formulation.flows_ul_min[name] > 0}
    check_levels(wanted, rig.remaining_ul(), "not enough liquid left to start")
    for name, pump in rig.pumps.items():
        if formulation.flows_ul_min[name] <= 0:
            pump.stop()
    start = rig.clock.now()
    for name, pump in rig.pumps.items():
        rate = formulation.flows_ul_min[name]
        if rate > 0:
            pump.infuse(rate, formulation.volumes_ul[name] * margin * scale)
    return start


def check_pumps(rig: Rig, formulation: Formulation) -> None:
    """Raise the named error if a pump that should run reports an alarm or has stopped."""
    for name, pump in rig.pumps.items():
        if formulation.flows_ul_min[name] <= 0:
            continue
        status = pump.status()
        alarm = status.alarm or ""
        if "empty" in alarm:
            raise SyringeEmpty(name, f"syringe ran dry ({alarm}); refill it and repeat the experiment")
        if "pressure" in alarm or "clog" in alarm:
            raise ClogDetected(name, f"{alarm} at {status.pressure_kpa or float('nan'):.0f} kPa; clear the line")
        if alarm or not status.running:
            raise PumpStalled(name, f"pump stopped while it should infuse ({alarm or 'not running'})")


def wait_on_clock(rig: Rig, formulation: Formulation, seconds: float, poll_s: float) -> None:
    """Wait `seconds` on the platform clock, checking the pumps every `poll_s`."""
    end = rig.clock.now() + seconds
    while True:
        remaining = end - rig.clock.now()
        if remaining <= 1e-9:
            break
        rig.clock.sleep(min(poll_s, remaining))
        check_pumps(rig, formulation)


def relative_change(readings: list[float], window: int) -> float | None:
    """|mean of the last `window` readings - mean of the `window` before| / the earlier mean."""
    if len(readings) < 2 * window:
        return None
    recent = float(np.mean(readings[-window:]))
    earlier = float(np.mean(readings[-2 * window : -window]))
    if earlier == 0:
        return float("inf") if recent != earlier else 0.0
    return abs(recent - earlier) / abs(earlier)


def equilibrate(rig: Rig, formulation: Formulation, steady_check: bool | None = None, pl_reading=None) -> EquilibrationReport:
    """Heater stable, pumps on, wait t_E; then (optionally) wait for the spectra to settle.

    `pl_reading()` returns one scalar PL reading (used by the spectral check); the acquisition
    module provides it.
    """
    cfg = rig.platform
    heater_wait = heat_zones(rig, formulation)
    t_on = start_pumps(rig, formulation)
    eq = cfg.equilibration
    wait_on_clock(rig, formulation, formulation.t_E_s, eq.poll_interval)
    zones = {zone: heater.read_temperature() for zone, heater in rig.heaters.items()}
    report = EquilibrationReport(
        heater_wait_s=heater_wait,
        temperature_c=rig.heater.read_temperature() if rig.heater is not None else cfg.rules.ambient_temperature,
        t_pumps_on_s=t_on,
        t_E_s=formulation.t_E_s,
        zone_temperatures_c=zones,
    )
    check = eq.steady_check if steady_check is None else steady_check
    if check:
        if pl_reading is None:
            raise ValueError("the spectral steady-state check needs a pl_reading function")
        limit = eq.max_wait_tau * formulation.tau_s
        readings: list[float] = []
        report.steady = False
        while True:
            readings.append(float(pl_reading()))
            change = relative_change(readings, eq.steady_readings)
            if change is not None:
                report.steady_changes.append(change)
                if change < eq.steady_threshold:
                    report.steady = True
                    break
            if rig.clock.now() - t_on >= limit:
                break
            wait_on_clock(rig, formulation, eq.steady_interval, eq.poll_interval)
        report.steady_extra_wait_s = rig.clock.now() - t_on - formulation.t_E_s
    report.t_done_s = rig.clock.now()
    return report


# --- Prefect task ---------------------------------------------------------------------------


equilibrate_task = task(
    name="equilibrate", cache_policy=NO_CACHE, retries=INSTRUMENT_RETRIES,
    retry_delay_seconds=INSTRUMENT_RETRY_DELAYS_S, retry_condition_fn=is_transient,
)(equilibrate)
