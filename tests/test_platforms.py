"""Every shipped platform through the same code: formulation, regime checks, the twin's trends
as the detectors measure them, and one live experiment each on the virtual lab.

The CsPbBr3 platform (paper 000) is the main subject here; the InP/ZnS cascade has its own file
(tests/test_inp_zns_platform.py). No Prefect: plain functions on virtual rigs.
"""

from __future__ import annotations

import numpy as np
import pytest

from flows.experiment import conduct_experiment
from hardware.errors import InfeasibleCondition, PlatformConfigError
from hardware.platform import load_platform, shipped_platforms
from hardware.rig import open_rig
from tasks.formulation import formulate, formulate_from_flowrates, solvent_flush
from tasks.storage import read_experiments
from tasks.twin import DigitalTwin

CSPBBR3 = "virtual-cspbbr3"
OAOAM = "virtual-cspbbr3-oaoam"
PAPER_RE = {1000.0: 394.0, 5000.0: 1662.0}
"""Reynolds numbers of paper 000 at Q_toluene 1000 and 5000 mL/h, Q_precursor 60 mL/h [P0:L58]."""


def centre(platform):
    return {p.name: 0.5 * (p.low + p.high) for p in platform.parameters}


@pytest.mark.parametrize("name", [n for n in shipped_platforms() if n.startswith("virtual-")])
def test_every_virtual_platform_formulates_its_centre_and_records_its_regime(name):
    platform = load_platform(name)
    plan = formulate(centre(platform), platform)
    assert plan.tau_s > 0 and plan.t_E_s > plan.tau_s
    assert set(plan.temperatures_c) == set(platform.heaters)
    if platform.regime is not None:
        assert plan.regime["numbers"]["Re"] > 0
        assert not plan.regime["rejections"]


@pytest.mark.parametrize("q_toluene", sorted(PAPER_RE))
def test_reynolds_numbers_are_within_10_percent_of_the_paper(q_toluene):
    platform = load_platform(CSPBBR3)
    plan = formulate({"q_toluene_ml_h": q_toluene, "q_precursor_ml_h": 60.0}, platform)
    re = plan.regime["numbers"]["Re"]
    assert re == pytest.approx(PAPER_RE[q_toluene], rel=0.10)


def test_a_condition_that_breaks_a_regime_rule_is_rejected_with_the_rule_named(tmp_path):
    """A stricter laminar limit (Re <= 1500) rejects the fastest antisolvent flow by name."""
    path = tmp_path / "strict.toml"
    path.write_text(
        '[platform]\nname = "strict-cspbbr3"\nbase = "virtual-cspbbr3"\n'
        '[regime]\nrules = [{ number = "Re", max = 1500.0, action = "reject", source = "lab rule" }]\n'
    )
    platform = load_platform(path)
    formulate({"q_toluene_ml_h": 3000.0, "q_precursor_ml_h": 60.0}, platform)  # Re ~1050: fine
    with pytest.raises(InfeasibleCondition) as caught:
        formulate({"q_toluene_ml_h": 5000.0, "q_precursor_ml_h": 60.0}, platform)
    assert caught.value.rule == "regime_Re"
    assert "Re = 1.75e+03 > 1.5e+03 (lab rule)" in str(caught.value)


def test_the_segmented_platform_warns_on_its_estimated_bond_number_but_runs():
    platform = load_platform()
    plan = formulate(centre(platform), platform)
    assert plan.regime["numbers"]["Bo"] == pytest.approx(0.76, rel=0.05)
    assert any(w.startswith("Bo = ") for w in plan.regime["warnings"])
    assert 1e3 < plan.regime["numbers"]["Pe"] < 1e5


def test_flowrate_parameters_set_the_pumps_and_the_reaction_time_follows():
    platform = load_platform(CSPBBR3)
    plan = formulate({"q_toluene_ml_h": 2000.0, "q_precursor_ml_h": 30.0}, platform)
    assert plan.flows_ul_min["toluene"] == pytest.approx(2000.0 * 1000 / 60)
    assert plan.flows_ul_min["precursor"] == pytest.approx(30.0 * 1000 / 60)
    total = (2000.0 + 30.0) * 1000 / 60
    assert plan.reaction_time_s == pytest.approx(990.0 / total * 60.0)
    assert plan.temperature_c == 25.0 and plan.temperatures_c == {}
    # The same experiment given as pump flowrates lands on the same condition.
    again = formulate_from_flowrates(plan.flows_ul_min, None, platform)
    assert again.condition == pytest.approx(plan.condition)


def test_the_equilibration_rule_is_a_property_of_the_platform():
    """1.2 tau on the segmented platform (paper 003); the RTD washout on the laminar Y-junction."""
    segmented = load_platform()
    plan = formulate(centre(segmented), segmented)
    assert plan.t_E_s == pytest.approx(1.2 * plan.tau_s)
    laminar = load_platform(CSPBBR3)
    plan = formulate(centre(laminar), laminar)
    assert plan.rtd_tanks < 20
    assert plan.t_E_s > 1.5 * plan.tau_s


def test_the_flush_runs_only_the_antisolvent_on_the_y_junction():
    platform = load_platform(CSPBBR3)
    flush = solvent_flush(platform)
    assert flush.flows_ul_min["precursor"] == 0.0
    assert flush.flows_ul_min["toluene"] == pytest.approx(1000.0 * 1000 / 60)


@pytest.mark.parametrize("edit, message", [
    ('[[parameters]]\nname = "temperature_c"\nkind = "temperature"\nunit = "degC"\nlow = 20\nhigh = 30\n',
     "sets a temperature but the platform has no heater"),
    ('[[parameters]]\nname = "reaction_time_s"\nkind = "reaction_time"\nunit = "s"\nlow = 1\nhigh = 2\n',
     "flowrate parameters set the pumps directly"),
    ('[[streams]]\nname = "antisolvent"\njoins_at = "nowhere"\n', "joins at unknown segment 'nowhere'"),
    ('[[parameters]]\nname = "q_toluene_ml_h"\nunit = "L/day"\n', "must use one of the units"),
])
def test_bad_platform_edits_are_refused_with_the_reason(tmp_path, edit, message):
    path = tmp_path / "bad.toml"
    path.write_text(f'[platform]\nname = "bad"\nbase = "virtual-cspbbr3"\n{edit}')
    with pytest.raises(PlatformConfigError) as caught:
        load_platform(path)
    assert message in str(caught.value)


# --- the CsPbBr3 twin's trends, as the detectors see them (paper 000) ---------------------------


def brightness(table):
    """PL per absorbed excitation: the platform's measured PLQY proxy (Abs_300 is the absorbance at
    405 nm in the 10 mm cell; the PL cell is 1 mm)."""
    return table["PL_A"] / (1.0 - 10.0 ** (-0.1 * table["Abs_300"]))


@pytest.fixture(scope="module")
def twins():
    return {name: DigitalTwin(load_platform(name)) for name in (CSPBBR3, OAOAM)}


def test_plqy_rises_with_the_antisolvent_flow_for_both_cappings(twins):
    rows = [{"q_toluene_ml_h": q, "q_precursor_ml_h": 60.0} for q in np.linspace(1000, 5000, 9)]
    for twin in twins.values():
        table = twin.features(rows)
        assert np.all(np.diff(brightness(table)) > 0)
        assert np.all(np.diff(table["plqy"]) > 0)


def test_the_template_fixes_the_peak_and_the_oleate_peak_follows_the_flows(twins):
    grid = [{"q_toluene_ml_h": q, "q_precursor_ml_h": p} for q in (1000, 3000, 5000) for p in (10, 35, 60)]
    polymer = twins[CSPBBR3].features(grid)
    oleate = twins[OAOAM].features(grid)
    assert np.ptp(polymer["PL_peak_nm"]) < 1.0
    assert np.ptp(oleate["PL_peak_nm"]) > 5.0
    # Red-shift as the antisolvent flow falls, and as the precursor flow rises [P0:L65, L76].
    at = oleate.set_index(["q_toluene_ml_h", "q_precursor_ml_h"])["PL_peak_nm"]
    assert at[(1000, 35)] > at[(3000, 35)] > at[(5000, 35)]
    assert at[(5000, 60)] > at[(5000, 35)] > at[(5000, 10)]


def test_yield_scales_with_the_nanoreactor_concentration(twins):
    condition = [{"q_toluene_ml_h": 5000.0, "q_precursor_ml_h": 60.0}]
    base = twins[CSPBBR3].features(condition)["yield_g_h"].iloc[0]
    assert base == pytest.approx(0.139, rel=0.15)  # [P0:L100]
    platform = load_platform(CSPBBR3)
    stock = platform.stocks["precursor"]
    doubled = platform.model_copy(update={"stocks": {**platform.stocks, "precursor": stock.model_copy(
        update={"species": {**stock.species, "NR": "0.66 uM"}})}})
    assert DigitalTwin(doubled).features(condition)["yield_g_h"].iloc[0] == pytest.approx(2 * base, rel=0.01)


def test_a_live_experiment_on_the_y_junction_records_its_flow_regime(tmp_path):
    platform = load_platform(OAOAM)
    rig = open_rig(platform, seed=3)
    condition = {"q_toluene_ml_h": 4600.0, "q_precursor_ml_h": 25.0}
    row = conduct_experiment(rig, condition=condition, campaign="yj", data_root=str(tmp_path))
    truth = DigitalTwin(platform).features([condition]).iloc[0]
    assert row["status"] == "completed"
    assert row["PL_peak_nm"] == pytest.approx(truth["PL_peak_nm"], abs=0.5)
    assert row["FWHM_nm"] == pytest.approx(truth["FWHM_nm"], rel=0.03)
    stored = read_experiments(str(tmp_path), "yj").iloc[0]
    assert stored["regime_Re"] == pytest.approx(row["regime_Re"]) and 1400 < stored["regime_Re"] < 1800
    assert "Pe = " in stored["regime_warnings"]
    assert stored["t_R_s"] == pytest.approx(990.0 / ((4600.0 + 25.0) * 1000 / 60) * 60.0)


def test_a_room_temperature_rig_runs_through_the_drivers_without_a_controller(tmp_path):
    """The Y-junction as an emulated rig: Chemyx pumps on a pseudo-terminal, the spectrometers
    through the seabreeze fake (the only mock: no USB device here), no temperature controller."""
    from hardware.rig import close_all_rigs

    path = tmp_path / "emulated-yj.toml"
    path.write_text('[platform]\nname = "emulated-yj"\nkind = "emulated"\nbase = "virtual-cspbbr3-oaoam"\n')
    rig = open_rig(load_platform(path), seed=2)
    try:
        assert rig.heater is None and rig.heaters == {}
        row = conduct_experiment(rig, condition={"q_toluene_ml_h": 4600.0, "q_precursor_ml_h": 25.0},
                                 campaign="emu", data_root=str(tmp_path / "data"))
        assert row["status"] == "completed" and 510 < row["PL_peak_nm"] < 522
        assert not any(p.status().running for p in rig.lab.pumps.values())
    finally:
        close_all_rigs()


def test_a_driver_rig_with_heater_zones_is_refused(tmp_path):
    path = tmp_path / "rig.toml"
    path.write_text('[platform]\nname = "rig-cascade"\nkind = "real"\nbase = "virtual-inp-zns"\n')
    with pytest.raises(PlatformConfigError, match="driver-based rigs support one heater"):
        load_platform(path)


def test_a_target_defaults_to_the_platforms_own_plqy_proxy():
    from tasks.targets import DEFAULT_QUALITY, check_target, make_target

    green = check_target(make_target(peak_nm=516.0, max_fwhm_nm=18.0), load_platform(OAOAM))
    assert green.target.quality == "PL_A / (1 - 10 ** (-0.1 * Abs_300))"
    default = check_target(make_target(peak_nm=450.0), load_platform())
    assert default.target.quality == DEFAULT_QUALITY


@pytest.mark.parametrize("edit, message", [
    ('[regime]\nfluid = { name = "toluene", density = "0.55 mPa*s", viscosity = "0.554 mPa*s" }',
     "fluid 'toluene': density '0.55 mPa*s' does not have the units of density"),
    ('[regime]\nfluid = { name = "toluene", density = "862 kg/m^3", viscosity = "0.554 mPa*s", '
     'diffusivity = "1e-9 m/s" }', "diffusivity '1e-9 m/s' does not have the units of diffusivity"),
    ('[regime]\nrules = [{ number = "Rey", max = 10.0 }]', "regime.rules[0].number"),
    ('[rules]\nstream_ratios = { antisolvent = -1.0 }', "stream_ratios.antisolvent must be a positive number"),
    ('[spectrometers.abs]\npath_length = "0 mm"', "spectrometers.abs.path_length"),
])
def test_bad_regime_and_flow_settings_are_refused_with_the_field_named(tmp_path, edit, message):
    path = tmp_path / "bad.toml"
    path.write_text(f'[platform]\nname = "bad"\nbase = "virtual-cspbbr3"\n{edit}\n')
    with pytest.raises(PlatformConfigError) as caught:
        load_platform(path)
    assert message in str(caught.value)


def test_a_bad_plqy_proxy_is_named_when_a_target_campaign_checks_it(tmp_path):
    from hardware.errors import SdflInputError
    from tasks.targets import check_target, make_target

    path = tmp_path / "typo.toml"
    path.write_text('[platform]\nname = "typo"\nbase = "virtual-cspbbr3-oaoam"\n'
                    '[features]\nplqy_proxy = "PL_A / (1 - 10 ** (-0.1 * Abs_30))"\n')
    with pytest.raises(SdflInputError) as caught:
        check_target(make_target(peak_nm=516.0), load_platform(path))
    assert "features.plqy_proxy of" in str(caught.value) and "Abs_30" in str(caught.value)


def test_a_regime_rejection_stops_the_experiment_before_the_rig_moves(tmp_path):
    """Rejected by rule: nothing recorded, no pump started (bad input loses no data)."""
    path = tmp_path / "strict.toml"
    path.write_text('[platform]\nname = "strict-yj"\nbase = "virtual-cspbbr3"\n'
                    '[regime]\nrules = [{ number = "Re", max = 1500.0, action = "reject" }]\n')
    platform = load_platform(path)
    rig = open_rig(platform, seed=9)
    ok = conduct_experiment(rig, condition={"q_toluene_ml_h": 2000.0, "q_precursor_ml_h": 30.0},
                            campaign="strict", data_root=str(tmp_path / "data"))
    dispensed = {name: pump.dispensed_ul() for name, pump in rig.lab.pumps.items()}
    with pytest.raises(InfeasibleCondition) as caught:
        conduct_experiment(rig, condition={"q_toluene_ml_h": 5000.0, "q_precursor_ml_h": 30.0},
                           campaign="strict", data_root=str(tmp_path / "data"))
    assert caught.value.rule == "regime_Re"
    assert {name: pump.dispensed_ul() for name, pump in rig.lab.pumps.items()} == dispensed
    rows = read_experiments(str(tmp_path / "data"), "strict")
    assert list(rows["experiment_id"]) == [ok["experiment_id"]]
