"""Mistakes a new user makes at the command line, through the real `sdfl` entry point.

Each bad command line is refused before anything runs: exit code 2, one message that names the
setting, no Python traceback, nothing written under the data root. The lines run in parallel
subprocesses (each is refused in well under a second of work)."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import REPO_DIR

# (command line, words the message must contain)
MISTAKES = [
    (["optimize", "--campaign", "c", "--budget", "-3"], ["--budget", "at least 1"]),
    (["optimize", "--campaign", "c", "--budget", "ten"], ["--budget", "whole number"]),
    (["optimize", "--campaign", "c", "--budget", "2.5"], ["--budget", "whole number"]),
    (["optimize", "--budget", "5"], ["--campaign", "required"]),
    (["optimize", "--campaign", "c", "--initial", "12", "--budget", "6"], ["initial", "budget"]),
    (["optimize", "--campaign", "c", "--policy", "eii"], ["--policy", "did you mean 'ei'"]),
    (["optimize", "--campaign", "c", "--polcy", "ei"], ["--polcy", "did you mean '--policy'"]),
    (["optimize", "--campaign", "c", "--objective", "FWHM"], ["FWHM", "FWHM_nm"]),
    (["optimize", "--campaign", "c", "--objective", "PL_I +"], ["objective"]),
    (["optimize", "--campaign", "my campaign"], ["--campaign", "letters, digits"]),
    (["optimize", "--campaign", "c", "--surrogate", "forest"], ["--surrogate", "gp, ensemble"]),
    (["optimize", "--campaign", "c", "--reactors", "500"], ["--reactors", "at most 16"]),
    (["optimize", "--campaign", "c", "--kappa", "0"], ["--kappa", "more than 0"]),
    (["optimize", "--campaign", "c", "--kappa", "nan"], ["--kappa", "finite"]),
    (["optimize", "--campaign", "c", "--seed", "-1"], ["--seed", "at least 0"]),
    (["optimize", "--campaign", "c", "--platform", "virtual-cs3cu2i"], ["--platform", "did you mean 'virtual-cs3cu2i5'"]),
    (["optimize", "--campaign", "c", "--prior-campaign", "nosuch"], ["nosuch"]),
    (["optimize", "--campaign", "c", "--in-flight", "retry"], ["--in-flight", "fail, rerun"]),
    (["explore", "--campaign", "c", "--policy", "ei"], ["--policy", "ivr, mv, random"]),
    (["explore", "--campaign", "c", "--target-r2", "1.5"], ["--target-r2", "less than 1"]),
    (["seek-target", "--campaign", "t"], ["target_peak_nm", "target_peak_ev"]),
    (["seek-target", "--campaign", "t", "--target-nm", "516", "--target-ev", "2.4"], ["target_peak_nm"]),
    (["seek-target", "--campaign", "t", "--target-nm", "-5"], ["--target-peak-nm", "more than 0"]),
    (["seek-target", "--campaign", "t", "--target-nm", "516", "--quality", "PLQY"], ["PLQY"]),
    (["experiment", "--set", "temperature_c=400"], ["temperature_c", "outside [120, 150]"]),
    (["experiment", "--set", "temprature_c=140"], ["temprature_c", "did you mean 'temperature_c'"]),
    (["experiment", "--set", "temperature_c"], ["--set temperature_c", "give a value"]),
    (["experiment", "--set", "temperature_c=hot"], ["condition[temperature_c]", "number"]),
    (["experiment", "--replicates", "0"], ["--replicates", "at least 1"]),
    (["experiment", "--finish", "park"], ["--finish", "stop, hold"]),
    (["experiment", "--flow", "cui=50"], ["temperature_c"]),
    (["manufacture", "--lot", "L", "--on-alarm", "sometimes"], ["--on-alarm", "pause, continue, stop"]),
    (["manufacture", "--lot", "L", "--set", "temperature_c=140", "--from-campaign", "x"], ["recipe", "from_campaign"]),
    (["manufacture", "--lot", "L", "--from-campaign", "nosuch"], ["nosuch"]),
    (["manufacture", "--lot", "L", "--set", "temperature_c=140", "--hours", "0"], ["--duration-h", "more than 0"]),
    (["manufacture", "--lot", "L", "--set", "temperature_c=140", "--spc-features", "FWHM"], ["spc_features", "FWHM_nm"]),
    (["study", "residence-time", "--reaction-times", "0"], ["--reaction-times-s", "more than 0"]),
    (["study", "residence-time", "--follow-tau", "1"], ["--follow-tau", "at least 2"]),
    (["procedure", "--procedure", "boot"], ["--procedure", "startup, shutdown"]),
    (["data", "--campaign", "nosuch"], ["--campaign", "nosuch", "campaigns there"]),
    (["demo", "--budget", "0"], ["--budget", "at least 1"]),
]


def _run(argv: list[str], data_root: str, home: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_HOME": home, "SDFL_DATA_ROOT": data_root}
    env.pop("PREFECT_API_URL", None)  # a refusal must not need a Prefect server either
    return subprocess.run([sys.executable, "-m", "flows.cli", *argv], cwd=REPO_DIR, env=env,
                          capture_output=True, text=True, timeout=300)


def test_every_mistake_is_refused_in_one_line_naming_the_setting(tmp_path):
    assert len(MISTAKES) >= 30
    roots = [tmp_path / f"data-{i}" for i in range(len(MISTAKES))]
    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(lambda i: _run(MISTAKES[i][0], str(roots[i]), str(tmp_path / f"home-{i}")),
                             range(len(MISTAKES))))
    problems = []
    for (argv, words), root, proc in zip(MISTAKES, roots, done):
        out = proc.stdout + proc.stderr
        if proc.returncode != 2:
            problems.append(f"{argv}: exit {proc.returncode}, not 2: {out[-600:]}")
        if "Traceback" in out:
            problems.append(f"{argv}: shows a traceback: {out[-600:]}")
        missing = [w for w in words if w not in out]
        if missing:
            problems.append(f"{argv}: message lacks {missing}: {out[-600:]}")
        written = [str(p) for p in root.rglob("*")] if root.exists() else []
        if written:
            problems.append(f"{argv}: wrote under the data root: {written[:3]}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("command", ["optimize", "explore", "seek-target", "manufacture", "experiment"])
def test_help_shows_every_default(command):
    from flows.cli import FLOW_COMMANDS

    proc = subprocess.run([sys.executable, "-m", "flows.cli", command, "--help"], cwd=REPO_DIR,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    model = FLOW_COMMANDS[command][0]
    for name, field in model.model_fields.items():
        flag = "--" + name.replace("_", "-")
        assert flag in text, flag
        assert ("required" if field.is_required() else "default: ") in text
    assert text.count("default: ") + text.count("; required") >= len(model.model_fields)


@pytest.mark.parametrize("edit, error", [
    (("[virtual.faults]\n", '[virtual.faults]\nstall_pump = "oa_cu"\nstall_at_s = 5\n'), "PumpStalled"),
    (('model = "hardware.virtual.cs3cu2i5:Cs3Cu2I5Chemistry"', 'model = "buggy_chemistry:BuggyChemistry"'),
     "KeyError"),
], ids=["instrument fault", "bug in a plug-in"])
def test_a_run_that_fails_ends_with_one_line_and_the_log_path(sdfl, tmp_path, edit, error):
    """A pump stalls mid-run on the virtual lab (one of sdfl's named errors), or a user's chemistry
    plug-in raises a plain Python error: exit 1, one line saying what failed and where the full
    log is, no traceback in the terminal; the log file has it."""
    from hardware.platform import PLATFORM_DIR

    text = (PLATFORM_DIR / "virtual-cs3cu2i5.toml").read_text()
    assert edit[0] in text
    platform = tmp_path / "failing.toml"
    platform.write_text(text.replace(*edit))
    root = tmp_path / "data"

    done = sdfl("experiment", "--platform", str(platform), "--data-root", str(root))

    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    last = [line for line in out.splitlines() if line.startswith("sdfl experiment:")]
    assert len(last) == 1 and f"the run failed: {error}" in last[0], out[-3000:]
    log = out.split("full log: ", 1)[1].split(" (run again", 1)[0].strip()
    assert log.startswith(str(root / "logs")) and "Traceback" in open(log).read()
