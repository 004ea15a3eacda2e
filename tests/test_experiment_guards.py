"""What happens around one experiment when the rig or the disk is not ready: nothing runs that
cannot be recorded, a held rig is made safe when the next experiment cannot start, and a record
that cannot be written is kept elsewhere, never lost.

Full and read-only disks are real: small tmpfs mounts (the tests need root to mount them and are
skipped, saying so, without it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import uuid

import pytest
from conftest import assert_rig_safe
from optuna.trial import TrialState

from flows.campaign_loop import CampaignPlan, run_campaign
from flows.experiment import PLAIN_STEPS, check_request, conduct_experiment, run_experiment
from hardware.errors import DataRootUnusable, InstrumentTimeout, RecordNotSaved, SdflInputError
from tasks import features, ledger
from tasks.storage import experiment_path, read_experiments, read_spectra


@contextlib.contextmanager
def tmpfs(path, size: str, read_only: bool = False):
    """A real small filesystem at `path` (unmounted at the end)."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_fault_in_the_first_step_of_a_held_rig_makes_it_safe_and_is_recorded(platform, condition, tmp_path):
    """The syringe levels are read from a rig the previous experiment left running: if that read
    fails, the rig goes to its safe state and the experiment is recorded as failed."""
    from hardware.rig import open_rig

    rig = open_rig(platform, 40)
    conduct_experiment(rig, condition=condition, campaign="held", data_root=str(tmp_path), finish="hold")
    assert rig.lab.pumps["cui"].status().running and rig.held
    rig.lab.faults.plan.timeouts_next = 5  # more than one command can take (3 tries), less than safe state

    with pytest.raises(InstrumentTimeout):
        conduct_experiment(rig, condition={**condition, "temperature_c": 130.0}, campaign="held",
                           data_root=str(tmp_path))

    rig.lab.faults.plan.timeouts_next = 0
    assert_rig_safe(rig)
    rows = read_experiments(tmp_path, "held")
    assert list(rows["status"]) == ["completed", "failed"]
    assert "InstrumentTimeout" in rows.loc[1, "failure_reason"]
    assert rows.loc[1, "temperature_c"] == 130.0


def test_a_held_rig_is_made_safe_when_the_next_request_is_refused(platform, condition, tmp_path):
    from hardware.rig import open_rig

    rig = open_rig(platform, 41)
    conduct_experiment(rig, condition=condition, campaign="held", data_root=str(tmp_path), finish="hold")
    with pytest.raises(SdflInputError, match="temperature_c"):
        conduct_experiment(rig, condition={**condition, "temperature_c": 400.0}, campaign="held",
                           data_root=str(tmp_path))
    assert_rig_safe(rig)
    assert len(read_experiments(tmp_path, "held")) == 1  # a refused request is not an experiment


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("replicates", [-2, 0])
def test_bad_replicates_are_refused_before_anything_moves(platform, condition, data_root, replicates):
    from hardware.rig import open_rig

    rig = open_rig(platform, 42)
    with pytest.raises(SdflInputError, match="replicates must be at least 1"):
        run_experiment(condition=condition, replicates=replicates, data_root=str(data_root), seed=42)
    assert not data_root.exists()
    assert rig.lab.pumps["cui"].dispensed_ul() == 0 and rig.heater.setpoint() is None
    for wrong in (2.5, True, "3"):  # from Python, past the flow's own type checks
        with pytest.raises(SdflInputError, match="replicates"):
            check_request(platform, condition=condition, replicates=wrong)


def test_a_data_root_that_cannot_be_written_is_refused_before_the_rig_moves(platform, condition, tmp_path):
    from hardware.rig import open_rig

    rig = open_rig(platform, 43)
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "experiments").write_text("not a folder")
    with pytest.raises(DataRootUnusable, match="is a file where a folder should be"):
        conduct_experiment(rig, condition=condition, campaign="c", data_root=str(blocked))
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as read_only:
        with pytest.raises(DataRootUnusable, match="cannot be written"):
            conduct_experiment(rig, condition=condition, campaign="c", data_root=str(read_only))
    with tmpfs(tmp_path / "tiny", "2m") as tiny:
        with pytest.raises(DataRootUnusable, match="MB free"):
            conduct_experiment(rig, condition=condition, campaign="c", data_root=str(tiny))
    assert rig.lab.pumps["cui"].dispensed_ul() == 0 and rig.heater.setpoint() is None


def fill_disk_before(step, folder):
    """A step that first fills the disk of `folder` (another program wrote a big file)."""

    def filled(*args, **kwargs):
        with open(folder / f"filler-{uuid.uuid4().hex}", "wb") as handle:
            with contextlib.suppress(OSError):
                while True:
                    handle.write(b"\0" * 2**20)
        return step(*args, **kwargs)

    return filled


def test_a_disk_that_fills_during_the_experiment_keeps_the_record_in_the_rescue_folder(
        platform, condition, tmp_path, monkeypatch):
    from hardware.rig import open_rig

    rescue = tmp_path / "rescue"
    monkeypatch.setenv("SDFL_RESCUE_DIR", str(rescue))
    rig = open_rig(platform, 44)
    with tmpfs(tmp_path / "disk", "80m") as disk:
        steps = dataclasses.replace(PLAIN_STEPS, extract=fill_disk_before(features.extract_features, disk))
        with pytest.raises(RecordNotSaved, match="kept under") as caught:
            conduct_experiment(rig, condition=condition, campaign="c", experiment_id="e1", data_root=str(disk),
                               steps=steps)
        assert not experiment_path(disk, "c", "e1", "spectra").exists()  # no half record left behind
    assert caught.value.rescued_to == str(rescue)
    assert_rig_safe(rig)
    kept = read_experiments(rescue, "c")
    assert list(kept["experiment_id"]) == ["e1"] and kept.loc[0, "status"] == "completed"
    assert kept.loc[0, "PL_I"] > 0 and len(read_spectra(rescue, "c", "e1")) == 16


def test_a_campaign_whose_disk_fills_stops_with_no_trial_left_running(platform, tmp_path, monkeypatch):
    from hardware.rig import open_rig

    monkeypatch.setenv("SDFL_RESCUE_DIR", str(tmp_path / "rescue"))
    rig = open_rig(platform, 45)
    with tmpfs(tmp_path / "disk", "80m") as disk:
        plan = CampaignPlan(campaign="full", budget=4, initial=1, seed=45, data_root=str(disk),
                            storage=f"sqlite:///{tmp_path / 'optuna.db'}")
        run_campaign(rig, dataclasses.replace(plan, budget=1), PLAIN_STEPS)
        steps = dataclasses.replace(PLAIN_STEPS, extract=fill_disk_before(features.extract_features, disk))
        with pytest.raises(RecordNotSaved):
            run_campaign(rig, plan, steps)
        for filler in disk.glob("filler-*"):
            os.remove(filler)
        study = ledger.open_study("full", platform, "PL_I", plan.storage, None)[0]
        states = [t.state for t in study.trials]
        assert TrialState.RUNNING not in states and states.count(TrialState.FAIL) == 1
        assert "RecordNotSaved" in study.trials[1].user_attrs["failure_reason"]
    assert_rig_safe(rig)
    assert list(read_experiments(tmp_path / "rescue", "full")["experiment_id"]) == ["full-t0001"]


def test_when_the_rescue_folder_fails_too_the_record_goes_to_the_log(platform, condition, tmp_path, monkeypatch,
                                                                     caplog):
    """Both the data root and the rescue folder refuse the record: the error says so, and the
    whole record is in the run's log, so it can still be typed back in."""
    import logging

    from hardware.rig import open_rig

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("SDFL_RESCUE_DIR", str(blocker / "rescue"))  # cannot be a folder
    rig = open_rig(platform, 46)
    with tmpfs(tmp_path / "disk", "80m") as disk:
        steps = dataclasses.replace(PLAIN_STEPS, extract=fill_disk_before(features.extract_features, disk))
        with caplog.at_level(logging.ERROR, logger="tasks.storage"), pytest.raises(RecordNotSaved) as caught:
            conduct_experiment(rig, condition=condition, campaign="c", experiment_id="e2", data_root=str(disk),
                               steps=steps)
    assert caught.value.rescued_to is None and "nor to the rescue folder" in str(caught.value)
    assert "'experiment_id': 'e2'" in caplog.text and "'PL_I':" in caplog.text
    assert_rig_safe(rig)
