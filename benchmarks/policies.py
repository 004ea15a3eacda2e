"""Decision policies on the virtual lab: speed to the optimum, digital-twin quality, overhead.

For several seeds (fresh virtual rigs, own campaign names and data roots) it runs closed-loop
campaigns with plain step functions (`flows.campaign.run_campaign`, Parquet + Optuna SQLite, no
Prefect) and judges every campaign against the noiseless digital twin (`tasks.twin`):

1. experiments to reach 95 % of the true optimum: random, TPE, EI, UCB, EPLT (9 Latin-hypercube
   points, then the policy; random: random from the start). "Reached" is judged on the twin's
   TRUE value at the condition with the best measured objective so far, not on the measurement;
2. best so far after 10/20/30 experiments, as % of the true optimum (same TRUE value);
3. EI with an informed prior: a 60-experiment explore campaign (LHS + IVR, and LHS + MV as in
   the paper) of the same seed is the prior (`prior_campaign`), then EI from no initial design
   within 10 experiments, on a new rig;
4. R^2 of the GP surrogate on 1000 Monte-Carlo conditions against the noiseless twin vs the
   number of experiments n, for IVR and MV (the explore campaigns' first n), random (a random
   campaign's first n) and LHS-only (a Latin-hypercube design of n points, no policy);
5. orchestration overhead per iteration (fit + propose, Optuna ask/tell, Parquet record, Prefect)
   at 30/100/300 experiments, apart from the simulated-lab time, run alone after the seeds;
6. our default policy beside its peers (Optuna GP and TPE, BoTorch qLogNEI, scikit-optimize,
   random) on a public test set: synthetic surfaces and the shipped twins, every optimizer from the
   same design with the same noise (`_comparison.py`, `_public_set.py`, `_peers.py`). Peers whose
   libraries are missing are named and skipped (`make peers` installs them).

Prints markdown tables to stdout (progress to stderr) and writes them to
benchmarks/results/policies.md. An operator refill step runs between experiments when a syringe
falls below 20 % (a 100 mL PFO syringe lasts ~42 experiments); see `_campaigns.keep_filled`.

    .venv/bin/python benchmarks/policies.py [--seeds 10] [--quick] [--processes 2]
    .venv/bin/python benchmarks/policies.py --comparison-only [--problems hartmann6,boundary7]
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import multiprocessing
import os
import pickle
import platform as host_platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import _campaigns as C  # noqa: E402
import numpy as np  # noqa: E402

POLICIES = ("random", "tpe", "ei", "ucb", "eplt")
TARGET_FRACTION = 0.95
TARGET_SCRATCH = 15
TARGET_PRIOR = 6
TARGET_R2, TARGET_R2_N = 0.8, 30
TARGET_OVERHEAD_S, TARGET_OVERHEAD_N = 0.45, 100
WINDOW = 10
"""Overhead at n experiments: the mean over the trials n-9..n."""


def settings(args) -> dict:
    if args.quick:
        return dict(seeds=args.seeds or 3, budget=20, checkpoints=(10, 20), explore=30, prior=10,
                    r2_sizes=(10, 20, 30), overhead=(30, 60), prefect_n=12)
    return dict(seeds=args.seeds or 10, budget=30, checkpoints=(10, 20, 30), explore=60, prior=10,
                r2_sizes=(10, 20, 30, 40, 50, 60), overhead=(30, 100, 300), prefect_n=30)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- statistics -----------------------------------------------------------------------------
def med_iqr(values, fmt="{:.0f}") -> str:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if not len(v):
        return "n/a"
    q1, q2, q3 = np.percentile(v, [25, 50, 75])
    return f"{fmt.format(q2)} [{fmt.format(q1)}-{fmt.format(q3)}]"


def experiments_to(truth_best: np.ndarray, level: float) -> float:
    """1-based count of experiments until the TRUE value of the measured-best condition >= level."""
    hit = np.flatnonzero(np.nan_to_num(truth_best, nan=-np.inf) >= level)
    return float(hit[0] + 1) if len(hit) else np.inf


def to_target(curves: list[np.ndarray], optimum: float, budget: int) -> tuple[str, np.ndarray]:
    """'median [IQR], k/N reached': seeds that never reach it count as > budget in the statistics."""
    n = np.array([experiments_to(c[:budget], TARGET_FRACTION * optimum) for c in curves])
    censored = np.where(np.isfinite(n), n, budget + 1)
    q1, q2, q3 = np.percentile(censored, [25, 50, 75])

    def show(x):
        return f">{budget}" if x > budget else f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"

    reached = int(np.isfinite(n).sum())
    return f"{show(q2)} [{show(q1)}-{show(q3)}], {reached}/{len(n)} reached", n


def best_at(curves: list[np.ndarray], optimum: float, k: int) -> str:
    values = [100.0 * c[k - 1] / optimum if len(c) >= k else np.nan for c in curves]
    return med_iqr(values, "{:.1f}")


# --- the seed campaigns ------------------------------------------------------------------------
def jobs(cfg: dict, optimum_root: str) -> list[tuple]:
    seeds = range(1, cfg["seeds"] + 1)
    budget = cfg["budget"]
    random_budget = max(budget, max(cfg["r2_sizes"]))
    out = [("optimum", {"root": optimum_root})]
    out += [("explore", {"seed": s, "explore_budget": cfg["explore"], "prior_budget": cfg["prior"],
                         "r2_sizes": cfg["r2_sizes"], "policy": explore_policy})
            for explore_policy in ("ivr", "mv") for s in seeds]
    out += [("lhs", {"seed": s, "sizes": cfg["r2_sizes"]}) for s in seeds]
    out += [("policy", {"seed": s, "policy": "random", "budget": random_budget, "r2_sizes": cfg["r2_sizes"]})
            for s in seeds]
    for policy in ("ei", "ucb", "eplt", "tpe"):
        out += [("policy", {"seed": s, "policy": policy, "budget": budget}) for s in seeds]
    return out


def describe(job: tuple) -> str:
    kind, kw = job
    if kind in ("policy", "explore") and "policy" in kw:
        return f"{kind} {kw['policy']} seed {kw['seed']}"
    return f"{kind}" + (f" seed {kw['seed']}" if "seed" in kw else "")


def run_seeds(cfg: dict, processes: int, optimum_root: str) -> list[dict]:
    todo = jobs(cfg, optimum_root)
    context = multiprocessing.get_context("spawn")
    results = []
    t0 = time.perf_counter()
    with C.one_blas_thread_per_worker():
        with context.Pool(processes, initializer=C.worker_init) as pool:
            for i, result in enumerate(pool.imap_unordered(C.run_job, todo), 1):
                results.append(result)
                label = (f"{result['policy']} seed {result['seed']}" if result["job"] == "policy"
                         else result["job"] + (f" seed {result['seed']}" if "seed" in result else ""))
                log(f"[{i}/{len(todo)}] {label}: {result['job_wall']:.1f} s "
                    f"(elapsed {time.perf_counter() - t0:.0f} s)")
    return results


# --- overhead -------------------------------------------------------------------------------------
def window(values: list[float], n: int) -> float:
    v = np.asarray(values[max(0, n - WINDOW):n], dtype=float)
    return float(v.mean()) if len(v) else np.nan


def blas_threads() -> int:
    from threadpoolctl import threadpool_info

    return max((lib.get("num_threads", 1) for lib in threadpool_info()), default=1)


def measure_overhead(cfg: dict, optimum_root: str) -> dict:
    """EI campaigns with plain steps, alone on the machine: with BLAS/OpenMP limited to one thread
    (the largest size, read at every size) and with the default threads (up to the target size),
    then the Prefect difference."""
    from threadpoolctl import threadpool_limits

    out = {"default_threads": blas_threads()}
    n_max = max(cfg["overhead"])
    n_default = min(n_max, TARGET_OVERHEAD_N)
    log(f"overhead: EI campaign of {n_max} experiments, plain steps, 1 BLAS thread ...")
    t0 = time.perf_counter()
    with threadpool_limits(1):
        out["one"] = C.overhead_campaign(n_max, seed=1)
    log(f"overhead: done in {time.perf_counter() - t0:.0f} s; the same to {n_default} with "
        f"{out['default_threads']} BLAS threads (the default) ...")
    t0 = time.perf_counter()
    out["default"] = C.overhead_campaign(n_default, seed=1)
    log(f"overhead: done in {time.perf_counter() - t0:.0f} s; Prefect campaign of {cfg['prefect_n']} ...")
    t0 = time.perf_counter()
    from prefect.settings import (
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_LOCAL_STORAGE_PATH,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    with tempfile.TemporaryDirectory() as store, prefect_test_harness(server_startup_timeout=120), \
            temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None, PREFECT_LOCAL_STORAGE_PATH: store}):
        started = time.perf_counter() - t0
        prefect = C.prefect_overhead(cfg["prefect_n"], seed=1, root=optimum_root)
    log(f"overhead: Prefect done in {time.perf_counter() - t0:.0f} s (API start {started:.0f} s)")
    prefect["api_start"] = started
    out["prefect"] = prefect
    return out


def prefect_per_trial(pf: dict) -> tuple[float, np.ndarray]:
    plain_it = np.asarray(pf["plain"].iteration)
    flow_it = np.asarray(pf["prefect"].iteration)
    k = min(len(plain_it), len(flow_it))
    return float(np.median((flow_it[:k] - plain_it[:k])[1:])), (flow_it[:k] - plain_it[:k])[1:]
    # trial 0 is left out: it carries the flow start and the first reference


def overhead_rows(cfg: dict, campaign: dict, label: str, prefect_s: float) -> tuple[list[str], tuple | None]:
    trace = campaign["trace"]
    it = np.asarray(trace.iteration)
    experiment = np.asarray(trace.experiment)
    record = np.asarray(trace.record)
    propose = np.asarray(trace.propose)
    ledger_s = it - experiment - record - propose
    rows, verdict = [], None
    for n in cfg["overhead"]:
        if n > len(it):
            continue
        f, r, lg = window(propose, n), window(record, n), window(ledger_s, n)
        total = f + lg + r + prefect_s
        target = ""
        if n == TARGET_OVERHEAD_N:
            verdict = (total, total <= TARGET_OVERHEAD_S)
            target = f"<= {TARGET_OVERHEAD_S} ({'met' if verdict[1] else 'NOT met'})"
        peak = float(np.max(propose[max(0, n - WINDOW):n]))
        rows.append(f"| {label} | {n} | {f:.3f} (max {peak:.2f}) | {lg:.3f} | {r:.3f} | {prefect_s:.3f} "
                    f"| **{total:.3f}** | {target} | {window(experiment, n):.3f} |")
    return rows, verdict


# --- report -----------------------------------------------------------------------------------------
def report(cfg: dict, results: list[dict], overhead: dict | None, wall: float, argv: list[str]) -> str:
    optimum = next(r for r in results if r["job"] == "optimum")
    opt = optimum["value"]
    seeds = cfg["seeds"]
    budget = cfg["budget"]
    gp_available = importlib.util.find_spec("torch") is not None
    out = []
    w = out.append
    w(f"# Policies on the virtual lab: {C.PLATFORM} ({seeds} seeds)")
    w("")
    w(f"`{' '.join(['benchmarks/policies.py', *argv])}` on {os.cpu_count()} cores "
      f"({host_platform.python_implementation()} {host_platform.python_version()}), "
      f"{dt.datetime.now().strftime('%Y-%m-%d %H:%M')}; wall time {wall / 60:.1f} min.")
    w("")
    objective = f"`{C.OBJECTIVE}`"
    w(f"True optimum of {objective} (noiseless twin, differential evolution + L-BFGS-B): **{opt:,.4g}** at "
      + ", ".join(f"{k} = {v:.4g}" for k, v in optimum["condition"].items()) + ". "
      f"95 % = {TARGET_FRACTION * opt:,.4g}. Every value below is the twin's TRUE objective at the condition with "
      "the best MEASURED objective so far, as % of the true optimum. Medians [interquartile range] over seeds; "
      f"seeds that never reach 95 % count as > budget in the statistics.")
    w("")

    # 1 + 2: policies from scratch
    by_policy = {p: sorted([r for r in results if r["job"] == "policy" and r["policy"] == p], key=lambda r: r["seed"])
                 for p in POLICIES}
    w(f"## 1-2. From scratch: experiments to 95 % of the optimum and best so far (budget {budget})")
    w("")
    w("9 Latin-hypercube points, then the policy (random: random from the first experiment). "
      "GP surrogate (Matern 5/2). TPE is Optuna's (multivariate, after the same 9 points).")
    w("")
    cps = cfg["checkpoints"]
    w("| policy | experiments to 95 % | " + " | ".join(f"best after {k} (%)" for k in cps)
      + f" | target: 95 % within {TARGET_SCRATCH} | failed trials |")
    w("|---|---|" + "---:|" * len(cps) + "---|---:|")
    verdict_scratch = {}
    for p in POLICIES:
        runs = by_policy[p]
        if not runs:
            continue
        curves = [r["truth_best"] for r in runs]
        text, n = to_target(curves, opt, budget)
        within = int((n <= TARGET_SCRATCH).sum())
        met = np.median(np.where(np.isfinite(n), n, budget + 1)) <= TARGET_SCRATCH
        verdict_scratch[p] = (met, within, len(n))
        failed = sum(len(r["failures"]) for r in runs)
        w(f"| {p} | {text} | " + " | ".join(best_at(curves, opt, k) for k in cps)
          + f" | {'met' if met else 'not met'} ({within}/{len(n)} seeds within {TARGET_SCRATCH}) | {failed} |")
    if not gp_available:
        w("| gp (Optuna GPSampler) | n/a (needs torch) | " + " | ".join("n/a" for _ in cps) + " | n/a | - |")
    w("")

    # 3: informed prior
    explores = {p: sorted([r for r in results if r["job"] == "explore" and r["policy"] == p],
                          key=lambda r: r["seed"]) for p in ("ivr", "mv")}
    prior_budget = cfg["prior"]
    w(f"## 3. EI with an informed prior, budget {prior_budget}")
    w("")
    w(f"Prior: the same seed's explore campaign (9 LHS + IVR, or 9 LHS + MV as in the paper; {cfg['explore']} "
      "experiments on another rig), passed as `prior_campaign`; then EI with no initial design on a new rig. "
      "From scratch: the EI campaigns of table 1, first 10 experiments.")
    w("")
    marks = sorted({1, 3, TARGET_PRIOR, prior_budget})
    w(f"| campaign | experiments to 95 % (within {prior_budget}) | "
      + " | ".join(f"best after {k} (%)" for k in marks) + f" | target: 95 % within {TARGET_PRIOR} |")
    w("|---|---|" + "---:|" * len(marks) + "---|")
    verdict_prior = None
    rows = [(f"EI + prior ({cfg['explore']}-experiment {p.upper()} twin)", [r["truth_best"] for r in runs])
            for p, runs in explores.items() if runs]
    if by_policy["ei"]:
        rows.append(("EI from scratch (9 LHS + EI)", [r["truth_best"] for r in by_policy["ei"]]))
    for name, curves in rows:
        text, n = to_target(curves, opt, prior_budget)
        within = int((n <= TARGET_PRIOR).sum())
        met = np.median(np.where(np.isfinite(n), n, prior_budget + 1)) <= TARGET_PRIOR
        if verdict_prior is None:
            verdict_prior = (met, within, len(n))
        w(f"| {name} | {text} | " + " | ".join(best_at(curves, opt, k) for k in marks)
          + f" | {'met' if met else 'not met'} ({within}/{len(n)} seeds within {TARGET_PRIOR}) |")
    failed = sum(len(r["failures"]) + len(r["explore_failures"]) for runs in explores.values() for r in runs)
    w("")
    w(f"Failed trials in the explore + prior campaigns: {failed}.")
    w("")

    # 4: R^2
    sizes = cfg["r2_sizes"]
    w("## 4. Digital-twin quality: R^2 on 1000 Monte-Carlo conditions vs the noiseless twin")
    w("")
    w("GP surrogate trained on the first n measured experiments of each campaign (IVR, MV: the explore campaigns; "
      "random: the random campaign of table 1, extended), or on a Latin-hypercube design of exactly n points "
      "run on a fresh rig (LHS-only). Median [IQR] over seeds.")
    w("")
    w("| design | " + " | ".join(f"n = {n}" for n in sizes) + f" | target: R^2 >= {TARGET_R2} with <= {TARGET_R2_N} |")
    w("|---|" + "---:|" * len(sizes) + "---|")
    designs = {"IVR (9 LHS + integrated variance reduction)": explores["ivr"],
               "MV (9 LHS + max. variance, the paper's)": explores["mv"], "random": by_policy["random"],
               "LHS-only": sorted([r for r in results if r["job"] == "lhs"], key=lambda r: r["seed"])}
    verdict_r2 = {}
    for name, runs in designs.items():
        cells, first = [], None
        for n in sizes:
            values = [r["r2"].get(n, np.nan) for r in runs]
            cells.append(med_iqr(values, "{:.2f}"))
            if first is None and np.nanmedian(values) >= TARGET_R2:
                first = n
        met = first is not None and first <= TARGET_R2_N
        verdict_r2[name] = (met, first)
        reached = f"first at n = {first}" if first else f"not within {max(sizes)}"
        w(f"| {name} | " + " | ".join(cells) + f" | {'met' if met else 'not met'} (median {reached}) |")
    w("")

    # 5: overhead
    verdict_overhead = {}
    if overhead is not None:
        prefect_s, diff = prefect_per_trial(overhead["prefect"])
        pf = overhead["prefect"]
        one, default = overhead["one"], overhead["default"]
        threads = overhead["default_threads"]
        rows_one, verdict_overhead["1 BLAS thread"] = overhead_rows(cfg, one, "1", prefect_s)
        rows_default, verdict_overhead[f"{threads} BLAS threads (default)"] = overhead_rows(
            cfg, default, f"{threads} (default)", prefect_s)
        w("## 5. Orchestration overhead per iteration")
        w("")
        w(f"EI campaigns (GP, 9 LHS first) with plain steps on one rig, run alone after the seeds: to "
          f"{len(one['trace'].iteration)} experiments with BLAS/OpenMP limited to 1 thread (threadpoolctl; wall "
          f"{one['wall']:.0f} s) and to {len(default['trace'].iteration)} with this machine's default of {threads} "
          f"threads (wall {default['wall']:.0f} s), same seed, same conditions. Each row is the mean over trials "
          f"n-{WINDOW - 1}..n (max: the slowest proposal of those). fit + propose = the sampler inside "
          "`study.ask` (GP retrain + acquisition maximisation); ask/tell + SQLite = the rest of the iteration "
          "outside the experiment (Optuna ask/tell, trial queries, user attributes); record = the Parquet write "
          "(spectra + row). Prefect = the same random-policy campaign of "
          f"{cfg['prefect_n']} experiments run as the `optimize` flow (every step a task, progress artifact, "
          "heartbeat off, a temporary Prefect API) minus its plain run, trial by trial: median "
          f"{prefect_s:.3f} s [IQR {np.percentile(diff, 25):.3f}-{np.percentile(diff, 75):.3f}] over {len(diff)} "
          f"trials (identical conditions: {pf['same_conditions']}); measured once and applied to every row. "
          "The simulated lab (virtual instruments, features) is not overhead and is shown for reference only; "
          f"operator refills between experiments are not counted (1 thread: {one['trace'].refills}).")
        w("")
        w("| BLAS threads | n experiments | fit + propose (s) | ask/tell + SQLite (s) | record (s) | Prefect (s) "
          "| total (s) | target | simulated lab per experiment (s) |")
        w("|---|---:|---:|---:|---:|---:|---:|---|---:|")
        out.extend(rows_one + rows_default)
        w("")

    # verdicts
    w("## Targets")
    w("")
    for p, (met, within, total) in verdict_scratch.items():
        if p in ("ei", "ucb", "eplt", "tpe"):
            w(f"- >= 95 % of the optimum within {TARGET_SCRATCH} experiments from scratch, {p.upper()}: "
              f"{'MET' if met else 'NOT MET'} (median seed; {within}/{total} seeds within {TARGET_SCRATCH})")
    if verdict_prior:
        met, within, total = verdict_prior
        w(f"- >= 95 % within {TARGET_PRIOR} experiments with the informed prior (EI): "
          f"{'MET' if met else 'NOT MET'} ({within}/{total} seeds within {TARGET_PRIOR})")
    for name, (met, first) in verdict_r2.items():
        w(f"- R^2 >= {TARGET_R2} with <= {TARGET_R2_N} experiments, {name}: {'MET' if met else 'NOT MET'}"
          + (f" (median first >= {TARGET_R2} at n = {first})" if first else ""))
    for label, verdict in verdict_overhead.items():
        if verdict is not None:
            total, met = verdict
            w(f"- orchestration overhead <= {TARGET_OVERHEAD_S} s per iteration at {TARGET_OVERHEAD_N} experiments, "
              f"{label}: {'MET' if met else 'NOT MET'} ({total:.3f} s)")
    w("")
    refills = sum(r.get("refills", 0) for r in results)
    w(f"Operator refills (a syringe below {C.REFILL_BELOW:.0%}) during the seed campaigns: {refills}.")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 10; 3 with --quick)")
    parser.add_argument("--quick", action="store_true", help="3 seeds, smaller budgets (a smoke run)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--no-overhead", action="store_true", help="skip the overhead measurement (5)")
    parser.add_argument("--platform", default=C.PLATFORM, help=(
        f"a virtual platform, or 'all' for every shipped one in turn (default {C.PLATFORM}); the "
        "objective is the platform's: PL_I, or its PLQY proxy ([features] plqy_proxy)"))
    parser.add_argument("--out", default=None, help="default: results/policies.md (or policies-<platform>.md)")
    parser.add_argument("--seeds-from", default=None,
                        help="reuse the seed campaigns saved by an earlier run (<out>.seeds.pkl); runs only (5)")
    parser.add_argument("--no-comparison", action="store_true", help="skip the comparison with the peers (6)")
    parser.add_argument("--comparison-only", action="store_true", help="run only the comparison with the peers (6)")
    parser.add_argument("--optimizers", default=None, help=(
        "comma-separated optimizers of the comparison (default: our default policy and every peer); ours as "
        "sdfl-<policy>[+<PolicySettings flag>], e.g. sdfl-ei+faces"))
    parser.add_argument("--problems", default=None,
                        help="comma-separated problems of the comparison (default: the whole public set)")
    args = parser.parse_args()
    if args.comparison_only:
        run_comparison_only(args)
        return
    if args.platform == "all":
        run_every_platform(sys.argv[1:])
        return
    if args.platform != C.PLATFORM:  # the workers read it from the environment at import
        os.environ["SDFL_BENCH_PLATFORM"] = args.platform
        os.execv(sys.executable, [sys.executable, __file__, *sys.argv[1:]])
    default_name = "policies.md" if args.platform == "virtual-cs3cu2i5" else f"policies-{args.platform}.md"
    args.out = args.out or str(HERE / "results" / default_name)
    cfg = settings(args)
    C.quiet()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sdfl-bench-optimum-") as optimum_root:
        log(f"{cfg['seeds']} seeds, {len(jobs(cfg, optimum_root))} campaign jobs on {args.processes} processes ...")
        if args.seeds_from:  # re-measure the overhead alone, on a quiet machine, with earlier seed results
            results = pickle.loads(Path(args.seeds_from).read_bytes())
            log(f"seed campaigns read from {args.seeds_from}")
        else:
            results = run_seeds(cfg, args.processes, optimum_root)
            Path(args.out).with_suffix(".seeds.pkl").write_bytes(pickle.dumps(results))
        overhead = None if args.no_overhead else measure_overhead(cfg, optimum_root)
    text = report(cfg, results, overhead, time.perf_counter() - t0, sys.argv[1:])
    if not args.no_comparison:
        text += "\n" + comparison_section(cfg, args)
    wall = time.perf_counter() - t0
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    log(f"written to {out}; wall time {wall / 60:.1f} min")


def comparison_section(cfg: dict, args) -> str:
    """Section 6: our default beside the peers on the public test set."""
    import _comparison as K
    import _peers

    from tasks.samplers import DEFAULT_POLICY

    wanted = args.optimizers.split(",") if args.optimizers else [f"sdfl-{DEFAULT_POLICY['optimize']}", *K.PEER_ORDER]
    for name in wanted:
        _peers.check_name(name)
    optimizers, skipped = K.available(wanted)
    only = args.problems.split(",") if args.problems else None
    todo = K.jobs(optimizers, cfg["seeds"], cfg["budget"], only)
    log(f"comparison: {len(todo)} runs of {', '.join(optimizers)} on {args.processes} processes ...")
    results = K.run_all(todo, args.processes, log)
    head = [f"## 6. Against the peers: the public test set ({cfg['seeds']} seeds, budget {cfg['budget']})", "",
            f"Every optimizer starts from the same {K.DESIGN} Latin-hypercube points of a seed and sees the same "
            "noise draws (1.5 % multiplicative); peers at their libraries' defaults. Values are the TRUE value at "
            "the best measured point so far, as % of the problem's optimum; seeds that never reach 95 % count as "
            "> budget. One BLAS thread for everyone.", ""]
    return "\n".join(head + K.report(results, optimizers, skipped, cfg["budget"])) + "\n"


def run_comparison_only(args) -> None:
    cfg = settings(args)
    C.quiet()
    t0 = time.perf_counter()
    text = comparison_section(cfg, args)
    print(text)
    out = Path(args.out or HERE / "results" / "comparison.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"`{' '.join(['benchmarks/policies.py', *sys.argv[1:]])}`, "
                   f"{dt.datetime.now().strftime('%Y-%m-%d %H:%M')}, wall {(time.perf_counter() - t0) / 60:.1f} min\n\n"
                   + text)
    log(f"written to {out}")


def run_every_platform(argv: list[str]) -> None:
    """One run per shipped virtual platform, each in its own process (the platform is global there)."""
    import subprocess

    from hardware.platform import shipped_platforms

    rest, skip = [], False
    for arg in argv:  # drop "--platform all" / "--platform=all"
        if skip:
            skip = False
        elif arg == "--platform":
            skip = True
        elif not arg.startswith("--platform="):
            rest.append(arg)
    for name in [n for n in shipped_platforms() if n.startswith("virtual-")]:
        log(f"=== {name} ===")
        subprocess.run([sys.executable, __file__, "--platform", name, *rest], check=True)


if __name__ == "__main__":
    main()
