"""Chemistry from data: a twin built from a table of conditions and optical outcomes.

The tables here come from three places: the analytic Cs3Cu2I5 model sampled at Latin-hypercube
conditions (so the right answer is known), the published shell-temperature series of paper 001
(data/tables/), and experiments run on the virtual rig and read back from Parquet.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flows.experiment import conduct_experiment
from hardware.errors import PlatformConfigError
from hardware.platform import ChemistryConfig, load_platform, shipped_platforms
from hardware.rig import virtual_rig
from hardware.virtual.chemistry import ReactorState, ZoneState, load_chemistry
from hardware.virtual.lab import VirtualLab
from hardware.virtual.tabular import REPO_ROOT, TableChemistry
from tasks.storage import read_experiments
from tasks.twin import DigitalTwin
from tasks.twin_table import reactor_state, sample_twin_table, table_from_records, table_inputs

INP_TABLE = REPO_ROOT / "data" / "tables" / "inp-zns-shell-temperature.csv"
INP_INPUTS = {"shell_temperature_c": "zone:shell:temperature_c"}
OUTPUTS = ["peak_nm", "fwhm_nm", "qy", "absorbance_per_cm"]


def r_squared(truth, prediction) -> float:
    truth, prediction = np.asarray(truth), np.asarray(prediction)
    return 1.0 - np.sum((truth - prediction) ** 2) / np.sum((truth - truth.mean()) ** 2)


@pytest.fixture(scope="module")
def inputs(platform):
    """Temperature, time and the four species that matter; flow and iodide follow from them."""
    return table_inputs(platform, species=["Cs", "Cu", "OA", "OAm"], flow=False)


@pytest.fixture(scope="module")
def sampled(platform):
    """200 conditions of the analytic model: 150 to build the twin from, 50 held out."""
    table = sample_twin_table(platform, 200, seed=1)
    return table.iloc[:150].reset_index(drop=True), table.iloc[150:].reset_index(drop=True)


@pytest.fixture(scope="module")
def table_file(sampled, tmp_path_factory):
    path = tmp_path_factory.mktemp("tables") / "cs3cu2i5-lhs.parquet"
    sampled[0].to_parquet(path)
    return path


@pytest.fixture(scope="module")
def chemistry(table_file, inputs):
    return TableChemistry(str(table_file), inputs, noise=0)


# --- a twin of the analytic model -------------------------------------------------------------


def test_a_table_of_150_conditions_predicts_held_out_ones(platform, chemistry, sampled):
    held_out = sampled[1]
    predicted = chemistry.truth(reactor_state(platform, held_out))

    assert r_squared(held_out["qy"], predicted["qy"]) > 0.98  # measured 0.998
    assert r_squared(held_out["absorbance_per_cm"], predicted["absorbance_per_cm"]) > 0.98
    assert np.abs(predicted["peak_nm"] - held_out["peak_nm"]).max() < 0.05
    assert np.abs(predicted["fwhm_nm"] - held_out["fwhm_nm"]).max() < 0.5
    assert chemistry.required_species == {"Cs": "mM", "Cu": "mM", "OA": "fraction", "OAm": "fraction"}


def test_the_table_twin_drops_into_the_virtual_lab(platform, table_file, inputs, sampled):
    options = {"table": str(table_file), "inputs": inputs, "noise": 0.0}
    twin_platform = platform.model_copy(update={"chemistry": ChemistryConfig(
        model="hardware.virtual.tabular:TableChemistry", options=options)})
    conditions = sampled[1][platform.parameter_names].iloc[:20]

    analytic = DigitalTwin(platform).features(conditions)
    from_table = DigitalTwin(twin_platform).features(conditions)

    assert np.isfinite(from_table[["PL_peak_nm", "PL_I", "FWHM_nm", "Abs_300"]].to_numpy()).all()
    assert np.abs(from_table["PL_peak_nm"] - analytic["PL_peak_nm"]).max() < 0.2
    # The analytic model has faint side bands the one-band twin leaves out: a few % of PL_I.
    assert np.abs(from_table["PL_I"] / analytic["PL_I"] - 1).max() < 0.10
    assert np.abs(from_table["Abs_300"] / analytic["Abs_300"] - 1).max() < 0.05
    assert from_table["qy"].to_numpy() == pytest.approx(sampled[1]["qy"].iloc[:20].to_numpy(), abs=0.005)

    lab = VirtualLab(twin_platform, seed=0)
    flows = {p.name: np.array([0.0]) for p in platform.pumps} | {
        "ode_cu": np.array([300.0]), "ode_cs": np.array([300.0]), "pfo": np.array([600.0])}
    pl, sample, reference = lab.steady_state_signals(flows, 140.0, 30.0)
    assert np.isfinite(pl).all() and np.allclose(sample, reference)  # pure solvent: no product


def test_an_experiment_runs_on_the_table_twin(platform, table_file, inputs, condition, data_root):
    twin_platform = platform.model_copy(update={"chemistry": ChemistryConfig(
        model="hardware.virtual.tabular:TableChemistry", options={"table": str(table_file), "inputs": inputs})})
    row = conduct_experiment(virtual_rig(twin_platform, seed=4), condition=condition, campaign="table-twin",
                             data_root=str(data_root), seed=4)
    assert row["status"] == "completed"
    assert 448.0 < row["PL_peak_nm"] < 450.5 and row["PL_I"] > 0 and row["Abs_300"] > 0


# --- scatter --------------------------------------------------------------------------------------


def test_the_scatter_is_a_fixed_smooth_field_of_the_stated_size(platform, sampled, inputs):
    train, held_out = sampled
    noisy = TableChemistry(train, inputs, noise=0.05, seed=3)
    state = reactor_state(platform, held_out)

    first, again, mean = noisy.properties(state), noisy.properties(state), noisy.truth(state)
    assert np.array_equal(first["qy"], again["qy"])  # the same condition, the same truth
    relative = np.log(first["qy"] + 1e-3) - np.log(mean["qy"] + 1e-3)
    assert 0.03 < relative.std() < 0.07 and abs(relative.mean()) < 0.03
    width = np.median(train["fwhm_nm"])
    assert 0.6 < (first["peak_nm"] - mean["peak_nm"]).std() / (0.05 * width) < 1.4

    warmer = reactor_state(platform, held_out.assign(temperature_c=held_out["temperature_c"] + 0.01))
    assert np.abs(noisy.properties(warmer)["qy"] / first["qy"] - 1).max() < 1e-3  # smooth
    other_seed = TableChemistry(train, inputs, noise=0.05, seed=4).properties(state)
    assert not np.allclose(other_seed["qy"], first["qy"])
    silent = TableChemistry(train, inputs, noise=0, seed=3)
    assert np.array_equal(silent.properties(state)["qy"], mean["qy"])
    assert np.array_equal(silent.outcome(state).extras["qy"], mean["qy"])


def test_fitted_noise_comes_from_replicate_rows(sampled, inputs):
    base = sampled[0].iloc[:40]
    rng = np.random.default_rng(0)
    replicates = pd.concat([base] * 3, ignore_index=True)
    replicates["qy"] = replicates["qy"] * np.exp(0.04 * rng.standard_normal(len(replicates)))

    twin = TableChemistry(replicates, inputs, noise="fit")
    report = twin.report().set_index("role")
    assert report.loc["qy", "noise_from"] == "replicates"
    assert 0.03 < twin.noise_sd["qy"] < 0.05
    assert twin.noise_sd["peak_nm"] < 1e-6  # the peaks were not perturbed


# --- the published InP/ZnS shell-temperature series (paper 001) --------------------------------------


def shell_state(temperatures_c) -> ReactorState:
    t = np.asarray(temperatures_c, dtype=float)
    return ReactorState({}, {}, 180.0, 28 * 60.0, 100.0, zones={"shell": ZoneState(t, 15 * 60.0)})


def test_the_shell_temperature_twin_reproduces_the_paper(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # a relative table path is also found from the repository root
    twin = TableChemistry("data/tables/inp-zns-shell-temperature.csv", INP_INPUTS, noise=0)
    table = pd.read_csv(INP_TABLE)

    at_rows = twin.truth(shell_state(table["shell_temperature_c"]))
    assert at_rows["qy"] == pytest.approx(table["qy"].to_numpy(), abs=0.01)
    assert at_rows["peak_nm"] == pytest.approx(table["peak_nm"].to_numpy(), abs=0.3)
    assert at_rows["fwhm_nm"] == pytest.approx(table["fwhm_nm"].to_numpy(), abs=0.5)

    grid = np.arange(270.0, 310.5, 0.5)
    scan = twin.truth(shell_state(grid))
    assert 286.0 <= grid[np.argmax(scan["qy"])] <= 294.0  # QY maximum near 290 C [P1:L101]
    assert 286.0 <= grid[np.argmin(scan["fwhm_nm"])] <= 294.0
    assert np.all(np.diff(scan["peak_nm"]) < 0.05)  # blue shift with temperature [P1:L99]
    assert twin.required_species == {}

    outcome = twin.outcome(shell_state([290.0]))
    band = outcome.emission[0]
    assert band.center_nm[0] == pytest.approx(560.5, abs=0.3)
    assert band.height[0] == pytest.approx(0.42 / (1.0645 * 56.0), rel=0.03)
    assert outcome.edge_nm[0] < band.center_nm[0] and outcome.edge_height[0] > 0


def test_a_state_without_the_tables_zone_is_refused_by_name():
    twin = TableChemistry(str(INP_TABLE), INP_INPUTS)
    with pytest.raises(ValueError, match="zone 'shell'.*zones none"):
        twin.outcome(ReactorState({}, {}, 290.0, 900.0, 100.0))


# --- tables the plug-in refuses --------------------------------------------------------------------


GOOD = pd.DataFrame({"t_c": [270.0, 280.0, 290.0, 310.0], "t_s": [600.0, 900.0, 1200.0, 1500.0], "peak_nm": [563, 562, 560, 558],
                     "fwhm_nm": [62, 60, 56, 60], "qy": [0.2, 0.24, 0.42, 0.22]})


def write(tmp_path, frame: pd.DataFrame, name: str = "table.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize("case, make, inputs, message", [
    ("missing file", lambda d: str(d / "nowhere.csv"), {"t_c": "temperature_c"}, r"nowhere\.csv.*not found"),
    ("unknown format", lambda d: write(d, GOOD, "table.xlsx"), {"t_c": "temperature_c"},
     r"table\.xlsx.*unknown format '\.xlsx'"),
    ("missing column", lambda d: write(d, GOOD.drop(columns="fwhm_nm")), {"t_c": "temperature_c"},
     r"table\.csv.*missing column\(s\) \['fwhm_nm'\]"),
    ("text in a number column", lambda d: write(d, GOOD.assign(qy=["0.2", "high", "0.42", "0.22"])),
     {"t_c": "temperature_c"}, r"table\.csv.*column 'qy'.*row 2 \('high'\)"),
    ("empty cell", lambda d: write(d, GOOD.assign(peak_nm=[563, None, 560, 558])), {"t_c": "temperature_c"},
     r"table\.csv.*column 'peak_nm'.*row 2"),
    ("too few rows", lambda d: write(d, GOOD.iloc[:3]), {"t_c": "temperature_c", "t_s": "reaction_time_s"},
     r"table\.csv.*3 row\(s\) for 2 input\(s\)"),
    ("unknown quantity", lambda d: write(d, GOOD), {"t_c": "shell_temperature"},
     r"table\.csv: inputs\['t_c'\] = 'shell_temperature' is not a reactor-state quantity"),
    ("species without unit", lambda d: write(d, GOOD), {"t_c": "species:Cu"}, r"'species:<name>:mM'"),
    ("QY in percent", lambda d: write(d, GOOD.assign(qy=[20, 24, 42, 22])), {"t_c": "temperature_c"},
     r"table\.csv.*column 'qy'.*from 20 to 42.*divide percentages by 100"),
    ("constant input", lambda d: write(d, GOOD.assign(t_c=290.0)), {"t_c": "temperature_c"},
     r"table\.csv.*'t_c' holds a single value"),
])
def test_a_bad_table_is_refused_with_the_file_and_column(tmp_path, case, make, inputs, message):
    with pytest.raises(ValueError, match=message):
        TableChemistry(make(tmp_path), inputs)


def test_the_platform_loader_reports_a_bad_table_as_a_config_error(tmp_path):
    path = write(tmp_path, GOOD.drop(columns="qy"))
    with pytest.raises(PlatformConfigError, match=r"chemistry\.options.*missing column\(s\) \['qy'\]"):
        load_chemistry("hardware.virtual.tabular:TableChemistry", {"table": path, "inputs": {"t_c": "temperature_c"}})


# --- our own records as a table ---------------------------------------------------------------------


def test_experiment_records_become_a_table_and_a_twin(platform, data_root):
    truth = sample_twin_table(platform, 8, seed=5)
    rig = virtual_rig(platform, seed=3)
    for i, row in truth.iterrows():
        conduct_experiment(rig, condition={k: float(row[k]) for k in platform.parameter_names},
                           campaign="records", experiment_id=f"e{i}", data_root=str(data_root), seed=3,
                           finish="hold" if i < len(truth) - 1 else "stop")
    records = read_experiments(data_root, "records").sort_values("experiment_id", ignore_index=True)

    table = table_from_records(platform, records, reference_qy=0.17)

    assert list(table["experiment_id"]) == [f"e{i}" for i in range(8)]
    assert set(table_inputs(platform)) | set(OUTPUTS) <= set(table.columns)
    for column in table_inputs(platform):
        assert table[column].to_numpy() == pytest.approx(truth[column].to_numpy(), rel=1e-9)
    assert np.abs(table["peak_nm"] - truth["peak_nm"]).max() < 0.2
    assert np.abs(table["fwhm_nm"] - truth["fwhm_nm"]).max() < 1.5
    assert table["qy"].max() == pytest.approx(0.17)
    ratio = table["qy"] / truth["qy"]  # relative QY: one scale factor for every row
    assert ratio.std() / ratio.mean() < 0.05
    assert np.abs(table["absorbance_per_cm"] / truth["absorbance_per_cm"] - 1).max() < 0.2

    twin = TableChemistry(table, table_inputs(platform, species=["Cu", "OA"], flow=False), noise=0)
    assert twin.truth(reactor_state(platform, truth))["qy"] == pytest.approx(table["qy"].to_numpy(), abs=0.01)


@pytest.mark.skipif("virtual-inp-zns" not in shipped_platforms(), reason="needs the InP/ZnS cascade platform")
def test_the_published_series_drives_the_inp_cascade_platform():
    inp = load_platform("virtual-inp-zns")
    options = {"table": "data/tables/inp-zns-shell-temperature.csv", "inputs": INP_INPUTS, "noise": 0}
    twin_platform = inp.model_copy(update={"chemistry": ChemistryConfig(
        model="hardware.virtual.tabular:TableChemistry", options=options)})
    centre = {p.name: 0.5 * (p.low + p.high) for p in inp.parameters}
    series = [{**centre, "core_temperature_c": 180.0, "shell_temperature_c": t} for t in (270.0, 280.0, 290.0, 310.0)]

    found = DigitalTwin(twin_platform).features(series)

    paper = pd.read_csv(INP_TABLE)
    assert found["PL_peak_nm"].to_numpy() == pytest.approx(paper["peak_nm"].to_numpy(), abs=0.5)
    assert found["PL_I"].idxmax() == 2  # brightest at 290 C

    sampled = sample_twin_table(inp, 12, seed=0)  # zone columns for the cascade's core and shell
    assert {"core_temperature_c", "core_time_s", "shell_temperature_c", "shell_time_s"} <= set(sampled.columns)
    assert table_inputs(inp)["shell_time_s"] == "zone:shell:time_s"
    assert reactor_state(inp, sampled).zones["shell"].temperature_c == pytest.approx(sampled["shell_temperature_c"])
