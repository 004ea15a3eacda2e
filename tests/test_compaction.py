"""Compaction: loose per-experiment files folded into parts, with nothing lost or read twice, even
when the compacting process is killed at any moment."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO_DIR, no_traceback
from test_storage import a_row, a_spectrum

from tasks import compaction, dataset
from tasks.storage import (
    compact_campaign,
    read_experiments,
    read_spectra,
    table_folder,
    write_experiment,
)


def record(schema, root, first: int, count: int, campaign="c") -> None:
    for i in range(first, first + count):
        write_experiment(a_row(f"exp-{i:05d}", PL_I=1000.0 + i, temperature_c=100.0 + i % 50),
                         [a_spectrum("pl", 0), a_spectrum("absorbance", 0)], schema, campaign, root)


def snapshot(root, campaign="c") -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = read_experiments(root, campaign).sort_values("experiment_id").reset_index(drop=True)
    spectra = read_spectra(root, campaign).sort_values(["experiment_id", "kind"]).reset_index(drop=True)
    return rows, spectra


def assert_same(before, after) -> None:
    """The same experiments and spectra, value for value."""
    for old, new in zip(before, after):
        pd.testing.assert_frame_equal(old, new[old.columns])


def test_compaction_folds_every_loose_file_and_reads_back_the_same(schema, data_root):
    record(schema, data_root, 0, 30)
    before = snapshot(data_root)

    done = compact_campaign(data_root, "c")

    assert done["experiments"].loose_folded == 30 and done["spectra"].loose_folded == 30
    for table in ("experiments", "spectra"):
        files = dataset.table_files(table_folder(data_root.resolve(), "c", table))
        assert not files.loose and len(files.parts) == 1
    assert_same(before, snapshot(data_root))
    assert len(pd.read_parquet(table_folder(data_root.resolve(), "c"))) == 30  # plain pandas: each row once

    record(schema, data_root, 30, 5)  # new experiments after compaction are loose files again
    assert len(read_experiments(data_root, "c")) == 35


def test_a_key_rewritten_after_compaction_reads_its_new_rows(schema, data_root):
    record(schema, data_root, 0, 3)
    compact_campaign(data_root, "c")
    write_experiment(a_row("exp-00001", PL_I=-1.0), [a_spectrum("pl", 0)], schema, "c", data_root)

    rows = read_experiments(data_root, "c").set_index("experiment_id")
    assert len(rows) == 3 and rows.loc["exp-00001", "PL_I"] == -1.0
    assert len(read_spectra(data_root, "c", "exp-00001")) == 1
    compact_campaign(data_root, "c")
    rows = read_experiments(data_root, "c").set_index("experiment_id")
    assert len(rows) == 3 and rows.loc["exp-00001", "PL_I"] == -1.0


def test_spectra_parts_keep_each_kind_apart_so_reading_one_kind_skips_the_others(schema, data_root):
    for i in range(40):
        write_experiment(a_row(f"exp-{i:05d}"), [a_spectrum(kind, r) for kind in ("pl", "pl_cps") for r in (0, 1)],
                         schema, "c", data_root)
    before = snapshot(data_root)
    compact_campaign(data_root, "c")
    (part,) = dataset.table_files(table_folder(data_root, "c", "spectra")).parts
    metadata = pq.read_metadata(part)
    names = metadata.schema.to_arrow_schema().names
    kind, replicate = names.index("kind"), names.index("replicate")
    groups = [metadata.row_group(i) for i in range(metadata.num_row_groups)]
    for group in groups:  # each row group holds one kind and replicate: a read of one kind skips the rest
        for column in (kind, replicate):
            stats = group.column(column).statistics
            assert stats.has_min_max and stats.min == stats.max
    assert len(groups) >= 4 * 40 // 16
    assert "BYTE_STREAM_SPLIT" in groups[0].column(names.index("value")).encodings
    assert_same(before, snapshot(data_root))
    one_kind = read_spectra(data_root, "c", kind="pl_cps", replicate=1).sort_values("experiment_id")
    expected = before[1][(before[1]["kind"] == "pl_cps") & (before[1]["replicate"] == 1)]
    pd.testing.assert_frame_equal(one_kind.reset_index(drop=True), expected.reset_index(drop=True)[one_kind.columns])
    assert dataset.read_index(part.parent) == {part.name: ["exp-00000", "exp-00039", 40]}


def test_an_interrupted_batch_is_finished_or_undone_and_a_rewritten_file_is_kept(tmp_path):
    folder = tmp_path / "t"
    schema = pa.schema([pa.field("key", pa.string()), pa.field("value", pa.float64())])
    for key, value in (("a", 1.0), ("b", 2.0)):
        dataset.write_loose(pa.table({"key": [key], "value": [value]}, schema=schema), folder, key)
    identities = [compaction._identity(folder / "a.parquet"), compaction._identity(folder / "b.parquet")]
    table = dataset.read_table(folder, "key").table
    # A complete batch whose process died before deleting: its loose files go, except one that was
    # rewritten after it was read (new identity), which stays and wins.
    compaction._write_batch(table, "key", folder, 1, identities, [])
    time.sleep(0.01)
    dataset.write_loose(pa.table({"key": ["b"], "value": [20.0]}, schema=schema), folder, "b")
    assert compaction.finish_interrupted(folder) == 1
    assert [p.name for p in dataset.table_files(folder).loose] == ["b.parquet"]
    assert dataset.read_table(folder, "key").table.to_pydict() == {"key": ["a", "b"], "value": [1.0, 20.0]}
    # An incomplete batch (one of its two parts written): its part is deleted, the sources stay.
    batch = {"token": "t0", "parts_in_batch": 2, "loose": [compaction._identity(folder / "b.parquet")], "parts": []}
    partial = pa.table({"key": ["b"], "value": [20.0]}, schema=schema).replace_schema_metadata(
        {compaction.BATCH_KEY: json.dumps(batch).encode()})
    dataset.write_file(partial, folder / "part-000009-0000abcd.parquet")
    assert compaction.finish_interrupted(folder) == 1
    assert (folder / "b.parquet").exists() and not (folder / "part-000009-0000abcd.parquet").exists()


def test_small_parts_are_merged_and_a_rewritten_key_leaves_no_old_row(tmp_path, monkeypatch):
    monkeypatch.setattr(compaction, "MAX_SMALL_PARTS", 3)
    folder = tmp_path / "t"
    schema = pa.schema([pa.field("key", pa.string()), pa.field("value", pa.float64())])
    for round_ in range(4):  # four compactions of two new keys each: the fourth merges the small parts
        for key in (f"a{round_}", f"b{round_}"):
            dataset.write_loose(pa.table({"key": [key], "value": [float(round_)]}, schema=schema), folder, key)
        done = compaction.compact(folder, "key")
    assert done.parts_merged == 4 and len(dataset.table_files(folder).parts) == 1
    dataset.write_loose(pa.table({"key": ["a1"], "value": [-1.0]}, schema=schema), folder, "a1")
    compaction.compact(folder, "key")
    (part,) = dataset.table_files(folder).parts
    on_disk = pq.read_table(part).to_pydict()
    assert sorted(on_disk["key"]) == ["a0", "a1", "a2", "a3", "b0", "b1", "b2", "b3"]  # a1 once
    assert dict(zip(on_disk["key"], on_disk["value"]))["a1"] == -1.0


def test_a_batch_whose_part_a_later_merge_took_keeps_its_other_parts(tmp_path, monkeypatch):
    monkeypatch.setattr(compaction, "PART_KEYS", 2)
    monkeypatch.setattr(compaction, "MAX_SMALL_PARTS", 1)
    folder = tmp_path / "t"
    schema = pa.schema([pa.field("key", pa.string()), pa.field("value", pa.float64())])

    def add(*keys):
        for key in keys:
            dataset.write_loose(pa.table({"key": [key], "value": [1.0]}, schema=schema), folder, key)

    add("a", "b", "c")
    assert compaction.compact(folder, "key").parts_written == 2  # one batch: {a, b} and the small {c}
    add("d")
    assert compaction.compact(folder, "key").parts_merged == 2  # {c} and {d} merged: the first batch is cut
    compaction.compact(folder, "key")
    assert sorted(dataset.read_table(folder, "key").table["key"].to_pylist()) == ["a", "b", "c", "d"]


SERVER = """
import os, sys, time
from tasks.storage import compact_campaign
print("ready", flush=True)
for line in sys.stdin:  # one compaction per line, each in a child process the test may kill
    started = time.monotonic()
    child = os.fork()
    if child == 0:
        compact_campaign(sys.argv[1], "c")
        os._exit(0)
    print(child, flush=True)
    os.waitpid(child, 0)
    print(time.monotonic() - started, flush=True)
"""


def small_spectrum(kind):
    """A short spectrum: the kill test is about files, not pixels."""
    return {**a_spectrum(kind, 0), "wavelength_nm": np.linspace(300.0, 800.0, 64), "value": np.ones(64)}


def record_small(schema, root, first: int, count: int) -> None:
    for i in range(first, first + count):
        write_experiment(a_row(f"exp-{i:05d}", PL_I=1000.0 + i), [small_spectrum("pl"), small_spectrum("absorbance")],
                         schema, "c", root)


@pytest.mark.slow
def test_kill_9_at_any_moment_of_a_compaction_loses_and_doubles_nothing(schema, data_root):
    """20 compactions killed with SIGKILL at random moments, with new experiments recorded between
    them and now and then an old one written again: after each kill every experiment reads back
    exactly once with the same values; the next compaction finishes the job, and then no loose file
    and no old row is left behind (plain pandas reads each experiment once too)."""
    rng = random.Random(7)
    record_small(schema, data_root, 0, 30)
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(data_root)], cwd=REPO_DIR, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": REPO_DIR})
    try:
        assert server.stdout.readline().strip() == "ready"

        def start() -> int:
            server.stdin.write("compact\n")
            server.stdin.flush()
            return int(server.stdout.readline())

        start()
        server.stdout.readline()
        record_small(schema, data_root, 30, 15)
        start()
        duration = float(server.stdout.readline())  # a whole compaction of 15 new experiments
        written, mid_compaction = 45, 0
        for _ in range(20):
            record_small(schema, data_root, written, 15)
            written += 15
            if rng.random() < 0.3:  # an experiment compacted earlier is written again (a retried write)
                write_experiment(a_row("exp-00003", PL_I=-3.0), [small_spectrum("pl")], schema, "c", data_root)
            before = snapshot(data_root)
            child = start()
            time.sleep(rng.uniform(0.0, 1.2 * duration))
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
            server.stdout.readline()  # the child is gone
            mid_compaction += any(dataset.table_files(table_folder(data_root.resolve(), "c", t)).loose
                                  for t in ("experiments", "spectra"))
            after = snapshot(data_root)
            assert len(after[0]) == written and after[0]["experiment_id"].is_unique
            assert_same(before, after)
            start()  # the next compaction finishes what the killed one left
            server.stdout.readline()
            assert_same(before, snapshot(data_root))
        assert mid_compaction >= 5  # many kills landed before the compaction had finished
    finally:
        server.kill()
        server.wait()
    compact_campaign(data_root, "c")
    for table in ("experiments", "spectra"):
        assert not dataset.table_files(table_folder(data_root.resolve(), "c", table)).loose
    plain = pd.read_parquet(table_folder(data_root.resolve(), "c"))
    assert len(plain) == written and plain["experiment_id"].is_unique
    assert plain.set_index("experiment_id").loc["exp-00003", "PL_I"] in (-3.0, 1003.0)


def test_sdfl_compact_says_what_it_did(sdfl, schema, data_root):
    record(schema, data_root, 0, 12)
    done = sdfl("compact", "--data-root", str(data_root))
    out = no_traceback(done)
    assert done.returncode == 0, out
    assert "c: 12 experiment and 12 spectra file(s) folded into parts" in out and "MB ->" in out
    wrong = sdfl("compact", "--campaign", "d", "--data-root", str(data_root))
    assert wrong.returncode != 0 and "no such campaign" in no_traceback(wrong) and "campaigns there: c" in wrong.stderr
    assert pq.read_schema(next(table_folder(data_root.resolve(), "c").glob("part-*.parquet")))
