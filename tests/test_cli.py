"""The `sdfl` command, as a user types it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import no_traceback, sdfl_environment

from flows.cli import main
from hardware.platform import PLATFORM_DIR
from tasks.storage import read_experiments

REPO = Path(__file__).resolve().parents[1]


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for command in ("experiment", "study", "platform", "data", "demo"):
        assert command in out


def test_platform_shows_the_parameter_space(capsys):
    assert main(["platform"]) == 0
    out = capsys.readouterr().out
    assert "temperature_c" in out and "[120, 150]" in out and "pfo" in out


@pytest.mark.usefixtures("prefect_harness")
def test_experiment_runs_and_data_shows_it(capsys, data_root):
    code = main(["experiment", "--set", "temperature_c=145", "--campaign", "cli",
                 "--data-root", str(data_root), "--seed", "31"])
    assert code == 0
    out = capsys.readouterr().out
    assert "completed" in out and "centre of the space" in out
    assert main(["data", "--campaign", "cli", "--data-root", str(data_root)]) == 0
    assert "1 experiments" in capsys.readouterr().out


@pytest.mark.usefixtures("prefect_harness")
def test_a_value_outside_the_space_is_refused_with_the_bounds(capsys, data_root):
    code = main(["experiment", "--set", "temperature_c=999", "--data-root", str(data_root)])
    assert code == 2
    err = capsys.readouterr().err
    assert "temperature_c = 999 is outside [120, 150]" in err
    assert not data_root.exists()


def test_an_unknown_parameter_is_refused(capsys):
    assert main(["experiment", "--set", "nosuch=1"]) == 2
    assert "unknown parameter 'nosuch'" in capsys.readouterr().err


def test_a_broken_platform_file_names_file_and_field(tmp_path, capsys):
    text = (PLATFORM_DIR / "virtual-cs3cu2i5.toml").read_text().replace('volume = "840 uL"', 'volume = "840 uLL"')
    broken = tmp_path / "broken.toml"
    broken.write_text(text)
    assert main(["platform", str(broken)]) == 2
    err = capsys.readouterr().err
    assert str(broken) in err and "path[0].volume" in err and "unknown unit 'uLL'" in err


@pytest.mark.usefixtures("prefect_harness")
def test_sigterm_mid_experiment_leaves_a_crashed_record(tmp_path):
    """A process manager stops sdfl mid-run: the flow is marked crashed, the hook makes the rig
    safe and records the experiment. (The chemistry plug-in is slowed down in wall time so the
    run can be caught in the middle; it is a user-supplied class, as any lab could write.) sdfl
    reports to this session's Prefect test server, as the `sdfl` fixture does: Prefect's own
    temporary server under an interrupted sdfl is tested in test_prefect_server.py."""
    text = (PLATFORM_DIR / "virtual-cs3cu2i5.toml").read_text()
    text = text.replace('model = "hardware.virtual.cs3cu2i5:Cs3Cu2I5Chemistry"', 'model = "slow_chemistry:SlowChemistry"')
    config = tmp_path / "virtual-slow.toml"
    config.write_text(text)
    marker, data = tmp_path / "started", tmp_path / "data"
    env = sdfl_environment(tmp_path / "prefect", SDFL_TEST_MARKER=str(marker))
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "experiment", "--platform", str(config), "--campaign", "killed",
         "--experiment-id", "exp-killed", "--data-root", str(data)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "the run never reached the instruments"
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, output
    table = read_experiments(data, "killed")
    assert list(table["experiment_id"]) == ["exp-killed"], output
    assert table.loc[0, "status"] == "crashed"
    assert "safe state" not in table.loc[0, "failure_reason"]  # no safe-state problem was reported


def test_platform_shows_the_path_heaters_and_rules_of_a_cascade(capsys):
    assert main(["platform", "virtual-inp-zns"]) == 0
    out = capsys.readouterr().out
    assert "shell1" in out and "stream shell joins" in out
    assert "heaters: core (core-block), shell (shell-block)" in out
    assert "step response reaches 99%" in out


@pytest.mark.usefixtures("prefect_harness")
def test_procedure_purges_and_fills_the_cascade(capsys):
    assert main(["procedure", "startup", "--platform", "virtual-inp-zns", "--seed", "4"]) == 0
    out = capsys.readouterr().out
    assert "argon through argon-purge for 90 s" in out and "fill" in out


@pytest.mark.usefixtures("prefect_harness")
def test_twin_table_turns_a_campaign_into_a_chemistry_table(capsys, data_root, tmp_path):
    for t in (130, 145):
        assert main(["experiment", "--set", f"temperature_c={t}", "--campaign", "tt",
                     "--data-root", str(data_root), "--seed", "32"]) == 0
    out_file = tmp_path / "table.csv"
    assert main(["twin-table", "--campaign", "tt", "--data-root", str(data_root), "--out", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert "2 of 2 experiments written" in out and "needs at least" in out
    assert 'model = "hardware.virtual.tabular:TableChemistry"' in out
    import pandas as pd

    table = pd.read_csv(out_file)
    assert {"temperature_c", "Cu_mM", "peak_nm", "fwhm_nm", "qy"} <= set(table.columns)
    assert sorted(table["temperature_c"]) == [130.0, 145.0]


def test_twin_table_of_an_empty_campaign_says_so(data_root, tmp_path):
    with pytest.raises(SystemExit) as done:
        main(["twin-table", "--campaign", "nothing", "--data-root", str(data_root), "--out", str(tmp_path / "t.csv")])
    assert "has no experiments" in str(done.value.code)
    assert not (tmp_path / "t.csv").exists()


BAD_SETTINGS = [
    (["optimize", "--campaign", "k", "--kappa", "-1"], "--kappa must be more than 0, got '-1'"),
    (["optimize", "--campaign", "s", "--seed", "-1"], "--seed must be at least 0, got '-1'"),
    (["optimize", "--campaign", "p", "--prior-model", "/no/such/model.pkl"], "prior model '/no/such/model.pkl': no such file"),
    (["optimize", "--campaign", "u", "--storage", "not a url"], "is not a database URL"),
    (["optimize", "--campaign", "d", "--storage", "mysql://lab@127.0.0.1:1/sdfl"], "database driver is not installed"),
    (["experiment", "--replicates", "-2"], "--replicates must be at least 1, got '-2'"),
    (["experiment", "--replicates", "0"], "--replicates must be at least 1, got '0'"),
]


@pytest.mark.parametrize("args, message", BAD_SETTINGS, ids=[" ".join(a[:3]) for a, _ in BAD_SETTINGS])
def test_bad_settings_get_one_clear_line_and_run_nothing(sdfl, tmp_path, args, message):
    root = tmp_path / "data"
    done = sdfl(*args, "--data-root", str(root))
    out = no_traceback(done)
    assert done.returncode == 2, out
    assert message in [line for line in out.splitlines() if line.startswith("sdfl ")][-1]
    assert not (root / "experiments").exists() and not (root / "spectra").exists()


def test_platform_refuses_a_twin_chemistry_that_does_not_import(tmp_path, capsys):
    broken = tmp_path / "broken.toml"
    broken.write_text((PLATFORM_DIR / "virtual-cs3cu2i5.toml").read_text().replace(
        "hardware.virtual.cs3cu2i5:Cs3Cu2I5Chemistry", "hardware.virtual.cs3cu2i5:NoSuchChemistry"))
    assert main(["platform", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "chemistry.model: cannot import 'hardware.virtual.cs3cu2i5:NoSuchChemistry'" in err
    assert main(["platform"]) == 0
    assert "twin chemistry: hardware.virtual.cs3cu2i5:Cs3Cu2I5Chemistry" in capsys.readouterr().out


@pytest.mark.usefixtures("prefect_harness")
def test_bad_input_is_refused_at_once_while_another_run_holds_the_reactor(sdfl, tmp_path):
    """A busy reactor does not delay the answer to a mistake: the request is checked before the wait."""
    from flows.reactor import reactor_lock

    with reactor_lock("virtual-cs3cu2i5"):
        started = time.monotonic()
        done = sdfl("experiment", "--set", "temperature_c=400", "--data-root", str(tmp_path / "data"), timeout=120)
        waited = time.monotonic() - started
    assert done.returncode == 2 and "temperature_c = 400 is outside [120, 150]" in no_traceback(done)
    assert "busy with another run" not in done.stdout + done.stderr and waited < 60


def test_an_unusable_reactor_lock_folder_gets_one_line_and_runs_nothing(sdfl, tmp_path):
    """SDFL_LOCK_DIR naming a file (a typo, a stale mount): refused with the fix, nothing moves."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    done = sdfl("experiment", "--data-root", str(tmp_path / "data"), env={"SDFL_LOCK_DIR": str(blocker)})
    out = no_traceback(done)
    assert done.returncode == 2, out
    last = [line for line in out.splitlines() if line.startswith("sdfl experiment:")][-1]
    assert "ReactorLockUnusable" in last and "SDFL_LOCK_DIR" in last
    assert not list((tmp_path / "data").glob("experiments/*/*.parquet"))
