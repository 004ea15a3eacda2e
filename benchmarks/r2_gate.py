"""How closely explore's stopping gate follows the model's true R^2, on the shipped twins.

`explore` stops when the surrogate's R^2 reaches `target_r2`. The gate can only estimate that
R^2 from the experiments themselves; the twin knows the truth. For each shipped virtual platform
and seed, an exploration as `explore` runs it (a 10-point Latin hypercube, then integrated
variance reduction, one experiment at a time, 1.5 % measurement noise) is scored at n = 20, 30,
40 and 60 experiments by:
- the gate: cross-validated R^2 (`tasks.surrogate.cross_validated_r2`: leave-one-out for the GP);
- the baseline: R^2 on one random 80/20 split (what the gate was before), same seed;
- the truth: the R^2 of the GP fitted on all n points against the noiseless twin on 1000 random
  conditions of the space.
Prints, per platform and n, the median and worst gap |estimate - truth| of both over the seeds.

    .venv/bin/python benchmarks/r2_gate.py [--seeds 5] [--processes 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

TWINS = ("virtual-cs3cu2i5", "virtual-cspbbr3", "virtual-inp-zns")
SIZES = (20, 30, 40, 60)
DESIGN = 10
TRUTH_POINTS = 1000
AGREE = 0.1
"""The gap the gate must stay within, from n = 20 on."""


def split_r2(X: np.ndarray, y: np.ndarray, seed: int) -> float:
    """The former gate: R^2 on one random fifth held out, the GP fitted on the rest."""
    from sklearn.metrics import r2_score

    from tasks.surrogate import GaussianProcess

    order = np.random.default_rng(seed).permutation(len(y))
    test, train = order[: round(0.2 * len(y))], order[round(0.2 * len(y)):]
    return float(r2_score(y[test], GaussianProcess(seed=seed).fit(X[train], y[train]).predict(X[test])[0]))


def exploration(platform: str, seed: int) -> list[dict]:
    """One exploration of `platform`; the three R^2 at each size of SIZES."""
    from _public_set import TwinProblem
    from sklearn.metrics import r2_score

    from tasks.proposal import latin_hypercube, propose
    from tasks.surrogate import GaussianProcess, cross_validated_r2
    from tasks.threads import one_thread

    problem = TwinProblem(platform)
    X = latin_hypercube(DESIGN, problem.d, seed)
    y = problem.measure(X, seed, 0)
    check = np.random.default_rng([seed, 99]).random((TRUTH_POINTS, problem.d))
    truth_at_check = problem.truth(check)
    rows = []
    with one_thread():
        while len(y) < max(SIZES):
            point, _ = propose("ivr", X, y, seed=seed * 1000 + len(y))
            X, y = np.vstack([X, point]), np.concatenate([y, problem.measure(point, seed, len(y))])
            if len(y) in SIZES:
                model = GaussianProcess(seed=seed).fit(X, y)
                rows.append({"platform": platform, "seed": seed, "n": len(y),
                             "true": float(r2_score(truth_at_check, model.predict(check)[0])),
                             "gate": cross_validated_r2("gp", X, y, seed=seed), "split": split_r2(X, y, seed)})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| platform | n | true R^2 (median) | gate: median gap | gate: worst gap | 80/20 split: median gap "
             "| 80/20 split: worst gap |", "|---|---:|---:|---:|---:|---:|---:|"]
    for platform in TWINS:
        for n in SIZES:
            these = [r for r in rows if r["platform"] == platform and r["n"] == n]
            if not these:
                continue
            gate = np.array([abs(r["gate"] - r["true"]) for r in these])
            split = np.array([abs(r["split"] - r["true"]) for r in these])
            lines.append(f"| {platform} | {n} | {np.median([r['true'] for r in these]):.3f} | {np.median(gate):.3f} "
                         f"| {gate.max():.3f} | {np.median(split):.3f} | {split.max():.3f} |")
    return "\n".join(lines)


def _job(job: tuple[str, int]) -> list[dict]:
    return exploration(*job)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    jobs = [(platform, seed) for platform in TWINS for seed in range(1, args.seeds + 1)]
    started, rows = time.perf_counter(), []
    with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
        for i, found in enumerate(pool.imap_unordered(_job, jobs), 1):
            rows += found
            print(f"[{i}/{len(jobs)}] explorations ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    gaps = np.array([abs(r["gate"] - r["true"]) for r in rows])
    print(f"## Explore's R^2 gate against the true R^2 ({args.seeds} seeds per twin)\n")
    print(table(rows))
    print(f"\nGate within {AGREE} of the true R^2 in {int((gaps <= AGREE).sum())} of {len(gaps)} checks "
          f"(worst gap {gaps.max():.3f}).")


if __name__ == "__main__":
    main()
