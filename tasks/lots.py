"""Lot records of manufacturing runs: Parquet files under <data root>/lots/<lot>/.

    lot.parquet                 one row: recipe, flows, status, reason, yield, counts (rewritten as it changes)
    limits.parquet              control limits, one row per feature and qualification
    samples/<sample_id>.parquet one row per QC sample: time, phase, features, alarms, syringe levels
    events/<event_id>.parquet   one row per event: alarms, decisions, refills, faults, start/stop
    spectra/<sample_id>.parquet the sample's PL (cps) and absorbance replicates (optional)
    grids/<grid>.parquet        the wavelengths of those spectra, once per spectrometer

Ids are deterministic (`<lot>-s0001`, `<lot>-e0001`) and every file is written atomically by the
data root's one writer (tasks/dataset.py), so a retried write replaces its own file and never adds
a row. `pd.read_parquet(".../samples")` reads a lot's samples in one call.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from hardware.errors import SdflInputError
from hardware.platform import PlatformConfig
from tasks import dataset, storage
from tasks.dataset import rows_table, write_file, write_loose
from tasks.spectra_table import build_spectra_table, write_grids

LOT_STATUS = ("running", "completed", "stopped", "failed", "cancelled", "crashed")

SAMPLE_FIELDS = [
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("lot", pa.string(), nullable=False),
    pa.field("sample", pa.int64(), nullable=False),
    pa.field("phase", pa.string(), nullable=False),
    pa.field("qualification", pa.int64()),
    pa.field("t_platform_s", pa.float64()),
    pa.field("t_h", pa.float64()),
    pa.field("recorded_at", pa.timestamp("us", tz="UTC")),
    pa.field("temperature_measured_c", pa.float64()),
    pa.field("in_control", pa.bool_()),
    pa.field("alarms", pa.string()),
    pa.field("yield_g_h", pa.float64()),
]
EVENT_SCHEMA = pa.schema([
    pa.field("event_id", pa.string(), nullable=False),
    pa.field("lot", pa.string(), nullable=False),
    pa.field("event", pa.int64(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("t_platform_s", pa.float64()),
    pa.field("t_h", pa.float64()),
    pa.field("recorded_at", pa.timestamp("us", tz="UTC")),
    pa.field("sample", pa.int64()),
    pa.field("feature", pa.string()),
    pa.field("rule", pa.string()),
    pa.field("action", pa.string()),
    pa.field("by", pa.string()),
    pa.field("detail", pa.string()),
])
LIMITS_SCHEMA = pa.schema([
    pa.field("qualification", pa.int64(), nullable=False),
    pa.field("feature", pa.string(), nullable=False),
    pa.field("center", pa.float64()),
    pa.field("sigma", pa.float64()),
    pa.field("sigma_mr", pa.float64()),
    pa.field("sigma_sd", pa.float64()),
    pa.field("floor", pa.float64()),
    pa.field("n", pa.int64()),
    pa.field("excluded", pa.int64()),
    pa.field("lcl", pa.float64()),
    pa.field("ucl", pa.float64()),
    pa.field("t_from_h", pa.float64()),
    pa.field("t_to_h", pa.float64()),
])
LOT_FIELDS = [
    pa.field("lot", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("reason", pa.string()),
    pa.field("platform", pa.string()),
    pa.field("platform_sha256", pa.string()),
    pa.field("sdfl_version", pa.string()),
    pa.field("git_commit", pa.string()),
    pa.field("host", pa.string()),
    pa.field("flow_run_id", pa.string()),
    pa.field("seed", pa.int64()),
    pa.field("started_at", pa.timestamp("us", tz="UTC")),
    pa.field("finished_at", pa.timestamp("us", tz="UTC")),
    pa.field("recipe_from", pa.string()),
    pa.field("duration_h", pa.float64()),
    pa.field("qc_every_min", pa.float64()),
    pa.field("qualification_min", pa.float64()),
    pa.field("on_alarm", pa.string()),
    pa.field("tau_s", pa.float64()),
    pa.field("t_E_s", pa.float64()),
    pa.field("t_start_s", pa.float64()),
    pa.field("t_production_start_s", pa.float64()),
    pa.field("t_end_s", pa.float64()),
    pa.field("produced_h", pa.float64()),
    pa.field("samples", pa.int64()),
    pa.field("alarms", pa.int64()),
    pa.field("refills", pa.int64()),
    pa.field("product", pa.string()),
    pa.field("limiting_species", pa.string()),
    pa.field("yield_theoretical_g_h", pa.float64()),
    pa.field("conversion", pa.float64()),
    pa.field("conversion_source", pa.string()),
    pa.field("yield_g_h", pa.float64()),
    pa.field("product_g", pa.float64()),
]


def lot_folder(root, lot: str) -> Path:
    return storage.data_root(root) / "lots" / storage.check_name("lot", lot)


def sample_id(lot: str, index: int) -> str:
    return f"{lot}-s{index:04d}"


def event_id(lot: str, index: int) -> str:
    return f"{lot}-e{index:04d}"


def sample_schema(feature_columns: list[str], pumps: list[str]) -> pa.Schema:
    return pa.schema([*SAMPLE_FIELDS, *storage.feature_fields(feature_columns),
                      *[pa.field(f"remaining_{p}_ul", pa.float64()) for p in pumps]])


def lot_schema(platform: PlatformConfig) -> pa.Schema:
    return pa.schema([*LOT_FIELDS, *[pa.field(p.name, pa.float64()) for p in platform.parameters],
                      *[pa.field(f"q_{p.name}_ul_min", pa.float64()) for p in platform.pumps]])


def write_sample(root, lot: str, row: dict, schema: pa.Schema, spectra: list[dict] | None = None) -> Path:
    """One QC sample (and, when given, its spectra: written first)."""
    folder = lot_folder(root, lot)
    sample = storage.check_name("sample id", row["sample_id"])
    table = rows_table([row], schema, "sample")
    if spectra:
        spectra_table, grids = build_spectra_table([{**s, "experiment_id": sample} for s in spectra])
        write_grids(grids, folder / "grids")
        write_loose(spectra_table, folder / "spectra", sample)
    return write_loose(table, folder / "samples", sample)


def write_event(root, lot: str, row: dict) -> Path:
    event = storage.check_name("event id", row["event_id"])
    return write_loose(rows_table([row], EVENT_SCHEMA, "event"), lot_folder(root, lot) / "events", event)


def write_lot(root, lot: str, row: dict, schema: pa.Schema) -> Path:
    if row.get("status") not in LOT_STATUS:
        raise SdflInputError(f"lot status must be one of {LOT_STATUS}, got {row.get('status')!r}")
    return write_file(rows_table([row], schema, "lot"), lot_folder(root, lot) / "lot.parquet")


def write_limits(root, lot: str, rows: list[dict]) -> Path:
    return write_file(rows_table(rows, LIMITS_SCHEMA, "limits"), lot_folder(root, lot) / "limits.parquet")


def _read_folder(folder: Path, key: str) -> pd.DataFrame:
    found = dataset.read_table(folder, key, one_row_per_key=True).table
    return pd.DataFrame() if found is None else found.to_pandas()


def read_lot(root, lot: str) -> dict[str, pd.DataFrame]:
    """A lot's tables: lot (one row), samples, events, limits (empty frames where nothing is written)."""
    folder = lot_folder(root, lot)
    out = {"samples": _read_folder(folder / "samples", "sample_id"), "events": _read_folder(folder / "events", "event_id")}
    for name in ("lot", "limits"):
        path = folder / f"{name}.parquet"
        out[name] = pq.read_table(path).to_pandas() if path.exists() else pd.DataFrame()
    for name, key in (("samples", "sample"), ("events", "event")):
        if not out[name].empty:
            out[name] = out[name].sort_values(key, kind="stable").reset_index(drop=True)
    return out


def lot_exists(root, lot: str) -> bool:
    return (lot_folder(root, lot) / "lot.parquet").exists()


def list_lots(root=None) -> list[str]:
    base = storage.data_root(root) / "lots"
    return sorted(p.name for p in base.iterdir() if (p / "lot.parquet").exists()) if base.is_dir() else []


# --- Prefect tasks -------------------------------------------------------------------------
# A failed write (full disk, network filesystem hiccup) is retried; the rename makes it safe.
write_sample_task = task(name="record-qc-sample", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)(write_sample)
