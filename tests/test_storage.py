"""The Parquet datasets: one file per experiment, atomic, idempotent, readable with plain pandas."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from hardware.errors import SdflInputError
from tasks.storage import (
    build_spectra_table,
    experiment_path,
    read_experiments,
    read_spectra,
    write_experiment,
)


def a_row(experiment_id="exp-1", **extra):
    now = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
    return {"experiment_id": experiment_id, "status": "completed", "platform": "virtual-cs3cu2i5",
            "started_at": now, "finished_at": now, "temperature_c": 140.0, "PL_I": 1.0e5,
            "flag_noisy": False, **extra}


def a_spectrum(kind="pl", replicate=0):
    wl = np.linspace(200.0, 1000.0, 2068)
    return {"kind": kind, "replicate": replicate, "quantity": "counts", "spectrometer": "HDXV0001",
            "t_platform_s": 1.0, "integration_ms": 100.0, "scans": 5, "wavelength_nm": wl, "value": np.ones_like(wl)}


def test_a_retried_write_leaves_exactly_one_record(schema, data_root):
    for attempt in range(3):
        write_experiment(a_row(PL_I=1.0e5 + attempt), [a_spectrum(), a_spectrum("pl_dark", -1)], schema, "c", data_root)
    table = read_experiments(data_root, "c")
    assert len(table) == 1 and table.loc[0, "PL_I"] == 1.0e5 + 2
    assert len(read_spectra(data_root, "c")) == 2
    # No temporary files are left behind: the record, the folder's schema file and its lock.
    folder = experiment_path(data_root.resolve(), "c", "exp-1").parent
    assert sorted(p.name for p in folder.iterdir()) == ["+schema.parquet", ".schema.lock", "exp-1.parquet"]


def test_plain_pandas_reads_the_dataset(schema, data_root):
    write_experiment(a_row("exp-a"), [a_spectrum()], schema, "one", data_root)
    write_experiment(a_row("exp-b"), [a_spectrum()], schema, "two", data_root)
    frame = pd.read_parquet(data_root / "experiments")
    assert sorted(frame["experiment_id"]) == ["exp-a", "exp-b"]
    assert sorted(frame["campaign"].astype(str)) == ["one", "two"]
    assert str(frame["started_at"].dtype) == "datetime64[us, UTC]"
    assert len(read_experiments(data_root)) == 2


def test_a_bad_record_writes_nothing(schema, data_root):
    with pytest.raises(SdflInputError, match="not in the schema"):
        write_experiment(a_row(unknown_column=1.0), [a_spectrum()], schema, "c", data_root)
    with pytest.raises(SdflInputError, match="'PL_I'"):
        write_experiment(a_row(PL_I="bright"), [a_spectrum()], schema, "c", data_root)
    with pytest.raises(SdflInputError, match="status"):
        write_experiment(a_row(status="great"), [a_spectrum()], schema, "c", data_root)
    bad_spectrum = {**a_spectrum(), "value": np.ones(10)}
    with pytest.raises(SdflInputError, match="shapes differ"):
        write_experiment(a_row(), [bad_spectrum], schema, "c", data_root)
    assert not data_root.exists()


def test_spectra_without_an_experiment_row_are_not_returned(schema, data_root):
    """The experiment row is written last: spectra alone mean the write did not finish."""
    write_experiment(a_row("exp-ok"), [a_spectrum()], schema, "c", data_root)
    # As if a run was killed between its two writes:
    orphan = experiment_path(data_root.resolve(), "c", "exp-orphan", table="spectra")
    pq.write_table(build_spectra_table([{**a_spectrum(), "experiment_id": "exp-orphan"}])[0], orphan)
    assert set(pd.read_parquet(orphan.parent)["experiment_id"]) == {"exp-ok", "exp-orphan"}
    spectra = read_spectra(data_root, "c")
    assert set(spectra["experiment_id"]) == {"exp-ok"}


@pytest.mark.parametrize("name", ["../up", "a/b", "", ".hidden", "x" * 200])
def test_unsafe_names_are_refused(schema, data_root, name):
    with pytest.raises(SdflInputError, match="safe name"):
        write_experiment(a_row(), [], schema, name, data_root)
    with pytest.raises(SdflInputError, match="safe name"):
        write_experiment(a_row(experiment_id=name), [], schema, "c", data_root)


def test_the_data_root_comes_from_the_environment(schema, tmp_path, monkeypatch):
    monkeypatch.setenv("SDFL_DATA_ROOT", str(tmp_path / "elsewhere"))
    write_experiment(a_row(), [], schema, "c", None)
    assert (tmp_path / "elsewhere" / "experiments" / "campaign=c" / "exp-1.parquet").exists()
