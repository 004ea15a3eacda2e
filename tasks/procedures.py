"""Start-up and shut-down procedures of a platform: gas purge, solvent fill, solvent flush.

A platform lists its steps under `[procedures]` (see hardware/platform.py ProcedureStep); the
InP/ZnS cascade of paper 001 is purged with argon for 1-2 minutes and then filled with
octadecene before a run, and flushed with octadecene afterwards [P1:L48]. Each step runs on the
rig's clock; if one fails, the rig is put in its safe state (pumps stopped, heaters to standby,
valves closed) before the error goes up.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from hardware.errors import SdflInputError
from hardware.platform import ProcedureStep
from hardware.rig import Rig
from tasks.equilibration import start_pumps, wait_on_clock
from tasks.formulation import solvent_flush

POLL_S = 5.0

log = logging.getLogger(__name__)


@dataclass
class StepReport:
    step: str
    t_start_s: float
    t_end_s: float
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


def purge(rig: Rig, step: ProcedureStep) -> str:
    """Pumps stopped, gas valve open for the step's duration, valve closed."""
    rig.stop_pumps()
    valve = rig.valves[step.valve]
    valve.open()
    try:
        rig.clock.sleep(step.duration)
    finally:
        valve.close()
    gas = rig.platform.valves[step.valve].gas or "gas"
    return f"{gas} through {valve.name} for {step.duration:g} s"


def run_solvent(rig: Rig, step: ProcedureStep) -> str:
    """The solvent pumps only, for the step's number of residence times, then stopped."""
    plan = solvent_flush(rig.platform, taus=step.taus)
    start_pumps(rig, plan)
    wait_on_clock(rig, plan, plan.t_E_s, POLL_S)
    rig.stop_pumps()
    pumps = ", ".join(f"{name} {rate:.0f} uL/min" for name, rate in plan.flows_ul_min.items() if rate > 0)
    return f"{step.taus:g} tau = {plan.t_E_s / 60:.1f} min of solvent ({pumps})"


def run_procedure(rig: Rig, name: str) -> list[StepReport]:
    """Run the platform's `startup` or `shutdown` procedure. Returns what each step did."""
    procedures = rig.platform.procedures
    if name not in ("startup", "shutdown"):
        raise SdflInputError(f"procedure must be 'startup' or 'shutdown', got {name!r}")
    if name not in procedures:
        raise SdflInputError(f"platform {rig.name!r} has no {name} procedure; add [[procedures.{name}]] "
                             "steps to its file")
    reports = []
    try:
        for step in procedures[name]:
            t0 = rig.clock.now()
            detail = purge(rig, step) if step.step == "purge" else run_solvent(rig, step)
            reports.append(StepReport(step.step, t0, rig.clock.now(), detail))
            log.info("%s: %s (%s)", name, step.step, detail)
    except BaseException:
        rig.safe_state()
        raise
    rig.safe_state()
    return reports
