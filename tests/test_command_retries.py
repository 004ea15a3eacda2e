"""Retry the command, not the step: whole experiments complete through lost and garbled replies.

A lost or garbled reply costs one command a retry (hardware/retry.py), so an experiment of a few
hundred commands survives a percent of them going wrong without any Prefect task retry: on the
virtual rig (a proxy retries the simulated instruments) and on the emulated rig (the real
drivers retry their own commands against the emulators, which turn the lab's fault plan into
wire faults).
"""

from __future__ import annotations

import pytest
from conftest import assert_rig_safe

from flows.experiment import PLAIN_STEPS, conduct_experiment
from hardware.errors import GarbledReply, InstrumentTimeout, PumpStalled
from hardware.platform import load_platform
from hardware.retry import COMMAND_ATTEMPTS, RetryCounter, retry
from hardware.rig import SafeOnFatal, emulated_rig, virtual_rig

EMULATED = "emulated-cs3cu2i5"


def faulty(rig, lost: float = 0.01, garbled: float = 0.01):
    """Switch on lost and garbled replies for every command of the rig's lab."""
    rig.lab.faults.plan.timeout_probability = lost
    rig.lab.faults.plan.garbled_probability = garbled
    return rig


def assert_safe_without_faults(rig):
    """The lab's own view of the rig (its queries draw no more faults)."""
    faulty(rig, 0.0, 0.0)
    assert_rig_safe(rig)


def run(rig, condition, tmp_path, experiments: int) -> list[str]:
    statuses = []
    for i in range(experiments):
        row = conduct_experiment(rig, condition=condition, campaign="retries", data_root=str(tmp_path),
                                 finish="hold" if i < experiments - 1 else "stop", steps=PLAIN_STEPS)
        statuses.append(row["status"])
    return statuses


# --- the retry helper ----------------------------------------------------------------------------


def test_retry_repeats_a_transient_error_a_bounded_number_of_times():
    calls, counter = [], RetryCounter()

    def flaky():
        calls.append(1)
        if len(calls) < COMMAND_ATTEMPTS:
            raise InstrumentTimeout("pump", "no reply")
        return "ok"

    assert retry(flaky, instrument="pump", what="status", counter=counter) == "ok"
    assert len(calls) == COMMAND_ATTEMPTS and counter.by_instrument() == {"pump": COMMAND_ATTEMPTS - 1}


def test_retry_gives_up_after_the_last_attempt_with_its_error():
    calls = []

    def garbled():
        calls.append(1)
        raise GarbledReply("pump", f"noise {len(calls)}")

    with pytest.raises(GarbledReply, match=f"noise {COMMAND_ATTEMPTS}"):
        retry(garbled, instrument="pump", what="status")
    assert len(calls) == COMMAND_ATTEMPTS


def test_retry_lets_any_other_error_through_at_once():
    calls = []

    def stalled():
        calls.append(1)
        raise PumpStalled("pump", "motor not advancing")

    with pytest.raises(PumpStalled):
        retry(stalled, instrument="pump", what="start")
    assert len(calls) == 1


# --- whole experiments ---------------------------------------------------------------------------


def test_virtual_experiments_complete_at_one_percent_lost_and_one_percent_garbled(platform, condition, tmp_path):
    rig = faulty(virtual_rig(platform, seed=31))
    assert run(rig, condition, tmp_path, experiments=4) == ["completed"] * 4
    assert rig.retries.total > 0  # the faults did fire
    assert_safe_without_faults(rig)


def test_emulated_experiments_complete_with_the_labs_fault_plan_on(condition, tmp_path):
    """The lab's faults reach the drivers as silence or noise on the wire (each lost command
    costs a real driver timeout, so this runs for a few seconds)."""
    rig = faulty(emulated_rig(load_platform(EMULATED), seed=32))
    try:
        assert run(rig, condition, tmp_path, experiments=2) == ["completed"] * 2
        assert rig.retries.total > 0
        assert_safe_without_faults(rig)
    finally:
        rig.close()


def test_a_driver_rig_retries_each_command_once_over():
    """The drivers retry themselves; the rig adds no second layer of retries on top."""
    rig = emulated_rig(load_platform(EMULATED), seed=33)
    try:
        assert isinstance(rig.pumps["cui"], SafeOnFatal)
        emulator = rig.instruments.emulators["pump:cui"]
        emulator.faults.garble_next, emulator.faults.match = 10, "pump status"
        with pytest.raises(GarbledReply):
            rig.pumps["cui"].status()
        assert emulator.commands.count("pump status") == 1 + COMMAND_ATTEMPTS  # the probe at open, then one command
        assert rig.retries.by_instrument() == {"cui": COMMAND_ATTEMPTS - 1}
    finally:
        rig.close()
