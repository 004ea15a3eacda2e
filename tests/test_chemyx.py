"""The Chemyx driver against the emulator on a real pseudo-terminal (no mocks): the protocol, the
safety limits, every wire fault and the retries that absorb the transient ones, two channels on
one port, and recorded byte logs replayed without a device.

`tests/data/chemyx_experiment.jsonl` is a recorded experiment. Regenerate it (after a change of
the protocol or of the virtual pump) from the repository root with:

    .venv/bin/python -m tests.test_chemyx
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import asdict
from pathlib import Path

import pytest

from hardware.drivers.chemyx import ChemyxPump
from hardware.drivers.serial_link import ByteLog, LogEntry, ReplayLink, ReplayMismatch, SerialLink
from hardware.drivers.syringes import SYRINGES, check_diameter, lookup
from hardware.emulators.chemyx import ChemyxEmulator
from hardware.emulators.pty import PtyServer
from hardware.errors import (
    CommandRejected,
    GarbledReply,
    InstrumentDisconnected,
    InstrumentTimeout,
    PumpStalled,
    SafetyLimitExceeded,
    SdflInputError,
    SyringeEmpty,
    ValueClamped,
    WrongDevice,
)
from hardware.interfaces import SyringePump
from hardware.platform import PumpConfig, load_platform
from hardware.retry import COMMAND_ATTEMPTS
from hardware.virtual.lab import VirtualLab

FIXTURE = Path(__file__).parent / "data" / "chemyx_experiment.jsonl"
TIMEOUT_S = 0.2
"""Short, so the tests that wait for silence stay fast."""


def make_pump(config: PumpConfig, port: str | None = None, **kwargs) -> ChemyxPump:
    """A driver for one pump of the platform config."""
    return ChemyxPump(
        port, name=config.name, syringe_volume_ul=config.syringe_volume,
        syringe_inner_diameter_mm=config.syringe_inner_diameter, min_rate_ul_min=config.min_rate,
        max_rate_ul_min=config.max_rate, timeout_s=TIMEOUT_S, **kwargs,
    )


@pytest.fixture
def lab(platform):
    return VirtualLab(platform, seed=3)


@pytest.fixture
def emulator(lab):
    with ChemyxEmulator(lab.pumps["cui"]) as emu:
        yield emu


@pytest.fixture
def link(emulator):
    link = SerialLink(emulator.port, 9600, TIMEOUT_S, log=ByteLog())
    yield link
    link.close()


@pytest.fixture
def pump(lab, link):
    return make_pump(lab.pumps["cui"].config, link=link)


def sent(link) -> list[str]:
    return [b.decode().strip() for b in link.log.sent()]


def expected_volume(lab, rate_ul_min: float, seconds: float) -> float:
    """rate x time, less what the syringe and tubing compliance holds back at the start."""
    lag = lab.platform.virtual.pump_response_time
    return rate_ul_min * (seconds - lag * (1 - math.exp(-seconds / lag))) / 60.0


# --- the protocol, on the virtual lab --------------------------------------------------------------


def test_infuse_moves_the_virtual_pump_and_stop_stops_it(lab, pump, link):
    assert isinstance(pump, SyringePump)
    pump.infuse(500.0, 10_000.0)
    assert sent(link)[1:] == ["set units 2", "set diameter 28.6", "set rate 500", "set volume 10000", "start"]
    status = pump.status()
    assert status.running and status.rate_ul_min == 500.0 and status.alarm is None
    assert lab.pumps["cui"].status().rate_ul_min == 500.0

    lab.clock.advance(60)
    status = pump.status()
    assert status.dispensed_ul == pytest.approx(expected_volume(lab, 500.0, 60), rel=0.01)
    assert status.remaining_ul == pytest.approx(50_000.0 - status.dispensed_ul)

    pump.stop()
    assert lab.pumps["cui"].status().rate_ul_min == 0.0
    assert not pump.status().running


def test_a_finite_infusion_ends_by_itself_and_runs_add_up(lab, pump):
    pump.infuse(1000.0, 500.0)
    lab.clock.advance(120)
    status = pump.status()
    assert not status.running and status.dispensed_ul == pytest.approx(500.0, rel=0.01)
    pump.infuse(2000.0, 1000.0)  # a new run: the pump's count restarts, the driver's total does not
    lab.clock.advance(120)
    status = pump.status()
    assert status.dispensed_ul == pytest.approx(1500.0, rel=0.01)
    assert status.remaining_ul == pytest.approx(48_500.0, rel=0.001)


def test_the_driver_refuses_more_than_the_syringe_holds_and_set_fill_resets(lab, pump, link):
    pump.set_fill(1000.0)
    with pytest.raises(SyringeEmpty, match="holds 1000 uL"):
        pump.infuse(500.0, 2000.0)
    assert not any(c.startswith("set") for c in sent(link))
    pump.set_fill()
    assert pump.status().remaining_ul == 50_000.0


def test_read_limits_and_identify(emulator, pump):
    limits = pump.read_limits()
    assert (limits.max_volume_ul, limits.min_volume_ul, limits.max_rate_ul_min, limits.min_rate_ul_min) == (
        50_000.0, 1.0, 40_000.0, 2.0)
    assert emulator.execute("read limit parameter") == ["50000 1 40000 2"]  # the pump's order
    text = pump.identify()
    assert "Chemyx" in text and "stopped" in text and pump.link.port in text
    assert "(max volume, min volume, max rate, min rate) = 50000 1 40000 2" in text


def _exchanges(*pairs: tuple[str, str]) -> ByteLog:
    """A byte log of command lines and the pump's replies, written byte for byte."""
    log = ByteLog()
    for command, reply in pairs:
        log.entries += [LogEntry(0.0, "tx", command.encode() + b"\r\n"), LogEntry(0.0, "rx", reply.encode())]
    return log


def test_read_limit_parameter_is_max_volume_min_volume_max_rate_min_rate(platform):
    """A Hamilton 1010 (10 mL, 14.57 mm bore) in uL/min units: the pump prints its echo, then
    max volume, min volume, max rate, min rate on one line, then its prompt."""
    replies = _exchanges(
        ("pump status", "pump status\r\npump status = 0\r\n>"),
        ("set units 2", "set units 2\r\nunits = 2\r\n>"),
        ("set diameter 14.57", "set diameter 14.57\r\ndiameter = 14.57\r\n>"),
        ("read limit parameter", "read limit parameter\r\n10000 0.1667 10003.8 0.0834\r\n>"),
    )
    config = platform.pump("cui").model_copy(update={"syringe_volume": 10_000.0, "syringe_inner_diameter": 14.57})
    link = ReplayLink(replies)
    limits = make_pump(config, link=link).read_limits()
    assert limits.max_volume_ul == 10_000.0
    assert limits.min_volume_ul == 0.1667
    assert limits.max_rate_ul_min == 10_003.8
    assert limits.min_rate_ul_min == 0.0834
    assert link.finished


@pytest.mark.parametrize("rate, volume, named", [
    (50_000.0, 1000.0, "rate 50000"), (1.0, 1000.0, "rate 1 uL/min"), (500.0, 60_000.0, "volume 60000"),
    (500.0, 0.0, "volume 0"), (500.0, math.nan, "volume nan"), (math.inf, 100.0, "rate inf"),
])
def test_limits_are_enforced_before_anything_is_sent(lab, pump, link, rate, volume, named):
    with pytest.raises(SafetyLimitExceeded, match=named) as info:
        pump.infuse(rate, volume)
    assert "40000" in str(info.value) or "50000" in str(info.value)  # the limit is named too
    assert sent(link) == ["pump status"]  # only the probe at open
    assert not lab.pumps["cui"].status().running


# --- faults ---------------------------------------------------------------------------------------


def test_silence_on_every_try_is_a_timeout(emulator, pump, link):
    emulator.faults.silent_next = COMMAND_ATTEMPTS
    with pytest.raises(InstrumentTimeout, match="no reply to 'set units 2'.*got nothing"):
        pump.infuse(500.0, 1000.0)
    assert sent(link).count("set units 2") == COMMAND_ATTEMPTS


def test_noise_on_every_try_is_a_garbled_reply(emulator, pump):
    emulator.faults.garble_next = COMMAND_ATTEMPTS
    with pytest.raises(GarbledReply):
        pump.status()
    assert pump.retries.total == COMMAND_ATTEMPTS - 1


def test_invalid_command_is_rejected(emulator, pump):
    emulator.faults.invalid_next = 1
    with pytest.raises(CommandRejected, match="Invalid Command"):
        pump.infuse(500.0, 1000.0)


def test_a_clamped_rate_raises_and_nothing_starts(lab, emulator, pump, link):
    emulator.faults.clamp_rates = True
    with pytest.raises(ValueClamped, match="rate 500 uL/min but the pump took 450"):
        pump.infuse(500.0, 1000.0)
    assert "start" not in sent(link)
    assert not lab.pumps["cui"].status().running


def test_a_request_beyond_the_pumps_own_limit_is_clamped_by_the_pump(lab, link):
    config = lab.pumps["cui"].config.model_copy(update={"max_rate": 100_000.0})  # a wrong config
    pump = make_pump(config, link=link)
    with pytest.raises(ValueClamped, match="took 40000"):
        pump.infuse(60_000.0, 1000.0)
    assert not lab.pumps["cui"].status().running


def test_a_stalled_pump_refuses_to_start(emulator, pump):
    emulator.faults.stall = True
    with pytest.raises(PumpStalled, match="stall"):
        pump.infuse(500.0, 1000.0)
    assert pump.status().alarm == "stalled (pump status 4)"


def test_a_stall_in_the_lab_shows_as_an_alarm(lab, pump):
    lab.faults.plan.stall_pump, lab.faults.plan.stall_at_s = "cui", 30.0
    pump.infuse(500.0, 10_000.0)
    lab.clock.advance(60)
    status = pump.status()
    assert not status.running and status.alarm
    with pytest.raises(PumpStalled):
        pump.infuse(500.0, 1000.0)


@pytest.mark.parametrize("fault", ["silent_next", "garble_next"])
def test_a_lost_reply_to_set_rate_is_retried_and_the_infusion_starts(lab, emulator, pump, link, fault):
    setattr(emulator.faults, fault, 1)
    emulator.faults.match = "set rate"
    pump.infuse(500.0, 1000.0)
    assert sent(link).count("set rate 500") == 2 and sent(link).count("start") == 1
    assert pump.status().running and lab.pumps["cui"].status().rate_ul_min == 500.0
    assert pump.retries.by_instrument() == {"cui": 1}


@pytest.mark.parametrize(("fault", "starts"), [("garble_next", 1), ("silent_next", 2)])
def test_a_lost_reply_to_start_leaves_the_pump_running_once(lab, emulator, pump, link, fault, starts):
    """Garbled: the pump started, only its answer was noise, so the driver asks and does not start
    it again. Silent: the start never arrived, the pump is idle, so the driver starts it again."""
    setattr(emulator.faults, fault, 1)
    emulator.faults.match = "start"
    pump.infuse(500.0, 1000.0)
    assert sent(link).count("start") == starts and "pump status" in sent(link)[-3:]
    assert lab.pumps["cui"].status().rate_ul_min == 500.0
    lab.clock.advance(60)
    status = pump.status()
    assert status.running and status.dispensed_ul == pytest.approx(lab.pumps["cui"].dispensed_ul(), rel=1e-6)
    lab.clock.advance(120)  # past the 1000 uL: the run was programmed once, not twice
    assert not pump.status().running and pump.status().dispensed_ul == pytest.approx(1000.0, rel=0.01)


@pytest.mark.parametrize("fault", ["garble_next", "silent_next"])
def test_a_lost_start_reply_while_the_pump_runs_keeps_the_total_right(lab, emulator, pump, link, fault):
    """Re-programming a running pump: the pump reports running either way, and its run counter
    (restarted by a start that took effect) tells the driver whether the new run began."""
    pump.infuse(500.0, 10_000.0)
    lab.clock.advance(60)
    setattr(emulator.faults, fault, 1)
    emulator.faults.match = "start"
    pump.infuse(1000.0, 10_000.0)
    assert lab.pumps["cui"].status().rate_ul_min == 1000.0
    lab.clock.advance(60)
    assert pump.status().dispensed_ul == pytest.approx(lab.pumps["cui"].dispensed_ul(), rel=1e-6)
    pump.stop()
    pump.infuse(2000.0, 1000.0)  # the next run's bookkeeping starts from the right total too
    lab.clock.advance(60)
    assert pump.status().dispensed_ul == pytest.approx(lab.pumps["cui"].dispensed_ul(), rel=1e-6)


def test_a_start_that_never_arrives_stops_the_pump_and_raises(lab, emulator, pump, link):
    emulator.faults.silent_next, emulator.faults.match = COMMAND_ATTEMPTS, "start"
    with pytest.raises(InstrumentTimeout, match="'start'"):
        pump.infuse(500.0, 1000.0)
    assert sent(link).count("start") == COMMAND_ATTEMPTS and sent(link)[-1] == "stop"
    assert not lab.pumps["cui"].status().running
    pump.infuse(500.0, 1000.0)
    assert pump.status().running


def test_a_refusal_of_the_virtual_pump_is_an_error_reply_not_a_crash(lab, emulator, pump):
    pump.infuse(40_000.0, 45_000.0)
    lab.clock.advance(120)
    pump.set_fill()  # the operator says "refilled", but the syringe in the lab was not
    with pytest.raises(CommandRejected, match="did not start.*refill it"):
        pump.infuse(500.0, 10_000.0)
    assert emulator.errors == [] and pump.status().alarm is None


def test_the_syringe_table_is_consistent(platform):
    for syringe in SYRINGES.values():
        check_diameter(syringe.volume_ul, syringe.inner_diameter_mm)
    for config in platform.pumps:
        check_diameter(config.syringe_volume, config.syringe_inner_diameter)
    assert lookup("Stainless-50mL").inner_diameter_mm == 28.6
    with pytest.raises(SdflInputError, match="hamilton-1001"):
        lookup("hamilton-9999")
    with pytest.raises(SdflInputError, match="stroke"):
        check_diameter(50_000.0, 2.86)  # cm typed as mm


class _OtherDevice(PtyServer):
    """Something that is not a Chemyx pump: answers "OK", or nothing at all."""

    def __init__(self, reply: bytes | None):
        self.reply = reply
        super().__init__(name="other-device")

    def handle_line(self, line: bytes) -> bytes | None:
        return self.reply


@pytest.mark.parametrize("reply", [b"OK\r\n", None])
def test_a_device_that_is_not_a_chemyx_pump_is_named(lab, reply):
    with _OtherDevice(reply) as other:
        with pytest.raises(WrongDevice, match="not answer like a Chemyx pump") as info:
            make_pump(lab.pumps["cui"].config, other.port)
        assert other.port in str(info.value)


def test_one_garbled_reply_at_open_is_not_a_wrong_device(lab, emulator):
    emulator.faults.garble_next = 1
    with make_pump(lab.pumps["cui"].config, emulator.port) as pump:
        assert not pump.status().running
    assert emulator.commands[:2] == ["pump status", "pump status"]


def test_a_disconnect_mid_infusion(lab, emulator, pump):
    pump.infuse(500.0, 10_000.0)
    emulator.disconnect()
    for _ in range(2):
        with pytest.raises(InstrumentDisconnected, match=emulator.port):
            pump.status()


def test_a_port_that_does_not_exist(lab):
    with pytest.raises(InstrumentDisconnected, match="/dev/no-such-chemyx") as info:
        make_pump(lab.pumps["cui"].config, "/dev/no-such-chemyx")
    assert "Available ports" in str(info.value) and "cui" in str(info.value)


def test_closing_leaves_no_fds_or_threads(lab):
    fds, threads = len(os.listdir("/proc/self/fd")), threading.active_count()
    with ChemyxEmulator(lab.pumps["cui"]) as emu:
        with make_pump(lab.pumps["cui"].config, emu.port) as pump:
            pump.status()
    assert len(os.listdir("/proc/self/fd")) == fds and threading.active_count() == threads


# --- two channels on one port ---------------------------------------------------------------------


def test_two_channels_share_one_link(lab):
    cui, oa_cu = lab.pumps["cui"], lab.pumps["oa_cu"]
    with ChemyxEmulator([cui, oa_cu]) as emu:
        link = SerialLink(emu.port, 9600, TIMEOUT_S)
        one = make_pump(cui.config, link=link, channel=1)
        two = make_pump(oa_cu.config, link=link, channel=2)
        runs = [threading.Thread(target=one.infuse, args=(500.0, 5000.0)),
                threading.Thread(target=two.infuse, args=(100.0, 1000.0))]
        for t in runs:
            t.start()
        for t in runs:
            t.join()
        assert (cui.status().rate_ul_min, oa_cu.status().rate_ul_min) == (500.0, 100.0)
        lab.clock.advance(60)
        assert two.status().dispensed_ul == pytest.approx(expected_volume(lab, 100.0, 60), rel=0.01)
        one.stop()
        assert not one.status().running and two.status().running
        one.close()  # a shared link stays open for the other channel
        two.stop()
        link.close()
    assert "2 set rate 100" in emu.commands and "1 stop" in emu.commands


# --- record and replay ----------------------------------------------------------------------------


def run_experiment(pump: ChemyxPump, advance) -> list[dict]:
    """The recorded experiment: two infusions, status on the way, a stop. Returns the statuses."""
    statuses = []
    pump.infuse(600.0, 3000.0)
    statuses.append(pump.status())
    advance(60)
    statuses.append(pump.status())
    pump.stop()
    statuses.append(pump.status())
    pump.infuse(1500.0, 1000.0)
    advance(120)  # past the programmed volume: the pump stops by itself
    statuses.append(pump.status())
    pump.stop()
    return [asdict(s) for s in statuses]


def record_experiment(path: Path = FIXTURE, seed: int = 7) -> ByteLog:
    """Run `run_experiment` against the emulator and save its byte log (with the statuses) to `path`."""
    lab = VirtualLab(load_platform(), seed=seed)
    config = lab.pumps["cui"].config
    with ChemyxEmulator(lab.pumps["cui"]) as emu:
        link = SerialLink(emu.port, 9600, TIMEOUT_S, log=ByteLog())
        try:
            statuses = run_experiment(make_pump(config, link=link), lab.clock.advance)
        finally:
            link.close()
    link.log.meta = {
        "what": f"Chemyx Fusion driver <-> emulated pump, virtual lab seed {seed}, pump {config.name!r}",
        "regenerate": ".venv/bin/python -m tests.test_chemyx",
        "pump": config.name,
        "statuses": statuses,
    }
    link.log.save(path)
    return link.log


def test_a_recorded_experiment_replays_without_a_device(lab, tmp_path):
    log = record_experiment(tmp_path / "run.jsonl", seed=5)
    replay = ReplayLink(tmp_path / "run.jsonl")
    statuses = run_experiment(make_pump(lab.pumps["cui"].config, link=replay), lambda s: None)
    assert statuses == log.meta["statuses"] and replay.finished


def test_replay_names_the_step_where_the_driver_differs(lab, tmp_path):
    record_experiment(tmp_path / "run.jsonl", seed=5)
    pump = make_pump(lab.pumps["cui"].config, link=ReplayLink(tmp_path / "run.jsonl"))
    with pytest.raises(ReplayMismatch, match=r"step 3: expected b'set rate 600\\r\\n', got b'set rate 601"):
        pump.infuse(601.0, 3000.0)


def test_the_committed_recording_still_replays(lab):
    log = ByteLog.load(FIXTURE)
    replay = ReplayLink(log)
    statuses = run_experiment(make_pump(lab.pumps[log.meta["pump"]].config, link=replay), lambda s: None)
    assert statuses == log.meta["statuses"] and replay.finished
    assert statuses[1]["running"] and not statuses[3]["running"]


if __name__ == "__main__":
    record_experiment()
    print(f"wrote {FIXTURE}")
