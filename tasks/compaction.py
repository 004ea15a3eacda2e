"""Compaction: fold a table's loose files into part files, safe against a kill at any moment.

Loose files (one key each, tasks/dataset.py) are the write-ahead unit: an experiment is on disk
once its file is renamed into place. Compaction folds them into a new part, sorted by key, then
deletes them; when a table has more than MAX_SMALL_PARTS parts below PART_KEYS keys, it merges
those. The parts one compaction writes are a batch: each names the batch, its size and what it
absorbs (the loose files with their size, mtime and inode, or the parts it merges), and nothing
is deleted until the whole batch is in place. The next compaction finishes a killed one: a
complete batch's sources are deleted, an incomplete batch's parts are (their rows are still in
the sources). Meanwhile readers take each key once: the loose file over a part, the later part
over an earlier one. A loose file rewritten after the compaction read it is never deleted (its
identity changed); it is newer, and it wins.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.dataset import (
    PART,
    PARTS_INDEX,
    Files,
    folder_lock,
    fsync_folder,
    read_index,
    read_table,
    record_schema,
    table_files,
    tmp_name,
    write_file,
)

log = logging.getLogger(__name__)

BATCH_KEY = b"sdfl.compaction"
LOOSE_THRESHOLD = 256
"""A campaign table with this many loose files is compacted while the campaign runs."""
PART_KEYS = 4096
"""Keys (experiments) per part: a lookup reads one part's footer, which stays small."""
MAX_SMALL_PARTS = 8
"""More parts than this below PART_KEYS keys are merged into full ones."""
ROW_GROUP_ROWS = 1024
"""Rows per row group: a lookup by key reads one group (the keys are sorted within a part)."""


@dataclass
class Compacted:
    """What one compaction did."""

    folder: Path
    loose_folded: int = 0
    parts_written: int = 0
    parts_merged: int = 0
    finished_earlier: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _identity(path: Path) -> list:
    st = path.stat()
    return [path.name, st.st_size, st.st_mtime_ns, st.st_ino]


def _batch(part: Path) -> dict | None:
    raw = (pq.read_schema(part).metadata or {}).get(BATCH_KEY)
    return json.loads(raw) if raw else None


def _next_generation(files: Files) -> int:
    return 1 + max((int(PART.match(p.name).group(1)) for p in files.parts), default=0)


def finish_interrupted(folder: Path) -> int:
    """Finish or undo what a killed compaction left. A batch whose parts are all in place: delete
    what it absorbed (loose files still exactly as read, by size, mtime and inode; merged parts).
    A batch with parts missing while its sources are still there was cut short: delete its parts
    (what they hold is still in the sources). A batch with parts missing and no source left
    finished long ago, and a later merge took some of its parts: leave it. Parts the index lists
    are not opened: the index is written after a compaction has finished its batches.
    Returns how many files were deleted."""
    batches: dict[str, tuple[dict, list[Path]]] = {}
    indexed = read_index(folder)  # listed only once the compaction that wrote them had finished
    for part in table_files(folder).parts:
        if part.name in indexed:
            continue
        try:
            batch = _batch(part)
        except (pa.ArrowException, OSError):
            continue
        if batch is not None:
            batches.setdefault(batch["token"], (batch, []))[1].append(part)
    removed = 0
    for batch, parts in batches.values():
        sources = [folder / name for name in batch["parts"] if (folder / name).exists()]
        sources += [folder / i[0] for i in batch["loose"] if _same(folder / i[0], i)]
        if len(parts) == batch["parts_in_batch"]:
            doomed = sources
        else:
            doomed = parts if sources else []
        for path in doomed:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
    if removed:
        fsync_folder(folder)
    return removed


def _same(path: Path, identity: list) -> bool:
    try:
        return _identity(path) == identity
    except FileNotFoundError:
        return False


@dataclass(frozen=True)
class PartLayout:
    """How a table's parts are laid out: the columns their rows are sorted by before the key (so a
    read of one kind of row skips the row groups of the others) and the rows per row group (a
    lookup by key reads whole row groups)."""

    order: tuple[str, ...] = ()
    row_group_rows: int = ROW_GROUP_ROWS
    split_floats: tuple[str, ...] = ()


def _write_batch(table: pa.Table, key: str, folder: Path, generation: int, loose: list, parts: list[str],
                 layout: PartLayout = PartLayout()) -> dict[str, list]:
    """`table` as one batch of parts of at most PART_KEYS keys each, sorted by the layout's order
    then the key. Every part names the batch and what it absorbs; nothing is deleted until all of
    them are in place. Returns the parts' index entries."""
    table = table.sort_by([(key, "ascending")])
    record_schema(folder, table.schema)  # pandas and polars read the parts' columns too
    keys = pc.unique(table[key])
    chunks = [keys.slice(start, PART_KEYS) for start in range(0, len(keys), PART_KEYS)]
    batch = {"token": uuid.uuid4().hex, "parts_in_batch": len(chunks), "loose": loose, "parts": parts}
    order = [(c, "ascending") for c in layout.order if c in table.column_names] + [(key, "ascending")]
    entries = {}
    for chunk_keys in chunks:
        chunk = table.filter(pc.is_in(table[key], value_set=chunk_keys)).sort_by(order)
        chunk = chunk.replace_schema_metadata({**(chunk.schema.metadata or {}), BATCH_KEY: json.dumps(batch).encode()})
        name = f"part-{generation:06d}-{uuid.uuid4().hex[:8]}.parquet"
        write_file(chunk, folder / name, _breaks(chunk, layout.order), layout.row_group_rows,
                   **_encodings(chunk, key, layout))
        entries[name] = [chunk_keys[0].as_py(), chunk_keys[-1].as_py(), len(chunk_keys)]
        generation += 1
    return entries


def _breaks(table: pa.Table, order: tuple[str, ...]) -> list[int]:
    """The rows (of a table sorted by `order`) where the value of an order column changes."""
    changed = np.zeros(max(table.num_rows - 1, 0), dtype=bool)
    for column in (c for c in order if c in table.column_names):
        values = table[column].to_numpy(zero_copy_only=False)
        changed |= values[1:] != values[:-1]
    return (np.flatnonzero(changed) + 1).tolist()


def _encodings(table: pa.Table, key: str, layout: PartLayout) -> dict:
    """Parquet options for a part: statistics only on the key and the layout's order (what readers
    skip row groups by; statistics of every column would make the footer, which a lookup parses,
    many times larger), dictionaries only for strings, and the float lists of the layout's
    `split_floats` columns in byte-stream-split encoding (their bytes of equal weight side by side,
    which compress better)."""
    strings = [f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    split = [c for c in layout.split_floats if c in table.column_names]
    return {"write_statistics": [c for c in (key, *layout.order) if c in table.column_names],
            "use_dictionary": strings,
            **({"column_encoding": {_leaf(table, c): "BYTE_STREAM_SPLIT" for c in split}} if split else {})}


def _leaf(table: pa.Table, column: str) -> str:
    """The Parquet path of a column's values (`value.list.element` for a list)."""
    return f"{column}.list.element" if pa.types.is_list(table.schema.field(column).type) else column


def refresh_index(folder: Path, key: str, written: dict[str, list] | None = None) -> dict[str, list]:
    """Write the folder's part index: each part's smallest and largest key and how many keys it
    holds, so a lookup opens only the parts whose range holds a key and a compaction knows the
    small parts without reading them. `written`: entries of parts just written. Parts the index
    does not list are always opened."""
    path = folder / PARTS_INDEX
    index = {**read_index(folder), **(written or {})}
    fresh = {}
    for part in table_files(folder).parts:
        entry = index.get(part.name)
        if entry is None or len(entry) < 3:
            try:
                keys = pc.unique(pq.read_table(part, columns=[key])[key]).sort()
            except (pa.ArrowException, OSError):
                continue
            entry = [keys[0].as_py(), keys[-1].as_py(), len(keys)] if len(keys) else None
        if entry is not None:
            fresh[part.name] = entry
    if fresh != read_index(folder) or not path.exists():
        tmp = tmp_name(path)
        tmp.write_text(json.dumps(fresh))
        os.replace(tmp, path)
    return fresh


def compact(folder: Path, key: str, one_row_per_key: bool = False, transform=None,
            layout: PartLayout = PartLayout()) -> Compacted:
    """Fold the loose files of the table in `folder` into new parts, then merge small parts.

    Holds the table's compaction lock (one compaction at a time, also across machines on a shared
    disk). Files that cannot be read stay where they are, named in `skipped`. `transform(table)`
    turns rows of an older layout into today's before they are written (spectra: their grids).
    """
    folder = Path(folder)
    done = Compacted(folder)
    with folder_lock(folder, "compact"):
        done.finished_earlier = finish_interrupted(folder)
        files = table_files(folder)
        if files.loose:
            identities = {p.name: _identity(p) for p in files.loose}
            found = read_table(folder, key, one_row_per_key=one_row_per_key, only=files.loose)
            done.skipped = found.skipped
            bad = {p.name for p, _ in found.skipped}
            loose = [i for name, i in identities.items() if name not in bad]
            if found.table is not None and found.table.num_rows:
                table, stale = _with_stale_parts(found.table, folder, key, files)
                table = transform(table) if transform is not None else table
                entries = _write_batch(table, key, folder, _next_generation(files), loose, stale, layout)
                finish_interrupted(folder)  # the batch is complete: delete the loose files it absorbed
                refresh_index(folder, key, entries)
                done.parts_written = len(entries)
            done.loose_folded = len(loose)
        done.parts_merged = _merge_small_parts(folder, key, transform, layout)
        refresh_index(folder, key)
    if done.loose_folded or done.parts_merged:
        log.info("compacted %s: %d loose file(s) folded, %d part(s) merged", folder, done.loose_folded,
                 done.parts_merged)
    return done


class _Keys:
    """The keys of a folder's parts, read only when asked for, and each part's key range (from the
    index; read from the part where the index does not list it)."""

    def __init__(self, folder: Path, key: str, files: Files):
        self.key, self.files, self.index = key, files, read_index(folder)
        self._read: dict[Path, set] = {}

    def of(self, part: Path) -> set:
        if part not in self._read:
            self._read[part] = set(pc.unique(pq.read_table(part, columns=[self.key])[self.key]).to_pylist())
        return self._read[part]

    def range(self, part: Path) -> tuple:
        entry = self.index.get(part.name)
        if entry is None:
            keys = self.of(part)
            return (min(keys), max(keys)) if keys else ("", "")
        return entry[0], entry[1]

    def count(self, part: Path) -> int:
        entry = self.index.get(part.name)
        return entry[2] if entry is not None and len(entry) > 2 else len(self.of(part))

    def holding_any(self, parts: list[Path], keys: list) -> list[Path]:
        """The parts that hold one of `keys` (only those whose range covers one are read)."""
        ordered = sorted(keys)
        found = []
        for part in parts:
            low, high = self.range(part)
            i = bisect.bisect_left(ordered, low)
            if i < len(ordered) and ordered[i] <= high and self.of(part) & set(keys):
                found.append(part)
        return found

    def newer(self, part: Path) -> set:
        """The keys of later parts whose range overlaps this part's (those that win over it)."""
        low, high = self.range(part)
        later = [p for p in self.files.parts if self.files.rank(p) > self.files.rank(part)]
        return set().union(*(self.of(p) for p in later if self.range(p)[0] <= high and low <= self.range(p)[1]))


def _with_stale_parts(table: pa.Table, folder: Path, key: str, files: Files) -> tuple[pa.Table, list[str]]:
    """Loose rows, plus what still reads from the parts that hold one of their keys (an experiment
    written again after it was compacted): those parts are rewritten without the old rows, so no
    reader, pandas included, sees the experiment twice. Returns the rows and the parts absorbed."""
    loose_keys = table[key].to_pylist()
    keys = _Keys(folder, key, files)
    stale = keys.holding_any(files.parts, loose_keys)
    if not stale:
        return table, []
    kept = _rows_that_read(stale, keys, set(loose_keys))
    return pa.concat_tables([table, *kept], promote_options="default"), [p.name for p in stale]


def _rows_that_read(parts: list[Path], keys: _Keys, exclude: set) -> list[pa.Table]:
    """The rows of `parts` that readers see today: a key's rows from the newest part that holds it,
    none where a later part holds the key, none whose key is in `exclude`."""
    tables = []
    for part in parts:
        table = pq.read_table(part).replace_schema_metadata(None)
        dropped = pa.array(sorted(keys.newer(part) | exclude), table.schema.field(keys.key).type)
        tables.append(table.filter(pc.invert(pc.is_in(table[keys.key], value_set=dropped))))
    return tables


def _merge_small_parts(folder: Path, key: str, transform=None, layout: PartLayout = PartLayout()) -> int:
    """Merge the parts below PART_KEYS keys when there are more than MAX_SMALL_PARTS of them, keeping
    the rows that read today."""
    files = table_files(folder)
    keys = _Keys(folder, key, files)
    small = [p for p in files.parts if keys.count(p) < PART_KEYS]
    if len(small) <= MAX_SMALL_PARTS:
        return 0
    merged = pa.concat_tables(_rows_that_read(small, keys, set()), promote_options="default")
    merged = transform(merged) if transform is not None else merged
    entries = {}
    if merged.num_rows:
        entries = _write_batch(merged, key, folder, _next_generation(files), [], [p.name for p in small], layout)
    else:
        for part in small:
            part.unlink(missing_ok=True)
    finish_interrupted(folder)
    refresh_index(folder, key, entries)
    return len(small)


def loose_count(folder: Path) -> int:
    """How many loose files the table has (a listing, nothing read)."""
    return len(table_files(Path(folder)).loose)


def compact_if_due(folder: Path, key: str, one_row_per_key: bool = False, finish: bool = True,
                   threshold: int = LOOSE_THRESHOLD, transform=None, layout: PartLayout = PartLayout()
                   ) -> Compacted | None:
    """Compact when the table has `threshold` loose files or more; otherwise, with `finish`, only
    finish a compaction a crash interrupted (reading the parts' footers). None when nothing was due."""
    if loose_count(folder) >= threshold:
        return compact(folder, key, one_row_per_key, transform, layout)
    if finish and table_files(folder).parts:
        with folder_lock(folder, "compact"):
            finish_interrupted(folder)
    return None
