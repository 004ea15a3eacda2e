"""Wall time per virtual experiment: simulated physical time vs the cost of running it.

Runs the same conditions three ways on fresh virtual rigs and prints a markdown table:
- plain: the loop's step functions called directly (virtual instruments + features + Parquet);
- Prefect, heartbeat off: `run_experiment` as a Prefect flow (ephemeral API), no heartbeats;
- Prefect, defaults: the same with Prefect's default settings.
Orchestration overhead = Prefect wall time - plain wall time, per experiment (the baseline is the
plain run in the same process).

    .venv/bin/python benchmarks/experiment.py [--experiments 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.experiment import PLAIN_STEPS, conduct_experiment, run_experiment  # noqa: E402
from hardware.platform import load_platform  # noqa: E402
from hardware.rig import open_rig  # noqa: E402
from tasks.proposal import design_conditions  # noqa: E402


def run_plain(conditions, root, seed):
    rig = open_rig(load_platform(), seed)
    walls, simulated = [], []
    for i, condition in enumerate(conditions):
        t0, s0 = time.perf_counter(), rig.clock.now()
        conduct_experiment(rig, condition=condition, campaign="bench-plain", data_root=root, seed=seed,
                           finish="hold" if i < len(conditions) - 1 else "stop", steps=PLAIN_STEPS)
        walls.append(time.perf_counter() - t0)
        simulated.append(rig.clock.now() - s0)
    return walls, simulated


def run_flows(conditions, root, seed, campaign):
    walls, simulated = [], []
    rig = open_rig(load_platform(), seed)
    for i, condition in enumerate(conditions):
        t0, s0 = time.perf_counter(), rig.clock.now()
        run_experiment(condition=condition, campaign=campaign, data_root=root, seed=seed,
                       finish="hold" if i < len(conditions) - 1 else "stop")
        walls.append(time.perf_counter() - t0)
        simulated.append(rig.clock.now() - s0)
    return walls, simulated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experiments", type=int, default=10)
    args = parser.parse_args()
    import logging

    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, PREFECT_LOGGING_LEVEL, temporary_settings

    logging.getLogger("prefect").setLevel(logging.WARNING)
    conditions = design_conditions(load_platform(), args.experiments, seed=7)
    with tempfile.TemporaryDirectory() as root, temporary_settings({PREFECT_LOGGING_LEVEL: "WARNING"}):
        t0 = time.perf_counter()
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            run_experiment(condition=conditions[0], campaign="warmup", data_root=root, seed=99)
        startup = time.perf_counter() - t0
        plain = run_plain(conditions, root, seed=1)
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            quick = run_flows(conditions, root, seed=2, campaign="bench-quick")
        default = run_flows(conditions, root, seed=3, campaign="bench-default")

    base = statistics.median(plain[0])
    print(f"\n{args.experiments} experiments per row (Latin hypercube over the default space), medians per experiment;"
          f" first flow run incl. ephemeral API start: {startup:.1f} s\n")
    print("| mode | simulated physical time (s) | wall time (s) | physical / wall | overhead vs plain (s) | wall ratio vs plain |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (walls, simulated) in (("plain functions", plain), ("Prefect flow, heartbeat off", quick),
                                     ("Prefect flow, defaults", default)):
        wall, sim = statistics.median(walls), statistics.median(simulated)
        print(f"| {name} | {sim:.0f} | {wall:.3f} | {sim / wall:,.0f}x | {wall - base:+.3f} | {wall / base:.2f} |")


if __name__ == "__main__":
    main()
