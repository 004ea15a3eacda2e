"""A data root written by the release before the layout's version 2 (one file per experiment,
wavelengths on every spectrum row, no version, no schema file) is read and compacted with nothing
lost or changed, value for value.

tests/data/legacy-v1 was written by that release (commit 2f2a23a) on the virtual lab: `sdfl optimize
--campaign legacy --budget 3 --initial 3 --seed 5 --no-explain`, then `sdfl manufacture --lot
legacy-lot --from-campaign legacy --duration-h 0.5 --qualification-min 10 --qualification-points 10
--qc-every-min 5`; of the lot's 13 spectra files, two are kept (to keep the fixture small).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks import dataset, lots
from tasks.storage import (
    compact_campaign,
    read_experiments,
    read_spectra,
    table_folder,
    write_experiment,
)

LEGACY = Path(__file__).parent / "data" / "legacy-v1"


@pytest.fixture
def root(tmp_path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(LEGACY, copy)
    return copy


def as_written(folder: Path) -> pd.DataFrame:
    """Every row exactly as the old release wrote it: each file on its own, with plain pyarrow."""
    files = sorted(folder.glob("*.parquet"))
    assert files, f"no files in {folder}"
    return pa.concat_tables([pq.read_table(f) for f in files]).to_pandas()


def assert_every_value_equal(expected: pd.DataFrame, got: pd.DataFrame, by: list[str]) -> None:
    expected = expected.sort_values(by).reset_index(drop=True)
    got = got.sort_values(by).reset_index(drop=True)
    assert len(got) == len(expected)
    for column in expected.columns:
        assert column in got.columns, f"{column} lost"
        for want, have in zip(expected[column], got[column]):
            if isinstance(want, np.ndarray):
                np.testing.assert_array_equal(np.asarray(have), want, err_msg=column)
            elif pd.isna(want):
                assert pd.isna(have), column
            else:
                assert have == want, (column, want, have)


def test_the_fixture_is_what_the_old_release_wrote():
    files = list((LEGACY / "experiments" / "campaign=legacy").glob("*.parquet"))
    assert len(files) == 3
    assert all(b"sdfl.schema_version" not in (pq.read_schema(f).metadata or {}) for f in files)
    spectra = next((LEGACY / "spectra" / "campaign=legacy").glob("*.parquet"))
    assert "wavelength_nm" in pq.read_schema(spectra).names


def test_an_old_data_root_reads_and_compacts_with_every_value_kept(root):
    experiments = as_written(table_folder(root, "legacy"))
    spectra = as_written(table_folder(root, "legacy", "spectra"))
    before = sum(p.stat().st_size for p in root.rglob("*.parquet") if "lots" not in p.parts)

    assert_every_value_equal(experiments, read_experiments(root, "legacy"), ["experiment_id"])
    assert_every_value_equal(spectra, read_spectra(root, "legacy"), ["experiment_id", "kind", "replicate"])

    done = compact_campaign(root, "legacy")

    assert done["experiments"].loose_folded == 3 and done["spectra"].loose_folded == 3
    assert_every_value_equal(experiments, read_experiments(root, "legacy"), ["experiment_id"])
    assert_every_value_equal(spectra, read_spectra(root, "legacy"), ["experiment_id", "kind", "replicate"])
    one = experiments["experiment_id"].iloc[0]
    assert_every_value_equal(spectra[spectra["experiment_id"] == one], read_spectra(root, "legacy", one),
                             ["kind", "replicate"])
    part = next(table_folder(root, "legacy", "spectra").glob("part-*.parquet"))
    assert "wavelength_nm" not in pq.read_schema(part).names  # the wavelengths now live in grids/
    assert len(list(table_folder(root, "legacy", "grids").glob("*.parquet"))) == 2  # one per spectrometer
    after = sum(p.stat().st_size for p in root.rglob("*.parquet") if "lots" not in p.parts)
    assert after < 0.9 * before  # the footers of one-row files go (spectra values are most of the rest)
    assert len(pd.read_parquet(table_folder(root, "legacy"))) == 3  # and plain pandas reads the parts


def test_a_new_experiment_joins_an_old_campaign(root, schema):
    from test_storage import a_row, a_spectrum

    write_experiment(a_row("legacy-new"), [a_spectrum()], schema, "legacy", root)
    rows = read_experiments(root, "legacy")
    assert len(rows) == 4 and rows["experiment_id"].is_unique
    spectra = read_spectra(root, "legacy")
    assert spectra["wavelength_nm"].map(len).eq(2068).all()
    compact_campaign(root, "legacy")
    assert len(read_experiments(root, "legacy")) == 4
    assert read_spectra(root, "legacy", "legacy-new")["wavelength_nm"].map(len).tolist() == [2068]


def test_an_old_lot_reads_as_it_was_written(root):
    (name,) = lots.list_lots(root)
    lot = lots.read_lot(root, name)
    folder = lots.lot_folder(root, name)
    assert_every_value_equal(as_written(folder / "samples"), lot["samples"], ["sample_id"])
    assert_every_value_equal(as_written(folder / "events"), lot["events"], ["event_id"])
    assert dataset.read_table(folder / "spectra", "experiment_id").table.num_rows > 0
