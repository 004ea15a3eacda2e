"""Formulation: how a condition becomes one flowrate per syringe pump, and which rules it must obey.

The rules are the paper's (Sadeghi 2024, FACTS P3.2): the CuI and Cs streams are injected 1:1
(the Cs-side ODE pump makes up the difference), the PFO carrier flows as fast as all the
precursors together, the precursors flow at >= 600 uL/min, every pump is idle or inside its
syringe's rate range, every syringe holds enough liquid, and the reactor stays <= 180 C.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hardware.errors import InfeasibleCondition, InvalidCondition, RefillNeeded
from hardware.platform import DEFAULT_PLATFORM, PLATFORM_DIR, load_platform
from tasks.formulation import Formulation, formulate, formulate_from_flowrates, solvent_flush

PLATFORM = load_platform()
CU_PUMPS = ["cui", "oa_cu", "oam", "ode_cu"]
CS_PUMPS = ["cs_oleate", "oa_cs", "ode_cs"]
FLOOR_UL_MIN = 600.0  # mixing-independence floor of total precursor flow [P3:L115]
TAU_MULTIPLE = 1.2  # t_E = 1.2 tau [P3:L104]

CENTRE = {
    "temperature_c": 140.0, "reaction_time_s": 30.0, "cui_fraction": 0.45, "oa_cu_fraction": 0.08,
    "oam_fraction": 0.04, "cs_fraction": 0.35, "oa_cs_fraction": 0.12,
}
FULL = {p.name: p.syringe_volume for p in PLATFORM.pumps}
"""Every syringe full."""


def rejected(rule: str, call, *args, **kwargs) -> str:
    """Run `call`, expect it to break `rule`; return the message."""
    with pytest.raises(InfeasibleCondition) as info:
        call(*args, **kwargs)
    assert info.value.rule == rule
    message = str(info.value)
    assert message.startswith(f"[rule {rule}]")
    return message


def refill_needed(call, *args, **kwargs) -> str:
    """Run `call`, expect it to ask for a refill (a rig state, not a bad condition); return the message."""
    with pytest.raises(RefillNeeded) as info:
        call(*args, **kwargs)
    assert not isinstance(info.value, InfeasibleCondition)  # a campaign must not count it as a bad proposal
    message = str(info.value)
    assert info.value.rule == "syringe_volume"
    return message


def expected_tau_s(stream_flow_ul_min: float, post_flow_ul_min: float) -> float:
    """tau from the config, by hand: the CuI line at the CuI stream flow, then the path up to the
    last flow cell at the post-junction (precursor + PFO) flow."""
    line = next(s.line_volume for s in PLATFORM.streams if s.name == "cu")
    last_cell = max(i for i, segment in enumerate(PLATFORM.path) if segment.detector is not None)
    path = sum(segment.volume for segment in PLATFORM.path[: last_cell + 1])
    return 60.0 * line / stream_flow_ul_min + 60.0 * path / post_flow_ul_min


def reagent_flows(formulation: Formulation) -> dict[str, float]:
    """The paper's inputs: every reagent pump except ode_cs (computed) and the PFO carrier."""
    return {k: v for k, v in formulation.flows_ul_min.items() if k not in ("ode_cs", "pfo")}


@pytest.fixture(scope="module")
def wide_platform(tmp_path_factory):
    """The shipped rig with a wide search space (0.1-300 s, fractions from 0), so flowrate sets that
    the shipped bounds already exclude reach the hard rules."""
    text = (PLATFORM_DIR / f"{DEFAULT_PLATFORM}.toml").read_text()
    for old, new in [("low = 25\nhigh = 42", "low = 0.1\nhigh = 300"), ("low = 0.02", "low = 0.0"),
                     ("low = 0.15", "low = 0.0")]:
        assert old in text
        text = text.replace(old, new)
    path = tmp_path_factory.mktemp("platforms") / "wide.toml"
    path.write_text(text)
    return load_platform(path)


# --- a worked example --------------------------------------------------------------------------


def test_a_condition_becomes_pump_flowrates():
    """30 s in the 840 uL reactor needs 1680 uL/min through it: 840 of precursors (420 per stream)
    plus 840 of PFO. Each fraction is a share of its stream; the ODE pumps make up the rest."""
    f = formulate(CENTRE, PLATFORM)

    assert f.precursor_flow_ul_min == pytest.approx(840.0)
    assert f.carrier_flow_ul_min == pytest.approx(840.0)
    assert f.stream_flows_ul_min == {"cu": pytest.approx(420.0), "cs": pytest.approx(420.0)}
    assert f.flows_ul_min == pytest.approx({
        "cui": 189.0, "oa_cu": 33.6, "oam": 16.8, "ode_cu": 180.6,
        "cs_oleate": 147.0, "oa_cs": 50.4, "ode_cs": 222.6,
        "pfo": 840.0,
    })
    assert f.reaction_time_s == pytest.approx(30.0)
    # 60 uL CuI line at 420 uL/min, then 1044 uL of path (reactor to abs cell) at 1680 uL/min.
    assert f.tau_s == pytest.approx(60 / 420 * 60 + 1044 / 1680 * 60)
    assert f.t_E_s == pytest.approx(1.2 * f.tau_s)
    assert f.run_time_s == pytest.approx(f.t_E_s + PLATFORM.acquisition.budget)
    assert f.condition == CENTRE
    assert f.temperature_c == 140.0


# --- the rules hold everywhere in the search space ---------------------------------------------


def conditions(margin: float = 0.0):
    """Conditions inside the shipped bounds (edges included unless `margin` > 0, a relative inset)."""
    return st.fixed_dictionaries({
        p.name: st.floats(p.low + margin * (p.high - p.low), p.high - margin * (p.high - p.low))
        for p in PLATFORM.parameters
    })


@settings(max_examples=200, deadline=None, database=None)
@given(condition=conditions())
def test_every_condition_in_the_space_obeys_the_rules(condition):
    f = formulate(condition, PLATFORM)
    flows = f.flows_ul_min
    cu, cs = f.stream_flows_ul_min["cu"], f.stream_flows_ul_min["cs"]

    # 1:1 injection: both streams carry the same flow, and each is the sum of its pumps.
    assert cu == pytest.approx(cs, rel=1e-12)
    assert sum(flows[p] for p in CU_PUMPS) == pytest.approx(cu, rel=1e-12)
    assert sum(flows[p] for p in CS_PUMPS) == pytest.approx(cs, rel=1e-12)
    # The Cs-side ODE pump makes up the difference.
    assert flows["ode_cs"] == pytest.approx(cu - flows["cs_oleate"] - flows["oa_cs"], rel=1e-9, abs=1e-9)
    assert flows["ode_cs"] >= 0
    # PFO carrier = total precursor flow, which is at least the mixing floor.
    assert f.precursor_flow_ul_min == pytest.approx(cu + cs, rel=1e-12)
    assert flows["pfo"] == pytest.approx(f.precursor_flow_ul_min, rel=1e-12)
    assert f.carrier_flow_ul_min == flows["pfo"]
    assert f.precursor_flow_ul_min >= FLOOR_UL_MIN * (1 - 1e-12)
    # Every pump idle or inside its syringe's range.
    for pump in PLATFORM.pumps:
        rate = flows[pump.name]
        assert rate == 0 or pump.min_rate * (1 - 1e-12) <= rate <= pump.max_rate * (1 + 1e-12), pump.name
    # The fractions are shares of the pump's own stream.
    for param in PLATFORM.parameters:
        if param.kind == "fraction":
            stream = PLATFORM.pump(param.pump).stream
            assert flows[param.pump] / f.stream_flows_ul_min[stream] == pytest.approx(condition[param.name])
    # Reaction time: reactor volume over precursor + carrier flow.
    post_flow = f.precursor_flow_ul_min + f.carrier_flow_ul_min
    assert f.reaction_time_s == pytest.approx(condition["reaction_time_s"], rel=1e-12)
    assert f.reaction_time_s == pytest.approx(PLATFORM.reactor.volume / post_flow * 60, rel=1e-12)
    # tau from the five-way junction to the last flow cell; t_E = 1.2 tau.
    assert f.tau_s == pytest.approx(expected_tau_s(cu, post_flow), rel=1e-12)
    assert f.t_E_s == pytest.approx(TAU_MULTIPLE * f.tau_s, rel=1e-12)
    # Each syringe dispenses its flow for the whole programmed run.
    assert f.run_time_s == pytest.approx(f.t_E_s + PLATFORM.acquisition.budget)
    for name, rate in flows.items():
        assert f.volumes_ul[name] == pytest.approx(rate * f.run_time_s / 60, rel=1e-12)
    # A run of the whole space fits in full syringes.
    assert formulate(condition, PLATFORM, remaining_ul=FULL) == f


@settings(max_examples=200, deadline=None, database=None)
@given(condition=conditions(margin=0.0))
def test_the_paper_flowrates_give_back_the_same_condition(condition):
    """Giving the six reagent flowrates (ODE_cs is computed) and the temperature is the same run."""
    f = formulate(condition, PLATFORM)

    g = formulate_from_flowrates(reagent_flows(f), f.temperature_c, PLATFORM)

    assert g.condition == pytest.approx(condition, rel=1e-9)
    assert g.flows_ul_min == pytest.approx(f.flows_ul_min, rel=1e-9, abs=1e-9)
    assert g.precursor_flow_ul_min == pytest.approx(f.precursor_flow_ul_min, rel=1e-12)
    assert g.tau_s == pytest.approx(f.tau_s, rel=1e-12)
    assert g.t_E_s == pytest.approx(f.t_E_s, rel=1e-12)
    assert g.volumes_ul == pytest.approx(f.volumes_ul, rel=1e-9, abs=1e-9)


def test_a_corner_of_the_space_round_trips_through_its_flowrates():
    """Optimizers like corners: the flowrates formulated for one must be accepted back."""
    corner = {
        "temperature_c": 150.0, "reaction_time_s": 25.0, "cui_fraction": 0.55, "oa_cu_fraction": 0.02,
        "oam_fraction": 0.15, "cs_fraction": 0.15, "oa_cs_fraction": 0.02,
    }
    f = formulate(corner, PLATFORM)

    g = formulate_from_flowrates(reagent_flows(f), f.temperature_c, PLATFORM)

    assert g.flows_ul_min == pytest.approx(f.flows_ul_min)


# --- each rule, broken -------------------------------------------------------------------------


def test_out_of_bounds_is_an_invalid_condition_not_an_infeasible_one():
    """Leaving the search space is a different mistake from breaking a rule inside it."""
    with pytest.raises(InvalidCondition, match="reaction_time_s = 60 is outside") as info:
        formulate(dict(CENTRE, reaction_time_s=60.0), PLATFORM)
    assert not isinstance(info.value, InfeasibleCondition)


def test_min_total_flow_precursors_must_flow_fast_enough_to_mix(wide_platform):
    """Below 600 uL/min of precursors the droplets mix too slowly [P3:L115]."""
    flows = {"cui": 50, "oa_cu": 10, "oam": 10, "ode_cu": 30, "cs_oleate": 30, "oa_cs": 10}  # 2 x 100 uL/min

    message = rejected("min_total_flow", formulate_from_flowrates, flows, 140.0, wide_platform)

    assert "total precursor flow 200 uL/min is below the mixing-independence floor of 600 uL/min" in message


def test_on_the_shipped_space_slow_flowrates_are_already_out_of_bounds():
    """The shipped bounds (25-42 s) encode the floor: 200 uL/min of precursors means 126 s, outside them."""
    flows = {"cui": 50, "oa_cu": 10, "oam": 10, "ode_cu": 30, "cs_oleate": 30, "oa_cs": 10}

    with pytest.raises(InvalidCondition, match=r"reaction_time_s = 126 is outside \[25, 42\] s"):
        formulate_from_flowrates(flows, 140.0, PLATFORM)


def test_min_total_flow_the_cui_stream_must_flow():
    flows = {"cui": 0, "oa_cu": 0, "oam": 0, "ode_cu": 0, "cs_oleate": 0, "oa_cs": 0}
    message = rejected("min_total_flow", formulate_from_flowrates, flows, 140.0, PLATFORM)
    assert "stream 'cu' has no flow" in message


def test_equal_stream_flows_the_cs_stream_cannot_outrun_the_cui_stream():
    """1:1 injection: ode_cs tops the Cs stream up to the CuI stream, so Cs-oleate + OA cannot exceed it."""
    flows = {"cui": 150, "oa_cu": 30, "oam": 30, "ode_cu": 90, "cs_oleate": 250, "oa_cs": 100}  # 300 vs 350

    message = rejected("equal_stream_flows", formulate_from_flowrates, flows, 140.0, PLATFORM)

    assert "stream 'cs' already carries 350 uL/min, more than stream 'cu' (300 uL/min)" in message
    assert "'ode_cs' = -50 uL/min" in message


@pytest.mark.parametrize(
    "flows, pump, rate",
    [
        ({"cui": 200, "oa_cu": 40, "oam": 40, "ode_cu": 120, "cs_oleate": 150, "oa_cs": 0.5}, "oa_cs", "0.5"),
        ({"cui": 42_000, "oa_cu": 8000, "oam": 8000, "ode_cu": 22_000, "cs_oleate": 24_000, "oa_cs": 8000},
         "cui", "4.2e+04"),
    ],
    ids=["below-min-rate", "above-max-rate"],
)
def test_pump_rate_limits_a_running_pump_stays_in_its_syringes_range(wide_platform, flows, pump, rate):
    """A syringe pump flows smoothly only between its min and max rate; 0 (idle) is always fine."""
    message = rejected("pump_rate_limits", formulate_from_flowrates, flows, 140.0, wide_platform)
    assert f"pump {pump!r} would run at {rate} uL/min, outside its syringe's range [2, 40000] uL/min" in message


def test_pump_rate_limits_flowrates_cannot_be_negative():
    flows = {"cui": 200, "oa_cu": 40, "oam": 40, "ode_cu": 120, "cs_oleate": 150, "oa_cs": -5}
    message = rejected("pump_rate_limits", formulate_from_flowrates, flows, 140.0, PLATFORM)
    assert "flowrates must be finite and >= 0" in message
    assert "'oa_cs': -5.0" in message


def test_syringe_volume_a_nearly_empty_syringe_must_be_refilled():
    """Before a run every syringe must hold 1.25x what the run will take."""
    remaining = dict(FULL, cs_oleate=10.0)

    message = refill_needed(formulate, CENTRE, PLATFORM, remaining_ul=remaining)

    assert "cs_oleate needs" in message
    assert "holds 10 uL" in message
    assert "refill the syringe" in message
    assert "cui" not in message  # only the short syringe is named


def test_syringe_volume_the_margin_is_1_25_times_the_run():
    need = formulate(CENTRE, PLATFORM).volumes_ul
    enough = {name: 1.25 * volume for name, volume in need.items()}

    formulate(CENTRE, PLATFORM, remaining_ul=enough)  # exactly the margin: fine
    message = refill_needed(formulate, CENTRE, PLATFORM, remaining_ul=dict(enough, pfo=need["pfo"]))
    assert "pfo needs" in message


def test_syringe_volume_an_unlisted_syringe_counts_as_empty():
    remaining = {name: volume for name, volume in FULL.items() if name != "oam"}
    message = refill_needed(formulate, CENTRE, PLATFORM, remaining_ul=remaining)
    assert "oam needs" in message
    assert "holds 0 uL" in message


def test_max_temperature_the_pfo_carrier_limits_the_reactor_to_180_c():
    """Outside the search space (check_bounds=False) the hard rules still apply."""
    message = rejected("max_temperature", formulate, dict(CENTRE, temperature_c=200.0), PLATFORM, check_bounds=False)
    assert "200 C is above the platform limit of 180 C (PFO in PFA)" in message

    formulate(dict(CENTRE, temperature_c=180.0), PLATFORM, check_bounds=False)  # the limit itself is allowed


def test_stream_composition_the_fractions_of_a_stream_cannot_exceed_one():
    """CuI + OA-ODE + OAm-ODE shares above 100 % would leave the ODE pump a negative flow."""
    condition = dict(CENTRE, cui_fraction=0.6, oa_cu_fraction=0.3, oam_fraction=0.2)

    message = rejected("stream_composition", formulate, condition, PLATFORM, check_bounds=False)

    assert "the fractions of stream 'cu' add up to 1.1 > 1" in message
    assert "'ode_cu'" in message


def test_flowrate_inputs_name_exactly_the_six_reagent_pumps():
    """ode_cs is computed from the 1:1 rule, so giving it is as wrong as leaving out a pump."""
    flows = {"cui": 200, "oa_cu": 40, "ode_cu": 160, "cs_oleate": 150, "oa_cs": 50, "ode_cs": 200}

    message = rejected("flowrate_inputs", formulate_from_flowrates, flows, 140.0, PLATFORM)

    assert "give flowrates for exactly ['cui', 'oa_cu', 'oam', 'ode_cu', 'cs_oleate', 'oa_cs']" in message
    assert "unknown: ['ode_cs']" in message
    assert "missing: ['oam']" in message


@pytest.mark.parametrize("reaction_time_s", [0.0, -5.0])
def test_reaction_time_must_be_positive(reaction_time_s):
    condition = dict(CENTRE, reaction_time_s=reaction_time_s)
    message = rejected("reaction_time", formulate, condition, PLATFORM, check_bounds=False)
    assert "reaction time must be positive" in message


# --- the solvent flush -------------------------------------------------------------------------


def test_solvent_flush_runs_only_ode_and_pfo_at_the_floor():
    """The absorbance reference: plain ODE in both streams plus PFO, at the slowest allowed flow."""
    f = solvent_flush(PLATFORM, taus=2.0)

    assert f.flows_ul_min == {
        "cui": 0.0, "oa_cu": 0.0, "oam": 0.0, "ode_cu": 300.0,
        "cs_oleate": 0.0, "oa_cs": 0.0, "ode_cs": 300.0,
        "pfo": 600.0,
    }
    assert f.precursor_flow_ul_min == PLATFORM.rules.min_total_precursor_flow == FLOOR_UL_MIN
    assert f.carrier_flow_ul_min == pytest.approx(FLOOR_UL_MIN)
    assert f.reaction_time_s == pytest.approx(42.0)
    assert f.tau_s == pytest.approx(expected_tau_s(300.0, 1200.0))
    assert f.t_E_s == pytest.approx(2.0 * f.tau_s)
    assert f.run_time_s == pytest.approx(f.t_E_s + PLATFORM.acquisition.budget)
    assert f.volumes_ul["pfo"] == pytest.approx(600.0 * f.run_time_s / 60)
    assert f.condition == {}
    assert math.isnan(f.temperature_c)  # the heater is not part of a flush


@pytest.mark.parametrize("error", [
    InfeasibleCondition("min_total_flow", "too slow"),
])
def test_rule_errors_survive_pickling_across_processes(error):
    """Benchmark pools and Prefect results pickle errors; the rule and message must come back."""
    import pickle

    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error) and str(again) == str(error) and again.rule == error.rule


def test_instrument_errors_survive_pickling_across_processes():
    import pickle

    from hardware.errors import SyringeEmpty

    again = pickle.loads(pickle.dumps(SyringeEmpty("cui", "asked for 5 uL, holds 1 uL")))
    assert isinstance(again, SyringeEmpty) and str(again) == "cui: asked for 5 uL, holds 1 uL"
    assert again.instrument == "cui"
