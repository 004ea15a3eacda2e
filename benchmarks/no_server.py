"""No-server benchmark: on a busy machine, how often does `sdfl` fail because Prefect's temporary API
server (started when PREFECT_API_URL is not set) did not come up in time?

CPU-bound burner processes of our own, each in a session of its own, keep every core busy for the whole measurement. The real CLI
runs one experiment on the default virtual platform (`sdfl experiment --set temperature_c=145`), one
run after another, with PREFECT_API_URL removed and a fresh PREFECT_HOME and data root each run, so
every run starts a temporary server on an empty database. Three configurations, interleaved so each
sees the same load:

- sdfl: sdfl's own temporary server (flows/prefect_server.py: 180 s to start, at most 3 launches,
  one-line TemporaryServerDidNotStart);
- sdfl, 20 s limit: the same with PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=20 (Prefect's
  default limit, which sdfl honours when the user sets it);
- Prefect's stock server: sdfl's server not installed (the CLI has no switch for it, so the run goes
  through `flows.cli.main` with `use_sdfl_temporary_server` replaced by a no-op), which is what
  sdfl did before: Prefect's 20 s limit and its own RuntimeError.

Per run: exit code, wall time, a "Traceback" in the output, a failed server start (sdfl's
TemporaryServerDidNotStart or Prefect's "Timed out while attempting to connect"), the time from
"Starting temporary server" to the first flow run (from the log timestamps), and any server process
still running after the CLI exited (found by its PREFECT_HOME, then stopped).

The CLI runs from a copy of a commit (`git archive`, `--code HEAD` by default), so edits made to the
working tree during the measurement cannot break runs half-way; `--code worktree` runs the working
tree instead.

    .venv/bin/python -m benchmarks.no_server [--runs 20] [--peer-runs 5] [--burners 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import io
import multiprocessing
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "no_server.md"
EXPERIMENT = ["experiment", "--set", "temperature_c=145"]
"""The cheapest command that runs a flow: one virtual experiment (about 2 s of flow on an idle machine)."""

SDFL = "sdfl"
SDFL_20S = "sdfl, 20 s limit"
STOCK = "Prefect's stock server"
CONFIGURATIONS = (SDFL, SDFL_20S, STOCK)

WITHOUT_SDFL_SERVER = (
    "import sys, flows.prefect_server as server; server.use_sdfl_temporary_server = lambda: None; "
    "from flows.cli import main; sys.exit(main())")
"""The CLI exactly as installed, except that Prefect starts its own temporary server."""

START_FAILED = ("TemporaryServerDidNotStart", "Timed out while attempting to connect to ephemeral Prefect API server")
LOG_TIME = r"^(\d\d):(\d\d):(\d\d\.\d+) \| \w+ +\| "


@dataclasses.dataclass
class Run:
    configuration: str
    number: int
    exit_code: int
    wall_s: float
    traceback: bool
    start_failed: bool
    server_start_s: float | None
    servers_left: int
    load_1min: float
    last_line: str


# --- the load -----------------------------------------------------------------------------------------
def burn(parent: int) -> None:
    """Spin on integer arithmetic until stopped (or until the benchmark's process is gone), in a session
    of its own, as other people's work is: Linux shares the CPU fairly between sessions (autogroups)
    first, so a burner in the CLI's session would slow Prefect's server (which stays in that session)
    more than sdfl's (which starts a session of its own)."""
    os.setsid()  # also keeps Ctrl-C away: the benchmark stops the burners itself
    x = 1
    while os.getppid() == parent:
        for _ in range(200_000):
            x = (x * 1103515245 + 12345) % 2147483648


def start_burners(n: int) -> list[multiprocessing.Process]:
    burners = [multiprocessing.Process(target=burn, args=(os.getpid(),), name=f"burner-{i}", daemon=True)
               for i in range(n)]
    for b in burners:
        b.start()
    return burners


def stop_burners(burners: list[multiprocessing.Process]) -> None:
    for b in burners:
        b.terminate()
    for b in burners:
        b.join(timeout=5)
        if b.is_alive():
            b.kill()
            b.join()


# --- one run ------------------------------------------------------------------------------------------
def command(configuration: str, data_root: Path) -> list[str]:
    args = [*EXPERIMENT, "--data-root", str(data_root)]
    if configuration == STOCK:
        return [sys.executable, "-c", WITHOUT_SDFL_SERVER, *args]
    return [sys.executable, "-m", "flows.cli", *args]


def environment(configuration: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "PREFECT_PROFILE")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONUNBUFFERED="1")
    if configuration == SDFL_20S:
        env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "20"
    return env


def server_start_s(output: str) -> float | None:
    """Seconds from "Starting temporary server" to "Beginning flow run", from the log timestamps."""
    def seconds(line: str) -> float | None:
        m = re.match(LOG_TIME, line)
        return int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3]) if m else None

    lines = output.splitlines()
    start = next((seconds(ln) for ln in lines if "Starting temporary server" in ln), None)
    flow = next((seconds(ln) for ln in lines if "Beginning flow run" in ln), None)
    if start is None or flow is None:
        return None
    return (flow - start) % 86400


def stop_servers_left(home: Path) -> int:
    """Stop every process still running with this run's PREFECT_HOME (a temporary server left behind)."""
    marker = b"\0" + f"PREFECT_HOME={home}".encode() + b"\0"
    left = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in b"\0" + (proc / "environ").read_bytes() + b"\0":
                left.append(int(proc.name))
        except OSError:
            continue
    for pid in left:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    time.sleep(1 if left else 0)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(left)


def last_line(output: str) -> str:
    """The line that says why a run failed: sdfl's error line, or the last line of a traceback."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    named = [ln for ln in lines if ln.startswith("sdfl:") or "Error:" in ln]
    return (named or lines or [""])[-1][:300]


def snapshot(revision: str) -> tuple[Path, str]:
    """A copy of a commit's files, and the commit's short hash."""
    commit = subprocess.run(["git", "rev-parse", "--short", revision], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout.strip()
    archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=ROOT, check=True,
                             capture_output=True).stdout
    code = Path(tempfile.mkdtemp(prefix="sdfl-no-server-code-"))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(code, filter="data")
    return code, commit


def run_once(configuration: str, number: int, code: Path, logs: Path, timeout_s: float) -> Run:
    with tempfile.TemporaryDirectory(prefix="sdfl-no-server-") as tmp:
        home, data_root = Path(tmp) / "prefect-home", Path(tmp) / "data"
        home.mkdir()
        t0 = time.perf_counter()
        proc = subprocess.Popen(command(configuration, data_root), cwd=code, env=environment(configuration, home),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.terminate()  # sdfl ends a run on SIGTERM as on Ctrl-C
            try:
                out, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            err += f"\nbenchmark: stopped after {timeout_s:.0f} s"
        except BaseException:
            proc.terminate()
            proc.wait()
            stop_servers_left(home)
            raise
        wall = time.perf_counter() - t0
        servers_left = stop_servers_left(home)
    output = out + "\n" + err
    slug = configuration.replace(",", "").replace("'", "").replace(" ", "-")
    (logs / f"{number:02d}-{slug}.log").write_text(f"$ {' '.join(command(configuration, data_root))}\n"
                                                   f"exit code {proc.returncode}\n--- stdout\n{out}\n--- stderr\n{err}")
    return Run(configuration=configuration, number=number, exit_code=proc.returncode, wall_s=wall,
               traceback="Traceback" in output, start_failed=any(t in output for t in START_FAILED),
               server_start_s=server_start_s(err + "\n" + out), servers_left=servers_left,
               load_1min=os.getloadavg()[0], last_line=last_line(err) if proc.returncode else "")


def schedule(runs: int, peer_runs: int) -> list[str]:
    """The configurations in run order, each spread evenly over the measurement."""
    counts = {SDFL: runs, SDFL_20S: peer_runs, STOCK: peer_runs}
    slots = [((k + 0.5) / n, i, c) for i, (c, n) in enumerate(counts.items()) for k in range(n)]
    return [c for _, _, c in sorted(slots)]


# --- the report ---------------------------------------------------------------------------------------
def table(runs: list[Run]) -> str:
    lines = ["| configuration | runs | failed | tracebacks | server start failed | median wall s | max wall s "
             "| median / max server start s | servers left running |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for configuration in CONFIGURATIONS:
        rs = [r for r in runs if r.configuration == configuration]
        if not rs:
            continue
        walls = [r.wall_s for r in rs]
        starts = [r.server_start_s for r in rs if r.server_start_s is not None]
        start = f"{statistics.median(starts):.1f} / {max(starts):.1f}" if starts else "-"
        lines.append(f"| {configuration} | {len(rs)} | {sum(r.exit_code != 0 for r in rs)} | "
                     f"{sum(r.traceback for r in rs)} | {sum(r.start_failed for r in rs)} | "
                     f"{statistics.median(walls):.1f} | {max(walls):.1f} | {start} | "
                     f"{sum(r.servers_left for r in rs)} |")
    return "\n".join(lines)


def failures(runs: list[Run]) -> str:
    bad = [r for r in runs if r.exit_code != 0 or r.traceback or r.servers_left]
    if not bad:
        return "No run failed."
    lines = ["| run | configuration | exit code | wall s | load (1 min) | why |", "|---:|---|---:|---:|---:|---|"]
    lines += [f"| {r.number} | {r.configuration} | {r.exit_code} | {r.wall_s:.1f} | {r.load_1min:.1f} | "
              f"`{r.last_line.replace('|', '/')}` |" for r in bad]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="runs with sdfl's temporary server")
    parser.add_argument("--peer-runs", type=int, default=5, help="runs of each peer configuration")
    parser.add_argument("--burners", type=int, default=2, help="CPU-bound processes kept running meanwhile")
    parser.add_argument("--run-timeout", type=float, default=900.0, help="stop a run after this many seconds")
    parser.add_argument("--out", type=Path, default=RESULTS, help="markdown file for the results")
    parser.add_argument("--code", default="HEAD",
                        help="the commit whose copy runs (default HEAD), or `worktree` for the working tree as it is")
    args = parser.parse_args()

    logs = Path(tempfile.mkdtemp(prefix="sdfl-no-server-logs-"))
    order = schedule(args.runs, args.peer_runs)
    load_before = os.getloadavg()
    started = dt.datetime.now()
    t0 = time.perf_counter()
    runs: list[Run] = []
    code, version = (ROOT, "the working tree") if args.code == "worktree" else snapshot(args.code)
    burners = start_burners(args.burners)
    try:
        for number, configuration in enumerate(order, 1):
            run = run_once(configuration, number, code, logs, args.run_timeout)
            runs.append(run)
            print(f"run {number}/{len(order)} {configuration}: exit {run.exit_code}, {run.wall_s:.1f} s, "
                  f"load {run.load_1min:.1f}" + (f" -- {run.last_line}" if run.exit_code else ""), flush=True)
    finally:
        stop_burners(burners)
        if code != ROOT:
            shutil.rmtree(code, ignore_errors=True)
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()
    loads = [r.load_1min for r in runs]

    def load(a: tuple[float, float, float]) -> str:
        return " / ".join(f"{x:.2f}" for x in a)

    code_option = "" if args.code == "HEAD" else f" --code {args.code}"
    header = (f"`.venv/bin/python -m benchmarks.no_server --runs {args.runs} --peer-runs {args.peer_runs} "
              f"--burners {args.burners}{code_option}` on {started:%Y-%m-%d %H:%M}, code: {version}. `sdfl {' '.join(EXPERIMENT)}` on the default "
              f"virtual platform, PREFECT_API_URL unset, a fresh PREFECT_HOME and data root each run, "
              f"{args.burners} CPU-bound burner processes running throughout, configurations interleaved; "
              f"{len(runs)} runs in {wall / 60:.1f} min.\n\n"
              f"Machine: {os.cpu_count()} CPUs; load average (1 / 5 / 15 min) {load(load_before)} before the "
              f"burners started, {load(load_after)} at the end; 1-min load after each run: median "
              f"{statistics.median(loads):.2f}, min {min(loads):.2f}, max {max(loads):.2f}.")
    text = (f"{header}\n\n{table(runs)}\n\nServer start: from \"Starting temporary server\" to \"Beginning flow "
            f"run\" in the log (runs whose flow ran). Servers left running: temporary-server processes still "
            f"alive after the CLI exited.\n\nFailed runs:\n\n{failures(runs)}")
    print("\n" + text + f"\n\nLogs of every run: {logs}")
    args.out.write_text(f"# Prefect's temporary server on a busy machine\n\n{text}\n")


if __name__ == "__main__":
    main()
