"""Storage: the Parquet datasets, one file per experiment, written atomically.

Layout under the data root (hive-partitioned by campaign, readable by pandas, polars, duckdb):

    experiments/campaign=<campaign>/<experiment_id>.parquet   one row per experiment
    spectra/campaign=<campaign>/<experiment_id>.parquet       one row per spectrum

Each file is written to a hidden temporary name in its folder and renamed over the final name,
so readers never see half a file and a retried write replaces its own file instead of adding a
row. The spectra file is written first: an experiment row is the sign that the experiment is
complete on disk.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from hardware.errors import SdflInputError
from hardware.platform import PlatformConfig

DEFAULT_DATA_ROOT = "data"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

STATUS = ("completed", "failed", "cancelled", "crashed")

# Columns every experiment row has, whatever the platform.
BASE_FIELDS = [
    pa.field("experiment_id", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("failure_reason", pa.string()),
    pa.field("platform", pa.string(), nullable=False),
    pa.field("platform_sha256", pa.string()),
    pa.field("sdfl_version", pa.string()),
    pa.field("git_commit", pa.string()),
    pa.field("flow_run_id", pa.string()),
    pa.field("seed", pa.int64()),
    pa.field("host", pa.string()),
    pa.field("started_at", pa.timestamp("us", tz="UTC")),
    pa.field("finished_at", pa.timestamp("us", tz="UTC")),
    pa.field("t_platform_start_s", pa.float64()),
    pa.field("t_platform_end_s", pa.float64()),
    pa.field("t_pumps_on_s", pa.float64()),
    pa.field("t_first_spectrum_s", pa.float64()),
]
FORMULATION_FIELDS = ["precursor_flow_ul_min", "carrier_flow_ul_min", "t_R_s", "tau_s", "t_E_s", "rtd_tanks"]
REGIME_NUMBERS = ["Re", "Pe", "Da", "Da_I", "Ca", "Bo", "We"]
"""Flow-regime numbers recorded per experiment as regime_<number> (null when not computed)."""
RUN_FIELDS = [
    pa.field("temperature_measured_c", pa.float64()),
    pa.field("heater_wait_s", pa.float64()),
    pa.field("steady", pa.bool_()),
    pa.field("steady_extra_wait_s", pa.float64()),
    pa.field("replicates", pa.int64()),
    pa.field("integration_ms_pl", pa.float64()),
    pa.field("integration_ms_abs", pa.float64()),
]
SPREAD_FEATURES = ["PL_peak_nm", "PL_I", "PL_A", "FWHM_nm", "Abs_300"]

SPECTRA_SCHEMA = pa.schema([
    pa.field("experiment_id", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("replicate", pa.int16(), nullable=False),
    pa.field("quantity", pa.string(), nullable=False),
    pa.field("spectrometer", pa.string()),
    pa.field("t_platform_s", pa.float64()),
    pa.field("integration_ms", pa.float64()),
    pa.field("scans", pa.int32()),
    pa.field("wavelength_nm", pa.list_(pa.float32()), nullable=False),
    pa.field("value", pa.list_(pa.float32()), nullable=False),
])


def feature_fields(feature_columns: list[str]) -> list[pa.Field]:
    fields = []
    for name in feature_columns:
        fields.append(pa.field(name, pa.bool_() if name.startswith("flag_") else pa.float64()))
    fields += [pa.field(f"{name}_sd", pa.float64()) for name in SPREAD_FEATURES if name in feature_columns]
    return fields


def experiment_schema(platform: PlatformConfig, feature_columns: list[str]) -> pa.Schema:
    """The explicit schema of the experiments table for one platform."""
    fields = list(BASE_FIELDS)
    fields += [pa.field(p.name, pa.float64()) for p in platform.parameters]
    fields += [pa.field(f"q_{p.name}_ul_min", pa.float64()) for p in platform.pumps]
    fields += [pa.field(name, pa.float64()) for name in FORMULATION_FIELDS]
    for zone in platform.heaters:
        fields += [pa.field(f"zone_{zone}_temperature_c", pa.float64()), pa.field(f"zone_{zone}_time_s", pa.float64())]
    fields += [pa.field(f"regime_{name}", pa.float64()) for name in REGIME_NUMBERS]
    fields += [pa.field("regime_warnings", pa.string())]
    fields += RUN_FIELDS
    fields += feature_fields(feature_columns)
    return pa.schema(fields)


def check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _SAFE_NAME.match(value):
        raise SdflInputError(
            f"{kind} {value!r} is not a safe name: use letters, digits, '_', '-' or '.', "
            "starting with a letter or digit, at most 128 characters"
        )
    return value


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The dataset root: the argument, else $SDFL_DATA_ROOT, else ./data."""
    return Path(root or os.environ.get("SDFL_DATA_ROOT") or DEFAULT_DATA_ROOT).expanduser().resolve()


def experiment_path(root: Path, campaign: str, experiment_id: str, table: str = "experiments") -> Path:
    return root / table / f"campaign={check_name('campaign', campaign)}" / f"{check_name('experiment id', experiment_id)}.parquet"


def build_experiment_table(row: dict, schema: pa.Schema) -> pa.Table:
    """One-row table in `schema`; unknown keys or wrong types are an error, missing ones null."""
    unknown = sorted(set(row) - set(schema.names))
    if unknown:
        raise SdflInputError(f"experiment record has columns not in the schema: {unknown}")
    if row.get("status") not in STATUS:
        raise SdflInputError(f"experiment status must be one of {STATUS}, got {row.get('status')!r}")
    arrays = []
    for field in schema:
        value = row.get(field.name)
        if isinstance(value, np.generic):
            value = value.item()
        if value is None and not field.nullable:
            raise SdflInputError(f"experiment record is missing {field.name!r}")
        try:
            arrays.append(pa.array([value], type=field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise SdflInputError(f"experiment column {field.name!r}: {value!r} is not {field.type}") from exc
    return pa.Table.from_arrays(arrays, schema=schema)


def build_spectra_table(spectra: list[dict]) -> pa.Table:
    """Spectra rows (dicts with the SPECTRA_SCHEMA fields) as a table."""
    columns: dict[str, list] = {name: [] for name in SPECTRA_SCHEMA.names}
    for i, spectrum in enumerate(spectra):
        missing = [n for n in SPECTRA_SCHEMA.names if n not in spectrum and not SPECTRA_SCHEMA.field(n).nullable]
        if missing:
            raise SdflInputError(f"spectrum {i} misses {missing}")
        wl = np.asarray(spectrum["wavelength_nm"], dtype=np.float32)
        value = np.asarray(spectrum["value"], dtype=np.float32)
        if wl.shape != value.shape or wl.ndim != 1:
            raise SdflInputError(f"spectrum {i} ({spectrum.get('kind')}): wavelength and value shapes differ")
        for name in SPECTRA_SCHEMA.names:
            columns[name].append(spectrum.get(name))
        columns["wavelength_nm"][-1] = wl
        columns["value"][-1] = value
    arrays = []
    for field in SPECTRA_SCHEMA:
        if field.name in ("wavelength_nm", "value"):
            flat = np.concatenate(columns[field.name]) if columns[field.name] else np.zeros(0, np.float32)
            offsets = np.concatenate([[0], np.cumsum([len(a) for a in columns[field.name]])]).astype(np.int32)
            arrays.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=pa.float32())))
        else:
            arrays.append(pa.array(columns[field.name], type=field.type))
    return pa.Table.from_arrays(arrays, schema=SPECTRA_SCHEMA)


def _write_atomic(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_experiment(
    row: dict,
    spectra: list[dict],
    schema: pa.Schema,
    campaign: str,
    root: str | os.PathLike | None = None,
) -> Path:
    """Write one experiment (its spectra, then its row). Returns the experiment file.

    Both tables are built and checked before anything touches the disk, so a bad record
    writes nothing. Writing the same experiment id again replaces its files.
    """
    root_path = data_root(root)
    experiment_id = check_name("experiment id", row.get("experiment_id"))
    exp_table = build_experiment_table(row, schema)
    spectra_table = build_spectra_table([{**s, "experiment_id": experiment_id} for s in spectra])
    exp_file = experiment_path(root_path, campaign, experiment_id)
    spectra_file = experiment_path(root_path, campaign, experiment_id, table="spectra")
    if spectra_table.num_rows:
        _write_atomic(spectra_table, spectra_file)
    elif spectra_file.exists():
        spectra_file.unlink()
    _write_atomic(exp_table, exp_file)
    return exp_file


def _campaign_dirs(root: Path, table: str, campaign: str | None) -> list[Path]:
    base = root / table
    if campaign is not None:
        folder = base / f"campaign={check_name('campaign', campaign)}"
        return [folder] if folder.is_dir() else []
    return sorted(p for p in base.glob("campaign=*") if p.is_dir())


def _read(root: Path, table: str, campaign: str | None, filters=None) -> pd.DataFrame:
    frames = []
    for folder in _campaign_dirs(root, table, campaign):
        files = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))
        if not files:
            continue
        data = pq.read_table(files, filters=filters, partitioning=None).to_pandas()
        data.insert(1, "campaign", folder.name.removeprefix("campaign="))
        frames.append(data)
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True)


def read_experiments(root: str | os.PathLike | None = None, campaign: str | None = None) -> pd.DataFrame:
    """All experiment rows (of one campaign or of all), sorted by start time."""
    frame = _read(data_root(root), "experiments", campaign)
    if not frame.empty:
        frame = frame.sort_values(["started_at", "experiment_id"], kind="stable").reset_index(drop=True)
    return frame


def read_spectra(
    root: str | os.PathLike | None = None,
    campaign: str | None = None,
    experiment_id: str | None = None,
) -> pd.DataFrame:
    """Spectra rows; only those of experiments that have a row (complete on disk)."""
    root_path = data_root(root)
    filters = [("experiment_id", "=", experiment_id)] if experiment_id else None
    spectra = _read(root_path, "spectra", campaign, filters)
    if spectra.empty:
        return spectra
    experiments = read_experiments(root_path, campaign)
    known = set(experiments["experiment_id"]) if not experiments.empty else set()
    return spectra[spectra["experiment_id"].isin(known)].reset_index(drop=True)


# --- Prefect task ---------------------------------------------------------------------------

# A failed write (full disk, network filesystem hiccup) is retried; the rename makes it safe.
write_experiment_task = task(name="record", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)(write_experiment)
