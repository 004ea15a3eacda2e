"""Target campaigns on the virtual lab: experiments to reach a colour with the best quality and FWHM.

For a platform and a target (default: the PeQLED green, 516 nm with FWHM <= 18 nm, on the OA/OAm
CsPbBr3 platform), it first finds the best achievable from the noiseless digital twin
(`tasks.twin.DigitalTwin`): over a dense sample of the space (a grid for up to 3 inputs, Sobol
points beyond) polished with SLSQP, the highest quality and the narrowest FWHM among conditions
whose peak is within the tolerance (and under the FWHM limit). Then, for the policies random,
tpe (Optuna's multi-objective TPE) and desirability-ei (ours) over N seeds, it runs target
campaigns with plain step functions (`flows.campaign.run_campaign`: Parquet + Optuna SQLite, no
Prefect) on fresh virtual rigs, and counts the experiments until one PROPOSED condition is a
success by the twin's TRUTH there (not the noisy measurement): peak within the tolerance, under
the FWHM limit, quality >= (1 - within) x best achievable and FWHM <= (1 + within) x best
achievable (within = 5 %).

Prints a markdown table (median [IQR] of experiments to success, successes/seeds, ratio of
medians to random in the same run) and writes it to benchmarks/results/targets.md.

    .venv/bin/python benchmarks/targets.py [--platform virtual-cspbbr3-oaoam] [--seeds 10] [--quick]
        [--target-nm 516] [--tolerance-nm 2] [--max-fwhm-nm 18 | --no-fwhm-limit] [--processes 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import os
import pickle
import platform as host_platform
import shutil
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

DEFAULT_PLATFORM = "virtual-cspbbr3-oaoam"
FALLBACK_PLATFORM = "virtual-cs3cu2i5"
POLICIES = ("random", "tpe", "desirability-ei")
DENSE_GRID_MAX_INPUTS = 3
DENSE_POINTS = 16384


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the target and the truth -----------------------------------------------------------------------
def make_target(args):
    from tasks.targets import Target

    return Target(args.target_nm, tolerance_nm=args.tolerance_nm,
                  max_fwhm_nm=None if args.no_fwhm_limit else args.max_fwhm_nm)


_CACHE: dict = {}


def load(name: str):
    """(platform, twin, checked target objective) for this process, built once."""
    if name not in _CACHE:
        from hardware.platform import load_platform
        from tasks.twin import DigitalTwin

        config = load_platform(name)
        _CACHE[name] = (config, DigitalTwin(config))
    return _CACHE[name]


def truth(platform_name: str, target, X: np.ndarray) -> np.ndarray:
    """The twin's noiseless (peak nm, quality, FWHM) at conditions X (parameter units); NaN rows
    for conditions that break a formulation rule."""
    from hardware.errors import SdflInputError
    from tasks.formulation import formulate
    from tasks.targets import check_target

    config, twin = load(platform_name)
    objective = check_target(target, config)
    X = np.atleast_2d(np.asarray(X, dtype=float))
    out = np.full((len(X), 3), np.nan)
    rows = [dict(zip(twin.names, map(float, x))) for x in X]
    ok = []
    for i, row in enumerate(rows):
        if np.all(np.isfinite(X[i])):
            try:
                formulate(row, config)
                ok.append(i)
            except SdflInputError:
                pass  # infeasible: its row stays NaN (not a condition anyone could run)
    if ok:
        table = twin.features([rows[i] for i in ok]).to_dict(orient="records")
        out[ok] = np.array([objective.measured(r) for r in table], dtype=float)
    return out


def dense_sample(config, n: int = DENSE_POINTS) -> np.ndarray:
    """Unit-cube points: a grid for up to 3 inputs, Sobol points beyond."""
    from scipy.stats import qmc

    d = len(config.parameters)
    if d <= DENSE_GRID_MAX_INPUTS:
        side = int(round(n ** (1 / d)))
        axes = np.meshgrid(*[np.linspace(0, 1, side)] * d, indexing="ij")
        return np.column_stack([a.ravel() for a in axes])
    return qmc.Sobol(d, seed=0).random(n)


def best_achievable(platform_name: str, target) -> dict:
    """Highest quality and narrowest FWHM (twin truth) among on-target conditions, dense sample +
    SLSQP polish from the best few; and the share of the dense sample that counts as a success."""
    from scipy import optimize

    from tasks.surrogate import from_unit

    config, _ = load(platform_name)
    t0 = time.perf_counter()
    U = dense_sample(config)
    Y = truth(platform_name, target, from_unit(config, U))
    error = np.abs(Y[:, 0] - target.peak_nm)
    limit = target.max_fwhm_nm if target.max_fwhm_nm is not None else np.inf
    on = np.isfinite(Y).all(axis=1) & (error <= target.tolerance_nm) & (Y[:, 2] <= limit)
    out = {"dense_points": len(U), "dense_on_target": int(on.sum()), "dense_truth": Y,
           "peak_span": (float(np.nanmin(Y[:, 0])), float(np.nanmax(Y[:, 0])))}
    if not on.any():
        out["wall"] = time.perf_counter() - t0
        return out

    memo: dict[bytes, np.ndarray] = {}

    def at(u: np.ndarray) -> np.ndarray:
        key = np.asarray(u, dtype=float).tobytes()
        if key not in memo:
            memo[key] = truth(platform_name, target, from_unit(config, np.clip(u, 0, 1)[None, :]))[0]
        return memo[key]

    def polish(column: int, sign: float) -> float:
        """Best of column (sign +1: max, -1: min) among on-target points, polished with SLSQP."""
        values = np.where(on, sign * Y[:, column], -np.inf)
        order = np.argsort(-values)[:3]
        found = float(values.max())

        def cost(u):
            value = at(u)[column]
            return -sign * value if np.isfinite(value) else 1e30

        constraints = [{"type": "ineq", "fun": lambda u: target.tolerance_nm - abs(at(u)[0] - target.peak_nm)}]
        if np.isfinite(limit):
            constraints.append({"type": "ineq", "fun": lambda u: limit - at(u)[2]})
        for i in order:
            result = optimize.minimize(cost, U[i], method="SLSQP", bounds=[(0, 1)] * U.shape[1],
                                       constraints=constraints, options={"maxiter": 60, "eps": 1e-4})
            y = at(result.x)
            if np.isfinite(y).all() and abs(y[0] - target.peak_nm) <= target.tolerance_nm and y[2] <= limit:
                found = max(found, sign * float(y[column]))
        return sign * found

    out["quality"] = polish(1, +1.0)
    out["fwhm"] = polish(2, -1.0)
    out["wall"] = time.perf_counter() - t0
    return out


def successes(Y: np.ndarray, target, best: dict, within: float) -> np.ndarray:
    """Which truth rows (peak nm, quality, FWHM) are a success."""
    limit = target.max_fwhm_nm if target.max_fwhm_nm is not None else np.inf
    ok = np.isfinite(Y).all(axis=1)
    Y = np.where(ok[:, None], Y, 0.0)
    return (ok & (np.abs(Y[:, 0] - target.peak_nm) <= target.tolerance_nm) & (Y[:, 2] <= limit)
            & (Y[:, 1] >= (1 - within) * best["quality"]) & (Y[:, 2] <= (1 + within) * best["fwhm"]))


# --- one campaign ---------------------------------------------------------------------------------------
def job(kwargs: dict) -> dict:
    """One target campaign from scratch on a fresh rig; returns the proposed conditions, the
    measured vectors and the twin's truth at each proposal."""
    import optuna

    from flows.campaign import CampaignPlan, run_campaign
    from flows.experiment import PLAIN_STEPS
    from hardware.rig import close_rig, open_rig
    from tasks import ledger

    C.quiet()
    t0 = time.perf_counter()
    name, policy, seed, budget, initial, target = (kwargs[k] for k in ("platform", "policy", "seed", "budget",
                                                                       "initial", "target"))
    config, _ = load(name)
    rig_seed = 20_000 + 100 * seed + POLICIES.index(policy)
    root = tempfile.mkdtemp(prefix=f"sdfl-bench-target-{policy}-{seed}-")
    try:
        close_rig(config.platform.name, rig_seed)
        rig = open_rig(config, rig_seed)
        plan = CampaignPlan(campaign=f"{policy}-s{seed}", policy=policy, budget=budget, initial=initial, seed=seed,
                            data_root=root, target=target)
        run_campaign(rig, plan, PLAIN_STEPS, on_progress=lambda done, total, study: C.keep_filled(rig))
        study = optuna.load_study(study_name=plan.campaign, storage=ledger.storage_url(root))
        trials = sorted(ledger.finished(study), key=lambda t: t.number)
        names = config.parameter_names
        X = np.array([[t.params.get(n, np.nan) for n in names] for t in trials], dtype=float).reshape(-1, len(names))
        measured = np.array([[t.user_attrs.get("peak_nm", np.nan), *t.values[1:]] if t.state.name == "COMPLETE"
                             else [np.nan] * 3 for t in trials], dtype=float).reshape(-1, 3)
        failures = [t.user_attrs.get("failure_reason") for t in trials if t.state.name != "COMPLETE"]
        return {"policy": policy, "seed": seed, "X": X, "measured": measured, "truth": truth(name, target, X),
                "failures": failures, "wall": time.perf_counter() - t0, "pid": os.getpid()}
    finally:
        close_rig(config.platform.name, rig_seed)
        shutil.rmtree(root, ignore_errors=True)


def run_jobs(todo: list[dict], processes: int) -> list[dict]:
    results, t0 = [], time.perf_counter()
    with C.one_blas_thread_per_worker():
        with multiprocessing.get_context("spawn").Pool(processes, initializer=C.worker_init) as pool:
            for i, result in enumerate(pool.imap_unordered(job, todo), 1):
                results.append(result)
                log(f"[{i}/{len(todo)}] {result['policy']} seed {result['seed']}: {result['wall']:.1f} s "
                    f"(elapsed {time.perf_counter() - t0:.0f} s)")
    return results


# --- report ---------------------------------------------------------------------------------------------
def experiments_to_success(hit: np.ndarray) -> float:
    """1-based index of the first True; inf if none."""
    where = np.flatnonzero(hit)
    return float(where[0] + 1) if len(where) else np.inf


def stays_from(hit: np.ndarray) -> float:
    """1-based index from which every later entry is True (the end of the campaign included); inf if
    the last one is False."""
    if not len(hit) or not hit[-1]:
        return np.inf
    misses = np.flatnonzero(~hit)
    return float(misses[-1] + 2) if len(misses) else 1.0


def reported_best_hits(run: dict, target, best: dict, within: float) -> np.ndarray:
    """After each experiment: is the condition the campaign would report (best by measured
    desirability, on target first; `tasks.targets.best_index`) a success by the twin's truth?"""
    from tasks.targets import best_index

    measured = run["measured"].copy()
    vectors = measured.copy()
    vectors[:, 0] = np.abs(measured[:, 0] - target.peak_nm)
    hit = successes(run["truth"], target, best, within)
    out = np.zeros(len(vectors), dtype=bool)
    for k in range(len(vectors)):
        i = best_index(vectors[:k + 1], target)
        out[k] = i is not None and hit[i]
    return out


def summarise(n: np.ndarray, budget: int) -> tuple[str, float]:
    """'median [q1-q3]' with seeds that never succeed counted as > budget; and the median."""
    censored = np.where(np.isfinite(n), n, budget + 1)
    q1, q2, q3 = np.percentile(censored, [25, 50, 75])

    def show(x):
        return f">{budget}" if x > budget else f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"

    return f"{show(q2)} [{show(q1)}-{show(q3)}]", float(q2)


def report(args, target, best: dict, results: list[dict], wall: float, note: str) -> str:
    out = []
    w = out.append
    w(f"# Target campaigns on `{args.platform}` ({args.seeds} seeds)")
    w("")
    w(f"`{' '.join(['benchmarks/targets.py', *sys.argv[1:]])}` on {os.cpu_count()} cores "
      f"({host_platform.python_implementation()} {host_platform.python_version()}), "
      f"{dt.datetime.now().strftime('%Y-%m-%d %H:%M')}; wall time {wall / 60:.1f} min.")
    if note:
        w("")
        w(note)
    w("")
    limit = f", FWHM <= {target.max_fwhm_nm:g} nm" if target.max_fwhm_nm is not None else ""
    w(f"Target: PL peak {target.peak_nm:g} nm ({target.peak_ev:.4f} eV) within {target.tolerance_nm:g} nm{limit}; "
      f"quality = `{target.quality}` (maximise), FWHM = `{target.fwhm}` (minimise).")
    w("")
    span = best["peak_span"]
    w(f"Best achievable (noiseless twin, {best['dense_points']} dense points + SLSQP polish, "
      f"{best['wall']:.0f} s): the twin's peak spans {span[0]:.1f}-{span[1]:.1f} nm; "
      f"{best['dense_on_target']} dense points are on target.")
    if "quality" not in best:
        w("")
        w("**No condition of the space is on target: nothing to benchmark.**")
        return "\n".join(out) + "\n"
    Yd = best["dense_truth"]
    share = float(successes(Yd, target, best, args.within).mean())
    w(f"Highest quality on target: **{best['quality']:.4g}**; narrowest FWHM on target: **{best['fwhm']:.3g} nm**. "
      f"A success is a proposed condition whose TRUE peak is on target with quality >= {1 - args.within:.0%} of "
      f"the first and FWHM <= {1 + args.within:.0%} of the second; {100 * share:.2f} % of the dense sample is a "
      f"success" + (f" (random sampling needs ~{1 / share:.0f} experiments on average)." if share > 0 else
                    " (**no dense point meets both at once**: quality and FWHM trade off here)."))
    w("")
    w(f"Budget {args.budget} experiments per campaign; {args.initial} Latin-hypercube points first for tpe and "
      "desirability-ei (random: random from the first experiment). desirability-ei: a GP per modelled "
      "quantity (peak, quality, FWHM), expected improvement of the desirability by Monte Carlo. Seeds that never "
      "succeed count as > budget in the statistics.")
    w("")
    w("Columns: experiments until a proposed condition is a success (the benchmark's measure); successes / "
      "seeds within the budget; ratio of that median to random's; experiments until the condition the campaign "
      "would REPORT (best measured desirability, on target first) is a true success and stays so to the end; "
      "share of the policy's own proposals (after the Latin-hypercube points) that are successes; failed trials "
      "(all seeds); median wall time per campaign.")
    w("")
    out.extend(policy_table(results, target, best, args.within, args.budget, args.initial))
    if results:
        measured = np.vstack([r["measured"] for r in results])
        true = np.vstack([r["truth"] for r in results])
        ok = np.isfinite(measured).all(axis=1) & np.isfinite(true).all(axis=1)
        ratio = measured[ok, 1] / true[ok, 1]
        w("")
        w(f"Measurement against truth over all {int(ok.sum())} experiments: peak {np.std(measured[ok, 0] - true[ok, 0]):.2f} "
          f"nm sd, FWHM {np.std(measured[ok, 2] - true[ok, 2]):.2f} nm sd, quality measured/true "
          f"{np.median(ratio):.2f} median with {100 * np.std(ratio) / np.median(ratio):.0f} % relative sd (the "
          "relative PLQY divides by the measured absorbance).")
    if args.strict < args.within:
        strict_share = float(successes(Yd, target, best, args.strict).mean())
        w("")
        w(f"Stricter: quality >= {1 - args.strict:.0%} of the best and FWHM <= {1 + args.strict:.0%} of the "
          f"narrowest ({100 * strict_share:.2f} % of the dense sample), same campaigns:")
        w("")
        out.extend(policy_table(results, target, best, args.strict, args.budget, args.initial))
    w("")
    w("Ratio < 1: fewer experiments than random in this run (medians, censored at budget + 1).")
    return "\n".join(out) + "\n"


def policy_table(results: list[dict], target, best: dict, within: float, budget: int, initial: int) -> list[str]:
    out = ["| policy | experiments to success, median [IQR] | successes / seeds | ratio to random "
           "| reported best is a success, median [IQR] (seeds) | successes among the policy's proposals "
           "| failed trials | wall per campaign (s) |",
           "|---|---|---:|---:|---|---:|---:|---:|"]
    medians, rows = {}, []
    for policy in POLICIES:
        runs = sorted([r for r in results if r["policy"] == policy], key=lambda r: r["seed"])
        if not runs:
            continue
        hits = [successes(r["truth"], target, best, within) for r in runs]
        n = np.array([experiments_to_success(h) for h in hits])
        reported = np.array([stays_from(reported_best_hits(r, target, best, within)) for r in runs])
        skip = 0 if policy == "random" else initial
        own = np.concatenate([h[skip:] for h in hits])
        text, medians[policy] = summarise(n, budget)
        rows.append((policy, text, int(np.isfinite(n).sum()), len(n),
                     f"{summarise(reported, budget)[0]} ({int(np.isfinite(reported).sum())}/{len(n)})",
                     f"{100 * own.mean():.0f} %" if len(own) else "n/a",
                     sum(len(r["failures"]) for r in runs), float(np.median([r["wall"] for r in runs]))))
    for policy, text, hit, total, reported, own, failed, wall_each in rows:
        ratio = medians[policy] / medians["random"] if "random" in medians else np.nan
        out.append(f"| {policy} | {text} | {hit}/{total} | {ratio:.2f} | {reported} | {own} | {failed} "
                   f"| {wall_each:.0f} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--platform", default=DEFAULT_PLATFORM,
                        help=f"shipped platform name or .toml path (default {DEFAULT_PLATFORM}; if it is not "
                             f"there yet, {FALLBACK_PLATFORM} with --target-nm 450 --no-fwhm-limit)")
    parser.add_argument("--target-nm", type=float, default=516.0)
    parser.add_argument("--tolerance-nm", type=float, default=2.0)
    parser.add_argument("--max-fwhm-nm", type=float, default=18.0)
    parser.add_argument("--no-fwhm-limit", action="store_true")
    parser.add_argument("--within", type=float, default=0.05, help="success: quality and FWHM within this share "
                                                                    "of the best achievable")
    parser.add_argument("--strict", type=float, default=0.01, help="a second table with this share instead")
    parser.add_argument("--seeds", type=int, default=None, help="default 10; 3 with --quick")
    parser.add_argument("--budget", type=int, default=None, help="default 30; 15 with --quick")
    parser.add_argument("--initial", type=int, default=5)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="3 seeds, budget 15 (a smoke run)")
    parser.add_argument("--out", default=str(HERE / "results" / "targets.md"))
    parser.add_argument("--runs-from", default=None,
                        help="re-report the campaigns saved by an earlier run (<out>.runs.pkl) instead of running")
    args = parser.parse_args()
    args.seeds = args.seeds or (3 if args.quick else 10)
    args.budget = args.budget or (15 if args.quick else 30)
    C.quiet()
    from hardware.errors import PlatformConfigError
    from hardware.platform import load_platform

    note = ""
    try:
        load_platform(args.platform)
    except PlatformConfigError as exc:
        if args.platform != DEFAULT_PLATFORM:
            raise
        note = (f"Platform `{DEFAULT_PLATFORM}` was not available ({str(exc).splitlines()[0]}); ran on "
                f"`{FALLBACK_PLATFORM}` with its fixed ~449 nm peak instead: target 450 nm, no FWHM limit.")
        log(note)
        args.platform, args.target_nm, args.no_fwhm_limit = FALLBACK_PLATFORM, 450.0, True
    from tasks.targets import check_target

    target = check_target(make_target(args), load_platform(args.platform)).target  # the platform's PLQY proxy
    t0 = time.perf_counter()
    log(f"best achievable on {args.platform} for {target.describe()} ...")
    best = best_achievable(args.platform, target)
    log(f"best achievable: {({k: v for k, v in best.items() if k != 'dense_truth'})}")
    results = []
    if args.runs_from:
        results = pickle.loads(Path(args.runs_from).read_bytes())
    elif "quality" in best:
        todo = [{"platform": args.platform, "policy": p, "seed": s, "budget": args.budget, "initial": args.initial,
                 "target": target} for s in range(1, args.seeds + 1) for p in POLICIES]
        log(f"{len(todo)} campaigns on {args.processes} processes ...")
        results = run_jobs(todo, args.processes)
        Path(args.out).with_suffix(".runs.pkl").write_bytes(pickle.dumps(results))
    text = report(args, target, best, results, time.perf_counter() - t0, note)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    log(f"written to {out}")


if __name__ == "__main__":
    main()
