"""Closed-loop campaigns: `optimize` (maximise an objective), `explore` (build a digital twin) and
`seek_target` (reach a target emission peak with the highest quality and the narrowest FWHM).

Each iteration asks the Optuna study for a condition (an initial Latin-hypercube design, then
the policy), runs it with the experiment steps, and tells the study the objective (a target
campaign: the objective vector of a multi-objective study), or FAIL with the reason. The Parquet dataset and the study are the campaign's state: starting a
campaign again with the same name resumes it (see `tasks.ledger.reconcile` for the crash policy).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from optuna.trial import TrialState

from flows import parameters as P
from flows.experiment import Steps, conduct_experiment
from hardware.errors import FatalInstrumentError, InstrumentError, SdflInputError
from hardware.rig import Rig
from tasks import features, formulation, ledger, storage, targets
from tasks.objective import Objective, parse_objective
from tasks.proposal import PolicySettings, design_conditions
from tasks.records import experiment_row, now_utc
from tasks.surrogate import SurrogateKind, from_unit, load_model, to_unit

InFlight = Literal["fail", "rerun"]


@dataclass
class CampaignPlan:
    """What a campaign should do. Checked by `validate` before anything starts."""

    campaign: str
    objective: str = "PL_I"
    policy: str = "ei"
    budget: int = 30
    initial: int = 9
    surrogate: SurrogateKind = "gp"
    seed: int = 0
    prior_campaign: str | None = None
    prior_model: str | None = None
    in_flight: InFlight = "fail"
    target_r2: float | None = None
    check_every: int = 5
    kappa: float = 2.0
    xi: float = 0.01
    storage: str | None = None
    data_root: str | None = None
    target: targets.Target | None = None
    """A target campaign: the study is multi-objective (peak error, quality, FWHM) and `objective`
    is not used; policies from `ledger.TARGET_SAMPLERS`."""
    patience: int | None = None
    """Target campaigns: stop once an experiment is on target and this many experiments after the
    best on-target one did not beat it (None: run the whole budget)."""


@dataclass
class CampaignState:
    plan: CampaignPlan
    objective: Objective | targets.TargetObjective
    prior: tuple[np.ndarray, np.ndarray] | None
    values: list = field(default_factory=list)
    """Objective per finished trial in trial order (NaN for failures; a target campaign: the
    objective vector, all NaN for failures)."""
    stopped_because: str = ""
    holdout_r2: float | None = None
    reconciled: Any = None
    platform: Any = None


def validate(plan: CampaignPlan, platform) -> tuple[Objective | targets.TargetObjective,
                                                   tuple[np.ndarray, np.ndarray] | None]:
    """Check every setting; raise SdflInputError naming the bad one. Nothing has started yet."""
    storage.check_name("campaign", plan.campaign)
    choices = ledger.TARGET_SAMPLERS if plan.target is not None else ledger.SAMPLERS
    if plan.policy not in choices:
        kind = "target policy" if plan.target is not None else "policy"
        raise SdflInputError(f"unknown {kind} {plan.policy!r}; choose one of {list(choices)}")
    if not isinstance(plan.budget, int) or plan.budget <= 0:
        raise SdflInputError(f"budget must be a positive number of experiments, got {plan.budget!r}")
    if not 0 <= plan.initial <= plan.budget:
        raise SdflInputError(f"initial design size must be between 0 and the budget ({plan.budget}), got {plan.initial}")
    if plan.surrogate not in ("gp", "ensemble"):
        raise SdflInputError(f"surrogate must be 'gp' or 'ensemble', got {plan.surrogate!r}")
    if plan.target_r2 is not None and not 0 < plan.target_r2 < 1:
        raise SdflInputError(f"target_r2 must be between 0 and 1, got {plan.target_r2}")
    if plan.in_flight not in ("fail", "rerun"):
        raise SdflInputError(f"in_flight must be 'fail' or 'rerun', got {plan.in_flight!r}")
    if plan.target is not None:
        if plan.patience is not None and (not isinstance(plan.patience, int) or plan.patience < 0):
            raise SdflInputError(f"patience must be a whole number of experiments (0 or more), got {plan.patience!r}")
        if plan.prior_campaign or plan.prior_model or plan.target_r2 is not None:
            raise SdflInputError("a target campaign takes no prior_campaign, prior_model or target_r2")
        return targets.check_target(plan.target, platform), None
    columns = features.feature_columns(features.FeatureSettings.from_config(platform.features))
    objective = parse_objective(plan.objective, columns)
    prior = None
    if plan.prior_campaign:
        prior = ledger.prior_from_campaign(plan.data_root, plan.prior_campaign, platform, objective)
    if plan.prior_model:
        saved = load_model(plan.prior_model)
        if saved.get("parameters") != platform.parameter_names or saved.get("space") != ledger.space_signature(platform):
            raise SdflInputError(f"prior model {plan.prior_model} was trained on another parameter space "
                                 f"({saved.get('parameters')}); this platform's space is {platform.describe_space()}")
        if saved.get("objective") != objective.expression:
            raise SdflInputError(f"prior model {plan.prior_model} predicts {saved.get('objective')!r}, "
                                 f"not {objective.expression!r}")
        X, y = np.asarray(saved["X"]), np.asarray(saved["y"])
        prior = (X, y) if prior is None else (np.vstack([prior[0], X]), np.concatenate([prior[1], y]))
    return objective, prior


def _feasible(platform):
    def check(unit_point: np.ndarray) -> bool:
        condition = dict(zip(platform.parameter_names, map(float, from_unit(platform, unit_point))))
        try:
            formulation.formulate(condition, platform)
        except SdflInputError:
            return False
        return True
    return check


def run_campaign(rig: Rig | list[Rig], plan: CampaignPlan, steps: Steps, on_progress=None,
                 log: logging.Logger | logging.LoggerAdapter | None = None) -> CampaignState:
    """The closed loop until the budget (or the explore target) is reached.

    Give several rigs (reactors) to run one experiment on each at once: every idle reactor asks
    the study for a condition, and the running trials count as pending in the next proposal
    (kriging believer), so the reactors get a batch of distinct conditions; every result lands in
    the one campaign dataset and study. A reactor with a fatal fault is made safe and taken out
    of service; the others finish the budget, then the fault is raised (the campaign resumes
    when started again).
    """
    log = log or logging.getLogger(__name__)
    rigs = rig if isinstance(rig, list) else [rig]
    if not rigs:
        raise SdflInputError("a campaign needs at least one reactor (rig)")
    platform = rigs[0].platform
    objective, prior = validate(plan, platform)
    state = CampaignState(plan, objective, prior, platform=platform)
    url = ledger.storage_url(plan.data_root, plan.storage)
    prior_unit = (to_unit(platform, prior[0]), prior[1]) if prior is not None else None
    if plan.target is not None:
        sampler = ledger.make_target_sampler(plan.policy, platform, objective, plan.surrogate, plan.seed,
                                             _feasible(platform))
    else:
        sampler = ledger.make_sampler(plan.policy, platform, plan.surrogate, plan.seed, prior_unit,
                                      PolicySettings(plan.kappa, plan.xi), _feasible(platform))
    study, created = ledger.open_study(plan.campaign, platform, objective.expression, url, sampler,
                                       directions(plan))
    state.reconciled = ledger.reconcile(study, plan.campaign, plan.data_root, objective, plan.in_flight,
                                        record_failure=lambda trial, eid: _record_crashed(rigs[0], plan, trial, eid))
    if created and plan.initial and plan.policy != "random":
        for condition in design_conditions(platform, plan.initial, plan.seed):
            study.enqueue_trial(condition)
    loop = _Loop(study, plan, state, steps, objective, on_progress, log)
    try:
        if len(rigs) == 1:
            loop.serve(rigs[0])
        else:
            with ThreadPoolExecutor(len(rigs), thread_name_prefix="reactor") as pool:
                # each reactor thread runs in a copy of this context (Prefect's flow run context)
                futures = [pool.submit(contextvars.copy_context().run, loop.serve, r) for r in rigs]
                for future in futures:
                    future.result()
    finally:
        for r in rigs:
            r.safe_state()
    if loop.fatal is not None:
        raise loop.fatal
    finished = sorted(ledger.finished(study), key=lambda t: t.number)
    if plan.target is not None:
        state.values = [tuple(t.values) if t.state == TrialState.COMPLETE else (math.nan,) * 3 for t in finished]
    else:
        state.values = [t.value if t.state == TrialState.COMPLETE else math.nan for t in finished]
    return state


def directions(plan: CampaignPlan) -> list[str]:
    """The study's directions: one objective to maximise, or a target's three."""
    return list(targets.DIRECTIONS) if plan.target is not None else ["maximize"]


def target_vectors(study) -> np.ndarray:
    """Objective vectors of a target study's finished trials in trial order (NaN rows for failures)."""
    finished = sorted(ledger.finished(study), key=lambda t: t.number)
    return np.array([t.values if t.state == TrialState.COMPLETE else [math.nan] * 3 for t in finished],
                    dtype=float).reshape(-1, 3)


class _Loop:
    """The ask - run - tell loop, shared by the reactors of one campaign (ledger calls locked)."""

    def __init__(self, study, plan, state, steps, objective, on_progress, log):
        self.study, self.plan, self.state, self.steps = study, plan, state, steps
        self.objective, self.on_progress, self.log = objective, on_progress, log
        self.lock = threading.Lock()
        self.running = 0
        self.stopped = False
        self.fatal: BaseException | None = None
        self.distributions = ledger.distributions(state.platform)

    def _next_trial(self):
        with self.lock:
            if self.stopped:
                return None
            done = ledger.finished(self.study)
            if len(done) + self.running >= self.plan.budget:
                self.state.stopped_because = f"budget of {self.plan.budget} experiments reached"
                return None
            if (self.plan.target_r2 is not None and not self.running
                    and _target_reached(self.study, self.state.platform, self.plan, self.state, len(done))):
                self.state.stopped_because = (f"held-out R^2 {self.state.holdout_r2:.3f} >= target "
                                              f"{self.plan.target_r2}")
                self.stopped = True
                return None
            if self.plan.target is not None and self.plan.patience is not None:
                since = targets.experiments_since_best(target_vectors(self.study), self.plan.target)
                if since is not None and since >= self.plan.patience:
                    self.state.stopped_because = (f"on target, and {since} experiment(s) since the best on-target "
                                                  f"one (patience {self.plan.patience})")
                    self.stopped = True
                    return None
            trial = self.study.ask(self.distributions)
            experiment_id = ledger.experiment_id_for(self.plan.campaign, trial.number)
            trial.set_user_attr("experiment_id", experiment_id)
            self.running += 1
            return trial, experiment_id

    def serve(self, rig: Rig) -> None:
        """Run trials on `rig` until the campaign is done or this reactor has a fatal fault."""
        while (claimed := self._next_trial()) is not None:
            trial, experiment_id = claimed
            try:
                value, failure, row = _conduct(rig, self.plan, self.steps, trial, experiment_id, self.objective,
                                               self.log)
            except (FatalInstrumentError, InstrumentError) as exc:
                with self.lock:
                    _tell_failure(self.study, trial, exc)
                    self.running -= 1
                    self.fatal = self.fatal or exc
                    if self.plan.target_r2 is not None:
                        self.stopped = True
                self.log.error("reactor %s out of service after trial %d: %s", rig.name, trial.number, exc)
                return  # the rig is safe and the experiment recorded; a person must look at it
            with self.lock:
                if failure is not None:
                    _tell_failure(self.study, trial, failure)
                else:
                    ledger.tell_completed(self.study, trial, value, self.objective, row)
                    self.log.info("trial %d (%s): %s = %s", trial.number, experiment_id,
                                  _what(self.objective), _show(value))
                self.running -= 1
                if self.on_progress is not None:
                    self.on_progress(len(ledger.finished(self.study)), self.plan.budget, self.study)


def _what(objective) -> str:
    return "(peak error nm, quality, FWHM)" if isinstance(objective, targets.TargetObjective) else objective.expression


def _show(value) -> str:
    return ", ".join(f"{v:.5g}" for v in np.atleast_1d(value))


def _conduct(rig, plan, steps, trial, experiment_id, objective, log):
    """Run one trial's experiment: (objective value or vector, None, row) or (nan, why it has no
    value, row or None).

    Instrument errors propagate (the rig is already safe and the experiment recorded).
    """
    run = getattr(rig, "conduct", None)  # a reactor on another machine (flows/remote.py)
    try:
        if run is not None:
            row = run(condition=dict(trial.params), campaign=plan.campaign, experiment_id=experiment_id,
                      data_root=plan.data_root, seed=plan.seed)
        else:
            row = conduct_experiment(rig, condition=dict(trial.params), campaign=plan.campaign,
                                     experiment_id=experiment_id, finish="hold", data_root=plan.data_root,
                                     seed=plan.seed, steps=steps, log=log)
    except SdflInputError as exc:  # an infeasible proposal is never run; record why and go on
        log.warning("trial %d not run: %s", trial.number, exc)
        return math.nan, exc, None
    value = objective(row)
    if not ledger.is_number(value):
        return math.nan, ValueError(f"objective {_what(objective)!r} is not a number for this run: {_show(value)}"), row
    return value, None, row


def _tell_failure(study, trial, exc: BaseException) -> None:
    trial.set_user_attr("failure_reason", f"{type(exc).__name__}: {exc}"[:2000])
    study.tell(trial, state=TrialState.FAIL)


def _record_crashed(rig, plan, trial, experiment_id: str) -> None:
    """A trial that was in flight when the process died: record it as crashed in the dataset."""
    platform = rig.platform
    settings = features.FeatureSettings.from_config(platform.features)
    row = experiment_row(
        experiment_id=experiment_id, status="crashed", platform=platform, started_at=now_utc(),
        t_platform_start_s=rig.clock.now(), t_platform_end_s=rig.clock.now(), condition=dict(trial.params),
        failure_reason="interrupted: the campaign process stopped during this experiment", seed=plan.seed,
    )
    storage.write_experiment(row, [], storage.experiment_schema(platform, features.feature_columns(settings)),
                             plan.campaign, plan.data_root)


def _target_reached(study, platform, plan, state, n_done: int) -> bool:
    from tasks.surrogate import holdout_r2

    X, y = ledger.observations(study, platform)
    if len(y) < max(10, plan.initial) or n_done % plan.check_every:
        return False
    state.holdout_r2 = holdout_r2(plan.surrogate, to_unit(platform, X), y, seed=plan.seed)
    return state.holdout_r2 >= plan.target_r2


# --- Prefect flows --------------------------------------------------------------------------
def _campaign_flow(plan: CampaignPlan, platform_name: str, seed_rig: int | None, explain_model: bool,
                   reactors: int = 1, remote_reactors: list[str] | None = None) -> dict:
    from prefect import get_run_logger
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    from flows.campaign_report import build_report, build_target_report
    from flows.experiment import prefect_steps
    from flows.reactor import reactor_lock
    from flows.remote import DeploymentReactor
    from hardware.platform import load_platform
    from hardware.rig import open_rig

    log = get_run_logger()
    config = load_platform(platform_name)
    validate(plan, config)  # bad settings stop here, before the rig or the study is touched
    if not isinstance(reactors, int) or isinstance(reactors, bool) or reactors < 1:
        raise SdflInputError(f"reactors must be a whole number of at least 1, got {reactors!r}")
    if reactors > 1 and config.platform.kind == "real":
        raise SdflInputError("reactors > 1 runs copies of a virtual or emulated platform; real reactors are "
                             "separate platforms, each with its own deployment")
    remote = [DeploymentReactor(name, config).checked() for name in remote_reactors or []]
    progress = create_progress_artifact(progress=0.0, description=f"campaign {plan.campaign}: experiments done")

    def on_progress(done: int, budget: int, study) -> None:
        update_progress_artifact(progress, progress=100.0 * done / budget)

    with reactor_lock(config.platform.name, log):
        rigs = [open_rig(config, seed_rig if k == 0 else (seed_rig or 0) + 1000 * k) for k in range(reactors)]
        rigs += remote
        with contextlib.ExitStack() as stack:
            for rig in rigs:
                stack.enter_context(rig.lock)
            state = run_campaign(rigs, plan, prefect_steps(config.platform.kind != "real"), on_progress, log)
    update_progress_artifact(progress, progress=100.0)  # done, also when it stopped before the budget
    study = ledger.open_study(plan.campaign, config, state.objective.expression,
                              ledger.storage_url(plan.data_root, plan.storage), None, directions(plan))[0]
    if plan.target is not None:
        summary = build_target_report(config, study, state.objective, plan.data_root, plan.campaign,
                                      state.stopped_because)
    else:
        summary = build_report(config, study, state.objective, plan.surrogate, state.prior, plan.data_root,
                               plan.campaign, plan.seed, explain_model=explain_model)
    summary["stopped_because"] = state.stopped_because
    if state.reconciled and (state.reconciled.failed or state.reconciled.completed):
        summary["resumed"] = {"told_complete": state.reconciled.completed, "marked_failed": state.reconciled.failed,
                              "rerun": state.reconciled.rerun}
    if plan.target is not None:
        log.info("campaign %s: %s; %d on target; best desirability %.3f", plan.campaign, state.stopped_because,
                 summary.get("on_target", 0), summary.get("best", {}).get("desirability", float("nan")))
    else:
        log.info("campaign %s: %s; best %s = %.5g", plan.campaign, state.stopped_because,
                 state.objective.expression, summary.get("best_value", float("nan")))
    return summary


def _flow(name: str):
    from prefect import flow

    return flow(name=name)


@_flow("optimize")
def optimize(
    campaign: P.CampaignName,
    platform: P.PlatformName = "virtual-cs3cu2i5",
    objective: P.Objective = "PL_I",
    policy: P.OptimizePolicy = "ei",
    budget: P.Budget = 30,
    initial: P.Initial = 9,
    surrogate: P.Surrogate = "gp",
    prior_campaign: P.PriorCampaign = None,
    prior_model: P.PriorModel = None,
    in_flight: P.InFlightPolicy = "fail",
    kappa: P.Kappa = 2.0,
    seed: P.Seed = 0,
    data_root: P.DataRoot = None,
    storage: P.OptunaStorage = None,
    explain: P.Explain = True,
    reactors: P.Reactors = 1,
    remote_reactors: P.RemoteReactors = None,
) -> dict[str, Any]:
    """Maximise `objective` (a feature such as PL_I, or a formula of features) within `budget`
    experiments: `initial` Latin-hypercube points, then `policy`. Running it again with the same
    campaign name resumes it. `reactors` > 1 runs that many copies of a virtual or emulated
    platform at once, one experiment each (a batch of distinct proposals); `remote_reactors`
    adds reactors on other machines by their run-experiment deployments (same space, shared data
    root)."""
    plan = CampaignPlan(campaign=campaign, objective=objective, policy=policy, budget=budget, initial=initial,
                        surrogate=surrogate, seed=seed, prior_campaign=prior_campaign, prior_model=prior_model,
                        in_flight=in_flight, kappa=kappa, storage=storage, data_root=data_root)
    return _campaign_flow(plan, platform, seed, explain, reactors, remote_reactors)


@_flow("explore")
def explore(
    campaign: P.CampaignName,
    platform: P.PlatformName = "virtual-cs3cu2i5",
    objective: P.Objective = "PL_I",
    target_r2: P.TargetR2 = 0.8,
    budget: P.Budget = 60,
    initial: P.Initial = 9,
    policy: P.ExplorePolicy = "ivr",
    surrogate: P.Surrogate = "gp",
    check_every: P.CheckEvery = 5,
    in_flight: P.InFlightPolicy = "fail",
    seed: P.Seed = 0,
    data_root: P.DataRoot = None,
    storage: P.OptunaStorage = None,
    explain: P.Explain = True,
    reactors: P.Reactors = 1,
) -> dict[str, Any]:
    """Build a digital twin: Latin-hypercube points, then an exploration policy (integrated
    variance reduction by default; the paper's maximum variance with policy="mv"), until the
    surrogate's held-out R^2 reaches `target_r2` (checked every `check_every` experiments) or the
    budget ends.
    The trained model is saved under the campaign folder for use as a prior (`prior_model`)."""
    plan = CampaignPlan(campaign=campaign, objective=objective, policy=policy, budget=budget, initial=initial,
                        surrogate=surrogate, seed=seed, in_flight=in_flight, target_r2=target_r2,
                        check_every=check_every, storage=storage, data_root=data_root)
    return _campaign_flow(plan, platform, seed, explain, reactors)


@_flow("seek-target")
def seek_target(
    campaign: P.CampaignName,
    platform: P.PlatformName = "virtual-cs3cu2i5",
    target_peak_nm: P.TargetPeakNm = None,
    target_peak_ev: P.TargetPeakEv = None,
    tolerance_nm: P.ToleranceNm = 2.0,
    max_fwhm_nm: P.MaxFwhmNm = None,
    quality: P.Quality = targets.DEFAULT_QUALITY,
    policy: P.TargetPolicy = "desirability-ei",
    budget: P.Budget = 30,
    initial: P.Initial = 6,
    patience: P.Patience = 5,
    surrogate: P.Surrogate = "gp",
    in_flight: P.InFlightPolicy = "fail",
    seed: P.Seed = 0,
    data_root: P.DataRoot = None,
    storage: P.OptunaStorage = None,
    reactors: P.Reactors = 1,
    remote_reactors: P.RemoteReactors = None,
) -> dict[str, Any]:
    """Reach a target emission peak (`target_peak_nm`, or `target_peak_ev`) within `tolerance_nm`
    with the highest `quality` (by default the platform's relative PLQY, `[features] plqy_proxy`)
    and the narrowest FWHM at once, as the Artificial Chemist did. The Optuna study is multi-objective (peak error, quality, FWHM);
    a desirability (0-1) ranks the experiments. Stops at the budget, or once an experiment is on
    target (peak within tolerance, FWHM <= `max_fwhm_nm` if given) and `patience` experiments
    after the best on-target one did not beat it. Returns the best condition by desirability
    and the Pareto front; publishes the front as a table and a figure. Running it again with the
    same campaign name resumes it."""
    target = targets.make_target(target_peak_nm, target_peak_ev, tolerance_nm=tolerance_nm,
                                 max_fwhm_nm=max_fwhm_nm, quality=quality)
    plan = CampaignPlan(campaign=campaign, policy=policy, budget=budget, initial=initial, surrogate=surrogate,
                        seed=seed, in_flight=in_flight, storage=storage, data_root=data_root, target=target,
                        patience=patience)
    return _campaign_flow(plan, platform, seed, False, reactors, remote_reactors)
