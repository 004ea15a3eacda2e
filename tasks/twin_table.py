"""Tables for the chemistry-from-data plug-in: our experiment records, or a virtual platform sampled.

Both give one row per condition with the reactor-state columns `TableChemistry` reads
(temperature_c, reaction_time_s, precursor_flow_ul_min, <species>_mM, <species>_fraction and, on
platforms with heater zones, <zone>_temperature_c and <zone>_time_s) and the optical outputs it fits (peak_nm, fwhm_nm, qy, absorbance_per_cm); `table_inputs(platform)` gives
the matching `inputs` option. Write the table to CSV or Parquet and name it in a platform's
[chemistry] options to make a twin of that data.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from scipy.stats import qmc

from hardware.errors import InfeasibleCondition
from hardware.platform import PlatformConfig, load_platform
from hardware.virtual.chemistry import ReactorState, ZoneState, load_chemistry
from hardware.virtual.optics import FLOW_CELL_PATH_CM, absorbance_per_cm
from hardware.virtual.tabular import EXCITATION_NM, GAUSS_AREA
from hardware.virtual.transport import mix_stocks
from tasks.formulation import Formulation, formulate

OUTPUT_COLUMNS = ["peak_nm", "fwhm_nm", "qy", "absorbance_per_cm"]


def heater_zones(platform: PlatformConfig) -> list[str]:
    """Zones with their own columns: every heater zone but the legacy single "reactor" (whose
    temperature and time are temperature_c and reaction_time_s already)."""
    return [zone for zone in platform.heaters if zone != "reactor"]


def table_inputs(platform: PlatformConfig, species: list[str] | None = None,
                 flow: bool = True) -> dict[str, str]:
    """The `inputs` option of TableChemistry for a table made here: column -> state quantity.

    Temperature and time are those of each heater zone on multi-zone platforms, else the
    reactor's. `species` picks some of the stocks' species (default: all); `flow=False` leaves
    out the precursor flow (on platforms where it follows from the reaction time it adds nothing).
    """
    molar = sorted({k for s in platform.stocks.values() for k in s.molar_mM})
    fraction = sorted({k for s in platform.stocks.values() for k in s.volume_fraction})
    chosen = set(molar + fraction) if species is None else set(species)
    unknown = sorted(chosen - set(molar) - set(fraction))
    if unknown:
        raise ValueError(f"species {unknown} are not in the stocks of {platform.platform.name!r}; "
                         f"known: {sorted(molar + fraction)}")
    zones = heater_zones(platform)
    inputs = {"temperature_c": "temperature_c", "reaction_time_s": "reaction_time_s"} if not zones else {}
    for zone in zones:
        inputs |= {f"{zone}_temperature_c": f"zone:{zone}:temperature_c", f"{zone}_time_s": f"zone:{zone}:time_s"}
    if flow:
        inputs["precursor_flow_ul_min"] = "precursor_flow_ul_min"
    inputs |= {f"{k}_mM": f"species:{k}:mM" for k in molar if k in chosen}
    inputs |= {f"{k}_fraction": f"species:{k}:fraction" for k in fraction if k in chosen}
    return inputs


def state_columns(platform: PlatformConfig, plans: list[Formulation]) -> pd.DataFrame:
    """What each droplet saw, one row per formulation: temperature, time, flow and composition."""
    reagents = {p.name: np.array([plan.flows_ul_min[p.name] for plan in plans])
                for p in platform.pumps if p.role == "reagent"}
    molar, fraction = mix_stocks(platform, reagents)
    columns = {
        "temperature_c": [plan.temperature_c for plan in plans],
        "reaction_time_s": [plan.reaction_time_s for plan in plans],
        "precursor_flow_ul_min": [plan.precursor_flow_ul_min for plan in plans],
    }
    for zone in heater_zones(platform):
        columns[f"{zone}_temperature_c"] = [plan.temperatures_c[zone] for plan in plans]
        columns[f"{zone}_time_s"] = [plan.zone_times_s[zone] for plan in plans]
    columns |= {f"{k}_mM": np.broadcast_to(v, len(plans)) for k, v in molar.items()}
    columns |= {f"{k}_fraction": np.broadcast_to(v, len(plans)) for k, v in fraction.items()}
    return pd.DataFrame(columns)


def reactor_state(platform: PlatformConfig, table: pd.DataFrame) -> ReactorState:
    """The ReactorState of every row of a table made here (its state columns; others are ignored)."""
    def column(name):
        return table[name].to_numpy(float)

    molar = sorted({k for s in platform.stocks.values() for k in s.molar_mM})
    fraction = sorted({k for s in platform.stocks.values() for k in s.volume_fraction})
    return ReactorState(
        {k: column(f"{k}_mM") for k in molar}, {k: column(f"{k}_fraction") for k in fraction},
        column("temperature_c"), column("reaction_time_s"), column("precursor_flow_ul_min"),
        {zone: ZoneState(column(f"{zone}_temperature_c"), column(f"{zone}_time_s")) for zone in heater_zones(platform)},
    )


def _condition(platform: PlatformConfig, row: pd.Series) -> dict[str, float]:
    return {name: float(row[name]) for name in platform.parameter_names}


def usable_records(records: pd.DataFrame, needed: list[str], min_absorbance: float) -> pd.DataFrame:
    """The records a table can use: completed, finite, unflagged, absorbing."""
    keep = np.isfinite(records[needed].astype(float)).all(axis=1) & (records["Abs_300"] >= min_absorbance)
    if "status" in records.columns:
        keep &= records["status"] == "completed"
    for flag in ("flag_invalid", "flag_no_emission"):
        if flag in records.columns:
            keep &= ~records[flag].fillna(False).astype(bool)
    if not keep.any():
        raise ValueError(f"none of the {len(records)} record(s) is completed, unflagged and finite in {needed} "
                         f"with Abs_300 >= {min_absorbance:g}")
    return records[keep].reset_index(drop=True)


def table_from_records(
    platform: PlatformConfig,
    records: pd.DataFrame,
    *,
    reference_qy: float = 1.0,
    brightness: Literal["peak_area", "PL_A", "PL_I"] = "peak_area",
    deconvolve_resolution: bool = True,
    path_cm: float = FLOW_CELL_PATH_CM,
    min_absorbance: float = 0.005,
) -> pd.DataFrame:
    """Our experiment rows as a chemistry table: state columns + peak_nm, fwhm_nm, qy, absorbance_per_cm.

    Kept: completed rows with finite features, not flagged invalid or without emission, whose
    measured Abs_300 reaches `min_absorbance` (below it the absorbed light, and so the QY, is
    lost in the noise).
    The state comes from the recorded condition through `formulate` and `mix_stocks` (set-point
    temperature, not the measured one). Each output:
    - peak_nm is PL_peak_nm;
    - fwhm_nm is FWHM_nm with the PL spectrometer's resolution taken out in quadrature (the twin
      adds it back when it draws the spectrum);
    - absorbance_per_cm is the droplet's own absorbance: the flow cell sees droplets and carrier
      slugs in turn, so the measured transmission T = r T_droplet + (1 - r) with r the reactive
      share of the flow; solved for T_droplet and divided by the cell path (Abs_300 is read at
      the platform's abs_wavelength, taken to be the PL excitation);
    - qy is RELATIVE: light emitted per light absorbed, brightness / r / (1 - 10^-A_droplet),
      scaled so the best row equals `reference_qy`. Keep the default 1.0 for "relative to the
      best row", or give the measured absolute QY of that best sample (e.g. 0.17, the paper's
      best Cs3Cu2I5, P3:L169). brightness "peak_area" (PL_I x FWHM_nm, the area of the main band)
      follows the emitted light even when the width changes; PL_I alone mixes QY and width.
    """
    if not 0 < reference_qy <= 1:
        raise ValueError(f"reference_qy is a QY between 0 and 1, got {reference_qy!r}")
    if brightness not in ("peak_area", "PL_A", "PL_I"):
        raise ValueError(f"brightness must be 'peak_area', 'PL_A' or 'PL_I', not {brightness!r}")
    needed = [*platform.parameter_names, "PL_peak_nm", "FWHM_nm", "Abs_300",
              "PL_I" if brightness == "peak_area" else brightness]
    missing = [c for c in needed if c not in records.columns]
    if missing:
        raise ValueError(f"records lack column(s) {missing}; give rows of tasks.storage.read_experiments "
                         f"for platform {platform.platform.name!r}")
    rows = usable_records(records, needed, min_absorbance)

    plans = [formulate(_condition(platform, row), platform, check_bounds=False) for _, row in rows.iterrows()]
    table = rows[platform.parameter_names].astype(float).copy()
    state = state_columns(platform, plans)
    table = pd.concat([table.drop(columns=[c for c in state.columns if c in table.columns]), state], axis=1)

    reactive = state["precursor_flow_ul_min"].to_numpy() / np.array(
        [plan.precursor_flow_ul_min + plan.carrier_flow_ul_min for plan in plans])
    transmitted = 10.0 ** -rows["Abs_300"].to_numpy(float)
    droplet_t = np.clip((transmitted - (1.0 - reactive)) / reactive, 1e-4, 1.0)
    droplet_a = -np.log10(droplet_t)
    fwhm = rows["FWHM_nm"].to_numpy(float)
    if deconvolve_resolution:
        resolution = platform.spectrometers["pl"].resolution
        fwhm = np.sqrt(np.maximum(fwhm**2 - resolution**2, (0.5 * fwhm) ** 2))
    light = (rows["PL_I"] * rows["FWHM_nm"] if brightness == "peak_area" else rows[brightness]).to_numpy(float)
    per_absorbed = np.maximum(light, 0.0) / reactive / np.maximum(1.0 - droplet_t, 1e-6)

    table["peak_nm"] = rows["PL_peak_nm"].to_numpy(float)
    table["fwhm_nm"] = fwhm
    table["qy"] = reference_qy * per_absorbed / per_absorbed.max()
    table["absorbance_per_cm"] = droplet_a / path_cm
    if "experiment_id" in rows.columns:
        table.insert(0, "experiment_id", rows["experiment_id"].to_numpy())
    return table


def main_band(outcome) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(peak nm, FWHM nm, QY) of the brightest emission band: QY = photons out per photon absorbed."""
    shape = np.broadcast_shapes(*[np.shape(b.height) for b in outcome.emission])
    centers = np.array([np.broadcast_to(np.asarray(b.center_nm, float), shape) for b in outcome.emission])
    widths = np.array([np.broadcast_to(np.asarray(b.fwhm_nm, float), shape) for b in outcome.emission])
    areas = np.array([np.broadcast_to(np.asarray(b.height, float), shape) for b in outcome.emission]) * GAUSS_AREA * widths
    best = np.argmax(areas, axis=0)[None]

    def pick(values):
        return np.take_along_axis(values, best, axis=0)[0]

    return pick(centers), pick(widths), pick(areas)


def sample_twin_table(platform_name: str | PlatformConfig, n: int, seed: int = 0) -> pd.DataFrame:
    """`n` Latin-hypercube conditions of a virtual platform with its analytic chemistry's outputs.

    "In-house data" for tests and examples: the condition, the state columns, then peak_nm, fwhm_nm
    and qy of the brightest emission band (qy = its photons per photon absorbed, which is what
    TableChemistry renders), absorbance_per_cm at the PL excitation (the light source's wavelength,
    300 nm if unset, as the virtual lab uses it), and the model's own truths as
    model_<name>. Conditions the rules refuse are skipped and more are drawn.
    """
    platform = platform_name if isinstance(platform_name, PlatformConfig) else load_platform(platform_name)
    if platform.chemistry is None:
        raise ValueError(f"platform {platform.platform.name!r} has no [chemistry] to sample")
    low = np.array([p.low for p in platform.parameters])
    high = np.array([p.high for p in platform.parameters])
    plans: list[Formulation] = []
    for attempt in range(20):
        want = n - len(plans)
        if want <= 0:
            break
        draws = qmc.LatinHypercube(d=low.size, seed=np.random.default_rng([seed, attempt])).random(
            want if attempt == 0 else 2 * want)
        for u in draws:
            try:
                plans.append(formulate(dict(zip(platform.parameter_names, low + (high - low) * u)), platform))
            except InfeasibleCondition:
                continue
    plans = plans[:n]
    if len(plans) < n:
        raise ValueError(f"only {len(plans)} of {n} sampled conditions are feasible on {platform.platform.name!r}")
    table = pd.DataFrame([plan.condition for plan in plans])
    state = state_columns(platform, plans)
    table = pd.concat([table.drop(columns=[c for c in state.columns if c in table.columns]), state], axis=1)
    chemistry = load_chemistry(platform.chemistry.model, platform.chemistry.options, source=platform.source)
    outcome = chemistry.outcome(reactor_state(platform, state))
    peak, fwhm, qy = main_band(outcome)
    table["peak_nm"], table["fwhm_nm"], table["qy"] = peak, fwhm, qy
    excitation = platform.light_sources["pl"].wavelength or EXCITATION_NM
    table["absorbance_per_cm"] = absorbance_per_cm(np.array([excitation]), outcome)[:, 0]
    for name, value in outcome.extras.items():
        table[f"model_{name}"] = np.broadcast_to(np.asarray(value, dtype=float), len(plans))
    return table
