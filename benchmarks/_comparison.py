"""Our default policy beside its peers on the public test set (benchmarks/_public_set.py).

Every optimizer of a seed starts from the same Latin-hypercube design and sees the same noise
draws; it then asks for one experiment at a time up to the budget. Judged on the TRUE value at the
condition with the best MEASURED value so far, as a share of the problem's optimum.
"""

from __future__ import annotations

import multiprocessing
import sys
import time

import _peers
import _public_set
import numpy as np

PEER_ORDER = ("optuna-gp", "botorch-qlognei", "skopt-gp", "optuna-tpe", "random")
TARGET = 0.95
DESIGN = 9
"""Latin-hypercube points every optimizer starts from."""
CHECKPOINTS = (10, 15, 30)
TWINS = ("virtual-cs3cu2i5", "virtual-cspbbr3", "virtual-inp-zns")
LONG_PROBLEM, LONG_BUDGET = "hartmann6", 100
"""Where the CPU per proposal at n = 100 is measured (one seed per optimizer)."""


def problems() -> dict[str, object]:
    found = {p.name: p for p in _public_set.synthetic_problems()}
    for name in TWINS:
        twin = _public_set.TwinProblem(name)
        found[twin.name] = twin
    return found


def run_job(job: tuple) -> dict:
    """(problem name, optimizer, seed, budget) -> the run (`_peers.run`) plus its wall time."""
    name, optimizer, seed, budget = job
    from tasks.proposal import latin_hypercube
    from tasks.threads import one_thread

    problem = problems()[name]
    design = latin_hypercube(DESIGN, problem.d, seed)
    started = time.perf_counter()
    with one_thread():
        result = _peers.run(problem, optimizer, seed, design, budget)
    result.update(optimum=float(problem.optimum), wall_s=time.perf_counter() - started, budget=budget)
    return result


def jobs(optimizers: list[str], seeds: int, budget: int, only: list[str] | None = None) -> list[tuple]:
    unknown = sorted(set(only or ()) - set(problems()))
    if unknown:
        raise SystemExit(f"--problems: no problem named {', '.join(unknown)}; choose from {', '.join(problems())}")
    names = [n for n in problems() if not only or n in only]
    out = [(n, o, s, budget) for n in names for s in range(1, seeds + 1) for o in optimizers]
    out += [(LONG_PROBLEM, o, 1, LONG_BUDGET) for o in optimizers]
    return out


def run_all(todo: list[tuple], processes: int, log) -> list[dict]:
    context = multiprocessing.get_context("spawn")
    results, started = [], time.perf_counter()
    with context.Pool(processes, initializer=_quiet) as pool:
        for i, result in enumerate(pool.imap_unordered(run_job, todo), 1):
            results.append(result)
            if i % 10 == 0 or i == len(todo):
                log(f"[{i}/{len(todo)}] comparison runs (elapsed {time.perf_counter() - started:.0f} s)")
    return results


def _quiet() -> None:
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore")


# --- statistics -------------------------------------------------------------------------------
def experiments_to(result: dict, level: float = TARGET) -> float:
    """1-based count of experiments until the best-so-far's TRUE value reaches `level` of the optimum."""
    hit = np.flatnonzero(np.nan_to_num(result["truth_best"], nan=-np.inf) >= level * result["optimum"])
    return float(hit[0] + 1) if len(hit) else np.inf


def best_at(result: dict, k: int) -> float:
    return 100.0 * result["truth_best"][k - 1] / result["optimum"]


def cpu_at(result: dict, n: int, window: int = 5) -> float:
    """Mean CPU seconds of the proposals of experiments n - window + 1 .. n."""
    cpu = result["cpu_s"]  # one per experiment after the design
    asked = np.arange(DESIGN + 1, DESIGN + 1 + len(cpu))
    chosen = cpu[(asked > n - window) & (asked <= n)]
    return float(chosen.mean()) if len(chosen) else np.nan


def _show_n(x: float, budget: int) -> str:
    return f">{budget}" if x > budget else f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def summary(runs: list[dict], budget: int) -> dict:
    n = np.array([experiments_to(r) for r in runs])
    censored = np.where(np.isfinite(n), n, budget + 1)
    q1, q2, q3 = np.percentile(censored, [25, 50, 75])
    return {"to_target": f"{_show_n(q2, budget)} [{_show_n(q1, budget)}-{_show_n(q3, budget)}]",
            "median_n": q2, "iqr": (q1, q3), "within15": int((n <= 15).sum()), "within30": int((n <= 30).sum()),
            "seeds": len(runs),
            "best": {k: float(np.median([best_at(r, k) for r in runs])) for k in CHECKPOINTS if k <= budget},
            "cpu30": float(np.nanmean([cpu_at(r, 30) for r in runs])) if budget >= 30 else np.nan}


def report(results: list[dict], optimizers: list[str], skipped: dict[str, list[str]], budget: int) -> list[str]:
    """Markdown: one table per problem, the whole set, and the CPU per proposal at n = 30 and 100."""
    lines: list[str] = []
    w = lines.append
    main = [r for r in results if r["budget"] == budget]
    names = list(dict.fromkeys(r["problem"] for r in main))
    cps = [k for k in CHECKPOINTS if k <= budget]
    header = ("| optimizer | experiments to 95 % | within 15 | within 30 | "
              + " | ".join(f"best at {k} (%)" for k in cps) + " | CPU per proposal at n = 30 (s) |")
    rule = "|---|---|---:|---:|" + "---:|" * len(cps) + "---:|"
    per_problem: dict[str, dict[str, dict]] = {}
    for name in names:
        note = getattr(problems()[name], "note", "")
        w(f"**{name}** ({note})" if note else f"**{name}**")
        w("")
        w(header)
        w(rule)
        per_problem[name] = {}
        for optimizer in optimizers:
            runs = [r for r in main if r["problem"] == name and r["optimizer"] == optimizer]
            if not runs:
                continue
            s = per_problem[name][optimizer] = summary(runs, budget)
            w(f"| {optimizer} | {s['to_target']} | {s['within15']}/{s['seeds']} | {s['within30']}/{s['seeds']} | "
              + " | ".join(f"{s['best'][k]:.1f}" for k in cps) + f" | {s['cpu30']:.3f} |")
        w("")
    w("**The whole set** (runs reaching 95 % of the optimum, over every problem and seed; mean over "
      "problems of the median best)")
    w("")
    w("| optimizer | runs within 15 | runs within 30 | " + " | ".join(f"mean of median best at {k} (%)" for k in cps)
      + " | CPU per proposal at n = 30 (s) | at n = 100 (s) |")
    w("|---|---:|---:|" + "---:|" * len(cps) + "---:|---:|")
    long = {r["optimizer"]: r for r in results if r["budget"] == LONG_BUDGET}
    for optimizer in optimizers:
        mine = [per_problem[n][optimizer] for n in names if optimizer in per_problem[n]]
        if not mine:
            continue
        total = sum(s["seeds"] for s in mine)
        cpu100 = cpu_at(long[optimizer], LONG_BUDGET) if optimizer in long else np.nan
        w(f"| {optimizer} | {sum(s['within15'] for s in mine)}/{total} | {sum(s['within30'] for s in mine)}/{total} | "
          + " | ".join(f"{np.mean([s['best'][k] for s in mine]):.1f}" for k in cps)
          + f" | {np.nanmean([s['cpu30'] for s in mine]):.3f} | {cpu100:.3f} |")
    w("")
    if skipped:
        w("Not run here: " + "; ".join(f"{o} (needs {', '.join(m)})" for o, m in skipped.items())
          + ". `make peers` installs them.")
        w("")
    return lines


def available(optimizers: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    skipped = {o: _peers.missing(o) for o in optimizers if _peers.missing(o)}
    return [o for o in optimizers if o not in skipped], skipped


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
