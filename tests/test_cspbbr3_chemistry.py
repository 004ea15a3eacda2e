"""The CsPbBr3 chemistry of the virtual lab reproduces the trends of paper 000 (FACTS.md P0).

Each test builds reactor states straight from the two pump flows, as the platform feeds the model:
Q_precursor (DMF stock: 4.4 mM Pb and Cs, 13.2 mM Br, and either 3.3e-4 mM nanoreactors or 1 % OA
and 0.5 % OAm by volume) meets Q_toluene at the Y-junction. No Prefect, no lab: pure numpy.
"""

from __future__ import annotations

import numpy as np
import pytest

from hardware.virtual.chemistry import ChemistryModel, ReactorState
from hardware.virtual.cspbbr3 import CsPbBr3Chemistry
from hardware.virtual.optics import FLOW_CELL_PATH_CM, absorbance_per_cm

NANOREACTOR_STOCK_MM = 3.3e-4  # 10 mg per 20 mL DMF of a ~1.5e6 g/mol star polymer


def flows_state(capping, q_tol_ml_h, q_p_ml_h, nanoreactor_mM=NANOREACTOR_STOCK_MM, reaction_time_s=1.0):
    """The reactor state after the Y-junction for arrays of toluene and precursor flows (mL/h)."""
    q_tol, q_p = np.broadcast_arrays(np.asarray(q_tol_ml_h, dtype=float), np.asarray(q_p_ml_h, dtype=float))
    dmf = q_p / (q_p + q_tol)
    molar = {"Pb": 4.4 * dmf, "Cs": 4.4 * dmf, "Br": 13.2 * dmf}
    fractions = {"DMF": dmf, "toluene": 1.0 - dmf}
    if capping == "polymer":
        molar["NR"] = nanoreactor_mM * dmf
    else:
        fractions.update(OA=0.01 * dmf, OAm=0.005 * dmf)
    total_ul_min = (q_p + q_tol) / 0.06
    return ReactorState(molar, fractions, 25.0 + 0.0 * dmf, reaction_time_s + 0.0 * dmf, total_ul_min)


def box(q_tol=(1000.0, 5000.0), q_p=(10.0, 60.0), n=21):
    """A grid over the flows, flattened: (Q_tol, Q_p) arrays."""
    grid_tol, grid_p = np.meshgrid(np.linspace(*q_tol, n), np.linspace(*q_p, n))
    return grid_tol.ravel(), grid_p.ravel()


def extras(capping, q_tol, q_p, **kwargs):
    return CsPbBr3Chemistry(capping).outcome(flows_state(capping, q_tol, q_p, **kwargs)).extras


Q_TOL_SCAN = np.linspace(1000.0, 5000.0, 41)
Q_P_SCAN = np.linspace(10.0, 60.0, 26)


# --- the interface ----------------------------------------------------------------------------


def test_the_species_it_reads_depend_on_the_capping():
    polymer, oleate = CsPbBr3Chemistry("polymer"), CsPbBr3Chemistry("oleate")
    assert isinstance(polymer, ChemistryModel)
    assert polymer.required_species == {"Pb": "mM", "Cs": "mM", "Br": "mM", "NR": "mM", "DMF": "fraction"}
    assert oleate.required_species == {
        "Pb": "mM", "Cs": "mM", "Br": "mM", "OA": "fraction", "OAm": "fraction", "DMF": "fraction"
    }
    assert "required_species" not in vars(CsPbBr3Chemistry)


def test_an_unknown_capping_is_rejected_with_the_allowed_values():
    with pytest.raises(ValueError, match="polymer.*oleate"):
        CsPbBr3Chemistry("citrate")


# --- trends of P0 ------------------------------------------------------------------------------


@pytest.mark.parametrize("capping", ["polymer", "oleate"])
def test_plqy_rises_monotonically_with_toluene_flow(capping):
    found = extras(capping, Q_TOL_SCAN, 60.0)
    assert np.all(np.diff(found["plqy"]) > 0)
    assert np.all(np.diff(found["mixing"]) > 0)


def test_plqy_is_near_60_percent_and_flat_over_precursor_flow_at_top_toluene_flow():
    plqy = extras("polymer", 5000.0, Q_P_SCAN)["plqy"]
    assert np.all((plqy > 0.55) & (plqy < 0.65)), plqy
    assert np.all(np.abs(plqy / plqy.mean() - 1.0) < 0.05)


def test_oleate_crystals_have_the_higher_average_plqy():
    q_tol, q_p = box()
    assert extras("oleate", q_tol, q_p)["plqy"].mean() > extras("polymer", q_tol, q_p)["plqy"].mean()


def test_the_template_fixes_the_polymer_capped_peak():
    peak = extras("polymer", *box())["peak_nm"]
    assert peak.max() - peak.min() < 0.5
    assert 505.0 < peak.mean() < 518.0


def test_the_oleate_peak_red_shifts_with_less_toluene_and_more_precursor():
    by_toluene = extras("oleate", Q_TOL_SCAN, 60.0)["peak_nm"]
    by_precursor = extras("oleate", 5000.0, Q_P_SCAN)["peak_nm"]
    assert np.all(np.diff(by_toluene) < 0)
    assert np.all(np.diff(by_precursor) > 0)
    peak = extras("oleate", *box())["peak_nm"]
    assert 3.0 < peak.max() - peak.min() < 16.0
    assert 500.0 < peak.min() and peak.max() < 527.0


def test_oleate_fwhm_narrows_with_mixing_and_barely_moves_with_precursor_flow():
    assert np.all(np.diff(extras("oleate", Q_TOL_SCAN, 60.0)["fwhm_nm"]) < 0)
    for q_tol in (1000.0, 3000.0, 5000.0):
        fwhm = extras("oleate", q_tol, Q_P_SCAN)["fwhm_nm"]
        assert fwhm.max() / fwhm.min() - 1.0 < 0.10
    fwhm = extras("oleate", *box())["fwhm_nm"]
    assert 15.0 < fwhm.min() and fwhm.max() < 26.0


def test_the_green_target_is_reachable_only_in_part_of_the_box():
    """Target: peak 515-517 nm with FWHM <= 18 nm: needs good mixing and a middling precursor flow."""
    q_tol, q_p = box(n=41)
    found = extras("oleate", q_tol, q_p)
    hit = (found["peak_nm"] >= 515.0) & (found["peak_nm"] <= 517.0) & (found["fwhm_nm"] <= 18.0)
    assert 0.01 < hit.mean() < 0.5
    assert found["plqy"][hit].min() > 0.55
    # The brightest corner (most toluene, most precursor) is too red: peak, FWHM and PLQY trade off.
    assert extras("oleate", 5000.0, 60.0)["peak_nm"] > 517.0


def test_yield_is_linear_in_nanoreactors_and_matches_the_paper_at_the_optimum():
    single = extras("polymer", 5000.0, 60.0)["yield_g_h"]
    double = extras("polymer", 5000.0, 60.0, nanoreactor_mM=2 * NANOREACTOR_STOCK_MM)["yield_g_h"]
    assert double / single == pytest.approx(2.0, rel=0.01)
    assert single == pytest.approx(0.139, rel=0.15)


def test_oleate_yield_is_limited_by_the_lead_bromide_supply():
    found = extras("oleate", 5000.0, 60.0)["yield_g_h"]
    lead_g_h = 4.4e-3 * 0.060 * 579.8  # every Pb of the stock as CsPbBr3
    assert 0.5 * lead_g_h < found <= lead_g_h


# --- optics ------------------------------------------------------------------------------------


@pytest.mark.parametrize("capping", ["polymer", "oleate"])
def test_crystals_absorb_as_a_continuum_with_an_exciton_just_below_the_emission(capping):
    outcome = CsPbBr3Chemistry(capping).outcome(flows_state(capping, *box()))
    peak = outcome.extras["peak_nm"]
    stokes = peak - outcome.edge_nm
    assert np.all((stokes > 1.0) & (stokes < 10.0))
    exciton = outcome.absorption[0]
    assert np.all(np.abs(exciton.center_nm - outcome.edge_nm) < 5.0)
    a405 = absorbance_per_cm(np.array([405.0]), outcome)[:, 0] * FLOW_CELL_PATH_CM
    assert np.all((a405 > 0.004) & (a405 < 1.5)), (a405.min(), a405.max())
    assert np.all(outcome.scattering_at_400nm < 0.05 * absorbance_per_cm(np.array([400.0]), outcome)[:, 0])


@pytest.mark.parametrize("capping", ["polymer", "oleate"])
def test_everything_is_finite_and_non_negative_a_little_outside_the_box(capping):
    outcome = CsPbBr3Chemistry(capping).outcome(flows_state(capping, *box((500.0, 6000.0), (5.0, 80.0))))
    values = [outcome.edge_nm, outcome.edge_height, outcome.scattering_at_400nm, *outcome.extras.values()]
    for band in outcome.emission + outcome.absorption:
        values += [band.center_nm, band.fwhm_nm, band.height]
    for value in values:
        value = np.asarray(value, dtype=float)
        assert np.all(np.isfinite(value)) and np.all(value >= 0.0)
    wavelengths = np.linspace(250.0, 700.0, 200)
    assert np.all(absorbance_per_cm(wavelengths, outcome) >= 0.0)


# --- evaluation -------------------------------------------------------------------------------


def flatten(outcome):
    """Every number an outcome carries, band by band, as one array per field."""
    fields = [outcome.edge_nm, outcome.edge_height, outcome.scattering_at_400nm]
    for band in outcome.emission + outcome.absorption:
        fields += [band.center_nm, band.fwhm_nm, band.height]
    fields += [outcome.extras[key] for key in sorted(outcome.extras)]
    return [np.atleast_1d(np.asarray(field, dtype=float)) for field in fields]


@pytest.mark.parametrize("capping", ["polymer", "oleate"])
def test_a_hundred_states_at_once_equal_each_state_alone(capping):
    rng = np.random.default_rng(7)
    q_tol, q_p = rng.uniform(1000.0, 5000.0, 100), rng.uniform(10.0, 60.0, 100)
    times = rng.uniform(0.5, 4.0, 100)
    model = CsPbBr3Chemistry(capping)
    together = flatten(model.outcome(flows_state(capping, q_tol, q_p, reaction_time_s=times)))
    for i in range(100):
        alone = flatten(model.outcome(flows_state(capping, q_tol[i], q_p[i], reaction_time_s=times[i])))
        for field_all, field_one in zip(together, alone):
            value_all = field_all if field_all.size == 1 else field_all[i]
            np.testing.assert_allclose(value_all, field_one[0], rtol=1e-12)


@pytest.mark.parametrize("capping", ["polymer", "oleate"])
def test_the_model_is_deterministic(capping):
    state = flows_state(capping, *box())
    first = flatten(CsPbBr3Chemistry(capping).outcome(state))
    np.random.seed(123)
    second = flatten(CsPbBr3Chemistry(capping).outcome(state))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
