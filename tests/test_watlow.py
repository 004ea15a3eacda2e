"""The Watlow driver against the Modbus emulators: real sockets on loopback and a real pty, no mocks.

The emulators take their physics from the virtual lab's heater, on the lab's simulated clock.
"""

from __future__ import annotations

import math
import time

import pytest

from hardware.drivers.watlow import (
    F4T,
    PM,
    WatlowController,
    float_to_registers,
    registers_to_float,
)
from hardware.emulators.watlow import WatlowRtuEmulator, WatlowTcpEmulator, float_registers, registers_float
from hardware.errors import (
    CommandRejected,
    GarbledReply,
    HeaterNotStable,
    InstrumentDisconnected,
    InstrumentTimeout,
    SafetyLimitExceeded,
    TransientInstrumentError,
    ValueClamped,
    WrongDevice,
)
from hardware.interfaces import TemperatureController
from hardware.retry import COMMAND_ATTEMPTS
from hardware.virtual.lab import VirtualLab

TIMEOUT_S = 1.0
"""Generous, so a loaded machine does not time out a healthy request."""
SHORT_TIMEOUT_S = 0.3
"""For the tests that expect silence: each silent request costs this much wall time."""


@pytest.fixture
def lab(platform):
    return VirtualLab(platform, seed=1)


@pytest.fixture
def emulator(lab):
    with WatlowTcpEmulator(lab.heater, model="f4t") as emu:
        yield emu


@pytest.fixture
def controller(lab, emulator):
    with WatlowController.tcp(emulator.host, emulator.port, model="f4t", max_setpoint_c=lab.heater.max_setpoint_c,
                              timeout_s=TIMEOUT_S) as ctl:
        yield ctl


@pytest.fixture
def impatient(lab, emulator):
    """A controller with a short timeout, for the tests that expect no reply."""
    with WatlowController.tcp(emulator.host, emulator.port, max_setpoint_c=180.0, timeout_s=SHORT_TIMEOUT_S) as ctl:
        yield ctl


def test_satisfies_the_protocol_and_identifies_itself(controller, emulator):
    assert isinstance(controller, TemperatureController)
    info = controller.identify()
    assert info["model"] == "F4T" and info["loop"] == 1 and info["units"] == "C"
    assert info["connection"] == f"127.0.0.1:{emulator.port}"
    assert info["control_mode"] == "off" and info["setpoint_c"] is None
    assert info["process_value_c"] == pytest.approx(22.0, abs=0.2)  # ambient
    assert info["registers"] == {"process_value": 2820, "setpoint": 2782, "control_mode": 2730}


def test_setpoint_round_trip_switches_the_loop_to_auto(controller, lab, emulator):
    controller.set_setpoint(145.5)
    assert controller.setpoint() == pytest.approx(145.5)
    assert controller.control_mode() == "auto"
    assert lab.heater.setpoint() == pytest.approx(145.5)
    assert [address for address, _ in emulator.writes] == [2782, 2730]


def test_process_value_approaches_the_setpoint_on_the_lab_clock(controller, lab):
    controller.set_setpoint(140.0)
    readings = []
    for _ in range(4):
        lab.clock.advance(150.0)  # two time constants each
        readings.append(controller.read_temperature())
    assert readings == sorted(readings)
    assert readings[0] < 130.0
    assert readings[-1] == pytest.approx(140.0, abs=0.5)


def test_wait_until_stable_returns_a_reading_within_the_band(controller, lab):
    config = lab.heater.config
    controller.set_setpoint(150.0)
    started = time.monotonic()
    reading = controller.wait_until_stable(config.stable_band, config.stable_hold, config.max_wait, lab.clock)
    assert abs(reading - 150.0) <= config.stable_band
    assert 5 * config.time_constant < lab.clock.now() < config.max_wait  # platform time, not wall time
    assert time.monotonic() - started < 5.0


def test_overshoot_still_settles_or_raises_when_the_wait_is_short(controller, lab):
    lab.faults.plan.heater_overshoot = True
    controller.set_setpoint(150.0)
    peak = 0.0
    for _ in range(40):
        lab.clock.advance(5.0)
        peak = max(peak, controller.read_temperature())
    assert peak > 150.0 + 5.0  # it overshoots
    with pytest.raises(HeaterNotStable) as info:
        controller.wait_until_stable(0.5, 30.0, 60.0, lab.clock)
    message = str(info.value)
    assert "150 C" in message and "+/-0.5 C" in message and "last reading" in message and "waiting" in message
    reading = controller.wait_until_stable(0.5, 30.0, 1800.0, lab.clock)
    assert abs(reading - 150.0) <= 0.5


def test_standby_turns_control_off(controller, lab):
    controller.set_setpoint(120.0)
    controller.standby()
    assert controller.setpoint() is None
    assert controller.control_mode() == "off"
    assert lab.heater.setpoint() is None
    with pytest.raises(HeaterNotStable, match="off mode"):
        controller.wait_until_stable(0.5, 30.0, 600.0, lab.clock)


@pytest.mark.parametrize("celsius", [181.0, math.nan, math.inf])
def test_unsafe_setpoint_is_refused_before_anything_is_written(controller, lab, emulator, celsius):
    controller.set_setpoint(100.0)
    writes = list(emulator.writes)
    with pytest.raises(SafetyLimitExceeded, match="limit for this heater is 180 C"):
        controller.set_setpoint(celsius)
    assert emulator.writes == writes
    assert lab.heater.setpoint() == pytest.approx(100.0)


def test_controller_refuses_what_its_own_limit_forbids(lab, emulator):
    with WatlowController.tcp(emulator.host, emulator.port, max_setpoint_c=400.0, timeout_s=TIMEOUT_S) as ctl:
        with pytest.raises(CommandRejected, match="exception 3"):
            ctl.set_setpoint(250.0)  # above the virtual heater's 180 C
    assert lab.heater.setpoint() is None


def test_a_clamped_setpoint_is_a_named_error(controller, emulator):
    emulator.clamp_setpoint_c = 120.0
    with pytest.raises(ValueClamped, match="kept 120.00 C"):
        controller.set_setpoint(150.0)


def test_one_unanswered_request_is_sent_again(impatient, emulator):
    emulator.silent = 1
    assert impatient.read_temperature() == pytest.approx(22.0, abs=0.2)
    assert impatient.retries.total == 1 and emulator.requests == 3  # units, then the read twice


def test_silence_on_every_try_is_a_timeout_and_the_link_recovers(impatient, emulator):
    impatient.units()
    emulator.silent = COMMAND_ATTEMPTS
    with pytest.raises(InstrumentTimeout, match="no reply .* register 2820"):
        impatient.read_temperature()
    assert impatient.read_temperature() == pytest.approx(22.0, abs=0.2)


def test_silence_from_the_lab_fault_plan(impatient, lab):
    impatient.units()
    lab.faults.plan.timeouts_next = COMMAND_ATTEMPTS
    with pytest.raises(InstrumentTimeout):
        impatient.read_temperature()
    lab.faults.plan.timeouts_next = 1
    impatient.read_temperature()


def test_malformed_and_busy_replies_are_transient_and_retried(controller, emulator):
    controller.units()
    emulator.garble = COMMAND_ATTEMPTS
    with pytest.raises(GarbledReply, match="got 3"):
        controller.read_temperature()
    emulator.garble = COMMAND_ATTEMPTS
    with pytest.raises(GarbledReply, match="acknowledged"):
        controller.standby()
    emulator.reply_exception(6, times=COMMAND_ATTEMPTS)
    with pytest.raises(TransientInstrumentError, match="busy"):
        controller.read_temperature()
    emulator.garble = 1
    emulator.reply_exception(6, times=1)
    controller.read_temperature()


@pytest.mark.parametrize("fault", ["emulator", "lab"])
def test_a_garbled_set_point_write_took_effect_and_is_written_again(controller, lab, emulator, fault):
    """A garbled acknowledgement comes from a controller that did write the register: writing the
    same value again is harmless, and the read-back still checks it."""
    controller.units()
    if fault == "emulator":
        emulator.garble = 1
    else:
        lab.faults.plan.garbled_next = 1
    controller.set_setpoint(130.0)
    assert [address for address, _ in emulator.writes] == [2782, 2782, 2730]
    assert controller.setpoint() == pytest.approx(130.0) and lab.heater.setpoint() == pytest.approx(130.0)
    assert controller.retries.total == 1


def test_disconnect_names_the_address_and_the_fix(controller, emulator):
    emulator.disconnect()
    for _ in range(2):  # the dropped connection, then the refused reconnect
        with pytest.raises(InstrumentDisconnected, match=f"127.0.0.1:{emulator.port}.*powered"):
            controller.read_temperature()


def test_nothing_listening_is_a_disconnect(emulator):
    port = emulator.port
    emulator.close()
    with pytest.raises(InstrumentDisconnected, match=f"127.0.0.1:{port}"):
        WatlowController.tcp("127.0.0.1", port, max_setpoint_c=180.0, timeout_s=TIMEOUT_S)


def test_wrong_register_map_names_the_register(emulator):
    with WatlowController.tcp(emulator.host, emulator.port, model="pm", max_setpoint_c=180.0,
                              timeout_s=TIMEOUT_S, units="C") as ctl:
        with pytest.raises(WrongDevice, match="register 360 .process value of the EZ-ZONE PM map"):
            ctl.read_temperature()


def test_wrong_loop_names_the_register(lab):
    assert F4T.for_loop(2).setpoint == 2942 and F4T.for_loop(4).process_value == 3300
    with WatlowTcpEmulator(lab.heater, model="f4t", loop=2) as emu:
        with WatlowController.tcp(emu.host, emu.port, loop=2, max_setpoint_c=180.0, timeout_s=TIMEOUT_S) as ctl:
            ctl.set_setpoint(90.0)
            assert ctl.setpoint() == pytest.approx(90.0)
        with WatlowController.tcp(emu.host, emu.port, loop=1, max_setpoint_c=180.0, timeout_s=TIMEOUT_S) as ctl:
            with pytest.raises(WrongDevice, match="register 2782"):
                ctl.set_setpoint(90.0)


def test_float_word_order_is_low_word_first():
    # The EZ-ZONE manual's example: 75.0 is 0x42960000, sent as 0x0000 (register 2160) then 0x4296 (2161).
    assert float_to_registers(75.0) == [0x0000, 0x4296]
    assert float_registers(75.0) == [0x0000, 0x4296]
    assert registers_to_float([0x0000, 0x4296]) == 75.0
    assert registers_float([0x0000, 0x4296]) == 75.0
    assert registers_to_float([0x4296, 0x0000], word_order="big") == 75.0


def test_float_word_order_on_the_wire(controller, emulator):
    controller.set_setpoint(75.0)
    assert emulator.writes[0] == (2782, [0x0000, 0x4296])


def test_fahrenheit_controller_is_converted(lab):
    with WatlowTcpEmulator(lab.heater, units="F") as emu:
        with WatlowController.tcp(emu.host, emu.port, max_setpoint_c=180.0, timeout_s=TIMEOUT_S) as ctl:
            assert ctl.units() == "F"
            ctl.set_setpoint(100.0)
            assert registers_float(emu.writes[0][1]) == pytest.approx(212.0)
            assert lab.heater.setpoint() == pytest.approx(100.0)
            assert ctl.setpoint() == pytest.approx(100.0)
            assert ctl.read_temperature() == pytest.approx(22.0, abs=0.2)


def test_pm_over_rtu_on_a_pty(lab):
    with WatlowRtuEmulator(lab.heater, model="pm", unit_id=3) as emu:
        with WatlowController.rtu(emu.device, model="pm", unit_id=3, max_setpoint_c=180.0,
                                  timeout_s=SHORT_TIMEOUT_S) as ctl:
            assert ctl.identify()["registers"] == {"process_value": 360, "setpoint": 2160, "control_mode": 1880}
            ctl.set_setpoint(130.0)
            assert emu.writes[0][0] == PM.setpoint and lab.heater.setpoint() == pytest.approx(130.0)
            lab.clock.advance(900.0)
            assert ctl.read_temperature() == pytest.approx(130.0, abs=0.5)
            ctl.standby()
            assert ctl.setpoint() is None and lab.heater.setpoint() is None
            emu.silent = 1
            ctl.read_temperature()  # asked again
            emu.silent = COMMAND_ATTEMPTS
            with pytest.raises(InstrumentTimeout, match=emu.device):
                ctl.read_temperature()
            emu.disconnect()
            with pytest.raises(InstrumentDisconnected, match="USB-RS485 adapter"):
                ctl.read_temperature()


def test_rtu_wrong_unit_id_goes_unanswered(lab):
    with WatlowRtuEmulator(lab.heater, model="pm", unit_id=1) as emu:
        with WatlowController.rtu(emu.device, model="pm", unit_id=2, max_setpoint_c=180.0, units="C",
                                  timeout_s=SHORT_TIMEOUT_S) as ctl:
            with pytest.raises(InstrumentTimeout, match="unit 2"):
                ctl.read_temperature()
