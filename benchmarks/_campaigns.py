"""Worker side of benchmarks/policies.py: closed-loop campaigns on fresh virtual rigs.

Every job builds its own rig(s), campaign names and data root (a temporary folder, removed at
the end) and returns plain numbers, so jobs run in any process of a pool. Truth comes from the
noiseless digital twin (`tasks.twin.DigitalTwin`), never from the noisy measurements.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

BRIGHTNESS = "PL_A / (1 - 10 ** (-Abs_300))"
"""PL per absorbed excitation (Abs_300 is the absorbance at the platform's excitation line): a
PLQY proxy, the objective of the platforms whose papers optimise quantum yield."""
PLATFORM = os.environ.get("SDFL_BENCH_PLATFORM", "virtual-cs3cu2i5")
"""The platform every job runs on (policies.py --platform sets it for its worker processes)."""


def platform_objective(name: str) -> str:
    """PL_I on the default platform (paper 003's objective); elsewhere the platform's PLQY proxy."""
    if name == "virtual-cs3cu2i5":
        return "PL_I"
    from hardware.platform import load_platform

    return load_platform(name).features.plqy_proxy or BRIGHTNESS


OBJECTIVE = os.environ.get("SDFL_BENCH_OBJECTIVE") or platform_objective(PLATFORM)
REFILL_BELOW = 0.2
"""An operator refills every syringe when one holds less than this share of its volume."""


@contextmanager
def one_blas_thread_per_worker():
    """Spawned workers start with one BLAS/OpenMP thread (they share the cores); restored after."""
    threads = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {name: os.environ.get(name) for name in threads}
    os.environ.update({name: "1" for name in threads})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def worker_init() -> None:
    """Pool initializer: quiet, and one BLAS/OpenMP thread (the workers share the cores)."""
    from threadpoolctl import threadpool_limits

    quiet()
    threadpool_limits(1)


def quiet() -> None:
    """Optuna, sklearn and the loop's loggers: warnings off."""
    import optuna
    from sklearn.exceptions import ConvergenceWarning

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore", ConvergenceWarning)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Predicted variances smaller than 0")
    for name in ("flows", "tasks", "hardware"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


# --- shared per process ---------------------------------------------------------------------
_CACHE: dict = {}


def platform():
    if "platform" not in _CACHE:
        from hardware.platform import load_platform

        _CACHE["platform"] = load_platform(PLATFORM)
    return _CACHE["platform"]


def true_objective():
    """The objective as the twin evaluates it: a feature name, or the parsed formula."""
    if "objective" not in _CACHE:
        from tasks.twin import as_objective

        _CACHE["objective"] = as_objective(OBJECTIVE, platform())
    return _CACHE["objective"]


def twin():
    if "twin" not in _CACHE:
        from tasks.twin import DigitalTwin

        _CACHE["twin"] = DigitalTwin(platform())
    return _CACHE["twin"]


def mc_points(n: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The Monte-Carlo test set (parameter units) and the twin's noiseless objective there."""
    key = ("mc", n, seed)
    if key not in _CACHE:
        X = twin().monte_carlo(n, seed)
        _CACHE[key] = (X, twin().objective(X, true_objective()))
    return _CACHE[key]


def new_rig(seed: int):
    """A fresh virtual rig (a new seed is a new rig; any cached one of that seed is forgotten)."""
    from hardware.rig import close_rig, open_rig

    close_rig(PLATFORM, seed)
    return open_rig(platform(), seed)


def drop_rig(seed: int) -> None:
    from hardware.rig import close_rig

    close_rig(PLATFORM, seed)


def keep_filled(rig) -> bool:
    """The operator's step between experiments: when a syringe runs low, stop and refill all.

    Low means below REFILL_BELOW of its volume, or below twice the most that pump has used
    between two of these checks (one experiment on the cascade can take a fifth of a syringe).
    A 100 mL PFO syringe lasts ~42 experiments of the default space, so campaigns longer than
    that need it (without it every later trial is refused: "not enough liquid").
    """
    pumps = rig.lab.pumps
    seen = _CACHE.setdefault(("levels", id(rig)), {})
    low = False
    for name, pump in pumps.items():
        left = pump.remaining_ul()
        last, most = seen.get(name, (left, 0.0))
        most = max(most, last - left)
        seen[name] = (left, most)
        low |= left < max(REFILL_BELOW * pump.syringe_volume_ul, 2.0 * most)
    if not low:
        return False
    rig.stop_pumps()
    rig.lab.refill_all()
    for name, pump in pumps.items():
        seen[name] = (pump.remaining_ul(), seen[name][1])
    return True


# --- one campaign -------------------------------------------------------------------------------
@dataclass
class Trace:
    """Per-trial timings of a campaign (seconds of wall time)."""

    iteration: list[float] = field(default_factory=list)
    """From the end of the previous trial (or the start) to the end of this one."""
    experiment: list[float] = field(default_factory=list)
    """conduct_experiment, minus the record step: the (virtual) lab and feature extraction."""
    record: list[float] = field(default_factory=list)
    """The Parquet write (spectra + experiment row)."""
    propose: list[float] = field(default_factory=list)
    """The sampler's fit + proposal inside study.ask (0 for enqueued initial-design trials)."""
    refills: int = 0


class _Timers:
    def __init__(self):
        self.propose = 0.0
        self.record = 0.0
        self.experiment = 0.0


def _timed_steps(steps, timers: _Timers):
    from dataclasses import replace

    def record(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return steps.record(*args, **kwargs)
        finally:
            timers.record += time.perf_counter() - t0

    return replace(steps, record=record)


class _Instrument:
    """Times the sampler and the experiment inside `flows.campaign_loop.run_campaign` (this process only).

    `samplers.build_sampler` (which every policy's sampler comes from) and
    `flows.reactors.conduct_experiment` (what a rig of this machine runs) are wrapped for the duration of a `with` block; nothing
    in the library is changed.
    """

    def __init__(self, timers: _Timers):
        self.timers = timers

    def __enter__(self):
        import flows.reactors as reactors_module
        from tasks import samplers

        self._saved = (samplers.build_sampler, reactors_module.conduct_experiment)
        build_sampler, conduct = self._saved
        timers = self.timers

        def timed_build_sampler(*args, **kwargs):
            sampler = build_sampler(*args, **kwargs)
            inner = sampler.sample_relative

            def sample_relative(study, trial, search_space):
                t0 = time.perf_counter()
                try:
                    return inner(study, trial, search_space)
                finally:
                    timers.propose += time.perf_counter() - t0

            sampler.sample_relative = sample_relative
            return sampler

        def timed_conduct(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return conduct(*args, **kwargs)
            finally:
                timers.experiment += time.perf_counter() - t0

        samplers.build_sampler = timed_build_sampler
        reactors_module.conduct_experiment = timed_conduct
        return self

    def __exit__(self, *exc):
        import flows.reactors as reactors_module
        from tasks import samplers

        samplers.build_sampler, reactors_module.conduct_experiment = self._saved
        return False


def run_plan(rig, plan, steps=None, runner=None) -> tuple[dict, Trace]:
    """Run `plan` on `rig` with plain steps (or `runner(plan, on_progress)`), timing each trial.

    Returns (outcome, trace); outcome: conditions X (parameter units, trial order), measured
    values (NaN for failed trials) and failure reasons.
    """
    import optuna

    from flows.campaign import run_campaign
    from flows.experiment import PLAIN_STEPS
    from tasks import ledger

    timers = _Timers()
    trace = Trace()
    mark = {"t": time.perf_counter(), "propose": 0.0, "record": 0.0, "experiment": 0.0}

    def on_progress(done, budget, study):
        now = time.perf_counter()
        trace.iteration.append(now - mark["t"])
        trace.propose.append(timers.propose - mark["propose"])
        record = timers.record - mark["record"]
        trace.record.append(record)
        trace.experiment.append(timers.experiment - mark["experiment"] - record)
        if rig is not None and keep_filled(rig):
            trace.refills += 1
        mark.update(t=time.perf_counter(), propose=timers.propose, record=timers.record,
                    experiment=timers.experiment)

    with _Instrument(timers):
        if runner is None:
            run_campaign(rig, plan, _timed_steps(steps or PLAIN_STEPS, timers), on_progress)
        else:
            runner(plan, on_progress)
    study = optuna.load_study(study_name=plan.campaign, storage=ledger.storage_url(plan.data_root, plan.storage))
    trials = sorted(ledger.finished(study), key=lambda t: t.number)
    names = platform().parameter_names
    X = np.array([[t.params.get(n, np.nan) for n in names] for t in trials], dtype=float).reshape(-1, len(names))
    y = np.array([t.value if t.state.name == "COMPLETE" else np.nan for t in trials], dtype=float)
    reasons = [t.user_attrs.get("failure_reason") for t in trials if t.state.name != "COMPLETE"]
    return {"X": X, "y": y, "failures": reasons}, trace


def truth_of_best_so_far(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """After each trial: the twin's noiseless objective at the condition measured best so far."""
    ok = np.isfinite(y)
    truth = np.full(len(y), np.nan)
    if ok.any():
        truth[ok] = twin().objective(X[ok], true_objective())
    out = np.full(len(y), np.nan)
    best, best_i = -np.inf, None
    for i in range(len(y)):
        if ok[i] and y[i] > best:
            best, best_i = y[i], i
        if best_i is not None:
            out[i] = truth[best_i]
    return out


def mc_r2_curve(X: np.ndarray, y: np.ndarray, sizes, seed: int) -> dict[int, float]:
    """R^2 of the GP surrogate trained on the first n trials, on the Monte-Carlo set, per n."""
    from sklearn.metrics import r2_score

    from tasks.surrogate import make_surrogate, to_unit

    mc, truth = mc_points()
    out = {}
    for n in sizes:
        if n > len(y):
            continue
        ok = np.isfinite(y[:n])
        Xn, yn = X[:n][ok], y[:n][ok]
        model = make_surrogate("gp", seed).fit(to_unit(platform(), Xn), yn)
        out[n] = float(r2_score(truth, model.predict(to_unit(platform(), mc))[0]))
    return out


# --- the jobs ----------------------------------------------------------------------------------
def _plan(**kwargs):
    from flows.campaign import CampaignPlan

    return CampaignPlan(objective=OBJECTIVE, surrogate="gp", **kwargs)


def _rig_seed(seed: int, slot: int) -> int:
    return 10_000 + 100 * seed + slot


def job_policy(seed: int, policy: str, budget: int, r2_sizes=()) -> dict:
    """One optimisation campaign from scratch (9 LHS points, then `policy`; random: none)."""
    root = tempfile.mkdtemp(prefix=f"sdfl-bench-{policy}-{seed}-")
    slot = ("random", "tpe", "ei", "ucb", "eplt").index(policy) + 1
    try:
        rig = new_rig(_rig_seed(seed, slot))
        t0 = time.perf_counter()
        outcome, trace = run_plan(rig, _plan(campaign=f"{policy}-s{seed}", policy=policy, budget=budget,
                                             initial=9, seed=seed, data_root=root))
        wall = time.perf_counter() - t0
        result = {"job": "policy", "policy": policy, "seed": seed, "wall": wall, "refills": trace.refills,
                  "truth_best": truth_of_best_so_far(outcome["X"], outcome["y"]),
                  "measured": outcome["y"], "failures": outcome["failures"]}
        if r2_sizes:
            result["r2"] = mc_r2_curve(outcome["X"], outcome["y"], r2_sizes, seed)
        return result
    finally:
        drop_rig(_rig_seed(seed, slot))
        shutil.rmtree(root, ignore_errors=True)


def job_explore_then_prior(seed: int, explore_budget: int, prior_budget: int, r2_sizes=(),
                           policy: str = "mv") -> dict:
    """An explore campaign (LHS + `policy`: mv or ivr), its R^2 curve, then EI with it as prior on a
    new rig."""
    root = tempfile.mkdtemp(prefix=f"sdfl-bench-explore-{policy}-{seed}-")
    slots = {"mv": (6, 7), "ivr": (8, 9)}[policy]
    try:
        t0 = time.perf_counter()
        rig = new_rig(_rig_seed(seed, slots[0]))
        explore = _plan(campaign=f"explore-{policy}-s{seed}", policy=policy, budget=explore_budget, initial=9,
                        seed=seed, data_root=root)
        outcome, trace = run_plan(rig, explore)
        explore_wall = time.perf_counter() - t0
        r2 = mc_r2_curve(outcome["X"], outcome["y"], r2_sizes, seed) if r2_sizes else {}

        t1 = time.perf_counter()
        rig2 = new_rig(_rig_seed(seed, slots[1]))
        informed = _plan(campaign=f"prior-ei-s{seed}", policy="ei", budget=prior_budget, initial=0, seed=seed,
                         data_root=root, prior_campaign=explore.campaign)
        prior_outcome, _ = run_plan(rig2, informed)
        return {"job": "explore", "policy": policy, "seed": seed, "explore_wall": explore_wall, "prior_wall": time.perf_counter() - t1,
                "r2": r2, "explore_failures": outcome["failures"], "refills": trace.refills,
                "explore_completed": int(np.isfinite(outcome["y"]).sum()),
                "truth_best": truth_of_best_so_far(prior_outcome["X"], prior_outcome["y"]),
                "failures": prior_outcome["failures"]}
    finally:
        drop_rig(_rig_seed(seed, slots[0]))
        drop_rig(_rig_seed(seed, slots[1]))
        shutil.rmtree(root, ignore_errors=True)


def job_lhs(seed: int, sizes) -> dict:
    """LHS-only: for each n, a Latin-hypercube design of n points run on the rig, no policy."""
    root = tempfile.mkdtemp(prefix=f"sdfl-bench-lhs-{seed}-")
    try:
        t0 = time.perf_counter()
        r2, failures, refills = {}, [], 0
        for k, n in enumerate(sizes):
            # a fresh rig per design; initial == budget: the campaign is the enqueued design, no policy
            rig = new_rig(_rig_seed(seed, 20 + k))
            outcome, trace = run_plan(rig, _plan(campaign=f"lhs{n}-s{seed}", policy="mv", budget=n, initial=n,
                                                 seed=seed, data_root=root))
            drop_rig(_rig_seed(seed, 20 + k))
            r2.update(mc_r2_curve(outcome["X"], outcome["y"], [n], seed))
            failures += outcome["failures"]
            refills += trace.refills
        return {"job": "lhs", "seed": seed, "wall": time.perf_counter() - t0, "r2": r2, "failures": failures,
                "refills": refills}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def job_optimum(root: str) -> dict:
    """The twin's true optimum (cached under `root`, so later campaigns there reuse it)."""
    from tasks.twin import cached_true_optimum

    t0 = time.perf_counter()
    optimum = cached_true_optimum(platform(), true_objective(), root)
    return {"job": "optimum", "value": optimum.value, "condition": optimum.condition,
            "wall": time.perf_counter() - t0}


def run_job(job: tuple) -> dict:
    quiet()
    kind, kwargs = job
    t0 = time.perf_counter()
    result = {"optimum": job_optimum, "policy": job_policy, "explore": job_explore_then_prior,
              "lhs": job_lhs}[kind](**kwargs)
    result["job_wall"] = time.perf_counter() - t0
    result["pid"] = os.getpid()
    return result


# --- orchestration overhead ---------------------------------------------------------------------
def overhead_campaign(n: int, seed: int, policy: str = "ei") -> dict:
    """A plain-steps campaign of n experiments with per-trial timings (run it alone on the machine)."""
    root = tempfile.mkdtemp(prefix=f"sdfl-bench-overhead-{n}-")
    try:
        rig = new_rig(_rig_seed(seed, 9))
        t0 = time.perf_counter()
        outcome, trace = run_plan(rig, _plan(campaign=f"overhead-{policy}-{n}", policy=policy, budget=n, initial=9,
                                             seed=seed, data_root=root))
        return {"n": n, "wall": time.perf_counter() - t0, "trace": trace, "failures": outcome["failures"]}
    finally:
        drop_rig(_rig_seed(seed, 9))
        shutil.rmtree(root, ignore_errors=True)


def prefect_overhead(n: int, seed: int, root: str) -> dict:
    """The same random-policy campaign of n experiments twice: plain steps, then the Prefect flow
    `flows.campaign.optimize` (tasks for every step, progress artifact, heartbeat off).

    Random proposals are identical in both runs (same seed), as is the rig (same seed), so the
    per-trial difference in wall time is Prefect's. Returns both traces.
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, PREFECT_LOGGING_LEVEL, temporary_settings

    import flows.campaign as campaign_module

    logging.getLogger("prefect").setLevel(logging.WARNING)
    rig_seed = _rig_seed(seed, 10)
    rig = new_rig(rig_seed)
    plain, plain_trace = run_plan(rig, _plan(campaign=f"plain-random-{n}", policy="random", budget=n, initial=9,
                                             seed=rig_seed, data_root=root))
    new_rig(rig_seed)  # the flow opens the rig of its seed: a fresh one, as the plain run had
    flow_runs = {}

    def runner(plan, on_progress):
        original = campaign_module.run_campaign

        def wrapped(rig, plan, steps, flow_progress=None, log=None, **options):
            def both(done, budget, study):
                if flow_progress is not None:
                    flow_progress(done, budget, study)  # the flow's progress artifact: Prefect's cost
                on_progress(done, budget, study)
            flow_runs["rig"] = rig
            return original(rig, plan, steps, both, log, **options)

        campaign_module.run_campaign = wrapped
        try:
            t0 = time.perf_counter()
            campaign_module.optimize(campaign=plan.campaign, policy="random", budget=plan.budget, seed=plan.seed,
                                     data_root=plan.data_root, explain=False)
            flow_runs["wall"] = time.perf_counter() - t0
        finally:
            campaign_module.run_campaign = original

    t0 = time.perf_counter()
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None, PREFECT_LOGGING_LEVEL: "WARNING"}):
        flowed, flow_trace = run_plan(None, _plan(campaign=f"prefect-random-{n}", policy="random", budget=n,
                                                  initial=9, seed=rig_seed, data_root=root), runner=runner)
    drop_rig(rig_seed)
    same = np.allclose(plain["X"], flowed["X"], equal_nan=True)
    return {"plain": plain_trace, "prefect": flow_trace, "same_conditions": bool(same),
            "flow_wall": flow_runs.get("wall", np.nan), "total_wall": time.perf_counter() - t0,
            "failures": plain["failures"] + flowed["failures"]}
