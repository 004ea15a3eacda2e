"""A campaign's state survives what happens to files: a lost or damaged ledger (the Optuna
study), damaged, foreign or half-written Parquet files, a crash while the study was being set up.

Each test runs the real `sdfl` command in a subprocess on real files, as a user would. The tests
that start from a finished campaign get a copy of one that `sdfl` ran once for the module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import optuna
import pytest
from conftest import REPO_DIR, no_traceback, sdfl_environment
from optuna.trial import TrialState

from flows.campaign_loop import CampaignPlan, run_campaign
from flows.experiment import PLAIN_STEPS
from hardware.rig import open_rig
from tasks import ledger
from tasks.dataset import table_files
from tasks.proposal import design_conditions
from tasks.storage import experiment_path, read_experiments

SMALL = ("--budget", "4", "--initial", "2", "--no-explain")


def optimize_args(root, campaign="c", *extra):
    return ("optimize", "--campaign", campaign, *SMALL, "--data-root", str(root), "--seed", "3", *extra)


@pytest.fixture(scope="module")
def finished_campaign(prefect_harness, tmp_path_factory):
    """The data root of campaign "c" as `sdfl optimize` (SMALL, seed 3) leaves it: four experiments
    compacted, the ledger, the report. Never changed: a test works on its own copy (`campaign_copy`)."""
    base = tmp_path_factory.mktemp("finished-campaign")
    root = base / "data"
    first = subprocess.run([sys.executable, "-m", "flows.cli", *optimize_args(root)], cwd=REPO_DIR,
                           env=sdfl_environment(base / "prefect-home"), capture_output=True, text=True, timeout=300,
                           stdin=subprocess.DEVNULL)
    assert first.returncode == 0, no_traceback(first)
    return root


@pytest.fixture
def campaign_copy(finished_campaign, tmp_path):
    """This test's own copy of the finished campaign's data root (every file as `sdfl` left it)."""
    return shutil.copytree(finished_campaign, tmp_path / "data")


def records(root, campaign) -> dict[str, str]:
    """Each recorded experiment's values, as text (a campaign's files are compacted at its end)."""
    rows = read_experiments(root, campaign)
    return {row["experiment_id"]: repr(row) for row in rows.drop(columns="campaign").to_dict(orient="records")}


def test_losing_the_ledger_never_overwrites_an_experiment(sdfl, campaign_copy):
    """The reproduction from the fault campaign: run, delete optuna.db, run again with a larger
    budget. The second run rebuilds the ledger from the dataset and adds new experiments."""
    root = campaign_copy  # the first run
    before = records(root, "c")
    assert len(before) == 4
    os.remove(root / "optuna.db")

    second = sdfl("optimize", "--campaign", "c", "--budget", "5", "--initial", "2", "--no-explain",
                  "--data-root", str(root), "--seed", "3")

    out = no_traceback(second)
    assert second.returncode == 0, out
    after = records(root, "c")
    assert len(after) == 5
    assert {name: after[name] for name in before} == before  # every earlier record untouched
    study = optuna.load_study(study_name="c", storage=ledger.storage_url(root))
    ids = [t.user_attrs["experiment_id"] for t in study.trials]
    assert len(ids) == len(set(ids)) == 5
    assert all(t.user_attrs.get("rebuilt") for t in study.trials[:4])
    assert "rebuilt" in out


def test_a_damaged_ledger_is_named_with_the_way_out(sdfl, campaign_copy):
    root = campaign_copy
    with open(root / "optuna.db", "r+b") as handle:  # scribble over the middle of the file
        handle.seek(4096)
        handle.write(os.urandom(8192))
    with open(root / "optuna.db", "r+b") as handle:
        handle.write(b"this is no longer an SQLite file")

    damaged = sdfl(*optimize_args(root, "c", "--budget", "5"))

    out = no_traceback(damaged)
    assert damaged.returncode != 0
    assert "optuna.db" in out and "mv " in out and "rebuilt from the recorded experiments" in out
    assert len(records(root, "c")) == 4  # nothing touched

    os.replace(root / "optuna.db", root / "optuna.db.damaged")  # what the message says to do
    resumed = sdfl(*optimize_args(root, "c", "--budget", "5"))
    assert resumed.returncode == 0, no_traceback(resumed)
    assert len(records(root, "c")) == 5


def test_damaged_and_foreign_files_are_named_and_set_aside(sdfl, campaign_copy):
    """A truncated file, an empty one, a garbage one and a foreign table in the campaign folder:
    `sdfl data` names them and shows the rest; a resumed campaign sets them aside, reports the
    missing record and goes on; a temporary file of a killed writer is removed."""
    root = campaign_copy
    folder = experiment_path(root.resolve(), "c", "x").parent
    (victim,) = table_files(folder).parts  # the campaign's four experiments, compacted at its end
    victim.write_bytes(victim.read_bytes()[:500])  # truncated: a damaged disk, a copy cut short
    (folder / "empty.parquet").write_bytes(b"")
    (folder / "garbage.parquet").write_bytes(os.urandom(3000))
    import pandas as pd

    pd.DataFrame({"sample": [1, 2], "note": ["mine", "mine"]}).to_parquet(folder / "notes.parquet")
    stale = folder / ".c-t0009.parquet.somehost.999999.abcd1234.tmp"  # a writer killed mid-write (other host)
    stale.write_bytes(b"half")
    os.utime(stale, (1_000_000, 1_000_000))

    shown = sdfl("data", "--campaign", "c", "--data-root", str(root))
    out = no_traceback(shown)
    assert shown.returncode == 0
    for name in (victim.name, "empty.parquet", "garbage.parquet", "notes.parquet"):
        assert name in out

    resumed = sdfl(*optimize_args(root, "c", "--budget", "5"))
    out = no_traceback(resumed)
    assert resumed.returncode == 0, out
    assert "c-t0001" in out and "missing" in out  # the finished trials whose records are gone
    quarantine = root / "quarantine" / "experiments" / "campaign=c"
    assert sorted(p.name for p in quarantine.iterdir()) == sorted([victim.name, "empty.parquet",
                                                                   "garbage.parquet", "notes.parquet"])
    assert not stale.exists()
    rows = read_experiments(root, "c")
    assert sorted(rows["experiment_id"]) == ["c-t0004"]  # the other four are to be restored from a backup
    assert rows.attrs["skipped_files"] == []


def test_a_crash_while_the_study_is_set_up_neither_blocks_the_name_nor_shrinks_the_design(tmp_path, platform):
    """Killed between creating the study and writing its attributes, or in the middle of
    enqueuing the Latin-hypercube design: the next start finishes the set-up and the design."""
    root = tmp_path / "data"
    url = ledger.storage_url(root)
    optuna.create_study(study_name="cut", storage=url, direction="maximize")  # no attributes: killed here
    plan = CampaignPlan(campaign="cut", budget=3, initial=3, seed=4, data_root=str(root))
    run_campaign(open_rig(platform, 4), plan, PLAIN_STEPS)
    assert len(read_experiments(root, "cut")) == 3

    study, created = ledger.open_study("short", platform, "PL_I", url, None, initial_design=9)
    design = design_conditions(platform, 9, 5)
    for condition in design[:3]:  # killed after three of nine design points
        study.enqueue_trial(condition, user_attrs={"design_index": design.index(condition)})
    assert ledger.ensure_design(study, design) == 6
    assert ledger.ensure_design(study, design) == 0
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert sorted(t.user_attrs["design_index"] for t in waiting) == list(range(9))


def test_a_ledger_entry_never_reuses_an_id_the_dataset_already_holds(tmp_path, platform):
    """A record the ledger does not know (copied in, or written under another ledger) is skipped
    over, never replaced."""

    root = tmp_path / "data"
    rig = open_rig(platform, 6)
    plan = CampaignPlan(campaign="mix", budget=1, initial=0, policy="random", seed=6, data_root=str(root))
    run_campaign(rig, plan, PLAIN_STEPS)
    frame = read_experiments(root, "mix").drop(columns="campaign")
    frame["experiment_id"] = "mix-t0001"
    frame["PL_I"] = 12345.0  # a value of its own, to recognise it by
    frame.to_parquet(experiment_path(root.resolve(), "mix", "mix-t0001"))

    plan.budget = 3
    run_campaign(rig, plan, PLAIN_STEPS)

    assert read_experiments(root, "mix").set_index("experiment_id").loc["mix-t0001", "PL_I"] == 12345.0
    assert sorted(read_experiments(root, "mix")["experiment_id"]) == [f"mix-t000{i}" for i in range(4)]
    study = optuna.load_study(study_name="mix", storage=ledger.storage_url(root))
    skipped = [t.user_attrs["experiment_id"] for t in study.trials if t.user_attrs.get("not_run")]
    assert skipped == ["mix-t0001"]
    assert len(ledger.finished(study)) == 3


def test_the_ledger_waits_through_a_cut_connection_and_nothing_else(caplog):
    """A database server that restarts cuts the connection a query runs on. Optuna reports that as
    a StorageInternalError caused by the lost connection, or (reading trials, where it catches the
    first error and goes on in the same transaction) caused by the PendingRollbackError that
    follows: both are waited for. A write the database refuses is raised at once."""
    import logging

    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import DataError, OperationalError, PendingRollbackError

    log = logging.getLogger("test-ledger")
    cut = [OperationalError("SELECT 1", {}, Exception("terminating connection due to administrator command")),
           PendingRollbackError("Can't reconnect until invalid transaction is rolled back")]

    def counting():
        if cut:
            raise StorageInternalError("An exception is raised during the commit.") from cut.pop(0)
        return 12

    with caplog.at_level(logging.WARNING, logger="test-ledger"):
        assert ledger.patiently(counting, log, "counting the trials", wait_s=30) == 12
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        "the campaign ledger cannot be reached while counting the trials"] * 2

    def refused():
        raise StorageInternalError("An exception is raised during the commit.") from DataError("INSERT", {}, Exception("value too long"))

    with pytest.raises(StorageInternalError):
        ledger.patiently(refused, log, "telling the study", wait_s=30)
