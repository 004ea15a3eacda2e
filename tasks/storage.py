"""Storage: the Parquet datasets, one file per experiment, written atomically.

Layout under the data root (hive-partitioned by campaign, readable by pandas, polars, duckdb):

    experiments/campaign=<campaign>/<experiment_id>.parquet   one row per experiment
    spectra/campaign=<campaign>/<experiment_id>.parquet       one row per spectrum

Each file is written to a hidden temporary name in its folder and renamed over the final name,
so readers never see half a file and a retried write replaces its own file instead of adding a
row. The spectra file is written first: an experiment row is the sign that the experiment is
complete on disk.

Before a rig moves, `check_data_root` makes sure the record can be written (a folder, writable,
with room), and clears temporary files a killed writer left. If a write still fails after the
experiment, `write_or_rescue` keeps the record under a rescue folder and says where. Readers skip
a file they cannot read (naming it); `set_aside_damaged` moves such files to
<data root>/quarantine/ so a campaign can resume around them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from hardware.errors import DataRootUnusable, RecordNotSaved, SdflInputError
from hardware.platform import PlatformConfig
from tasks.names import check_name  # noqa: F401 - part of the storage API

log = logging.getLogger(__name__)

DEFAULT_DATA_ROOT = "data"
RESCUE_ENV = "SDFL_RESCUE_DIR"
"""Where a record goes when the data root refuses it (default: sdfl-rescued under the home folder)."""
MIN_FREE_BYTES = 64 * 2**20
"""Free space the data root must have before an experiment starts (a record with its spectra
takes well under 1 MB; the margin covers other writers)."""
STALE_TMP_S = 24 * 3600.0
"""A temporary file of another host older than this is a leftover of a killed writer."""

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


def _host() -> str:
    return socket.gethostname().replace(".", "_")


def _tmp_name(path: Path) -> Path:
    """A hidden temporary name beside `path` that says which process writes it (host, pid)."""
    return path.parent / f".{path.name}.{_host()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"


def _write_atomic(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
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
    try:
        _write_atomic(exp_table, exp_file)
    except BaseException:
        if not exp_file.exists():  # no half-recorded experiment left behind
            with contextlib.suppress(OSError):
                spectra_file.unlink()
        raise
    return exp_file


# --- before and after an experiment: can the record be written? --------------------------


def check_data_root(root: str | os.PathLike | None, campaign: str) -> Path:
    """Make sure an experiment of `campaign` can be recorded under the data root; return the root.

    Creates the campaign's folders, writes and removes a probe file in each, checks the free
    space and removes temporary files left by killed writers. Raises `DataRootUnusable` naming
    the path and the fix. Call it before the rig moves: reagents spent on an experiment that
    cannot be recorded are wasted.
    """
    root_path = data_root(root)
    check_name("campaign", campaign)
    for table in ("experiments", "spectra"):
        check_writable(root_path, root_path / table / f"campaign={campaign}")
    return root_path


def check_writable(root: Path, folder: Path) -> None:
    """Create `folder` (under the data root `root`), prove a file can be written and synced there,
    and check the free space; clear temporary files of dead writers. Raises `DataRootUnusable`."""
    chain = [p for p in (*reversed(folder.parents), folder) if p == root or root in p.parents]
    blocker = next((p for p in chain if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise DataRootUnusable(f"data root {root}: {blocker} is a file where a folder should be. Fix: move it "
                               "away, or choose another data root (--data-root or $SDFL_DATA_ROOT)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = _tmp_name(folder / "write-probe")
        with open(probe, "wb") as handle:
            handle.write(b"sdfl")
            os.fsync(handle.fileno())
        probe.unlink()
    except OSError as exc:
        raise DataRootUnusable(
            f"data root {root} cannot be written ({folder}: {exc.strerror or exc}). Fix: make it writable, free "
            "space, or choose another data root (--data-root or $SDFL_DATA_ROOT)") from None
    remove_stale_temporaries(folder)
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        raise DataRootUnusable(f"data root {root} has only {free / 2**20:.0f} MB free (needs "
                               f"{MIN_FREE_BYTES / 2**20:.0f} MB). Fix: free space there or choose another data root")


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete temporary files of writers that are gone: this host's dead processes, or other
    hosts' files older than STALE_TMP_S. Returns what was deleted."""
    host = _host()
    removed = []
    for tmp in folder.glob(".*.tmp"):
        parts = tmp.name.rsplit(".", 4)  # .<file>.<host>.<pid>.<token>.tmp
        try:
            same_host, pid = len(parts) == 5 and parts[1] == host, int(parts[2]) if len(parts) == 5 else -1
            stale = (not _pid_alive(pid)) if same_host else time.time() - tmp.stat().st_mtime > STALE_TMP_S
            if stale:
                tmp.unlink()
                removed.append(tmp)
        except (OSError, ValueError):
            continue
    if removed:
        log.info("removed %d temporary file(s) left by interrupted writes in %s", len(removed), folder)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def rescue_root() -> Path:
    """Where records go when the data root refuses them."""
    return Path(os.environ.get(RESCUE_ENV) or Path.home() / "sdfl-rescued").expanduser().resolve()


def write_or_rescue(row: dict, spectra: list[dict], schema: pa.Schema, campaign: str,
                    root: str | os.PathLike | None = None, write=None) -> Path:
    """Write the experiment; if the data root refuses it (a disk error, not a bad record), keep it
    under the rescue folder in the same layout and raise `RecordNotSaved` saying where.

    `write` is the writer to try first (the Prefect task with its retries, or `write_experiment`).
    """
    try:
        return (write or write_experiment)(row, spectra, schema, campaign, root)
    except SdflInputError:
        raise
    except OSError as exc:
        first = exc
    experiment_id = row.get("experiment_id")
    where = rescue_root()
    try:
        write_experiment(row, spectra, schema, campaign, where)
    except Exception as exc:  # noqa: BLE001 - report both failures; the row goes to the log
        log.error("experiment %s could not be kept anywhere; its record: %r", experiment_id, row)
        raise RecordNotSaved(f"experiment {experiment_id} could not be written to {data_root(root)} ({first}) nor "
                             f"to the rescue folder {where} ({exc}); its record is in this run's log") from first
    raise RecordNotSaved(
        f"experiment {experiment_id} could not be written to {data_root(root)} ({first}); it was kept under "
        f"{where}. Fix the data root, then move the files from {where}/experiments and {where}/spectra into the "
        "same folders of the data root", rescued_to=str(where)) from first


def existing_record(root: str | os.PathLike | None, campaign: str, experiment_id: str) -> Path | None:
    """The experiment file of this id if one is recorded, else None."""
    path = experiment_path(data_root(root), campaign, experiment_id)
    return path if path.exists() else None


# --- reading ------------------------------------------------------------------------------------


def _campaign_dirs(root: Path, table: str, campaign: str | None) -> list[Path]:
    base = root / table
    if campaign is not None:
        folder = base / f"campaign={check_name('campaign', campaign)}"
        return [folder] if folder.is_dir() else []
    return sorted(p for p in base.glob("campaign=*") if p.is_dir())


def _read(root: Path, table: str, campaign: str | None, filters=None, columns=None) -> pd.DataFrame:
    """Every record file of `table`, one campaign or all. A file that cannot be read, or that is
    not a record of the experiment its name says, is skipped and named (in the log and in
    `frame.attrs["skipped_files"]`), so one damaged file never hides the rest."""
    frames, skipped = [], []
    for folder in _campaign_dirs(root, table, campaign):
        files = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))
        if not files:
            continue
        try:
            data = pq.read_table(files, filters=filters, columns=columns, partitioning=None).to_pandas()
            if not _belongs(data, files, one_row_each=table == "experiments" and filters is None):
                raise ValueError("a file is not the record its name says")
        except (pa.ArrowException, OSError, ValueError, KeyError):
            data, bad = _read_one_by_one(files, filters, table, columns)
            skipped += bad
        if data.empty:
            continue
        data.insert(1, "campaign", folder.name.removeprefix("campaign="))
        frames.append(data)
    for path, why in skipped:
        log.warning("skipped %s: %s. Move it out of the dataset (or run the campaign again, which sets such "
                    "files aside under <data root>/quarantine/)", path, why)
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    frame.attrs["skipped_files"] = skipped
    return frame


def _belongs(data: pd.DataFrame, files: list[Path], one_row_each: bool) -> bool:
    """Every row carries the id of a file, and (one_row_each) every file gave exactly its row."""
    if "experiment_id" not in data.columns or data["experiment_id"].isna().any():
        return False
    ids, stems = set(data["experiment_id"]), {f.stem for f in files}
    if one_row_each:
        return ids == stems and len(data) == len(files)
    return ids <= stems


def _read_one_by_one(files: list[Path], filters, table: str, columns=None) -> tuple[pd.DataFrame, list]:
    """Read file by file; return the readable records and (file, why) for the others."""
    frames, bad = [], []
    for path in files:
        try:
            part = pq.read_table(path, filters=filters, columns=columns, partitioning=None).to_pandas()
        except (pa.ArrowException, OSError) as exc:
            bad.append((path, _why_unreadable(path, exc)))
            continue
        if not _belongs(part, [path], one_row_each=table == "experiments" and filters is None):
            bad.append((path, f"not a record of experiment {path.stem!r} (foreign or renamed file)"))
            continue
        frames.append(part)
    frames = [f for f in frames if not f.empty]
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), bad


def _why_unreadable(path: Path, exc: Exception) -> str:
    """A damaged file, or a sound Parquet file of another kind (a foreign table)."""
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError):
        return f"not a readable Parquet file ({exc})"
    return f"not a record of experiment {path.stem!r} (a foreign table: columns {names[:6]})"


def damaged_files(root: str | os.PathLike | None, campaign: str) -> list[tuple[Path, str]]:
    """Files of the campaign that readers skip, with why (reading only their ids: a resume must not
    load every spectrum to find them)."""
    root_path = data_root(root)
    found = []
    for table in ("experiments", "spectra"):
        found += _read(root_path, table, campaign, columns=["experiment_id"]).attrs.get("skipped_files", [])
    return found


def set_aside_damaged(root: str | os.PathLike | None, campaign: str) -> list[tuple[Path, Path, str]]:
    """Move the campaign's unreadable or foreign files to <data root>/quarantine/ (same layout),
    so the campaign can resume around them. Returns (from, to, why) for each."""
    root_path = data_root(root)
    moved = []
    for path, why in damaged_files(root_path, campaign):
        target = root_path / "quarantine" / path.relative_to(root_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            target = target.with_name(f"{target.stem}.{uuid.uuid4().hex[:6]}{target.suffix}")
        os.replace(path, target)
        moved.append((path, target, why))
        log.warning("set aside %s (%s) as %s", path, why, target)
    return moved


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
