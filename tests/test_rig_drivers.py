"""Whole experiments through the real drivers, against emulators driven by the virtual lab.

The `emulated-cs3cu2i5` platform wires every instrument the way a real rig is wired: Chemyx pump
drivers over real pseudo-terminals, the Watlow driver over Modbus TCP on loopback, relay-switched
light sources over a pseudo-terminal. The spectrometers are the one mock: no USB spectrometer
exists here, so the seabreeze API boundary is faked (hardware/emulators/seabreeze_fake.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import assert_rig_safe

from flows.experiment import conduct_experiment, run_experiment
from hardware import errors
from hardware.drivers.chemyx import ChemyxPump
from hardware.drivers.serial_link import ByteLog, ReplayLink
from hardware.errors import PlatformConfigError
from hardware.platform import load_platform
from hardware.rig import open_rig

EMULATED = "emulated-cs3cu2i5"
FIXTURE = Path(__file__).parent / "data" / "emulated_experiment"


@pytest.fixture
def rig():
    return open_rig(load_platform(EMULATED), seed=11)


assert_safe = assert_rig_safe  # tests/conftest.py


def test_run_experiment_end_to_end_through_the_drivers(prefect_harness, data_root, condition):
    result = run_experiment(condition=condition, platform=EMULATED, data_root=str(data_root), seed=11)

    assert result["status"] == "completed", result.get("failure_reason")
    assert 440 < result["PL_peak_nm"] < 460  # the Cs3Cu2I5 emission, through seabreeze and the drivers
    rig = open_rig(load_platform(EMULATED), seed=11)
    sent = rig.instruments.emulators["pump:cui"].commands
    assert any(c.startswith("set rate") for c in sent) and "start" in sent and "stop" in sent
    assert rig.instruments.emulators["heater"].writes, "the heater got no Modbus writes"
    table = pd.read_parquet(data_root / "experiments")
    assert list(table["status"]) == ["completed"]
    assert_safe(rig)


@pytest.mark.parametrize(("pump", "fault"), [
    ("cui", {"silent_next": 1, "match": "start"}),
    ("pfo", {"garble_next": 1, "match": "pump status"}),
    ("oam", {"silent_next": 1, "match": "set volume"}),
])
def test_a_transient_fault_is_retried_and_the_experiment_completes(prefect_harness, data_root, condition, pump,
                                                                   fault):
    rig = open_rig(load_platform(EMULATED), seed=12)
    emulator = rig.instruments.emulators[f"pump:{pump}"]
    for key, value in fault.items():
        setattr(emulator.faults, key, value)

    result = run_experiment(condition=condition, platform=EMULATED, data_root=str(data_root), seed=12)

    assert result["status"] == "completed", result.get("failure_reason")
    assert emulator.faults.silent_next == 0 and emulator.faults.garble_next == 0  # the fault did fire


def _stall(rig):
    rig.instruments.emulators["pump:cs_oleate"].faults.stall = True


def _invalid(rig):
    faults = rig.instruments.emulators["pump:oa_cu"].faults
    faults.invalid_next, faults.match = 1, "set rate"


def _clamp(rig):
    rig.instruments.emulators["pump:ode_cs"].faults.clamp_rates = True


def _unplug_pl(rig):
    serial = rig.platform.spectrometers["pl"].serial_number
    rig.instruments.emulators["seabreeze"].unplug(serial, after_reads=4)


@pytest.mark.parametrize(("inject", "error"), [
    (_stall, "PumpStalled"),
    (_invalid, "CommandRejected"),
    (_clamp, "ValueClamped"),
    (_unplug_pl, "InstrumentDisconnected"),
])
def test_a_fatal_fault_fails_the_experiment_and_leaves_the_rig_safe(prefect_harness, data_root, condition,
                                                                    inject, error):
    rig = open_rig(load_platform(EMULATED), seed=13)
    inject(rig)

    with pytest.raises(getattr(errors, error)):
        run_experiment(condition=condition, platform=EMULATED, data_root=str(data_root), seed=13)

    table = pd.read_parquet(data_root / "experiments")
    assert list(table["status"]) == ["failed"]  # recorded, not lost
    assert error in table["failure_reason"].iloc[0]
    assert_safe(rig)


def test_a_fatal_error_outside_a_flow_still_makes_the_rig_safe(rig):
    """A driver's fatal error puts the whole rig in its safe state, whoever called it."""
    from hardware.errors import PumpStalled

    rig.heater.set_setpoint(140.0)
    rig.light_sources["pl"].on()
    rig.pumps["cui"].infuse(500.0, 1000.0)
    rig.instruments.emulators["pump:pfo"].faults.stall = True
    with pytest.raises(PumpStalled):
        rig.pumps["pfo"].infuse(500.0, 1000.0)
    assert_safe(rig)


def test_a_real_platform_without_device_tables_is_refused(tmp_path):
    path = tmp_path / "rig.toml"
    path.write_text('[platform]\nname = "my-rig"\nkind = "real"\nbase = "virtual-cs3cu2i5"\n')
    with pytest.raises(PlatformConfigError, match="device table for every pump"):
        open_rig(load_platform(path))


# --- a recorded experiment replays through the drivers --------------------------------------------


class _Recorder:
    """Records the driver calls a pump gets (method, arguments, result) during an experiment."""

    def __init__(self, pump):
        self._pump, self.calls = pump, []

    def __getattr__(self, name):
        value = getattr(self._pump, name)
        if name not in ("infuse", "stop", "status"):
            return value

        def call(*args):
            result = value(*args)
            self.calls.append({"method": name, "args": list(args), "result": _plain(result)})
            return result

        return call


def _plain(result):
    return None if result is None else {k: v for k, v in vars(result).items()}


def record_experiment(folder: Path = FIXTURE) -> None:
    """Run one experiment on the emulated rig and save each pump's byte log and driver calls.

    Regenerate the fixture with `.venv/bin/python -m tests.test_rig_drivers` after a deliberate
    protocol change.
    """
    from tests.conftest import CENTRE

    rig = open_rig(load_platform(EMULATED), seed=21)
    recorders = {name: _Recorder(pump) for name, pump in rig.pumps.items()}
    rig.pumps = recorders
    import tempfile

    with tempfile.TemporaryDirectory() as root:
        result = conduct_experiment(rig, condition=dict(CENTRE), data_root=root, seed=21)
    assert result["status"] == "completed"
    folder.mkdir(parents=True, exist_ok=True)
    for name in recorders:
        rig.instruments.byte_logs[name].save(folder / f"{name}.jsonl")
    (folder / "calls.json").write_text(json.dumps({n: r.calls for n, r in recorders.items()}, indent=1))


def _pump_from(name: str, log: ByteLog | Path) -> ChemyxPump:
    config = load_platform(EMULATED).pump(name)
    return ChemyxPump(name=name, syringe_volume_ul=config.syringe_volume,
                      syringe_inner_diameter_mm=config.syringe_inner_diameter, min_rate_ul_min=config.min_rate,
                      max_rate_ul_min=config.max_rate, link=ReplayLink(log))


def test_a_recorded_experiment_replays_through_the_pump_drivers():
    calls = json.loads((FIXTURE / "calls.json").read_text())
    assert set(calls) == {p.name for p in load_platform(EMULATED).pumps}
    for name, sequence in calls.items():
        pump = _pump_from(name, FIXTURE / f"{name}.jsonl")
        assert any(c["method"] == "infuse" for c in sequence)
        for call in sequence:
            result = getattr(pump, call["method"])(*call["args"])
            assert _plain(result) == call["result"], f"{name}: {call['method']} answered differently"
        assert pump.link.finished, f"{name}: the replay left recorded exchanges unused"


if __name__ == "__main__":
    record_experiment()
    print(f"fixture written to {FIXTURE}")


# --- safety limits and sdfl doctor ---------------------------------------------------------------


def test_a_set_point_above_the_carrier_limit_never_reaches_the_controller(rig):
    from hardware.errors import SafetyLimitExceeded

    emulator = rig.instruments.emulators["heater"]
    with pytest.raises(SafetyLimitExceeded, match="180"):
        rig.heater.set_setpoint(185.0)
    setpoint_register = 2782  # F4T loop 1
    assert not [w for w in emulator.writes if w[0] == setpoint_register]
    assert_safe(rig)  # and the refusal put the rig in its safe state (control mode off was written)


def test_a_platform_above_its_tubing_or_carrier_limit_does_not_load(tmp_path):
    path = tmp_path / "hot.toml"
    path.write_text('[platform]\nname = "hot"\nkind = "virtual"\nbase = "virtual-cs3cu2i5"\n'
                    '[rules]\nmax_temperature = "200 degC"\n')
    with pytest.raises(PlatformConfigError, match="PFO carrier limit 180 C"):
        load_platform(path)


def test_a_platform_file_extends_its_base_by_name(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[platform]\nname = "mine"\nkind = "virtual"\nbase = "virtual-cs3cu2i5"\n'
                    '[[pumps]]\nname = "cui"\nmax_rate = "20 mL/min"\n')
    mine, base = load_platform(path), load_platform("virtual-cs3cu2i5")
    assert mine.pump("cui").max_rate == 20_000 and mine.pump("cui").syringe_volume == base.pump("cui").syringe_volume
    assert [p.name for p in mine.pumps] == [p.name for p in base.pumps]
    assert mine.sha256 != base.sha256


def test_doctor_reports_every_instrument_of_the_emulated_rig(capsys):
    from flows.cli import main

    assert main(["doctor", "--platform", EMULATED, "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "13 of 13 instruments answered" in out
    assert "F4T" in out and "Chemyx pump 'pfo'" in out and "HDXV0002" in out


def test_doctor_on_a_real_rig_names_what_did_not_answer(tmp_path, capsys):
    from flows.cli import main

    path = tmp_path / "rig.toml"
    path.write_text(
        '[platform]\nname = "bench-rig"\nkind = "real"\nbase = "virtual-cs3cu2i5"\n'
        + "".join(f'[[pumps]]\nname = "{p.name}"\ndevice = {{ port = "/dev/sdfl-missing-{p.name}" }}\n'
                  for p in load_platform().pumps)
        + '[heater.device]\nhost = "127.0.0.1"\ntcp_port = 9\ntimeout_s = 0.3\n'
        + '[light_sources.pl.device]\nport = "/dev/sdfl-missing-relay"\n'
        + '[light_sources.abs.device]\nport = "/dev/sdfl-missing-relay"\nchannel = 2\n')

    assert main(["doctor", "--platform", str(path)]) == 1
    out = capsys.readouterr().out
    assert "0 of 13 instruments answered" in out
    assert "/dev/sdfl-missing-cui" in out and "127.0.0.1:9" in out and "HDXV0001" in out


def test_a_missing_or_circular_base_platform_is_named(tmp_path):
    missing = tmp_path / "a.toml"
    missing.write_text('[platform]\nname = "a"\nkind = "virtual"\nbase = "no-such-platform"\n')
    with pytest.raises(PlatformConfigError, match="platform.base 'no-such-platform' not found"):
        load_platform(missing)
    (tmp_path / "b.toml").write_text('[platform]\nname = "b"\nkind = "virtual"\nbase = "c.toml"\n')
    (tmp_path / "c.toml").write_text('[platform]\nname = "c"\nkind = "virtual"\nbase = "b.toml"\n')
    with pytest.raises(PlatformConfigError, match="makes a loop"):
        load_platform(tmp_path / "b.toml")


def test_a_device_table_with_an_unknown_field_is_refused_naming_it(tmp_path):
    path = tmp_path / "rig.toml"
    path.write_text('[platform]\nname = "my-rig"\nkind = "real"\nbase = "virtual-cs3cu2i5"\n'
                    '[[pumps]]\nname = "cui"\ndevice = { port = "/dev/ttyUSB0", baud = 9600 }\n')
    with pytest.raises(PlatformConfigError, match=r"pumps\[cui\].device: baud"):
        open_rig(load_platform(path))
