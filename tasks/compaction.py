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

import contextlib
import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

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
    finished long ago, and a later merge took some of its parts: leave it.
    Returns how many files were deleted."""
    batches: dict[str, tuple[dict, list[Path]]] = {}
    for part in table_files(folder).parts:
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


def _write_batch(table: pa.Table, key: str, folder: Path, generation: int, loose: list, parts: list[str],
                 layout: PartLayout = PartLayout()) -> int:
    """`table` as one batch of parts of at most PART_KEYS keys each, sorted by the layout's order
    then the key. Every part names the batch and what it absorbs; nothing is deleted until all of
    them are in place."""
    table = table.sort_by([(key, "ascending")])
    record_schema(folder, table.schema)  # pandas and polars read the parts' columns too
    keys = pc.unique(table[key])
    chunks = [keys.slice(start, PART_KEYS) for start in range(0, len(keys), PART_KEYS)]
    batch = {"token": uuid.uuid4().hex, "parts_in_batch": len(chunks), "loose": loose, "parts": parts}
    order = [(c, "ascending") for c in layout.order if c in table.column_names] + [(key, "ascending")]
    for chunk_keys in chunks:
        chunk = table.filter(pc.is_in(table[key], value_set=chunk_keys)).sort_by(order)
        chunk = chunk.replace_schema_metadata({**(chunk.schema.metadata or {}), BATCH_KEY: json.dumps(batch).encode()})
        name = f"part-{generation:06d}-{uuid.uuid4().hex[:8]}.parquet"
        write_file(chunk, folder / name, row_group_size=layout.row_group_rows)
        generation += 1
    return len(chunks)


def refresh_index(folder: Path, key: str) -> dict[str, list]:
    """Write the folder's part index (each part's smallest and largest key), so a lookup by key
    opens only the parts whose range holds it. Parts it does not list are always opened."""
    path = folder / PARTS_INDEX
    index = read_index(folder)
    parts = table_files(folder).parts
    fresh = {}
    for part in parts:
        if part.name in index:
            fresh[part.name] = index[part.name]
            continue
        try:
            bounds = pc.min_max(pq.read_table(part, columns=[key])[key])
        except (pa.ArrowException, OSError):
            continue
        fresh[part.name] = [bounds["min"].as_py(), bounds["max"].as_py()]
    if fresh != index or not path.exists():
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
                done.parts_written = _write_batch(table, key, folder, _next_generation(files), loose, stale, layout)
                finish_interrupted(folder)  # the batch is complete: delete the loose files it absorbed
            done.loose_folded = len(loose)
        done.parts_merged = _merge_small_parts(folder, key, transform, layout)
        refresh_index(folder, key)
    if done.loose_folded or done.parts_merged:
        log.info("compacted %s: %d loose file(s) folded, %d part(s) merged", folder, done.loose_folded,
                 done.parts_merged)
    return done


def _with_stale_parts(table: pa.Table, folder: Path, key: str, files: Files) -> tuple[pa.Table, list[str]]:
    """Loose rows, plus what still reads from the parts that hold one of their keys (an experiment
    written again after it was compacted): those parts are rewritten without the old rows, so no
    reader, pandas included, sees the experiment twice. Returns the rows and the parts absorbed."""
    loose_keys = set(table[key].to_pylist())
    keys = {p: _keys_of(p, key) for p in files.parts}
    stale = [p for p in files.parts if keys[p] & loose_keys]
    if not stale:
        return table, []
    kept = _rows_that_read(stale, files, keys, key, loose_keys)
    return pa.concat_tables([table, *kept], promote_options="default"), [p.name for p in stale]


def _rows_that_read(parts: list[Path], files: Files, keys: dict[Path, set], key: str, exclude: set) -> list[pa.Table]:
    """The rows of `parts` that readers see today: a key's rows from the newest part that holds it,
    none where a later part holds the key, none whose key is in `exclude`."""
    tables = []
    for part in parts:
        newer = set().union(*(keys[p] for p in files.parts if files.rank(p) > files.rank(part)))
        table = pq.read_table(part).replace_schema_metadata(None)
        dropped = pa.array(sorted(newer | exclude), table.schema.field(key).type)
        tables.append(table.filter(pc.invert(pc.is_in(table[key], value_set=dropped))))
    return tables


def _merge_small_parts(folder: Path, key: str, transform=None, layout: PartLayout = PartLayout()) -> int:
    """Merge the parts below PART_KEYS keys when there are more than MAX_SMALL_PARTS of them, keeping
    the rows that read today."""
    files = table_files(folder)
    keys = {p: _keys_of(p, key) for p in files.parts}
    small = [p for p in files.parts if len(keys[p]) < PART_KEYS]
    if len(small) <= MAX_SMALL_PARTS:
        return 0
    merged = pa.concat_tables(_rows_that_read(small, files, keys, key, set()), promote_options="default")
    merged = transform(merged) if transform is not None else merged
    if merged.num_rows:
        _write_batch(merged, key, folder, _next_generation(files), [], [p.name for p in small], layout)
    else:
        for part in small:
            part.unlink(missing_ok=True)
    finish_interrupted(folder)
    return len(small)


def _keys_of(part: Path, key: str) -> set:
    return set(pc.unique(pq.read_table(part, columns=[key])[key]).to_pylist())


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
