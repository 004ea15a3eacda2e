"""Storage: the experiments and spectra of every campaign, as Parquet tables (tasks/dataset.py).

Layout under the data root (hive-partitioned by campaign, readable by pandas, polars, duckdb):

    experiments/campaign=<campaign>/<experiment_id>.parquet   one row per experiment
    spectra/campaign=<campaign>/<experiment_id>.parquet       one row per spectrum
    grids/campaign=<campaign>/<grid>.parquet                  each spectrometer's wavelengths, once

(plus each folder's schema file and, once compacted, its part files). Each file is written to a
hidden temporary name in its folder and renamed over the final name, so readers never see half a
file and a retried write replaces its own file instead of adding a row. The spectra file is
written first: an experiment row is the sign that the experiment is complete on disk.

Before a rig moves, `check_data_root` makes sure the record can be written (a folder, writable,
with room), and clears temporary files a killed writer left. If a write still fails after the
experiment, `write_or_rescue` keeps the record under a rescue folder and says where. Readers skip
a file they cannot read (naming it); `set_aside_damaged` moves such files to the quarantine folder
of the data root so a campaign can resume around them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hardware.errors import DataRootUnusable, RecordNotSaved, SdflInputError, did_you_mean
from hardware.platform import PlatformConfig
from tasks import compaction, dataset
from tasks.dataset import rows_table, tmp_name
from tasks.names import check_name  # noqa: F401 - part of the storage API
from tasks.spectra_table import (  # noqa: F401 - SPECTRA_SCHEMA is part of the storage API
    SPECTRA_SCHEMA,
    build_spectra_table,
    to_grids,
    with_wavelengths,
    write_grids,
)

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


def table_folder(root: Path, campaign: str, table: str = "experiments") -> Path:
    """The folder of one campaign's experiments (or spectra)."""
    return root / table / f"campaign={check_name('campaign', campaign)}"


def experiment_path(root: Path, campaign: str, experiment_id: str, table: str = "experiments") -> Path:
    """Where an experiment's own (loose) file is written."""
    return table_folder(root, campaign, table) / f"{check_name('experiment id', experiment_id)}.parquet"


def build_experiment_table(row: dict, schema: pa.Schema) -> pa.Table:
    """One-row table in `schema`; unknown keys or wrong types are an error, missing ones null."""
    if row.get("status") not in STATUS:
        raise SdflInputError(f"experiment status must be one of {STATUS}, got {row.get('status')!r}")
    return rows_table([row], schema, "experiment")


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
    spectra_table, grids = build_spectra_table([{**s, "experiment_id": experiment_id} for s in spectra])
    exp_file = experiment_path(root_path, campaign, experiment_id)
    spectra_file = experiment_path(root_path, campaign, experiment_id, table="spectra")
    if spectra_table.num_rows:
        write_grids(grids, table_folder(root_path, campaign, "grids"))
        dataset.write_loose(spectra_table, spectra_file.parent, experiment_id, root_path / "spectra")
    elif spectra_file.exists():
        spectra_file.unlink()
    try:
        dataset.write_loose(exp_table, exp_file.parent, experiment_id, root_path / "experiments")
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
        probe = tmp_name(folder / "write-probe")
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
    host = dataset.host()
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
    """The file that holds the experiment of this id (its own, or a compacted part), else None."""
    path = experiment_path(data_root(root), campaign, experiment_id)
    if path.exists():
        return path
    return dataset.holder(path.parent, "experiment_id", experiment_id)


# --- reading ------------------------------------------------------------------------------------


def _campaign_dirs(root: Path, table: str, campaign: str | None) -> list[Path]:
    base = root / table
    if campaign is not None:
        folder = table_folder(root, campaign, table)
        return [folder] if folder.is_dir() else []
    return sorted(p for p in base.glob("campaign=*") if p.is_dir())


def _read(root: Path, table: str, campaign: str | None, filters=None, columns=None,
          sort: list[str] | None = None) -> pd.DataFrame:
    """Every record of `table`, one campaign or all, through the one reader (tasks/dataset.py):
    every column any file has, each experiment once, in the order of the `sort` columns. Files it
    cannot read, or that are not the record their name says, are skipped and named (in the log and
    `frame.attrs["skipped_files"]`)."""
    frames, skipped = [], []
    expression = pq.filters_to_expression(filters) if filters else None
    for folder in _campaign_dirs(root, table, campaign):
        found = dataset.read_table(folder, "experiment_id", columns, expression,
                                   one_row_per_key=table == "experiments")
        skipped += found.skipped
        if found.table is None or found.table.num_rows == 0:
            continue
        rows = found.table.sort_by([(c, "ascending") for c in sort]) if sort else found.table  # faster than pandas
        data = rows.to_pandas()
        data.insert(1, "campaign", folder.name.removeprefix("campaign="))
        frames.append(data)
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0] if frames else pd.DataFrame()
    if sort and len(frames) > 1:
        frame = frame.sort_values(sort, kind="stable").reset_index(drop=True)
    frame.attrs["skipped_files"] = skipped
    return frame


def damaged_files(root: str | os.PathLike | None, campaign: str) -> list[tuple[Path, str]]:
    """Files of the campaign that readers skip, with why (reading only their ids: a resume must not
    load every spectrum to find them)."""
    root_path = data_root(root)
    found = []
    for table in ("experiments", "spectra"):
        found += _read(root_path, table, campaign, columns=["experiment_id"]).attrs.get("skipped_files", [])
    return found


def set_aside_damaged(root: str | os.PathLike | None, campaign: str) -> list[tuple[Path, Path, str]]:
    """Move the campaign's unreadable or foreign files to the data root's quarantine folder (same
    layout), so the campaign can resume around them. Returns (from, to, why) for each."""
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


def campaigns(root: str | os.PathLike | None = None) -> list[str]:
    """The campaigns that have experiments under the data root."""
    return [p.name.removeprefix("campaign=") for p in _campaign_dirs(data_root(root), "experiments", None)]


def read_experiments(root: str | os.PathLike | None = None, campaign: str | None = None) -> pd.DataFrame:
    """All experiment rows (of one campaign or of all), sorted by start time."""
    return _read(data_root(root), "experiments", campaign, sort=["started_at", "experiment_id"])


def read_experiment(root: str | os.PathLike | None, campaign: str, experiment_id: str) -> dict | None:
    """One experiment's row (with its campaign), opening only the file that holds it; None if it
    is not recorded."""
    found = dataset.read_key(table_folder(data_root(root), campaign), "experiment_id", experiment_id,
                             one_row_per_key=True)
    if found is None or found.num_rows == 0:
        return None
    return {"campaign": campaign, **found.to_pandas().iloc[0].to_dict()}  # as read_experiments gives rows


def experiment_ids(root: str | os.PathLike | None, campaign: str) -> set[str]:
    """The ids of the campaign's recorded experiments (from file names and the parts' id column)."""
    return dataset.keys(table_folder(data_root(root), campaign), "experiment_id")


def read_spectra(
    root: str | os.PathLike | None = None,
    campaign: str | None = None,
    experiment_id: str | None = None,
    kind: str | None = None,
    replicate: int | None = None,
) -> pd.DataFrame:
    """Spectra rows; only those of experiments that have a row (complete on disk). With an
    `experiment_id`, only the files that hold that experiment are opened; `kind` (`pl_cps`,
    `absorbance`, ...) and `replicate` keep only those spectra, read without the others."""
    root_path = data_root(root)
    if experiment_id is not None:
        frame = _spectra_of(root_path, campaign, experiment_id)
        if not frame.empty and kind is not None:
            frame = frame[frame["kind"] == kind]
        if not frame.empty and replicate is not None:
            frame = frame[frame["replicate"] == replicate]
        return frame.reset_index(drop=True)
    filters = [(name, "=", value) for name, value in (("kind", kind), ("replicate", replicate)) if value is not None]
    spectra = _read(root_path, "spectra", campaign, filters or None)
    if spectra.empty:
        if kind is not None:
            _check_kind(root_path, campaign, kind)
        return spectra
    known = set()
    for folder in _campaign_dirs(root_path, "experiments", campaign):
        known |= dataset.keys(folder, "experiment_id")
    spectra = spectra[spectra["experiment_id"].isin(known)]
    return with_wavelengths(spectra, _campaign_dirs(root_path, "grids", campaign)).reset_index(drop=True)


def _check_kind(root: Path, campaign: str | None, kind: str) -> None:
    """A kind no recorded spectrum has is a mistake to name (not an empty answer)."""
    kinds = _read(root, "spectra", campaign, columns=["experiment_id", "kind"])
    found = sorted(set(kinds["kind"])) if not kinds.empty else []
    if found and kind not in found:
        raise SdflInputError(f"no spectra of kind {kind!r}{did_you_mean(kind, found)}; the kinds recorded: "
                             f"{', '.join(found)}")


def _spectra_of(root: Path, campaign: str | None, experiment_id: str) -> pd.DataFrame:
    campaigns = [campaign] if campaign is not None else [
        p.name.removeprefix("campaign=") for p in _campaign_dirs(root, "experiments", None)]
    for name in campaigns:
        if read_experiment(root, name, experiment_id) is None:
            continue
        found = dataset.read_key(table_folder(root, name, "spectra"), "experiment_id", experiment_id)
        if found is None:
            return pd.DataFrame()
        frame = found.to_pandas()
        frame.insert(1, "campaign", name)
        return with_wavelengths(frame, [table_folder(root, name, "grids")])
    return pd.DataFrame()


# --- Prefect task ---------------------------------------------------------------------------


def __getattr__(name: str):
    """`write_experiment_task` is made on first use, so reading data (`sdfl data`, a refusal that
    looks a campaign up) does not import Prefect. A failed write (full disk, network filesystem
    hiccup) is retried; the rename makes it safe."""
    if name != "write_experiment_task":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    made = task(name="record", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)(write_experiment)
    globals()[name] = made
    return made


# --- compaction ------------------------------------------------------------------------------

TABLES = ("experiments", "spectra")


def compact_campaign(root: str | os.PathLike | None, campaign: str) -> dict[str, compaction.Compacted]:
    """Fold the campaign's loose experiment and spectra files into part files (tasks/compaction.py);
    safe to run at any time, also while experiments are being recorded."""
    root_path = data_root(root)
    return {table: compaction.compact(table_folder(root_path, campaign, table), "experiment_id",
                                      **_compaction_options(root_path, campaign, table))
            for table in TABLES if table_folder(root_path, campaign, table).is_dir()}


SPECTRA_PARTS = compaction.PartLayout(order=("kind", "replicate"), row_group_rows=16, split_floats=("value",))
"""Spectra parts: sorted by kind and replicate, then experiment, 16 spectra per row group. Reading
one kind skips the row groups of the others (by their statistics); a lookup by id reads one small
row group per kind and replicate. The values are stored byte-stream-split (about a fifth smaller)."""
EXPERIMENT_PARTS = compaction.PartLayout(row_group_rows=compaction.PART_KEYS)
"""Experiment parts: one row group per part. Reading a campaign decodes few, large column chunks
(four times faster than 1,024-row groups at 100,000 rows); a lookup decodes one part's rows."""


def _compaction_options(root: Path, campaign: str, table: str) -> dict:
    if table == "experiments":
        return {"one_row_per_key": True, "layout": EXPERIMENT_PARTS}
    grids = table_folder(root, campaign, "grids")
    return {"transform": lambda rows: to_grids(rows, grids), "layout": SPECTRA_PARTS}


def compact_if_due(root: str | os.PathLike | None, campaign: str, finish: bool = True) -> dict[str, compaction.Compacted]:
    """Compact a table that has passed the threshold of loose files (a long campaign keeps few
    files; a short one is compacted at its end); `finish`: also finish a compaction a crash
    interrupted (reads the parts' footers: at the start of a campaign, not after each experiment)."""
    root_path = data_root(root)
    done = {}
    for table in TABLES:
        folder = table_folder(root_path, campaign, table)
        if folder.is_dir():
            result = compaction.compact_if_due(folder, "experiment_id", finish=finish,
                                               **_compaction_options(root_path, campaign, table))
            if result is not None:
                done[table] = result
    return done
