"""The one reader and writer of the data root's tables: no column is ever lost, a changed type is
named, lookups by id open one file, and pandas, duckdb and polars read a campaign in one line."""

from __future__ import annotations

import logging
import threading

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_storage import a_row, a_spectrum

from hardware.errors import SdflInputError
from tasks import compaction, dataset
from tasks.dataset import SCHEMA_FILE, SchemaConflict, read_table, record_schema, write_loose
from tasks.storage import (
    experiment_ids,
    read_experiment,
    read_experiments,
    read_spectra,
    table_folder,
    write_experiment,
)


def with_new_column(schema: pa.Schema) -> pa.Schema:
    """The schema a later release writes: one more feature (a side peak)."""
    return schema.append(pa.field("PL2_peak_nm", pa.float64()))


@pytest.fixture
def campaign_with_a_later_column(schema, data_root):
    """Two experiments from today's release, then one from a release that adds a column."""
    write_experiment(a_row("exp-a"), [a_spectrum()], schema, "c", data_root)
    write_experiment(a_row("exp-b"), [a_spectrum()], schema, "c", data_root)
    write_experiment(a_row("exp-c", PL2_peak_nm=612.5), [a_spectrum()], with_new_column(schema), "c", data_root)
    return table_folder(data_root.resolve(), "c")


def test_a_column_added_later_reads_back_with_null_for_older_rows(campaign_with_a_later_column, data_root):
    rows = read_experiments(data_root, "c").set_index("experiment_id")
    assert rows.loc["exp-c", "PL2_peak_nm"] == 612.5
    assert rows.loc[["exp-a", "exp-b"], "PL2_peak_nm"].isna().all()
    assert rows.loc["exp-a", "PL_I"] == 1.0e5  # the older rows keep all their own columns
    assert read_experiment(data_root, "c", "exp-c")["PL2_peak_nm"] == 612.5


def test_pandas_reads_a_campaign_in_one_line_with_every_column(campaign_with_a_later_column):
    frame = pd.read_parquet(campaign_with_a_later_column)
    assert len(frame) == 3 and "PL2_peak_nm" in frame.columns
    assert frame.set_index("experiment_id").loc["exp-c", "PL2_peak_nm"] == 612.5


def test_pandas_reads_every_campaign_in_one_line(schema, data_root):
    write_experiment(a_row("exp-a"), [], schema, "one", data_root)
    write_experiment(a_row("exp-b", PL2_peak_nm=600.0), [], with_new_column(schema), "two", data_root)
    frame = pd.read_parquet(data_root / "experiments")
    assert sorted(frame["campaign"].astype(str)) == ["one", "two"]
    assert "PL2_peak_nm" in frame.columns


def test_duckdb_reads_a_campaign_in_one_line_with_every_column(campaign_with_a_later_column):
    duckdb = pytest.importorskip("duckdb")
    frame = duckdb.sql(f"SELECT * FROM read_parquet('{campaign_with_a_later_column}/*.parquet', "
                       "union_by_name=true)").df()
    assert len(frame) == 3 and frame.set_index("experiment_id").loc["exp-c", "PL2_peak_nm"] == 612.5


def test_polars_reads_a_campaign_in_one_line_with_every_column(campaign_with_a_later_column):
    pl = pytest.importorskip("polars")
    frame = pl.read_parquet(f"{campaign_with_a_later_column}/*.parquet", missing_columns="insert")
    assert frame.height == 3
    assert frame.filter(pl.col("experiment_id") == "exp-c")["PL2_peak_nm"].to_list() == [612.5]


def test_a_changed_type_is_refused_naming_the_file_and_the_column(schema, data_root):
    write_experiment(a_row("exp-a"), [], schema, "c", data_root)
    folder = table_folder(data_root.resolve(), "c")
    changed = pa.table({"experiment_id": ["exp-b"], "status": ["completed"], "platform": ["p"],
                        "PL_I": ["bright"]})  # a text column where a number was
    pq.write_table(changed, folder / "exp-b.parquet")

    with pytest.raises(SchemaConflict) as refused:
        read_experiments(data_root, "c")
    assert "'PL_I'" in str(refused.value) and "exp-b.parquet" in str(refused.value)
    assert "string" in str(refused.value) and "double" in str(refused.value)


def test_a_writer_with_a_changed_type_is_refused_before_writing(schema, data_root):
    write_experiment(a_row("exp-a"), [], schema, "c", data_root)
    changed = pa.schema([f if f.name != "PL_I" else pa.field("PL_I", pa.string()) for f in schema])
    with pytest.raises(SchemaConflict, match="'PL_I'"):
        write_experiment(a_row("exp-b", PL_I="bright"), [], changed, "c", data_root)
    assert experiment_ids(data_root, "c") == {"exp-a"}


def test_every_file_carries_the_schema_version(schema, data_root):
    write_experiment(a_row("exp-a"), [a_spectrum()], schema, "c", data_root)
    root = data_root.resolve()
    for folder in (table_folder(root, "c"), table_folder(root, "c", "spectra")):
        for path in folder.glob("*.parquet"):
            assert pq.read_schema(path).metadata[b"sdfl.schema_version"] == str(dataset.SCHEMA_VERSION).encode()


def test_a_file_from_a_newer_release_is_refused_with_the_way_out(schema, data_root):
    write_experiment(a_row("exp-a"), [], schema, "c", data_root)
    folder = table_folder(data_root.resolve(), "c")
    newer = pa.table({"experiment_id": ["exp-b"]}).replace_schema_metadata({b"sdfl.schema_version": b"99"})
    pq.write_table(newer, folder / "exp-b.parquet")
    with pytest.raises(SdflInputError, match="newer release of sdfl.*upgrade"):
        read_experiments(data_root, "c")


def test_two_writers_widening_the_schema_at_once_both_keep_their_columns(tmp_path):
    folder = tmp_path / "t"
    base = [pa.field("key", pa.string())]
    schemas = [pa.schema([*base, pa.field(f"col{i}", pa.float64())]) for i in range(8)]
    threads = [threading.Thread(target=record_schema, args=(folder, s)) for s in schemas]
    dataset._RECORDED.clear()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(pq.read_schema(folder / SCHEMA_FILE).names) == {"key", *(f"col{i}" for i in range(8))}


def test_lookups_by_id_open_only_the_file_that_holds_the_experiment(schema, data_root, caplog):
    for name in ("exp-a", "exp-b"):
        write_experiment(a_row(name), [a_spectrum(), a_spectrum("abs_sample")], schema, "c", data_root)
    root = data_root.resolve()
    for table in ("experiments", "spectra"):  # another experiment's files, damaged: never opened
        (table_folder(root, "c", table) / "exp-b.parquet").write_bytes(b"not parquet")

    with caplog.at_level(logging.WARNING):
        row = read_experiment(data_root, "c", "exp-a")
        spectra = read_spectra(data_root, "c", "exp-a")
    assert row["experiment_id"] == "exp-a" and row["campaign"] == "c"
    assert sorted(spectra["kind"]) == ["abs_sample", "pl"]
    assert "skipped" not in caplog.text
    assert read_experiment(data_root, "c", "exp-z") is None
    assert read_spectra(data_root, None, "exp-a")["campaign"].unique().tolist() == ["c"]


def test_a_loose_file_and_a_part_holding_one_key_read_once_the_loose_file_winning(tmp_path):
    folder = tmp_path / "t"
    schema = pa.schema([pa.field("key", pa.string()), pa.field("value", pa.float64())])
    dataset.write_file(pa.table({"key": ["a", "b"], "value": [1.0, 2.0]}, schema=schema),
                       folder / "part-000001-0123abcd.parquet")
    dataset.write_file(pa.table({"key": ["b", "c"], "value": [20.0, 3.0]}, schema=schema),
                       folder / "part-000002-0123abcd.parquet")
    write_loose(pa.table({"key": ["c"], "value": [30.0]}, schema=schema), folder, "c")

    for indexed in (False, True):  # the index tells the reader the ranges overlap: it still takes each key once
        if indexed:
            compaction.refresh_index(folder, "key")
        got = read_table(folder, "key").table.to_pandas().set_index("key")["value"].to_dict()
        assert got == {"a": 1.0, "b": 20.0, "c": 30.0}
        assert dataset.read_key(folder, "key", "b")["value"].to_pylist() == [20.0]
        assert dataset.keys(folder, "key") == {"a", "b", "c"}
    assert dataset.read_index(folder) == {"part-000001-0123abcd.parquet": ["a", "b", 2],
                                          "part-000002-0123abcd.parquet": ["b", "c", 2]}


def test_a_spectrum_kind_no_record_has_is_named_with_the_kinds_there(schema, data_root):
    write_experiment(a_row("exp-a"), [a_spectrum("pl_cps"), a_spectrum("absorbance")], schema, "c", data_root)
    assert len(read_spectra(data_root, "c", kind="pl_cps", replicate=0)) == 1
    with pytest.raises(SdflInputError, match="'pl_cp'.*did you mean 'pl_cps'.*absorbance, pl_cps"):
        read_spectra(data_root, "c", kind="pl_cp")
    assert len(read_spectra(data_root, "c")) == 2  # nothing touched
