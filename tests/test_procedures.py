"""Start-up and shut-down procedures (argon purge, ODE fill and flush) on the InP/ZnS cascade.

Plain functions on virtual rigs (the `rig-procedure` flow and `sdfl procedure` are in test_cli)."""

from __future__ import annotations

import pytest

from hardware.errors import PlatformConfigError, PumpStalled, SdflInputError
from hardware.platform import load_platform
from hardware.rig import Rig, open_rig
from hardware.virtual.faults import FaultPlan
from hardware.virtual.lab import VirtualLab
from tasks.procedures import run_procedure

CASCADE = "virtual-inp-zns"


def test_startup_purges_with_argon_then_fills_with_solvent_only():
    rig = open_rig(load_platform(CASCADE), seed=5)
    reports = run_procedure(rig, "startup")
    assert [r.step for r in reports] == ["purge", "fill"]
    assert rig.lab.valves["argon"].opened_s == [(0.0, 90.0)]
    dispensed = {name: pump.dispensed_ul() for name, pump in rig.lab.pumps.items()}
    assert dispensed["ode_core"] > 0 and dispensed["ode_shell"] > 0
    assert all(dispensed[name] == 0 for name in ("in_cl", "in_i", "phosphine", "sulfur"))
    # 1.5 residence times of ODE fill the 28 mL cascade.
    assert dispensed["ode_core"] + dispensed["ode_shell"] > 1.5 * 28_000
    assert not any(p.status().running for p in rig.pumps.values())
    assert not rig.lab.valves["argon"].is_open()


def test_a_failing_step_leaves_the_rig_safe_and_the_valve_closed():
    platform = load_platform(CASCADE)
    lab = VirtualLab(platform, seed=6, faults=FaultPlan(stall_pump="ode_core", stall_at_s=300.0))
    rig = Rig(platform=platform, clock=lab.clock, pumps=dict(lab.pumps), heater=lab.heater,
              heaters=dict(lab.heaters), spectrometers=dict(lab.spectrometers),
              light_sources=dict(lab.light_sources), valves=dict(lab.valves), lab=lab)
    with pytest.raises(PumpStalled):
        run_procedure(rig, "startup")
    assert not any(p.status().running for p in rig.pumps.values())
    assert not lab.valves["argon"].is_open()
    assert all(h.setpoint() is None for h in lab.heaters.values())


def test_a_platform_without_the_procedure_says_how_to_add_it():
    rig = open_rig(load_platform(), seed=1)
    with pytest.raises(SdflInputError, match=r"add \[\[procedures.startup\]\]"):
        run_procedure(rig, "startup")


@pytest.mark.parametrize("step, message", [
    ('step = "purge"\nduration = "60 s"', "a purge step needs valve and duration"),
    ('step = "purge"\nvalve = "nitrogen"\nduration = "60 s"', "unknown valve 'nitrogen'"),
    ('step = "flush"', "a flush step needs taus"),
])
def test_bad_procedure_steps_are_refused(tmp_path, step, message):
    path = tmp_path / "bad.toml"
    path.write_text(f'[platform]\nname = "bad"\nbase = "{CASCADE}"\n[[procedures.shutdown]]\n{step}\n')
    with pytest.raises(PlatformConfigError, match=message):
        load_platform(path)
