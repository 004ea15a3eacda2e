"""How long `sdfl` takes to refuse a wrong setting, against the code before settings were declared
once (which checked them inside the flow, after Prefect and its temporary server had started).

Both versions run from `git archive` copies of their commits, alternately, on the same bad
command lines, without PREFECT_API_URL (as a user without a server), each with a fresh
PREFECT_HOME and data root. Whole-process wall and CPU seconds; the median of the repeats.

    .venv/bin/python -m benchmarks.refusal [--baseline 161f4c2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.no_server import snapshot

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "refusal.md"
MISTAKES = {
    "a budget below 1": ["optimize", "--campaign", "c", "--budget", "-3"],
    "initial larger than the budget": ["optimize", "--campaign", "c", "--initial", "12", "--budget", "6"],
    "a mistyped objective": ["optimize", "--campaign", "c", "--objective", "FWHM"],
    "a temperature outside the space": ["experiment", "--set", "temperature_c=400"],
    "an unknown manufacturing recipe source": ["manufacture", "--lot", "L", "--from-campaign", "nosuch"],
}


def refuse(code: Path, argv: list[str]) -> tuple[float, float, int]:
    """(wall s, CPU s of the process and its children, exit code) of one refusal."""
    with tempfile.TemporaryDirectory(prefix="sdfl-refusal-") as tmp:
        env = {**os.environ, "PREFECT_HOME": str(Path(tmp) / "home"), "SDFL_DATA_ROOT": str(Path(tmp) / "data"),
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        env.pop("PREFECT_API_URL", None)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "flows.cli", *argv], cwd=code, env=env, capture_output=True,
                              text=True, timeout=600)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="161f4c2", help="the commit to compare with")
    parser.add_argument("--code", default="HEAD", help="the commit measured")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    now, now_commit = snapshot(args.code)
    old, old_commit = snapshot(args.baseline)
    rows = []
    try:
        for what, argv in MISTAKES.items():
            runs = {"now": [], "before": []}
            for _ in range(args.repeats):
                runs["now"].append(refuse(now, argv))
                runs["before"].append(refuse(old, argv))
            med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v),
                       sorted({r[2] for r in v})) for k, v in runs.items()}
            rows.append(f"| {what} | `sdfl {' '.join(argv)}` | {med['now'][0]:.2f} | {med['now'][1]:.2f} | "
                        f"{med['now'][2]} | {med['before'][0]:.2f} | {med['before'][1]:.2f} | {med['before'][2]} | "
                        f"{med['before'][0] / med['now'][0]:.0f}x |")
            print(rows[-1], flush=True)
    finally:
        shutil.rmtree(now, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    text = (f"# Refusing a wrong setting\n\n`.venv/bin/python -m benchmarks.refusal --baseline {args.baseline} "
            f"--repeats {args.repeats}` on {dt.datetime.now():%Y-%m-%d %H:%M}: code {now_commit} against "
            f"{old_commit}, alternately, no Prefect server (PREFECT_API_URL unset), median of {args.repeats}. "
            f"{os.cpu_count()} CPUs, load average at the end {load}.\n\n"
            "| mistake | command | now: wall s | now: CPU s | now: exit | before: wall s | before: CPU s | "
            "before: exit | wall, before / now |\n|---|---|---:|---:|---|---:|---:|---|---:|\n"
            + "\n".join(rows) + "\n")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
