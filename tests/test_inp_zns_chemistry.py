"""The InP/ZnS chemistry follows the trends of paper 001 (FACTS.md P1), one fluid element at a time.

Each test builds reactor states the way the platform does: a "core" and a "shell" zone (times in
seconds) and the molar amounts after all streams are mixed. `reactor_state` takes the paper's terms
(minutes, molar ratios) so the tests read like the paper's experiments.

These are the truths of one element that stayed exactly the given times. The paper's numbers belong to
the product of the cascade, averaged over its residence-time distribution; that average is checked
where the detectors measure it, in tests/test_inp_zns_platform.py. Here the element at the mean times
must already be close (the average adds only ~1 nm of line width).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from hardware.virtual.chemistry import ChemistryModel, ReactorState, ZoneState, load_chemistry
from hardware.virtual.inp_zns import CL_TO_I_RANGE, InPZnSChemistry

FLOW_CELL_PATH_CM = 0.1016
SHELL_SERIES = {"core_c": 180.0, "core_min": 13.0, "shell_min": 15.0, "s_to_zn": 2.0, "cl_to_i": 6.0}
"""The conditions held fixed in the paper's shell-temperature series [P1:L95-101]."""


def reactor_state(
    core_c=180.0,
    core_min=13.0,
    shell_c=290.0,
    shell_min=15.0,
    s_to_zn=2.0,
    p_to_in=3.6,
    cl_to_i=6.0,
    indium_mM=35.0,
    dilution=1.0,
):
    """A state (or an array of states) from the paper's conditions; every argument may be an array."""
    values = np.broadcast_arrays(
        *(
            np.asarray(v, dtype=float)
            for v in (core_c, core_min, shell_c, shell_min, s_to_zn, p_to_in, cl_to_i)
        )
    )
    core_c, core_min, shell_c, shell_min, s_to_zn, p_to_in, cl_to_i = values
    indium = indium_mM * dilution + 0 * core_c
    zinc = 2.5 * indium
    halide = 3.0 * indium + 2.0 * zinc  # InCl3 + ZnCl2/ZnI2
    return ReactorState(
        molar_mM={
            "In": indium,
            "Zn": zinc,
            "P": p_to_in * indium,
            "S": s_to_zn * zinc,
            "Cl": halide * cl_to_i / (1.0 + cl_to_i),
            "I": halide / (1.0 + cl_to_i),
        },
        volume_fraction={},
        temperature_c=core_c,
        reaction_time_s=core_min * 60.0,
        precursor_flow_ul_min=200.0,
        zones={"core": ZoneState(core_c, core_min * 60.0), "shell": ZoneState(shell_c, shell_min * 60.0)},
    )


@pytest.fixture(scope="module")
def model():
    return InPZnSChemistry()


def truths(model, **conditions):
    return model.outcome(reactor_state(**conditions)).extras


def random_box(n, seed, margin=0.0):
    """Conditions drawn evenly over the paper's box (widened by `margin` of each range)."""
    box = {
        "core_c": (160.0, 220.0),
        "core_min": (5.0, 30.0),
        "shell_c": (240.0, 320.0),
        "shell_min": (10.0, 30.0),
        "s_to_zn": (1.0, 4.0),
        "p_to_in": (2.0, 5.0),
        "log_cl_to_i": tuple(np.log(CL_TO_I_RANGE)),
        "indium_mM": (20.0, 50.0),
    }
    rng = np.random.default_rng(seed)
    draws = {}
    for name, (low, high) in box.items():
        pad = margin * (high - low)
        draws[name] = rng.uniform(low - pad, high + pad, n)
    draws["cl_to_i"] = np.exp(draws.pop("log_cl_to_i"))
    draws["core_min"] = np.maximum(draws["core_min"], 0.0)
    draws["shell_min"] = np.maximum(draws["shell_min"], 0.0)
    return draws


def box_corners():
    lows_highs = [(160, 220), (5, 30), (240, 320), (10, 30), (1, 4), (2, 5), CL_TO_I_RANGE, (20, 50)]
    names = ["core_c", "core_min", "shell_c", "shell_min", "s_to_zn", "p_to_in", "cl_to_i", "indium_mM"]
    columns = np.array(list(itertools.product(*lows_highs)), dtype=float).T
    return dict(zip(names, columns))


# --- 1. halides tune the colour -------------------------------------------------------------------


def test_more_iodide_gives_bluer_emission_across_526_to_578_nm(model):
    ratios = np.geomspace(*CL_TO_I_RANGE, 41)
    sweep = truths(model, cl_to_i=ratios)
    assert (np.diff(sweep["peak_nm"]) > 0).all(), sweep["peak_nm"]
    assert sweep["peak_nm"][0] <= 526.0 and sweep["peak_nm"][-1] >= 578.0, sweep["peak_nm"][[0, -1]]
    # Linewidths like the paper's 46-58 nm, narrower for the bluer dots.
    assert sweep["fwhm_nm"][0] < sweep["fwhm_nm"][-1]
    assert (sweep["fwhm_nm"] > 46.0).all() and (sweep["fwhm_nm"] < 62.0).all(), sweep["fwhm_nm"]


# --- 2. the shell-temperature series --------------------------------------------------------------


def test_the_shell_temperature_series_matches_the_paper(model):
    temperatures = np.array([270.0, 280.0, 290.0, 300.0, 310.0])
    series = truths(model, shell_c=temperatures, **SHELL_SERIES)
    peak, fwhm, qy = series["peak_nm"], series["fwhm_nm"], series["qy"]
    assert (np.diff(peak) < 0).all(), peak  # the peak blue-shifts as the shell thickens
    assert 561.0 <= peak[0] <= 565.0 and 556.0 <= peak[-1] <= 560.0, peak
    assert 0.38 <= qy[2] <= 0.46 and 54.0 <= fwhm[2] <= 58.0, (qy[2], fwhm[2])
    assert 0.17 <= qy[4] <= 0.27 and 57.0 <= fwhm[4] <= 62.0, (qy[4], fwhm[4])
    assert (qy[:2] < 0.25).all(), qy


def test_qy_peaks_and_the_line_is_narrowest_near_290_c(model):
    temperatures = np.linspace(260.0, 320.0, 601)
    series = truths(model, shell_c=temperatures, **SHELL_SERIES)
    assert 285.0 <= temperatures[np.argmax(series["qy"])] <= 295.0
    assert 285.0 <= temperatures[np.argmin(series["fwhm_nm"])] <= 295.0


def test_a_thin_shell_leaves_a_red_trap_tail(model):
    state = reactor_state(shell_c=np.array([270.0, 280.0, 290.0]), **SHELL_SERIES)
    outcome = model.outcome(state)
    trap = outcome.extras["trap_fraction"]
    assert trap[0] > trap[1] > 5.0 * trap[2], trap
    assert trap[2] < 0.03  # "the tail almost disappeared" at 290 C
    edge_band, trap_band = outcome.emission
    assert ((trap_band.center_nm > 640.0) & (trap_band.center_nm < 720.0)).all(), trap_band.center_nm
    assert (trap_band.fwhm_nm > 2.0 * edge_band.fwhm_nm).all()


def test_the_band_edge_stays_the_brightest_feature_even_without_a_shell(model):
    outcome = model.outcome(reactor_state(**random_box(3000, seed=6)))
    edge_band, trap_band = outcome.emission
    assert (edge_band.height > trap_band.height).all()


# --- 3. sulfur --------------------------------------------------------------------------------------


def test_s_to_zn_of_2_gives_the_best_qy(model):
    ratios = np.linspace(1.0, 4.0, 301)
    qy = truths(model, s_to_zn=ratios)["qy"]
    assert 1.8 <= ratios[np.argmax(qy)] <= 2.2


# --- 4. the envelope of the whole box -----------------------------------------------------------------


@pytest.mark.parametrize("conditions", [random_box(5000, seed=1), box_corners()], ids=["random", "corners"])
def test_every_product_in_the_box_stays_in_the_papers_envelope(model, conditions):
    extras = truths(model, **conditions)
    # The bluest corner (160 C for 5 min, Cl:I 0.2, a 320 C shell) has cores that barely grew: ~514 nm.
    assert extras["peak_nm"].min() >= 512.0 and extras["peak_nm"].max() <= 615.0
    assert extras["fwhm_nm"].min() >= 44.0 and extras["fwhm_nm"].max() <= 70.0
    assert extras["qy"].max() <= 0.45


# --- 5. cores and absorption ------------------------------------------------------------------------


def test_cores_grow_with_core_temperature_and_time(model):
    by_temperature = truths(model, core_c=np.linspace(160.0, 220.0, 13))
    by_time = truths(model, core_min=np.linspace(5.0, 30.0, 11))
    for extras in (by_temperature, by_time):
        assert (np.diff(extras["core_diameter_nm"]) > 0).all()
        assert (np.diff(extras["core_exciton_nm"]) > 0).all()
        assert (np.diff(extras["first_exciton_nm"]) > 0).all()


def test_cores_stop_growing_when_the_indium_runs_out(model):
    """Size focusing: a core that stayed 4 min is within ~4 % of the size of one that stayed 30 min, so the
    spread of times in the core tanks hardly widens the line."""
    sizes = truths(model, core_min=np.array([4.0, 10.0, 13.0, 30.0]))["core_diameter_nm"]
    assert sizes[1] / sizes[0] < 1.03 and sizes[3] / sizes[1] < 1.03, sizes
    assert (
        truths(model, core_min=10.0)["core_conversion"]
        > 0.95 * truths(model, core_min=60.0)["core_conversion"]
    )


def test_the_shell_thickness_follows_the_temperature_more_than_the_time(model):
    by_time = truths(model, shell_c=290.0, shell_min=np.array([7.0, 30.0]))["shell_monolayers"]
    by_temperature = truths(model, shell_c=np.array([270.0, 310.0]))["shell_monolayers"]
    assert by_time[1] / by_time[0] < 1.2, by_time  # 7 -> 30 min
    assert by_temperature[1] / by_temperature[0] > 4.0, by_temperature  # 270 -> 310 C


def test_absorption_has_a_first_exciton_and_a_measurable_405_nm_absorbance(model):
    extras = truths(model, **random_box(2000, seed=2))
    assert extras["first_exciton_nm"].min() >= 430.0 and extras["first_exciton_nm"].max() <= 590.0
    in_cell = extras["absorbance_per_cm_at_excitation"] * FLOW_CELL_PATH_CM
    assert in_cell.min() >= 0.05 and in_cell.max() <= 2.0, (in_cell.min(), in_cell.max())
    outcome = model.outcome(reactor_state())
    exciton = outcome.absorption[0]
    assert exciton.center_nm == pytest.approx(outcome.extras["first_exciton_nm"])
    assert outcome.edge_nm < exciton.center_nm  # the continuum rises towards the UV


def test_p_to_in_of_3_6_gives_the_narrowest_line_and_the_best_qy(model):
    ratios = np.linspace(2.0, 5.0, 301)
    extras = truths(model, p_to_in=ratios)
    assert 3.4 <= ratios[np.argmin(extras["fwhm_nm"])] <= 3.8
    assert 3.4 <= ratios[np.argmax(extras["qy"])] <= 3.8


def test_dilution_changes_absorbance_but_not_the_dots(model):
    full, half = truths(model, dilution=1.0), truths(model, dilution=0.5)
    for name in ("peak_nm", "fwhm_nm", "qy", "core_diameter_nm"):
        assert half[name] == pytest.approx(full[name])
    assert half["absorbance_per_cm_at_excitation"] == pytest.approx(
        0.5 * full["absorbance_per_cm_at_excitation"]
    )


# --- 6. a well-behaved plug-in ------------------------------------------------------------------------


def test_every_output_is_finite_and_non_negative_a_bit_beyond_the_box(model):
    outcome = model.outcome(reactor_state(**random_box(3000, seed=3, margin=0.25)))
    fields = [
        getattr(band, name)
        for band in outcome.emission + outcome.absorption
        for name in ("center_nm", "fwhm_nm", "height")
    ]
    fields += [outcome.edge_nm, outcome.edge_height, *outcome.extras.values()]
    for values in fields:
        assert np.isfinite(values).all() and (np.asarray(values) >= 0).all()


def test_no_iodide_and_no_time_are_handled(model):
    state = reactor_state(core_min=0.0, shell_min=0.0)
    state.molar_mM["I"] = 0.0
    extras = model.outcome(state).extras
    assert all(np.isfinite(v).all() for v in extras.values())
    assert extras["absorbance_per_cm_at_excitation"] < 0.5  # no cores formed yet


def test_an_array_of_states_equals_each_state_alone(model):
    conditions = random_box(100, seed=4)
    together = model.outcome(reactor_state(**conditions))
    for i in range(0, 100, 9):
        alone = model.outcome(reactor_state(**{k: v[i] for k, v in conditions.items()}))
        for name in ("qy", "peak_nm", "fwhm_nm", "trap_fraction", "absorbance_per_cm_at_excitation"):
            assert alone.extras[name] == pytest.approx(together.extras[name][i], rel=1e-12)
        assert alone.emission[0].height == pytest.approx(together.emission[0].height[i], rel=1e-12)


def test_the_model_is_deterministic(model):
    conditions = random_box(50, seed=5)
    first, second = model.outcome(reactor_state(**conditions)), model.outcome(reactor_state(**conditions))
    for name, values in first.extras.items():
        np.testing.assert_array_equal(values, second.extras[name])


@pytest.mark.parametrize("missing", ["core", "shell"])
def test_a_missing_zone_is_named_in_the_error(model, missing):
    state = reactor_state()
    del state.zones[missing]
    with pytest.raises(ValueError, match=repr(missing)):
        model.outcome(state)


def test_the_platform_can_load_it_by_name():
    model = load_chemistry("hardware.virtual.inp_zns:InPZnSChemistry", {"qy_max": 0.40})
    assert isinstance(model, ChemistryModel)
    assert model.outcome(reactor_state()).extras["qy"] < 0.40
