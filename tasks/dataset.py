"""Tables of the data root: one writer and one reader for every Parquet file sdfl keeps.

A table is a folder of Parquet files whose rows share a key column: the experiments of one
campaign (`experiments/campaign=<c>/`, key `experiment_id`), their spectra, a lot's QC samples.

    <key>.parquet                       a loose file: the rows of one key, written atomically. It
                                        is the write-ahead unit: once renamed into place, kept.
    part-<generation>-<token>.parquet   a compacted part: the rows of many keys, sorted by key.
    +schema.parquet                     no rows: every column any file of the table has. Its name
                                        sorts first, and pandas and polars take their columns from
                                        the first file they open, so they see every column too.

`read_table` takes the union of the files' columns, so a column added by a later release or a
platform edit reads back as null for older rows, and a column whose type changed is refused with
the file and column named. A key found in a loose file and in a part reads once (the loose file
is newer; of two parts, the later generation). A file that cannot be read, or whose rows are not
the key its name says, is skipped and named, so one damaged file never hides the rest.

Every file carries the schema version in its metadata (`sdfl.schema_version`; files without it
are version 1, the layout before this module).
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import functools
import json
import logging
import os
import re
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from hardware.errors import SdflInputError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
"""Version of the files this release writes. 1: one file per experiment, wavelengths on every
spectrum row, no version in the metadata. 2: the same rows, versioned, with schema files and parts."""
VERSION_KEY = b"sdfl.schema_version"
SCHEMA_FILE = "+schema.parquet"
PARTS_INDEX = ".parts.json"
"""Hidden beside the parts: each part's smallest and largest key (written by compaction)."""
PART = re.compile(r"^part-(\d{6})-[0-9a-f]{8}\.parquet$")
LOOSE_RANK = 10**9
"""Rank of a loose file when one key is in several files (parts rank by generation)."""


class SchemaConflict(SdflInputError):
    """A column has one type in some files of a table and another in others."""


# --- writing ------------------------------------------------------------------------------------


def rows_table(rows: list[dict], schema: pa.Schema, what: str) -> pa.Table:
    """Rows (dicts) as a table in `schema`: unknown keys or values of the wrong type are an error
    naming the column, missing keys are null (an error where the field is not nullable)."""
    for row in rows:
        unknown = sorted(set(row) - set(schema.names))
        if unknown:
            raise SdflInputError(f"{what} record has columns not in the schema: {unknown}")
    columns = []
    for column in schema:
        values = [row.get(column.name) for row in rows]
        values = [v.item() if isinstance(v, np.generic) else v for v in values]
        if not column.nullable and any(v is None for v in values):
            raise SdflInputError(f"{what} record is missing {column.name!r}")
        try:
            columns.append(pa.array(values, type=column.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            shown = values[0] if len(values) == 1 else values
            raise SdflInputError(f"{what} column {column.name!r}: {shown!r} is not {column.type}") from exc
    return pa.Table.from_arrays(columns, schema=schema)


def versioned(table: pa.Table) -> pa.Table:
    """`table` with this release's schema version in its metadata."""
    return table.replace_schema_metadata({**(table.schema.metadata or {}), VERSION_KEY: str(SCHEMA_VERSION).encode()})


def host() -> str:
    """This machine's name, as temporary file names carry it."""
    return socket.gethostname().replace(".", "_")


def tmp_name(path: Path) -> Path:
    """A hidden temporary name beside `path` that says which process writes it (host, pid)."""
    return path.parent / f".{path.name}.{host()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"


def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(table: pa.Table, path: Path, breaks: list[int] = (), row_group_size: int | None = None,
               **parquet_options) -> Path:
    """Write `table` to `path` atomically: a hidden temporary file, synced, renamed over `path`.

    Readers never see half a file, and writing the same path again replaces it (a retried write
    never adds a row). Every Parquet file of the data root goes through here. A row group never
    spans one of the row numbers in `breaks` (so each can hold one kind of row).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    table = versioned(table)
    try:
        with pq.ParquetWriter(tmp, table.schema, compression=parquet_options.pop("compression", "zstd"),
                              **parquet_options) as writer:
            edges = [0, *sorted(b for b in breaks if 0 < b < table.num_rows), table.num_rows]
            for start, end in zip(edges, edges[1:]):
                writer.write_table(table.slice(start, end - start), row_group_size=row_group_size)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_folder(path.parent)
    return path


def write_frame(frame: pd.DataFrame, path: Path) -> Path:
    """A pandas frame (a study's results) written atomically, versioned, without its index."""
    return write_file(pa.Table.from_pandas(frame, preserve_index=False), path)


def write_loose(table: pa.Table, folder: Path, key: str, hive_root: Path | None = None) -> Path:
    """Write the rows of one key as `<folder>/<key>.parquet`, after making sure the folder's schema
    file holds all of their columns. `hive_root`: the folder above the partitions (`campaign=...`),
    whose schema file is the union over all of them, so that reading the whole root in one line of
    pandas also sees every column (there, a type that differs between partitions is left out, not
    refused: one campaign never stops another from being recorded)."""
    record_schema(folder, table.schema)
    if hive_root is not None:
        try:
            record_schema(hive_root, table.schema)
        except SchemaConflict as conflict:
            log.warning("%s: %s", hive_root / SCHEMA_FILE, conflict)
    return write_file(table, folder / f"{key}.parquet")


# --- the schema file ---------------------------------------------------------------------------

_RECORDED: dict[Path, pa.Schema] = {}
"""Schema files this process has brought up to date, with what they held then."""


def _covers(wider: pa.Schema, schema: pa.Schema) -> bool:
    return all(wider.get_field_index(f.name) >= 0 and wider.field(f.name).type == _plain_type(f.type)
               for f in schema)


def _plain(schema: pa.Schema) -> pa.Schema:
    """The columns only (no pandas or version metadata), all nullable as the union of files is, and
    large or view strings and lists as plain ones: pandas writes those, and they hold the same data."""
    return pa.schema([pa.field(f.name, _plain_type(f.type)) for f in schema])


def _plain_type(kind: pa.DataType) -> pa.DataType:
    if pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return pa.string()
    if pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind):
        return pa.binary()
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_list_view(kind) \
            or pa.types.is_large_list_view(kind):
        return pa.list_(_plain_type(kind.value_type))
    return kind


@contextlib.contextmanager
def folder_lock(folder: Path, name: str):
    """An exclusive lock on `<folder>/.<name>.lock` (flock: local disks and NFSv4)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f".{name}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def record_schema(folder: Path, schema: pa.Schema) -> pa.Schema:
    """Widen `<folder>/+schema.parquet` to hold every column of `schema`; return what it holds.

    Under a lock, so two writers widening it at once both get their columns in. A column whose
    type differs from the recorded one is refused (SchemaConflict) before any row is written.
    """
    folder = Path(folder)
    known = _RECORDED.get(folder)
    path = folder / SCHEMA_FILE
    if known is not None and _covers(known, schema) and path.exists():
        return known
    with folder_lock(folder, "schema"):
        current = _read_schema_file(path)
        merged = _plain(schema) if current is None else _merge(current, _plain(schema), lambda _: path,
                                                               "the record being written")
        if current is None or not _covers(current, merged):
            write_file(merged.empty_table(), path)
    _RECORDED[folder] = merged
    return merged


def _read_schema_file(path: Path) -> pa.Schema | None:
    try:
        return _plain(pq.read_schema(path))
    except FileNotFoundError:
        return None
    except (pa.ArrowException, OSError):
        log.warning("the schema file %s is damaged; writing it again", path)
        return None


def _merge(known: pa.Schema, other: pa.Schema, known_from, other_from) -> pa.Schema:
    """The union of two schemas. A column whose type differs is a SchemaConflict naming it and
    where each type came from (`known_from(name)` says where the known one did)."""
    for column in other:
        index = known.get_field_index(column.name)
        if index < 0:
            continue
        mine = known.field(index).type
        if mine != column.type and not pa.types.is_null(column.type) and not pa.types.is_null(mine):
            raise SchemaConflict(
                f"column {column.name!r} is {column.type} in {other_from} but {mine} in "
                f"{known_from(column.name)}. Fix: move the file with the wrong type out of the dataset, or "
                "rewrite that column with one type")
    return pa.unify_schemas([known, other])


# --- reading ------------------------------------------------------------------------------------


@dataclass
class Files:
    """The files of one table folder."""

    loose: list[Path] = field(default_factory=list)
    parts: list[Path] = field(default_factory=list)

    @property
    def all(self) -> list[Path]:
        return self.parts + self.loose

    def rank(self, path: Path) -> int:
        match = PART.match(path.name)
        return int(match.group(1)) if match else LOOSE_RANK


def table_files(folder: Path) -> Files:
    """Loose files and parts of a table folder (hidden, temporary and schema files left out)."""
    found = Files()
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.parquet")):
        if path.name.startswith((".", "_")) or path.name == SCHEMA_FILE:
            continue
        (found.parts if PART.match(path.name) else found.loose).append(path)
    return found


def _file_version(schema: pa.Schema) -> int:
    raw = (schema.metadata or {}).get(VERSION_KEY)
    return int(raw) if raw else 1


def _why_unreadable(path: Path, exc: Exception) -> str:
    return f"not a readable Parquet file ({exc})"


@dataclass
class Read:
    """What `read_table` found: the rows, and the files it skipped with why."""

    table: pa.Table | None
    skipped: list[tuple[Path, str]]


def read_table(folder: Path, key: str, columns: list[str] | None = None, filter=None,
               one_row_per_key: bool = False, only: list[Path] | None = None) -> Read:
    """Every row of the table in `folder`, each key once, in the union of the files' columns.

    `columns` (the key is always read) and `filter` (a pyarrow expression) narrow the scan.
    `one_row_per_key`: a loose file must hold exactly one row (experiments, samples). `only`:
    read these files of the folder and no others (compaction).
    """
    files = table_files(Path(folder))
    if only is not None:
        chosen = set(only)
        files = Files([p for p in files.loose if p in chosen], [p for p in files.parts if p in chosen])
    skipped: list[tuple[Path, str]] = []
    schema, readable = _unified_schema(Path(folder), files, key, skipped)
    if not readable:
        _name_skipped(skipped)
        return Read(None, skipped)
    scan_columns = None if columns is None else [key, *[c for c in columns if c != key and c in schema.names]]
    try:
        table = _scan(readable, schema, scan_columns, filter)
    except (pa.ArrowException, OSError):
        table, bad = _scan_one_by_one(readable, schema, scan_columns, filter)
        skipped += bad
        readable = [p for p in readable if p not in {b for b, _ in bad}]
    table, foreign = _drop_foreign(table, key, one_row_per_key and filter is None)
    skipped += foreign
    if files.parts and (len(files.parts) > 1 or files.loose) and not _disjoint(Path(folder), readable):
        table = _newest_only(table, key, readable, files, filter)
    _name_skipped(skipped)
    return Read(table.drop_columns(["__filename"]), skipped)


def _name_skipped(skipped: list[tuple[Path, str]]) -> None:
    for path, why in skipped:
        log.warning("skipped %s: %s. Move it out of the dataset (a campaign run again sets such files aside "
                    "under the data root's quarantine folder)", path, why)


def _unified_schema(folder: Path, files: Files, key: str, skipped: list) -> tuple[pa.Schema, list[Path]]:
    """The union of the columns of the schema file and every readable file; the readable files."""
    schema = _read_schema_file(folder / SCHEMA_FILE)
    origin: dict[str, Path] = dict.fromkeys(schema.names, folder / SCHEMA_FILE) if schema is not None else {}
    readable = []
    for path in files.all:
        try:
            found = _schema_of(path)
        except (pa.ArrowException, OSError) as exc:
            skipped.append((path, _why_unreadable(path, exc)))
            continue
        if _file_version(found) > SCHEMA_VERSION:
            raise SdflInputError(f"{path} was written by a newer release of sdfl (schema version "
                                 f"{_file_version(found)}; this one reads up to {SCHEMA_VERSION}). Fix: upgrade sdfl")
        if found.get_field_index(key) < 0:
            skipped.append((path, f"not a record of this table (no {key!r} column; a foreign table: "
                                  f"columns {found.names[:6]})"))
            continue
        found = _plain(found)
        schema = found if schema is None else _merge(schema, found, origin.get, path)
        for name in found.names:
            origin.setdefault(name, path)
        readable.append(path)
    return (schema if schema is not None else pa.schema([])), readable


def _schema_of(path: Path) -> pa.Schema:
    """A file's schema; a part's is parsed once per process (a part never changes)."""
    if not PART.match(path.name):
        return pq.read_schema(path)
    st = path.stat()
    return _part_schema(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1024)
def _part_schema(path: str, size: int, mtime_ns: int) -> pa.Schema:
    return pq.read_schema(path)


def _scan(paths: list[Path], schema: pa.Schema, columns, filter) -> pa.Table:
    dataset = ds.dataset([str(p) for p in paths], schema=schema, format="parquet")
    return dataset.to_table(columns=[*(schema.names if columns is None else columns), "__filename"], filter=filter)


def _scan_one_by_one(paths, schema, columns, filter) -> tuple[pa.Table, list[tuple[Path, str]]]:
    parts, bad = [], []
    for path in paths:
        try:
            parts.append(_scan([path], schema, columns, filter))
        except (pa.ArrowException, OSError) as exc:
            bad.append((path, _why_unreadable(path, exc)))
    if not parts:
        return _scan([], schema, columns, filter), bad
    return pa.concat_tables(parts), bad


def _stems(table: pa.Table) -> pa.Array:
    names = pc.replace_substring_regex(table["__filename"], pattern=r"^.*/", replacement="")
    return pc.replace_substring_regex(names, pattern=r"\.parquet$", replacement="")


def _drop_foreign(table: pa.Table, key: str, one_row_per_key: bool) -> tuple[pa.Table, list[tuple[Path, str]]]:
    """Drop the rows of loose files that are not the key their name says (a foreign or renamed
    file), and, with `one_row_per_key`, loose files that do not hold exactly one row."""
    if table.num_rows == 0:
        return table, []
    names = pc.unique(table["__filename"]).to_pylist()
    loose_names = [n for n in names if not PART.match(Path(n).name)]
    if not loose_names:
        return table, []
    rows = table.filter(pc.is_in(table["__filename"], value_set=pa.array(loose_names)))
    wrong = pc.fill_null(pc.not_equal(rows[key].cast(pa.string()), _stems(rows)), True)
    why = {f: f"not a record of {Path(f).stem!r} (a foreign or renamed file)"
           for f in pc.unique(pc.filter(rows["__filename"], wrong)).to_pylist()}
    if one_row_per_key:
        counts = rows.group_by("__filename").aggregate([("__filename", "count")])
        for name, count in zip(counts["__filename"].to_pylist(), counts["__filename_count"].to_pylist()):
            if count != 1:
                why.setdefault(name, f"holds {count} rows where one record is expected")
    if not why:
        return table, []
    keep = pc.invert(pc.is_in(table["__filename"], value_set=pa.array(sorted(why))))
    return table.filter(keep), [(Path(f), w) for f, w in sorted(why.items())]


def _disjoint(folder: Path, readable: list[Path]) -> bool:
    """Whether no key can be in two of these files, by the part index alone: every part listed,
    no two part ranges overlapping, no loose file's key inside a part's range. (A campaign's ids
    grow with time, so this holds unless an experiment was written again after a compaction.)"""
    index = read_index(folder)
    ranges, loose = [], []
    for path in readable:
        if PART.match(path.name):
            if path.name not in index:
                return False
            ranges.append(index[path.name][:2])
        else:
            loose.append(path.stem)
    ranges.sort()
    if any(ranges[i][1] >= ranges[i + 1][0] for i in range(len(ranges) - 1)):
        return False
    lows = [low for low, _ in ranges]
    for stem in loose:
        i = bisect.bisect_right(lows, stem) - 1
        if i >= 0 and stem <= ranges[i][1]:
            return False
    return True


def _ranks(filenames: pa.ChunkedArray, files: Files) -> pa.Array:
    """The rank of the file each row came from."""
    names = pa.array([str(p) for p in files.all])
    ranks = pa.array([files.rank(p) for p in files.all], pa.int64())
    return pc.take(ranks, pc.index_in(filenames, value_set=names))


def _newest_only(table: pa.Table, key: str, readable: list[Path], files: Files, filter) -> pa.Table:
    """Keep, for each key, only the rows of the newest file that holds it (loose over parts, then
    the later generation). Which file holds a key is decided on an unfiltered scan of the keys."""
    keys = table if filter is None else _scan(readable, pa.schema([pa.field(key, table.schema.field(key).type)]),
                                              [key], None)
    holders = pa.table({key: keys[key], "__rank": _ranks(keys["__filename"], files)})
    newest = holders.group_by(key).aggregate([("__rank", "max")])
    if holders.group_by([key, "__rank"]).aggregate([]).num_rows == newest.num_rows:
        return table  # no key is in two files
    best = pc.take(newest["__rank_max"], pc.index_in(table[key], value_set=newest[key]))
    return table.filter(pc.equal(_ranks(table["__filename"], files), best))


# --- lookups by key ------------------------------------------------------------------------------


def read_key(folder: Path, key: str, value: str, columns: list[str] | None = None,
             one_row_per_key: bool = False) -> pa.Table | None:
    """The rows of one key, opening only what can hold it: its loose file, else the parts, newest
    first (each part's row-group statistics skip the groups that cannot hold the key). None if no
    file holds it."""
    folder = Path(folder)
    loose = folder / f"{value}.parquet"
    if loose.exists():
        try:
            table = pq.read_table(loose, columns=_present(loose, columns))
        except (pa.ArrowException, OSError) as exc:
            log.warning("skipped %s: %s", loose, _why_unreadable(loose, exc))
        else:
            holds = key in table.column_names and pc.all(pc.equal(table[key], value)).as_py() is not False
            if holds and table.num_rows and not (one_row_per_key and table.num_rows != 1):
                return table.replace_schema_metadata(None)
            log.warning("skipped %s: not a record of %r (a foreign or renamed file)", loose, value)
    for part in _candidate_parts(folder, value):
        try:
            found = _read_key_from_part(part, key, value, columns)
        except (pa.ArrowException, OSError, ValueError) as exc:
            log.warning("skipped %s: %s", part, _why_unreadable(part, exc))
            continue
        if found.num_rows:
            return found
    return None


def holder(folder: Path, key: str, value: str) -> Path | None:
    """The part that holds `value` (newest first), None if none does (loose files not looked at)."""
    for part in _candidate_parts(Path(folder), value):
        try:
            if _read_key_from_part(part, key, value, [key]).num_rows:
                return part
        except (pa.ArrowException, OSError, ValueError):
            continue
    return None


def _candidate_parts(folder: Path, value: str) -> list[Path]:
    """The parts that may hold `value`, newest first (the index rules out the others)."""
    index = read_index(folder)
    return [p for p in reversed(table_files(folder).parts)
            if p.name not in index or index[p.name][0] <= value <= index[p.name][1]]


@functools.lru_cache(maxsize=256)
def _part_footer(path: str, size: int, mtime_ns: int, key: str) -> tuple[pq.FileMetaData, np.ndarray, np.ndarray]:
    """A part's footer and each row group's smallest and largest key, parsed once per process (a
    part never changes: a compaction writes a new one; size and mtime make a replaced file a new entry)."""
    metadata = pq.read_metadata(path)
    column = metadata.schema.to_arrow_schema().get_field_index(key)
    low, high = [], []
    for i in range(metadata.num_row_groups):
        stats = metadata.row_group(i).column(column).statistics
        has = stats is not None and stats.has_min_max
        low.append(stats.min if has else "")
        high.append(stats.max if has else "\U0010ffff")
    return metadata, np.array(low, dtype=object), np.array(high, dtype=object)


def _read_key_from_part(part: Path, key: str, value: str, columns: list[str] | None) -> pa.Table:
    """The rows of `value` in one part, reading only the row groups whose key range holds it."""
    st = part.stat()
    metadata, low, high = _part_footer(str(part), st.st_size, st.st_mtime_ns, key)
    groups = np.flatnonzero((low <= value) & (value <= high)).tolist()
    names = metadata.schema.to_arrow_schema().names
    wanted = None if columns is None else [c for c in dict.fromkeys([key, *columns]) if c in names]
    if not groups:
        return pa.table({key: pa.array([], pa.string())})
    table = pq.ParquetFile(part, metadata=metadata).read_row_groups(groups, columns=wanted)
    return table.filter(pc.equal(table[key], value)).replace_schema_metadata(None)


def read_index(folder: Path) -> dict[str, list]:
    """The folder's part index ({} when there is none or it cannot be read: every part is opened)."""
    try:
        return json.loads((Path(folder) / PARTS_INDEX).read_text())
    except (OSError, ValueError):
        return {}


def _present(path: Path, columns: list[str] | None) -> list[str] | None:
    if columns is None:
        return None
    names = set(pq.read_schema(path).names)
    return [c for c in columns if c in names]


def keys(folder: Path, key: str) -> set[str]:
    """Every key the table holds: the loose files' names and the parts' key column."""
    files = table_files(Path(folder))
    found = {p.stem for p in files.loose}
    for part in files.parts:
        try:
            found.update(pc.unique(pq.read_table(part, columns=[key])[key]).to_pylist())
        except (pa.ArrowException, OSError) as exc:
            log.warning("skipped %s: %s", part, _why_unreadable(part, exc))
    return found
