"""Several reactors, one campaign: wall time with 1, 2 and 4 virtual reactors.

Each virtual reactor is a fresh virtual lab whose simulated waits also cost wall time (a pace of
PACE simulated seconds per wall second), so reactors overlap their waits the way real ones do;
without a pace a virtual experiment costs only CPU, which the reactors would share. The same EI
campaign (GP surrogate, 8 Latin-hypercube points, then EI with the running trials as pending)
runs to the same budget with 1, 2 and 4 reactors; the baseline is 1 reactor in the same run.
Quality is judged on the noiseless twin: the true PL_I of the best measured condition.

    .venv/bin/python benchmarks/reactors.py [--budget 24] [--pace 60] [--repeats 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402

PLATFORM = "virtual-cs3cu2i5"


def quiet() -> None:
    import optuna
    from sklearn.exceptions import ConvergenceWarning

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore", ConvergenceWarning)
    warnings.filterwarnings("ignore", message="Predicted variances smaller than 0")
    for name in ("flows", "tasks", "hardware"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def run(n_reactors: int, budget: int, pace: float, seed: int, root: str) -> dict:
    from flows.campaign import CampaignPlan, run_campaign
    from flows.experiment import PLAIN_STEPS
    from hardware.platform import load_platform
    from hardware.rig import close_rig, open_rig

    base = load_platform(PLATFORM)
    platform = base.model_copy(update={"virtual": base.virtual.model_copy(update={"pace": pace})})
    rigs = [open_rig(platform, seed=1000 * seed + 10 * n_reactors + k) for k in range(n_reactors)]
    plan = CampaignPlan(campaign=f"reactors{n_reactors}-s{seed}", policy="ei", budget=budget, initial=8,
                        seed=seed, data_root=root)
    t0 = time.perf_counter()
    simulated0 = [r.clock.now() for r in rigs]
    state = run_campaign(rigs, plan, PLAIN_STEPS)
    wall = time.perf_counter() - t0
    simulated = max(r.clock.now() - s0 for r, s0 in zip(rigs, simulated0))
    for k in range(n_reactors):
        close_rig(platform.platform.name, 1000 * seed + 10 * n_reactors + k)
    import pandas as pd

    table = pd.read_parquet(Path(root) / "experiments", filters=[("campaign", "==", plan.campaign)])
    return {"wall": wall, "simulated": simulated, "values": np.array(state.values), "rows": len(table),
            "unique": table["experiment_id"].nunique(), "X": table.sort_values("experiment_id")}


def true_best(platform, table, values) -> float:
    """The twin's true PL_I at the condition with the best measured PL_I."""
    from tasks.twin import DigitalTwin

    done = table[table["status"] == "completed"]
    best = done.loc[done["PL_I"].idxmax()]
    condition = {n: float(best[n]) for n in platform.parameter_names}
    return float(DigitalTwin(platform).objective(np.array([list(condition.values())]), "PL_I")[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=24)
    parser.add_argument("--pace", type=float, default=60.0, help="simulated seconds per wall second")
    parser.add_argument("--repeats", type=int, default=2, help="seeds per reactor count")
    parser.add_argument("--out", default=str(HERE / "results" / "reactors.md"))
    args = parser.parse_args()
    quiet()
    from hardware.platform import load_platform

    platform = load_platform(PLATFORM)
    rows = []
    for n in (1, 2, 4):
        runs = []
        for seed in range(1, args.repeats + 1):
            with tempfile.TemporaryDirectory(prefix="sdfl-bench-reactors-") as root:
                result = run(n, args.budget, args.pace, seed, root)
                result["true_best"] = true_best(platform, result["X"], result["values"])
            print(f"{n} reactor(s), seed {seed}: {result['wall']:.1f} s wall", file=sys.stderr)
            runs.append(result)
        rows.append((n, runs))
    base_wall = np.median([r["wall"] for r in rows[0][1]])
    opt = 201_198.0  # the twin's true optimum (benchmarks/policies.py)
    lines = [
        "# Several virtual reactors, one campaign",
        "",
        f"`benchmarks/reactors.py --budget {args.budget} --pace {args.pace:g} --repeats {args.repeats}` on "
        f"{os.cpu_count()} cores, {dt.datetime.now():%Y-%m-%d %H:%M}. EI campaign of {args.budget} experiments "
        "(8 LHS first); each reactor a virtual lab whose waits cost 1 wall second per "
        f"{args.pace:g} simulated seconds. Medians over {args.repeats} seeds.",
        "",
        "| reactors | wall time (s) | speed-up vs 1 reactor | simulated campaign time (h) | rows in the dataset "
        "(unique ids) | failed | true PL_I of the best found (% of optimum) |",
        "|---:|---:|---:|---:|---|---:|---:|",
    ]
    for n, runs in rows:
        wall = np.median([r["wall"] for r in runs])
        failed = int(sum(np.isnan(r["values"]).sum() for r in runs))
        counts = " / ".join(f"{r['rows']} ({r['unique']})" for r in runs)
        lines.append(
            f"| {n} | {wall:.1f} | {base_wall / wall:.2f}x | {np.median([r['simulated'] for r in runs]) / 3600:.2f} | "
            f"{counts} | {failed} | "
            f"{np.median([100 * r['true_best'] / opt for r in runs]):.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
