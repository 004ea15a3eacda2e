"""Spectra on disk: one row per spectrum, its wavelengths stored once per grid.

    spectra/campaign=<c>/<experiment_id>.parquet   one row per spectrum: kind, replicate, quantity,
                                                   spectrometer, timing, `grid` and the values
    grids/campaign=<c>/<grid>.parquet              one row per wavelength grid: its id, the
                                                   spectrometer and the wavelengths

A spectrometer keeps one grid, so a campaign has one file per spectrometer here instead of the
same 2,068 wavelengths on every spectrum row. A grid's id is a hash of its wavelengths: writing it
again changes nothing, and two campaigns that share a spectrometer share the id. Files written
before (schema version 1) carry the wavelengths on every row; `with_wavelengths` reads both. In
pandas: `spectra.merge(grids[["grid", "wavelength_nm"]], on="grid")`.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from hardware.errors import SdflInputError
from tasks import dataset

log = logging.getLogger(__name__)

SPECTRA_SCHEMA = pa.schema([
    pa.field("experiment_id", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("replicate", pa.int16(), nullable=False),
    pa.field("quantity", pa.string(), nullable=False),
    pa.field("spectrometer", pa.string()),
    pa.field("t_platform_s", pa.float64()),
    pa.field("integration_ms", pa.float64()),
    pa.field("scans", pa.int32()),
    pa.field("grid", pa.string(), nullable=False),
    pa.field("value", pa.list_(pa.float32()), nullable=False),
])
GRID_SCHEMA = pa.schema([
    pa.field("grid", pa.string(), nullable=False),
    pa.field("spectrometer", pa.string()),
    pa.field("points", pa.int32(), nullable=False),
    pa.field("wavelength_nm", pa.list_(pa.float32()), nullable=False),
])
GIVEN = [name for name in SPECTRA_SCHEMA.names if name != "grid"] + ["wavelength_nm"]
"""What a spectrum dict holds (the writer finds its grid)."""


def grid_id(wavelength_nm: np.ndarray) -> str:
    """The id of a wavelength grid: a hash of its float32 values."""
    return hashlib.sha256(np.ascontiguousarray(wavelength_nm, dtype=np.float32).tobytes()).hexdigest()[:16]


def _lists(arrays: list[np.ndarray]) -> pa.ListArray:
    flat = np.concatenate(arrays) if arrays else np.zeros(0, np.float32)
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrays])]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=pa.float32()))


def build_spectra_table(spectra: list[dict]) -> tuple[pa.Table, pa.Table]:
    """Spectra (dicts with the fields of GIVEN) as their rows and their grids, checked."""
    columns: dict[str, list] = {name: [] for name in SPECTRA_SCHEMA.names}
    grids: dict[str, tuple[str | None, np.ndarray]] = {}
    for i, spectrum in enumerate(spectra):
        missing = [n for n in GIVEN if spectrum.get(n) is None
                   and (n == "wavelength_nm" or not SPECTRA_SCHEMA.field(n).nullable)]
        if missing:
            raise SdflInputError(f"spectrum {i} misses {missing}")
        wl = np.asarray(spectrum["wavelength_nm"], dtype=np.float32)
        value = np.asarray(spectrum["value"], dtype=np.float32)
        if wl.shape != value.shape or wl.ndim != 1:
            raise SdflInputError(f"spectrum {i} ({spectrum.get('kind')}): wavelength and value shapes differ")
        grid = grid_id(wl)
        grids.setdefault(grid, (spectrum.get("spectrometer"), wl))
        for name in SPECTRA_SCHEMA.names:
            columns[name].append(spectrum.get(name))
        columns["grid"][-1], columns["value"][-1] = grid, value
    arrays = [_lists(columns[f.name]) if f.name == "value" else pa.array(columns[f.name], type=f.type)
              for f in SPECTRA_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=SPECTRA_SCHEMA), _grid_table(grids)


def _grid_table(grids: dict[str, tuple[str | None, np.ndarray]]) -> pa.Table:
    """Grids (id -> spectrometer, wavelengths) as rows of GRID_SCHEMA."""
    return pa.Table.from_arrays([
        pa.array(list(grids), pa.string()), pa.array([s for s, _ in grids.values()], pa.string()),
        pa.array([len(wl) for _, wl in grids.values()], pa.int32()), _lists([wl for _, wl in grids.values()])],
        schema=GRID_SCHEMA)


def write_grids(grids: pa.Table, folder: Path) -> None:
    """Write each grid not yet in `folder` (a grid's file never changes: its name is its hash)."""
    for i, grid in enumerate(grids["grid"].to_pylist()):
        if not (folder / f"{grid}.parquet").exists():
            dataset.write_loose(grids.slice(i, 1), folder, grid)


def read_grids(folders: list[Path]) -> dict[str, np.ndarray]:
    """Every grid in `folders`, by id."""
    found: dict[str, np.ndarray] = {}
    for folder in folders:
        table = dataset.read_table(folder, "grid", columns=["grid", "wavelength_nm"]).table
        if table is not None:
            for grid, wl in zip(table["grid"].to_pylist(), table["wavelength_nm"].to_numpy(zero_copy_only=False)):
                found[grid] = np.asarray(wl, dtype=np.float32)
    return found


def with_wavelengths(spectra: pd.DataFrame, grid_folders: list[Path]) -> pd.DataFrame:
    """`spectra` with a `wavelength_nm` column on every row: taken from its grid, or kept where the
    row carries it (files of schema version 1). A row whose grid is missing is dropped and named."""
    if spectra.empty or "grid" not in spectra.columns:
        return spectra
    grids = read_grids(grid_folders)
    wanted = spectra["grid"].notna()
    if not wanted.any():
        return spectra.drop(columns="grid")
    lost = wanted & ~spectra["grid"].isin(list(grids))
    if lost.any():
        log.warning("spectra of %s name a wavelength grid that is not on disk (%s); they are left out",
                    sorted(set(spectra.loc[lost, "experiment_id"])), sorted(set(spectra.loc[lost, "grid"])))
        spectra, wanted = spectra[~lost], wanted[~lost]
    kept = spectra["wavelength_nm"].tolist() if "wavelength_nm" in spectra.columns else [None] * len(spectra)
    wavelengths = [grids[g] if w else k for w, g, k in zip(wanted, spectra["grid"], kept)]
    spectra = spectra.drop(columns=[c for c in ("grid", "wavelength_nm") if c in spectra.columns])
    spectra.insert(spectra.columns.get_loc("value"), "wavelength_nm", wavelengths)
    return spectra.reset_index(drop=True)


def to_grids(table: pa.Table, grids_folder: Path) -> pa.Table:
    """Spectra rows with their wavelengths on the row (layout version 1) in today's form: each
    distinct grid written once under `grids_folder`, the rows naming it. Compaction applies this,
    so an old data root shrinks when it is compacted; the values read back the same."""
    if "wavelength_nm" not in table.column_names:
        return table
    lists = table["wavelength_nm"].combine_chunks()
    grids = table["grid"].to_pylist() if "grid" in table.column_names else [None] * table.num_rows
    if lists.null_count < len(lists):
        offsets, values = lists.offsets.to_numpy(), lists.values.to_numpy(zero_copy_only=False)
        valid = lists.is_valid().to_numpy(zero_copy_only=False)
        seen: dict[tuple, list[tuple[np.ndarray, str]]] = {}
        spectrometers = table["spectrometer"].to_pylist() if "spectrometer" in table.column_names else None
        found: dict[str, tuple[str | None, np.ndarray]] = {}
        for i in np.flatnonzero(valid):
            wl = values[offsets[i]:offsets[i + 1]]
            sketch = (len(wl), float(wl[0]) if len(wl) else 0.0, float(wl[-1]) if len(wl) else 0.0)
            match = next((g for known, g in seen.get(sketch, []) if np.array_equal(known, wl)), None)
            if match is None:
                match = grid_id(wl)
                seen.setdefault(sketch, []).append((wl, match))
                found[match] = (spectrometers[i] if spectrometers else None, np.asarray(wl, np.float32))
            grids[i] = match
        write_grids(_grid_table(found), grids_folder)
    table = table.drop_columns(["wavelength_nm", *(["grid"] if "grid" in table.column_names else [])])
    return table.add_column(table.schema.get_field_index("value"), "grid", pa.array(grids, pa.string()))
