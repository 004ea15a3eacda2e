"""The Cs3Cu2I5 chemistry of the virtual lab reproduces the trends of paper 003 (FACTS.md P3.3).

Each test asks the noiseless digital twin (the same formulation and feature code the loop uses)
for a one-factor scan around the centre of the space and checks one trend. `check_bounds=False`
is used only where the trend lives outside the search space (temperatures above 150 C or below
120 C). The last tests show the plug-in interface: any importable class with `required_species`
and `outcome(state)` can replace the chemistry.
"""

from __future__ import annotations

import numpy as np
import pytest

from flows.characterize import centre_condition
from hardware.platform import PLATFORM_DIR, load_platform
from hardware.rig import virtual_rig
from hardware.virtual.chemistry import Band, ChemistryModel, OpticalOutcome, ReactorState, load_chemistry
from hardware.virtual.cs3cu2i5 import Cs3Cu2I5Chemistry
from hardware.virtual.lab import VirtualLab
from tasks.equilibration import start_pumps
from tasks.formulation import formulate
from tasks.twin import DigitalTwin


@pytest.fixture(scope="module")
def twin():
    return DigitalTwin(load_platform())


@pytest.fixture(scope="module")
def centre(twin):
    """temperature 135 C, reaction time 33.5 s, every fraction in the middle of its range."""
    return centre_condition(twin.platform)


def scan(twin, centre, name, values, check_bounds=True):
    """Features along one parameter, everything else at the centre."""
    return twin.features([{**centre, name: float(v)} for v in values], check_bounds=check_bounds)


def random_conditions(platform, n, seed):
    rng = np.random.default_rng(seed)
    low = np.array([p.low for p in platform.parameters])
    high = np.array([p.high for p in platform.parameters])
    return [dict(zip(platform.parameter_names, low + (high - low) * u)) for u in rng.random((n, low.size))]


def bounds(platform, name):
    param = next(p for p in platform.parameters if p.name == name)
    return param.low, param.high


# --- the trends of P3.3 -------------------------------------------------------------------


def test_the_emission_peak_stays_near_450_nm_whatever_the_inputs(twin):
    table = twin.features(random_conditions(twin.platform, 300, seed=1))
    assert table["PL_peak_nm"].between(447.0, 452.0).all(), table["PL_peak_nm"].describe()


def test_more_cui_gives_more_yield_and_brighter_emission(twin, centre):
    table = scan(twin, centre, "cui_fraction", np.linspace(*bounds(twin.platform, "cui_fraction"), 9))
    assert (np.diff(table["PL_I"]) > 0).all(), table[["cui_fraction", "PL_I"]]
    assert (np.diff(table["Abs_300"]) > 0).all(), table[["cui_fraction", "Abs_300"]]


def test_emission_rises_with_temperature_up_to_150_c_and_falls_beyond(twin, centre):
    temperatures = [120.0, 130.0, 140.0, 150.0, 160.0, 170.0]
    table = scan(twin, centre, "temperature_c", temperatures, check_bounds=False)
    pl = table.set_index("temperature_c")["PL_I"]
    assert (np.diff(pl.loc[120.0:150.0]) > 0).all(), pl
    assert pl[150.0] > pl[160.0] > pl[170.0]
    # "beyond 150 C lowered PL compared to lower temperatures": 170 C is worse than even 120 C.
    assert pl[170.0] < pl[120.0]


@pytest.mark.parametrize("oa_parameter", ["oa_cu_fraction", "oa_cs_fraction"])
def test_oleic_acid_has_an_optimum_for_emission_and_raises_yield(twin, centre, oa_parameter):
    values = np.linspace(*bounds(twin.platform, oa_parameter), 19)
    table = scan(twin, centre, oa_parameter, values)
    best = int(np.argmax(table["PL_I"]))
    assert 0 < best < len(values) - 1, f"PL_I peaks on the edge of the scan, at {values[best]:.3f}"
    assert table["PL_I"].iloc[best] > 1.02 * max(table["PL_I"].iloc[0], table["PL_I"].iloc[-1])
    assert (np.diff(table["Abs_300"]) > 0).all(), table[[oa_parameter, "Abs_300"]]


def test_oleylamine_raises_yield_but_lowers_emission(twin, centre):
    table = scan(twin, centre, "oam_fraction", np.linspace(*bounds(twin.platform, "oam_fraction"), 9))
    assert (np.diff(table["Abs_300"]) > 0).all(), table[["oam_fraction", "Abs_300"]]
    assert (np.diff(table["PL_I"]) < 0).all(), table[["oam_fraction", "PL_I"]]


def test_the_380_nm_side_emission_grows_with_cs_oleate(twin, centre):
    table = scan(twin, centre, "cs_fraction", np.linspace(*bounds(twin.platform, "cs_fraction"), 9))
    assert (np.diff(table["PL_380_ratio"]) > 0).all(), table[["cs_fraction", "PL_380_ratio"]]
    assert table["PL_380_ratio"].iloc[-1] > 3 * table["PL_380_ratio"].iloc[0]


def test_a_600_nm_population_appears_below_120_c(twin, centre):
    cold = scan(twin, centre, "temperature_c", [105.0, 110.0, 130.0], check_bounds=False)["PL_600_ratio"]
    assert cold[0] > 1.0 and cold[1] > 0.1, cold  # at 105 C it outshines the 450 nm band
    assert cold[0] > 100 * cold[2] and cold[1] > 100 * cold[2]
    # Inside the space it stays small: a few % at 120 C at most.
    inside = twin.features(random_conditions(twin.platform, 200, seed=2))["PL_600_ratio"]
    assert inside.max() < 0.05


def test_emission_drops_slightly_for_reaction_times_above_28_s_while_yield_stays(twin, centre):
    table = scan(twin, centre, "reaction_time_s", [25.0, 28.0, 31.0, 35.0, 42.0]).set_index("reaction_time_s")
    pl, absorbance = table["PL_I"], table["Abs_300"]
    assert pl[25.0] == pytest.approx(pl[28.0], rel=0.02)
    assert 0.90 < pl[42.0] / pl[28.0] < 0.98  # a slight drop, a few %
    assert (np.diff(pl.loc[28.0:42.0]) < 0).all()
    assert absorbance.max() / absorbance.min() < 1.05  # "similar reaction yields"


def test_below_600_ul_min_the_synthesis_is_mass_transfer_limited():
    """Same composition, temperature and reaction time; only the flow (droplet speed) changes."""
    chemistry = Cs3Cu2I5Chemistry()
    flows = np.array([200.0, 300.0, 400.0, 600.0, 800.0, 1000.0])
    state = ReactorState(
        molar_mM={"Cs": 5.7 + 0 * flows, "Cu": 1.3 + 0 * flows},
        volume_fraction={"OA": 0.05 + 0 * flows, "OAm": 0.02 + 0 * flows},
        temperature_c=140.0 + 0 * flows, reaction_time_s=33.0 + 0 * flows, precursor_flow_ul_min=flows,
    )
    yields, plqy = chemistry.yield_fraction(state), chemistry.plqy(state)
    plateau_yield, plateau_plqy = yields[flows >= 600].max(), plqy[flows >= 600].max()
    assert (yields[flows < 600] < 0.9 * plateau_yield).all(), yields
    assert (plqy[flows < 600] < 0.95 * plateau_plqy).all(), plqy
    assert (np.diff(yields) > 0).all() and (np.diff(plqy) > 0).all()
    assert yields[flows >= 600].min() > 0.98 * plateau_yield  # a plateau above 600 uL/min
    assert plqy[flows >= 600].min() > 0.98 * plateau_plqy
    # The optical outcome carries the same truths.
    assert np.allclose(chemistry.outcome(state).extras["yield_fraction"], yields)


def test_the_temperature_effect_depends_on_oleylamine(twin, centre):
    """Not separable: OAm attacks the crystals faster when hot, so heating helps less with more OAm."""
    gain = {}
    for oam in (0.02, 0.15):
        pl = scan(twin, {**centre, "oam_fraction": oam}, "temperature_c", [130.0, 150.0])["PL_I"]
        gain[oam] = pl[1] / pl[0]
    assert gain[0.02] > 1.0 and gain[0.15] > 1.0
    assert gain[0.02] - gain[0.15] > 0.05, gain


def test_the_oleic_acid_optimum_of_the_plqy_moves_with_cui(twin, centre):
    """The model's OA optimum for passivation needs more OA when there is more copper.

    Seen in the model's own PLQY; in PL_I the rising yield with OA moves the other way at low
    CuI and the two nearly cancel (the CuI stock also brings OA with it).
    """
    values = np.linspace(*bounds(twin.platform, "oa_cu_fraction"), 91)
    best = {}
    for cui in (0.15, 0.55):
        plqy = scan(twin, {**centre, "cui_fraction": cui}, "oa_cu_fraction", values)["plqy"]
        best[cui] = values[int(np.argmax(plqy))]
    assert best[0.55] - best[0.15] > 0.008, best


def test_the_response_is_smooth_along_random_directions(twin):
    """No steps or kinks large enough to fool a surrogate: along 10 random lines through the
    space, consecutive differences of PL_I change little from one step to the next."""
    platform = twin.platform
    low = np.array([p.low for p in platform.parameters])
    high = np.array([p.high for p in platform.parameters])
    rng = np.random.default_rng(3)
    s = np.linspace(0.0, 1.0, 201)[:, None]
    for _ in range(10):
        a, b = low + (high - low) * rng.random(low.size), low + (high - low) * rng.random(low.size)
        points = a + s * (b - a)
        pl = twin.features([dict(zip(platform.parameter_names, x)) for x in points])["PL_I"].to_numpy()
        step = np.diff(pl)
        assert np.abs(step).max() < 0.02 * np.ptp(pl) + 1e-9 * pl.max()
        assert np.abs(np.diff(step)).max() < 0.05 * np.abs(step).max(), "a jump in PL_I"


@pytest.fixture(scope="module")
def pl_optimum(twin):
    from tasks.twin import shipped_optimum

    return shipped_optimum(twin.platform, "PL_I")  # a minute of differential evolution, done once and shipped


def test_the_true_optimum_beats_random_conditions(twin, pl_optimum):
    platform = twin.platform
    assert pl_optimum.objective == "PL_I"
    platform.validate_condition(pl_optimum.condition)  # inside the bounds
    at_optimum = twin.features([pl_optimum.condition])["PL_I"][0]
    assert at_optimum == pytest.approx(pl_optimum.value, rel=1e-9)
    others = twin.features(random_conditions(platform, 500, seed=4))["PL_I"]
    assert at_optimum >= others.max()


# --- the plug-in interface ----------------------------------------------------------------


class ConstantEmitter:
    """A user's chemistry: whatever the inputs, copper gives one green band at `peak_nm`."""

    required_species = {"Cu": "mM"}

    def __init__(self, peak_nm: float = 520.0):
        self.peak_nm = peak_nm

    def outcome(self, state: ReactorState) -> OpticalOutcome:
        cu = np.asarray(state.species("Cu"), dtype=float)
        flat = 0.0 * cu
        return OpticalOutcome(
            emission=[Band(center_nm=self.peak_nm + flat, fwhm_nm=30.0 + flat, height=0.001 + flat)],
            absorption=[Band(center_nm=300.0 + flat, fwhm_nm=40.0 + flat, height=2.0 * cu)],
        )


def test_a_user_chemistry_satisfies_the_interface_and_loads_by_import_path():
    assert isinstance(ConstantEmitter(), ChemistryModel)
    model = load_chemistry(f"{__name__}:ConstantEmitter", {"peak_nm": 530.0})
    assert type(model).__name__ == "ConstantEmitter" and model.peak_nm == 530.0


def test_a_platform_config_pointing_at_a_user_chemistry_emits_at_its_wavelength(tmp_path):
    text = (PLATFORM_DIR / "virtual-cs3cu2i5.toml").read_text()
    shipped = 'model = "hardware.virtual.cs3cu2i5:Cs3Cu2I5Chemistry"'
    assert shipped in text
    text = text.replace(shipped, f'model = "{__name__}:ConstantEmitter"\noptions = {{ peak_nm = 520.0 }}')
    config = tmp_path / "virtual-green.toml"
    config.write_text(text)
    platform = load_platform(config)
    lab = VirtualLab(platform, seed=1)
    assert isinstance(lab.chemistry, ConstantEmitter) and lab.chemistry.peak_nm == 520.0

    # The noiseless steady state, then a rig on that platform: pumps on, wait 1.5 tau, LED on, read.
    plan = formulate(centre_condition(platform), platform)
    wl = lab.spectrometers["pl"].wavelengths()
    pl, _, _ = lab.steady_state_signals(plan.flows_ul_min, plan.temperature_c, plan.reaction_time_s)
    assert wl[np.argmax(pl[0])] == pytest.approx(520.0, abs=2.0)
    rig = virtual_rig(platform, seed=1)
    start_pumps(rig, plan)
    rig.clock.sleep(1.5 * plan.tau_s)
    rig.light_sources["pl"].on()
    counts = rig.spectrometers["pl"].intensities(5)
    assert counts.max() < rig.spectrometers["pl"].max_counts
    visible = wl > 400.0  # away from the 300 nm LED scatter
    assert wl[visible][np.argmax(counts[visible])] == pytest.approx(520.0, abs=3.0)
