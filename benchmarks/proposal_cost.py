"""CPU per proposal as a lab's history grows, with the hyperparameters held between refits or not.

For n = 30, 100, 300 and 1000 earlier experiments on a public surface (Hartmann-6 in a 7-input box,
1.5 % noise), the EI policy proposes the next STEPS experiments one at a time, each measured and
added, as a campaign does, on one BLAS thread:
- `held` (the default): the GP keeps the hyperparameters of its last optimisation until the data
  has grown by a fifth (`GaussianProcess.hold_from`, `regrow`);
- `refit`: every proposal optimises the hyperparameters from scratch (the former behaviour).
Quality is shown beside the cost: the TRUE value at the proposed points (mean, as a share of the
optimum) and the R^2 of the last model against the noiseless surface on 2000 random points.

    .venv/bin/python benchmarks/proposal_cost.py [--sizes 30,100,300,1000] [--steps 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

PROBLEM = "hartmann6"


def run(n: int, steps: int, held: bool, seed: int = 1) -> dict:
    """`steps` proposals after `n` experiments; CPU per proposal and the quality of the result."""
    from _public_set import synthetic_problems
    from sklearn.metrics import r2_score

    from tasks.proposal import latin_hypercube, propose
    from tasks.surrogate import GaussianProcess
    from tasks.threads import one_thread

    problem = next(p for p in synthetic_problems() if p.name == PROBLEM)
    X = latin_hypercube(n, problem.d, seed)
    y = problem.measure(X, seed, 0)
    model = GaussianProcess(seed=seed, hold_from=100 if held else 10**9)
    cpu, values = [], []
    with one_thread():
        for _ in range(steps):
            started = time.process_time()
            point, model = propose("ei", X, y, seed=seed * 1000 + len(y), model=model)
            cpu.append(time.process_time() - started)
            values.append(float(problem.truth(point)[0]))
            X, y = np.vstack([X, point]), np.concatenate([y, problem.measure(point, seed, len(y))])
        check = np.random.default_rng(seed).random((2000, problem.d))
        r2 = float(r2_score(problem.truth(check), model.predict(check)[0]))
    return {"n": n, "held": held, "cpu": np.array(cpu), "value": np.mean(values) / problem.optimum, "r2": r2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="30,100,300,1000")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    print("| n | GP hyperparameters | CPU per proposal, median (s) | max (s) | true value at the proposals "
          "(% of optimum) | R^2 of the last model |")
    print("|---:|---|---:|---:|---:|---:|")
    for n in map(int, args.sizes.split(",")):
        for held in (False, True):
            r = run(n, args.steps, held)
            print(f"| {n} | {'held (default)' if held else 'refit every time'} | {np.median(r['cpu']):.2f} "
                  f"| {r['cpu'].max():.2f} | {100 * r['value']:.1f} | {r['r2']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
