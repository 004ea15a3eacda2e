"""The Ocean Insight driver and the light-source drivers, against the virtual lab.

No USB spectrometer exists on a test machine and seabreeze has no simulator, so the seabreeze
API boundary is faked (`hardware.emulators.seabreeze_fake`, the project's only mock); the spectra
behind it come from the virtual lab's physics. The serial relay is driven over a real pty.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import seabreeze.backends

from hardware.drivers import oceaninsight
from hardware.drivers.light_sources import GpioLightSource, SerialRelaySource, SpectrometerLampSource
from hardware.drivers.oceaninsight import OceanSpectrometer, open_backend
from hardware.emulators.relay import RelayEmulator
from hardware.emulators.seabreeze_fake import FakeSeabreezeAPI
from hardware.errors import (
    GarbledReply,
    InstrumentDisconnected,
    InstrumentTimeout,
    PlatformConfigError,
    SafetyLimitExceeded,
    SpectrometerNotFound,
)
from hardware.platform import load_platform
from hardware.retry import COMMAND_ATTEMPTS
from hardware.rig import Rig
from hardware.virtual.lab import VirtualLab

PL, ABS = "HDXV0001", "HDXV0002"


@pytest.fixture(scope="module")
def platform():
    return load_platform()


@pytest.fixture
def lab(platform):
    return VirtualLab(platform, seed=1)


@pytest.fixture
def api(lab):
    return FakeSeabreezeAPI(lab, lamp_wiring={ABS: "abs"}, gpio_wiring={PL: {3: "pl"}})


def steady_state(lab, condition):
    """Heat, start the pumps at `condition` and wait 1.5 residence times: product in both cells."""
    from tasks.formulation import formulate

    plan = formulate(condition, lab.platform)
    lab.heater.set_setpoint(plan.temperature_c)
    lab.clock.sleep(10 * lab.platform.heater.time_constant)
    for name, pump in lab.pumps.items():
        if plan.flows_ul_min[name] > 0:
            pump.infuse(plan.flows_ul_min[name], plan.volumes_ul[name] * lab.platform.rules.volume_margin)
    lab.clock.sleep(1.5 * plan.tau_s)
    return plan


def wait_for(predicate, timeout_s=2.0):
    end = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < end, "the emulator did not see the frame in time"
        time.sleep(0.005)


# --- the spectrometer ---------------------------------------------------------------------------


def test_open_by_serial_reads_the_pl_peak_where_the_chemistry_puts_it(lab, api, condition):
    steady_state(lab, condition)
    spectrometer = OceanSpectrometer.open(PL, name="hdx-pl", api=api)
    info = spectrometer.identify()
    assert (info["model"], info["serial_number"], info["pixels"]) == ("HDX", PL, 2068)
    assert info["wavelength_min_nm"] == pytest.approx(198.0) and info["wavelength_max_nm"] == pytest.approx(1065.0)
    assert info["min_integration_ms"] == 6.0 and info["max_integration_ms"] < 10_000.0  # the top is exclusive

    dark = spectrometer.intensities(4)
    lab.light_sources["pl"].on()
    lit = spectrometer.intensities(4)
    wl = spectrometer.wavelengths()
    assert lit.shape == wl.shape == (2068,)
    expected = wl[np.argmax(lab.signal_cps("pl"))]
    measured = wl[np.argmax(lit - dark)]
    assert 440.0 < measured < 460.0 and measured == pytest.approx(expected, abs=2.0)
    assert (lit - dark).max() > 50 * np.std((lit - dark)[wl > 900])  # a real peak, not noise


def test_a_missing_serial_names_the_serials_found_and_the_fixes(api):
    with pytest.raises(SpectrometerNotFound, match=r"'HDX9999'.*attached: HDXV0001, HDXV0002.*seabreeze_os_setup"):
        OceanSpectrometer.open("HDX9999", api=api)
    api.hide(PL)
    api.hide(ABS)
    with pytest.raises(SpectrometerNotFound, match=r"none found.*USB cable.*pyseabreeze"):
        OceanSpectrometer.open(PL, api=api)


def test_integration_time_outside_the_limits_is_refused(platform, api):
    spectrometer = OceanSpectrometer.open(ABS, api=api, min_integration_ms=20.0)
    for ms in (10.0, 5.0, 10_000.0, float("nan")):
        with pytest.raises(SafetyLimitExceeded, match="outside"):
            spectrometer.set_integration_time_ms(ms)
    spectrometer.set_integration_time_ms(spectrometer.max_integration_ms)  # the unit accepts its own top
    assert spectrometer.integration_time_ms() == pytest.approx(9999.999)

    config = platform.spectrometers["pl"].model_copy(update={"device": {"backend": "pyseabreeze", "gain": 2}})
    with pytest.raises(PlatformConfigError, match=r"unknown device keys \['gain'\]"):
        OceanSpectrometer.from_config(config, api=api)


def test_the_stale_spectrum_after_an_integration_change_is_dropped_once(lab, api):
    lab.light_sources["abs"].on()  # the lamp through the solvent-filled cell
    spectrometer = OceanSpectrometer.open(ABS, api=api)
    reads = lambda: lab.faults.reads.get("abs", 0)  # noqa: E731
    spectrometer.set_integration_time_ms(6.0)
    short = spectrometer.intensities(1)
    before = reads()
    spectrometer.set_integration_time_ms(24.0)
    spectrometer.set_integration_time_ms(24.0)  # no change: nothing to drop
    long = spectrometer.intensities(1)
    assert reads() - before == 2  # one dropped, one returned
    assert (long.max() - 1500) / (short.max() - 1500) == pytest.approx(4.0, rel=0.05)
    spectrometer.intensities(1)
    assert reads() - before == 3  # no more drops

    spectrometer.close()
    raw = OceanSpectrometer.open(ABS, api=api, discard_after_change=False)  # the caller discards itself
    raw.set_integration_time_ms(6.0)
    raw.intensities(1)
    raw.set_integration_time_ms(24.0)
    stale, fresh = raw.intensities(1).max() - 1500, raw.intensities(1).max() - 1500
    assert fresh / stale == pytest.approx(4.0, rel=0.05)  # the stale one came through


def test_averaging_scans_reduces_the_noise(api):
    spectrometer = OceanSpectrometer.open(PL, api=api)
    single = np.std(spectrometer.intensities(1) - spectrometer.intensities(1))
    averaged = np.std(spectrometer.intensities(16) - spectrometer.intensities(16))
    assert averaged == pytest.approx(single / 4, rel=0.25)
    with pytest.raises(ValueError, match="scans"):
        spectrometer.intensities(0)


def test_unplugging_mid_acquisition_raises_instrument_disconnected(lab, api):
    spectrometer = OceanSpectrometer.open(PL, name="hdx-pl", api=api)
    spectrometer.intensities(1)
    api.unplug(PL, after_reads=2)
    lost = r"hdx-pl: USB spectrometer lost while reading a spectrum on HDX HDXV0001.*No such device"
    with pytest.raises(InstrumentDisconnected, match=lost):
        spectrometer.intensities(5)
    with pytest.raises(InstrumentDisconnected):
        spectrometer.set_integration_time_ms(50.0)
    with pytest.raises(SpectrometerNotFound, match="attached: HDXV0002"):
        OceanSpectrometer.open(PL, api=api)
    api.replug(PL)
    with pytest.raises(InstrumentDisconnected):  # the old handle stays dead
        spectrometer.intensities(1)
    spectrometer.close()
    assert OceanSpectrometer.open(PL, api=api).intensities(1).shape == (2068,)

    lab.faults.plan.timeouts_next = COMMAND_ATTEMPTS  # a USB timeout is worth a retry, not a safe-state stop
    with pytest.raises(InstrumentTimeout, match="no answer"):
        OceanSpectrometer.open(ABS, api=api).intensities(1)


@pytest.mark.parametrize(("fault", "error"), [("timeouts_next", InstrumentTimeout), ("garbled_next", GarbledReply)])
def test_a_usb_timeout_or_a_corrupted_transfer_is_read_again(lab, api, fault, error):
    spectrometer = OceanSpectrometer.open(ABS, name="hdx-abs", api=api)
    setattr(lab.faults.plan, fault, 1)
    assert spectrometer.intensities(1).shape == (2068,)
    assert spectrometer.retries.by_instrument() == {"hdx-abs": 1}
    setattr(lab.faults.plan, fault, COMMAND_ATTEMPTS)
    with pytest.raises(error):  # transient, not a lost spectrometer: no safe-state stop
        spectrometer.intensities(1)
    assert spectrometer.intensities(1).shape == (2068,)


def test_a_dark_turns_the_source_off_and_restores_it(lab, api):
    spectrometer = OceanSpectrometer.open(ABS, api=api)
    lamp = SpectrometerLampSource(spectrometer, "dh-2000-bal")
    lamp.on()
    spectrometer.set_integration_time_ms(10.0)
    lit = spectrometer.intensities(2)
    reads = lab.faults.reads["abs"]
    dark = spectrometer.dark(lamp, scans=2)
    assert lab.faults.reads["abs"] - reads == 3  # one dropped with the light going off
    assert lamp.is_on() and lab.light_sources["abs"].is_on()
    assert dark.max() < 2000 < 10_000 < lit.max()
    lamp.off()
    spectrometer.dark(lamp)
    assert not lab.light_sources["abs"].is_on()


def test_the_nonlinearity_correction_keeps_saturated_pixels_at_full_scale(platform):
    coefficients = [1.0, -2e-6]  # the detector reads 13 % low near full scale
    plain_lab, corrected_lab = VirtualLab(platform, seed=3), VirtualLab(platform, seed=3)
    plain = OceanSpectrometer.open(ABS, api=FakeSeabreezeAPI(plain_lab))
    corrected = OceanSpectrometer.open(ABS, api=FakeSeabreezeAPI(corrected_lab, nonlinearity={ABS: coefficients}))
    assert corrected.identify()["nonlinearity_correction"] and not plain.identify()["nonlinearity_correction"]
    assert corrected.max_counts == pytest.approx(65535 / (1 - 2e-6 * 65535))
    for lab, spectrometer in ((plain_lab, plain), (corrected_lab, corrected)):
        lab.light_sources["abs"].on()
        spectrometer.set_integration_time_ms(40.0)  # the lamp peak saturates
    raw, out = plain.intensities(1), corrected.intensities(1)
    saturated = raw >= plain.max_counts
    assert saturated.any() and np.array_equal(out >= corrected.max_counts, saturated)
    assert out[~saturated] == pytest.approx(raw[~saturated] / (1 - 2e-6 * raw[~saturated]))


# --- light sources ------------------------------------------------------------------------------


def test_lamp_enable_and_gpio_switch_the_lab_light_sources(lab, api):
    abs_spectrometer = OceanSpectrometer.open(ABS, api=api)
    pl_spectrometer = OceanSpectrometer.open(PL, api=api)
    lamp = SpectrometerLampSource(abs_spectrometer, "dh-2000-bal")
    led = GpioLightSource(pl_spectrometer, pin=3, name="uv-led-300")
    assert not lamp.is_on() and not led.is_on()
    lamp.on()
    led.on()
    assert lab.light_sources["abs"].is_on() and lab.light_sources["pl"].is_on() and led.is_on()
    led.off()
    assert not lab.light_sources["pl"].is_on() and not led.is_on()

    with pytest.raises(PlatformConfigError, match="pin 12 does not exist.*0-9"):
        GpioLightSource(pl_spectrometer, pin=12, name="x")
    with pytest.raises(PlatformConfigError, match="no 'strobe_lamp' feature.*serial relay"):
        SpectrometerLampSource(pl_spectrometer, "uv-led-300")
    api.unplug(ABS)
    with pytest.raises(InstrumentDisconnected, match="lamp-enable"):
        lamp.off()


def test_a_plain_lcus_relay_gets_the_documented_frames_over_a_pty(lab):
    with RelayEmulator(channels=2, wiring={2: lab.light_sources["abs"]}) as board:
        shutter = SerialRelaySource(board.port, channel=2, name="dh-2000-bal")
        shutter.on()
        wait_for(lambda: len(board.frames) == 2)
        assert board.frames == [bytes.fromhex("a0 02 00 a2"), bytes.fromhex("a0 02 01 a3")]
        assert shutter.is_on() and lab.light_sources["abs"].is_on()
        led = SerialRelaySource(board.port, channel=1, name="uv-led-300")  # same board, same port
        assert led.board is shutter.board
        shutter.off()
        wait_for(lambda: len(board.frames) == 4)
        assert board.frames[-1] == bytes.fromhex("a0 02 00 a2") and not lab.light_sources["abs"].is_on()
        led.close()
        shutter.close()


def test_a_feedback_relay_confirms_each_switch_and_times_out_when_silent(lab):
    with RelayEmulator(protocol="lcus-feedback", wiring={1: lab.light_sources["pl"]}) as board:
        led = SerialRelaySource(board.port, channel=1, name="uv-led-300", protocol="lcus-feedback", timeout_s=0.2)
        led.on()  # confirmed by the board before on() returns
        assert lab.light_sources["pl"].is_on() and led.is_on()
        board.states[1] = False  # someone pressed the board's button
        assert not led.is_on()
        board.mute = True
        with pytest.raises(InstrumentTimeout, match="no answer to a0 01 02 a3"):
            led.off()
        assert led.board.retries.total == COMMAND_ATTEMPTS - 1
        led.close()
    with pytest.raises(PlatformConfigError, match="channel 9"):
        SerialRelaySource("/dev/null", channel=9, name="x")


@pytest.mark.parametrize("fault", ["timeouts_next", "garbled_next"])
def test_a_feedback_relay_switches_again_after_a_lost_or_garbled_answer(lab, fault):
    with RelayEmulator(protocol="lcus-feedback", wiring={1: lab.light_sources["pl"]}, lab=lab) as board:
        led = SerialRelaySource(board.port, channel=1, name="uv-led-300", protocol="lcus-feedback", timeout_s=0.2)
        setattr(lab.faults.plan, fault, 1)
        led.on()
        assert lab.light_sources["pl"].is_on() and led.is_on() and led.board.retries.total == 1
        led.close()


def test_a_plain_relay_is_a_wire_the_lab_faults_do_not_touch(lab):
    with RelayEmulator(channels=2, wiring={2: lab.light_sources["abs"]}, lab=lab) as board:
        shutter = SerialRelaySource(board.port, channel=2, name="dh-2000-bal")
        lab.faults.plan.timeouts_next = 1
        shutter.on()
        wait_for(lambda: lab.light_sources["abs"].is_on())
        assert lab.faults.plan.timeouts_next == 1 and board.errors == []
        shutter.close()


# --- seabreeze's backend, and the acquisition task on top of the drivers --------------------------


def test_one_seabreeze_backend_per_process(monkeypatch):
    for attr in ("requested", "allow_fallback", "api_kwargs"):
        monkeypatch.setattr(seabreeze.backends.BackendConfig, attr, getattr(seabreeze.backends.BackendConfig, attr))
    monkeypatch.setattr(oceaninsight, "_backend", None)
    module = open_backend("pyseabreeze")
    assert module.__name__ == "seabreeze.spectrometers" and seabreeze.backends.BackendConfig.requested == "pyseabreeze"
    assert open_backend("pyseabreeze") is module
    with pytest.raises(PlatformConfigError, match="already uses 'pyseabreeze'.*same `device.backend`"):
        open_backend("cseabreeze")
    with pytest.raises(PlatformConfigError, match="unknown"):
        open_backend("usb4000")


def test_the_acquisition_task_runs_unchanged_on_the_drivers(lab, api, condition):
    from tasks.acquisition import acquire, take_reference

    pl = OceanSpectrometer.open(PL, name="hdx-pl", api=api, discard_after_change=False)  # the task discards
    absorbance = OceanSpectrometer.open(ABS, name="hdx-abs", api=api, discard_after_change=False)
    with RelayEmulator(protocol="lcus-feedback", wiring={1: lab.light_sources["pl"]}) as board:
        rig = Rig(platform=lab.platform, clock=lab.clock, pumps=dict(lab.pumps), heater=lab.heater,
                  spectrometers={"pl": pl, "abs": absorbance},
                  light_sources={"pl": SerialRelaySource(board.port, 1, "uv-led-300", protocol="lcus-feedback"),
                                 "abs": SpectrometerLampSource(absorbance, "dh-2000-bal")})
        reference = take_reference(rig)  # the cell holds solvent at the start
        steady_state(lab, condition)
        acquired = acquire(rig, reference, replicates=2, scans=2)
        rig.light_sources["pl"].close()
    assert not lab.light_sources["pl"].is_on() and not lab.light_sources["abs"].is_on()
    cps = acquired.pl_cps().mean(axis=0)
    assert 440.0 < pl.wavelengths()[np.argmax(cps)] < 460.0
    assert acquired.pl_raw_max().max() < pl.max_counts
    assert np.nanmax(acquired.absorbance()) > 0.1
