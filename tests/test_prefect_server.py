"""Prefect's temporary API server under `sdfl` (no PREFECT_API_URL): it goes when sdfl goes, even
after `kill -9`; Ctrl-C stops sdfl cleanly; and if the server cannot start, sdfl says so in one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prefect_template import seed_home

from tasks.storage import read_experiments

REPO = Path(__file__).resolve().parents[1]

PACED_PLATFORM = """[platform]
name = "paced-slow-cs3cu2i5"
base = "virtual-cs3cu2i5"

[virtual]
pace = 20.0  # simulated seconds per wall second: an experiment keeps the rig for about 30 s
"""


def sdfl_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """sdfl on its own: no Prefect server, Prefect settings and reactor locks of this test only."""
    home = seed_home(tmp_path / "prefect")  # the temporary server's database starts migrated
    env = {**os.environ, "PREFECT_HOME": str(home), "SDFL_LOCK_DIR": str(tmp_path / "locks"), **extra}
    env.pop("PREFECT_API_URL", None)
    return env


def processes() -> dict[int, tuple[int, str, str]]:
    """Every process: pid -> (parent pid, state, command line)."""
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        found[int(entry.name)] = (int(fields[1]), fields[0], command)
    return found


def processes_with_home(home: Path) -> list[int]:
    """Running processes whose environment has PREFECT_HOME=`home` (sdfl and what it started)."""
    tag = f"PREFECT_HOME={home}".encode()
    found = []
    for pid, (_, state, _) in processes().items():
        try:
            if state != "Z" and tag in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.append(pid)
        except OSError:
            continue
    return found


def alive(pid: int) -> bool:
    """Running: not gone and not a zombie (an exited process its new parent has not reaped yet)."""
    info = processes().get(pid)
    return info is not None and info[1] != "Z"


def temporary_server_of(pid: int) -> tuple[int, int] | None:
    """(pid, port) of the Prefect API server that process `pid` started, if it has one yet."""
    for child, (parent, _, command) in processes().items():
        if parent == pid and "prefect.server.api.server:create_app" in command:
            words = command.split()
            return child, int(words[words.index("--port") + 1])
    return None


def end_all(sdfl: subprocess.Popen, tmp_path: Path) -> None:
    """Whatever is left of a test's sdfl and its server."""
    for pid in [sdfl.pid, *processes_with_home(tmp_path / "prefect")]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    sdfl.wait(10)


def answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_killing_sdfl_takes_its_temporary_prefect_server_with_it(tmp_path):
    """`kill -9` (or the OOM killer) ends sdfl without a word: its server must notice on its own."""
    platform_file = tmp_path / "paced.toml"
    platform_file.write_text(PACED_PLATFORM)
    sdfl = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "experiment", "--platform", str(platform_file),
         "--data-root", str(tmp_path / "data")],
        cwd=REPO, env=sdfl_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while (server := temporary_server_of(sdfl.pid)) is None:
            assert sdfl.poll() is None and time.monotonic() < deadline, "sdfl started no temporary server"
            time.sleep(0.1)
        server_pid, port = server
        while not answers(port):  # the server is up and the flow runs
            assert alive(server_pid) and time.monotonic() < deadline, "the temporary server never answered"
            time.sleep(0.2)

        os.kill(sdfl.pid, signal.SIGKILL)
        sdfl.wait(10)
        deadline = time.monotonic() + 10
        while alive(server_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(server_pid), "the temporary Prefect server outlived sdfl"
        assert not answers(port)
    finally:
        end_all(sdfl, tmp_path)


def test_a_temporary_server_that_cannot_start_ends_sdfl_with_one_line_saying_what_to_do(tmp_path):
    """1 s is too short for any start (the user's own limit wins over sdfl's 180 s): no traceback,
    one line on what failed and what to do, nothing run, and no server left behind."""
    sdfl = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "experiment", "--data-root", str(tmp_path / "data")],
        cwd=REPO, env=sdfl_env(tmp_path, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, errors = sdfl.communicate(timeout=120)
        left = processes_with_home(tmp_path / "prefect")
    finally:
        end_all(sdfl, tmp_path)
    assert sdfl.returncode == 2, errors
    assert "Traceback" not in errors, errors
    said = [line for line in errors.splitlines() if line.startswith("sdfl experiment:")]
    assert len(said) == 1, errors
    assert "temporary server did not start within 1 s" in said[0]
    assert "make server" in said[0] and "PREFECT_API_URL" in said[0]
    assert not (tmp_path / "data" / "experiments").exists()
    assert not left, f"processes left running: {left}"


def test_ctrl_c_in_a_terminal_stops_sdfl_which_records_the_crash_and_stops_its_server(tmp_path):
    """Ctrl-C reaches every process of the terminal's foreground group. Only sdfl may get it: a
    server stopped at the same moment leaves sdfl unable to mark its flow run and to exit."""
    platform_file = tmp_path / "paced.toml"
    platform_file.write_text(PACED_PLATFORM)
    log = tmp_path / "sdfl.log"
    with log.open("w") as out:
        sdfl = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "experiment", "--platform", str(platform_file), "--campaign", "ctrl-c",
             "--experiment-id", "exp-ctrl-c", "--data-root", str(tmp_path / "data")],
            cwd=REPO, env=sdfl_env(tmp_path), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while "experiment exp-ctrl-c:" not in log.read_text():  # on the rig
            assert sdfl.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(2)
        os.killpg(sdfl.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        sdfl.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail("sdfl did not stop within 60 s of Ctrl-C:\n" + log.read_text()[-3000:])
    finally:
        end_all(sdfl, tmp_path)
    output = log.read_text()
    assert sdfl.returncode == 130, output[-3000:]
    assert "sdfl experiment: stopped (interrupted); the rig was put in its safe state" in output
    record = read_experiments(tmp_path / "data", "ctrl-c")
    assert list(record["status"]) == ["crashed"]
    assert not processes_with_home(tmp_path / "prefect")


STARTUP_LIMITS = [(None, 180), ("45", 45)]
"""PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS of the user (None: not set), and the time limit
sdfl's temporary server then has."""


@pytest.fixture(scope="module")
def startup_limits(tmp_path_factory):
    """For each of STARTUP_LIMITS, a process that sets up sdfl's temporary server as sdfl does and
    prints its time limit. They start at once: each spends its ~5 s importing Prefect's server."""
    script = ("from prefect.server.api.server import SubprocessASGIServer\n"
              "from flows.prefect_server import use_sdfl_temporary_server\n"
              "use_sdfl_temporary_server()\n"
              "print(SubprocessASGIServer().startup_timeout_s)\n")
    runs = {}
    for user_setting, _ in STARTUP_LIMITS:
        extra = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": user_setting} if user_setting else {}
        env = sdfl_env(tmp_path_factory.mktemp("startup-limit"), **extra)
        if not user_setting:
            env.pop("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", None)
        runs[user_setting] = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env, text=True,
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    yield runs
    for run in runs.values():
        if run.poll() is None:
            run.kill()
        if not run.stdout.closed:  # not read by a test
            run.communicate()


@pytest.mark.parametrize(("user_setting", "timeout_s"), STARTUP_LIMITS)
def test_sdfl_gives_the_temporary_server_three_minutes_to_start_unless_told_otherwise(startup_limits, user_setting,
                                                                                         timeout_s):
    run = startup_limits[user_setting]
    out, errors = run.communicate(timeout=120)
    assert run.returncode == 0, errors
    assert out.split() == [str(timeout_s)]
