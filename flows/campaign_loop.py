"""The closed loop of a campaign, as plain Python: ask the Optuna study for a condition, run it
on a reactor, tell the study the result, until the budget (or the campaign's own goal) is
reached. The Prefect flows (`flows/campaign.py`) wrap it.

The Parquet dataset and the study are the campaign's state: starting a campaign again with the
same name resumes it. On every start the loop settles what a crash left behind: trials left
running (`tasks.ledger.reconcile`), a lost study (rebuilt from the dataset), an initial design
cut short, damaged or foreign files in the campaign's folders (set aside). A lab that is not
ready (syringes short, data root unusable) spends no budget: the trial's condition is queued
again and the campaign waits for a refill or stops with a message saying how to resume.
"""

from __future__ import annotations

import contextvars
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from pyarrow import ArrowException

from flows.campaign_plan import (  # noqa: F401 - the campaign API, importable from here
    CampaignPlan,
    check_campaign,
    family_of,
    plan_from,
    validate,
)
from flows.experiment import Steps
from flows.reactors import LocalReactor, Reactor, as_reactor
from hardware.errors import (
    DataRootUnusable,
    FatalInstrumentError,
    InstrumentError,
    LabNotReady,
    RefillNeeded,
    SdflInputError,
)
from hardware.rig import Rig
from tasks import choices, features, formulation, ledger, liveness, storage, targets
from tasks.objective import Objective
from tasks.proposal import PolicySettings, design_conditions
from tasks.records import experiment_row, now_utc
from tasks.surrogate import from_unit, to_unit

ConfirmRefill = Callable[[LocalReactor, RefillNeeded], bool]
"""Asked when a reactor's syringes run short (a reactor of this machine: `.rig` is its rig): True
once they were refilled (the loop goes on)."""


@dataclass
class CampaignState:
    plan: CampaignPlan
    objective: Objective | targets.TargetObjective
    prior: tuple[np.ndarray, np.ndarray] | None
    values: list = field(default_factory=list)
    """Objective per finished trial in trial order (NaN for failures; a target campaign: the
    objective vector, all NaN for failures)."""
    stopped_because: str = ""
    cv_r2: float | None = None
    reconciled: Any = None
    platform: Any = None
    rebuilt: list[int] = field(default_factory=list)
    """Trials rebuilt from the dataset because the study was missing."""
    set_aside: list = field(default_factory=list)
    """(file, where it went, why) for damaged or foreign files moved out of the campaign's folders."""
    policy_before: str | None = None
    """The policy the campaign ran with before this run, when this run uses another one."""


def _feasible(platform):
    def check(unit_point: np.ndarray) -> bool:
        condition = dict(zip(platform.parameter_names, map(float, from_unit(platform, unit_point))))
        try:
            formulation.formulate(condition, platform)
        except SdflInputError:
            return False
        return True
    return check


def run_campaign(rig: Rig | Reactor | list[Rig | Reactor], plan: CampaignPlan, steps: Steps, on_progress=None,
                 log: logging.Logger | logging.LoggerAdapter | None = None,
                 confirm_refill: ConfirmRefill | None = None) -> CampaignState:
    """The closed loop until the budget (or the explore target) is reached.

    Give several rigs (reactors) to run one experiment on each at once: every idle reactor asks
    the study for a condition, and the running trials count as pending in the next proposal
    (kriging believer), so the reactors get a batch of distinct conditions; every result lands in
    the one campaign dataset and study. A reactor with a fatal fault is made safe and taken out
    of service; the others finish the budget, then the fault is raised (the campaign resumes
    when started again). When a reactor's syringes run short, `confirm_refill(rig, need)` is
    asked; without it, or when it answers False, that reactor stops and `RefillNeeded` is raised
    at the end with how to resume.
    """
    log = log or logging.getLogger(__name__)
    rigs = [as_reactor(r, steps) for r in (rig if isinstance(rig, list) else [rig])]
    if not rigs:
        raise SdflInputError("a campaign needs at least one reactor (rig)")
    platform = rigs[0].platform
    objective, prior = validate(plan, platform)
    storage.check_data_root(plan.data_root, plan.campaign)
    state = CampaignState(plan, objective, prior, platform=platform)
    state.set_aside = storage.set_aside_damaged(plan.data_root, plan.campaign)
    _compact(plan, log, storage.compact_if_due)  # finishes a compaction a crash interrupted
    url = ledger.storage_url(plan.data_root, plan.storage)
    prior_unit = (to_unit(platform, prior[0]), prior[1]) if prior is not None else None
    policy = choices.resolve_policy(plan.policy, family_of(plan))
    sampler = policy.sampler(family_of(plan), platform, plan.surrogate, plan.seed, prior=prior_unit,
                             settings=PolicySettings(plan.kappa, plan.xi), feasible=_feasible(platform),
                             objective=objective)
    design = plan.initial if policy.initial_design else 0
    study, created = ledger.open_study(plan.campaign, platform, objective.expression, url, sampler,
                                       directions(plan), initial_design=design)
    if created:
        study.set_user_attr("design_seed", plan.seed)
        state.rebuilt = ledger.rebuild_from_dataset(study, plan.campaign, plan.data_root, platform, objective)
        if state.rebuilt:
            log.warning("campaign %s: its ledger (Optuna study) was missing from %s; rebuilt it from the %d "
                        "recorded experiments, so it resumes where the dataset stops", plan.campaign, url,
                        len(state.rebuilt))
    previous = ledger.record_policy(study, plan.policy)
    if previous is not None:
        state.policy_before = previous
        log.warning("campaign %s: resumed with policy %s; it ran with %s before (the experiments so far stay "
                    "as they were)", plan.campaign, plan.policy, previous)
    def settle(check_missing: bool = False):  # trials that no process runs any more (a crash)
        return ledger.reconcile(study, plan.campaign, plan.data_root, objective, plan.in_flight,
                                record_failure=lambda trial, eid: _record_crashed(rigs[0], plan, trial, eid),
                                check_missing=check_missing)

    state.reconciled = settle(check_missing=True)
    if state.reconciled.missing:
        log.warning("campaign %s: %d finished trial(s) have no record in the dataset (%s); restore those files "
                    "from a backup. The ledger still holds their results", plan.campaign,
                    len(state.reconciled.missing), ", ".join(ledger.experiment_id_for(plan.campaign, n)
                                                             for n in state.reconciled.missing))
    planned = study.user_attrs.get("initial_design") or 0
    if planned:
        seed = study.user_attrs.get("design_seed", plan.seed)
        ledger.ensure_design(study, design_conditions(platform, planned, seed))
    with liveness.Heartbeat(study) as beat:
        loop = _Loop(study, plan, state, steps, objective, on_progress, log, confirm_refill, beat=beat, settle=settle)
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
                r.make_safe()
                r.release()
    if loop.fatal is not None:
        raise _resumable(loop.fatal, plan, len(ledger.finished(study)))
    _compact(plan, log, storage.compact_campaign)
    finished = sorted(ledger.finished(study), key=lambda t: t.number)
    if plan.target is not None:
        state.values = [tuple(t.values) if t.state == TrialState.COMPLETE else (math.nan,) * 3 for t in finished]
    else:
        state.values = [t.value if t.state == TrialState.COMPLETE else math.nan for t in finished]
    return state


def _compact(plan: CampaignPlan, log, how) -> None:
    """Compact the campaign's files (`storage.compact_if_due` or `compact_campaign`). A compaction
    that fails loses nothing (the loose files stay) and never stops a campaign: it is logged."""
    try:
        how(plan.data_root, plan.campaign)
    except (OSError, ArrowException, SdflInputError) as exc:
        log.warning("campaign %s: its files could not be compacted (%s); they stay as they are, and the next "
                    "run or `sdfl compact` tries again", plan.campaign, exc)


def _resumable(exc: BaseException, plan: CampaignPlan, done: int) -> BaseException:
    """A lab-not-ready stop, reworded to say where the campaign stands and how to go on."""
    if not isinstance(exc, LabNotReady):
        return exc
    message = (f"campaign {plan.campaign!r} stopped after {done} of {plan.budget} experiments: {exc}. "
               "Nothing recorded was lost; run the campaign again with the same name to resume it")
    return RefillNeeded(message, exc.short) if isinstance(exc, RefillNeeded) else type(exc)(message)


def directions(plan: CampaignPlan) -> list[str]:
    """The study's directions: one objective to maximise, or a target's three."""
    return list(targets.DIRECTIONS) if plan.target is not None else ["maximize"]


def target_vectors(study) -> np.ndarray:
    """Objective vectors of a target study's finished trials in trial order (NaN rows for failures)."""
    finished = sorted(ledger.finished(study), key=lambda t: t.number)
    return np.array([t.values if t.state == TrialState.COMPLETE else [math.nan] * 3 for t in finished],
                    dtype=float).reshape(-1, 3)


class _Loop:
    """The ask - run - tell loop, shared by the reactors of one campaign (ledger calls locked).

    Other campaign processes may draw from the same study at the same time (one per reactor, on
    several machines): the budget counts every process's running trials, a trial that no process
    runs any more is settled by whoever notices (`settle`), and a design point that two processes
    queued at once runs once.
    """

    ID_COLLISIONS_MAX = 100

    def __init__(self, study, plan, state, steps, objective, on_progress, log, confirm_refill=None,
                 beat: liveness.Heartbeat | None = None, settle=None):
        self.study, self.plan, self.state, self.steps = study, plan, state, steps
        self.objective, self.on_progress, self.log = objective, on_progress, log
        self.confirm_refill = confirm_refill
        self.beat, self.settle = beat, settle
        self.dangling: list = []
        self.stopped_by_budget = False
        self.url = ledger.storage_url(plan.data_root, plan.storage)
        self.lock = threading.Lock()
        self.running = 0
        self.stopped = False
        self.fatal: BaseException | None = None
        self.distributions = ledger.distributions(state.platform)

    def _next_trial(self):
        with self.lock:
            if self.stopped:
                return None
            self._set_aside_dangling()
            while True:
                if self.settle is not None:
                    self.settle()
                done, live = ledger.finished(self.study), self._live()
                if len(done) + len(live) < self.plan.budget:
                    break
                if self.running or not any(map(liveness.unclaimed, live)):
                    self.state.stopped_because = f"budget of {self.plan.budget} experiments reached"
                    return None
                # A trial no one has claimed yet: another process's ask that is about to claim it, or
                # one cut short, which counts as abandoned (and is set aside) UNCLAIMED_S after its start.
                time.sleep(1.0)
            if (self.plan.target_r2 is not None and not self.running
                    and _target_reached(self.study, self.state.platform, self.plan, self.state, len(done))):
                self.state.stopped_because = (f"cross-validated R^2 {self.state.cv_r2:.3f} >= target "
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
            for _ in range(self.ID_COLLISIONS_MAX):
                with liveness.proposal_lock(self.url, self.plan.campaign):  # one proposal at a time
                    trial = self.study.ask(self.distributions)
                try:
                    claimed = self._claim(trial)
                except BaseException:
                    self.dangling.append(trial)  # set aside at the next call, once the ledger answers again
                    raise
                if claimed is not None:
                    return claimed
                if self.stopped_by_budget:
                    return None
            raise SdflInputError(f"campaign {self.plan.campaign!r}: {self.ID_COLLISIONS_MAX} trial numbers in a row "
                                 "are already recorded in the dataset; the ledger and the dataset do not belong "
                                 "together (check --storage and --data-root)")

    def _claim(self, trial):
        """(trial, experiment id) once `trial` is this run's to conduct; None when it was set aside
        (a design point that runs elsewhere, an id the dataset already holds)."""
        if self._duplicate_design(trial):
            return None
        experiment_id = ledger.experiment_id_for(self.plan.campaign, trial.number)
        trial.set_user_attr("experiment_id", experiment_id)
        if storage.existing_record(self.plan.data_root, self.plan.campaign, experiment_id) is None:
            if self.beat is not None:
                self.beat.claim(trial)
            if self._beyond_budget(trial):  # another process took the last experiment meanwhile
                ledger.set_aside(self.study, trial, "not run: the budget was taken by other reactors")
                if self.beat is not None:
                    self.beat.release(trial)
                self.state.stopped_because = f"budget of {self.plan.budget} experiments reached"
                self.stopped_by_budget = True
                return None
            self.running += 1
            return trial, experiment_id
        # The dataset holds an experiment the ledger does not know: never overwrite it.
        ledger.set_aside(self.study, trial, f"experiment id {experiment_id} is already recorded in the "
                         "dataset (a record this ledger does not know); the trial number was skipped")
        self.log.warning("campaign %s: %s is already recorded; skipped that trial number",
                         self.plan.campaign, experiment_id)
        return None

    def _set_aside_dangling(self) -> None:
        """Trials asked for but not claimed because the ledger failed meanwhile: they never ran."""
        while self.dangling:
            trial = self.dangling[0]
            if trial.number not in {t.number for t in self.study.get_trials(deepcopy=False,
                                                                              states=(TrialState.RUNNING,))}:
                self.dangling.pop(0)
                continue
            ledger.set_aside(self.study, trial, "not run: the campaign ledger failed while it was claimed",
                             requeue="design_index" in trial.user_attrs)
            if self.beat is not None:
                self.beat.release(trial)
            self.dangling.pop(0)

    def _live(self) -> list:
        """The trials some process runs now (this one's and the others')."""
        return [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if not liveness.abandoned(t)]

    def _beyond_budget(self, trial) -> bool:
        """True when `trial` is not among the first `budget` claims: two processes that asked at the
        same moment agree which of them backs off (the one with the higher trial number)."""
        claims = sorted({t.number for t in [*ledger.finished(self.study), *self._live()]} | {trial.number})
        return trial.number in claims[self.plan.budget:]

    def _duplicate_design(self, trial) -> bool:
        """A design point another process queued too, and that already ran or runs under a lower
        trial number: told FAIL as not run (it spends no budget), not queued again."""
        index = trial.user_attrs.get("design_index")
        if index is None:
            return False
        ran = (TrialState.COMPLETE, TrialState.FAIL)
        twins = [t for t in self.study.get_trials(deepcopy=False)
                 if t.number != trial.number and t.user_attrs.get("design_index") == index
                 and not t.user_attrs.get("not_run")
                 and (t.state in ran or (t.state == TrialState.RUNNING and t.number < trial.number))]
        if not twins:
            return False
        trial.set_user_attr("not_run", True)
        trial.set_user_attr("failure_reason", f"design point {index} runs as trial {twins[0].number} (two campaign "
                            "processes planned the design at once)")
        self.study.tell(trial, state=TrialState.FAIL)
        return True

    def serve(self, rig: Reactor) -> None:
        """Run trials on `rig` until the campaign is done or this reactor cannot go on."""
        while (claimed := ledger.patiently(self._next_trial, self.log, "asking for the next condition")) is not None:
            trial, experiment_id = claimed
            try:
                go_on = self._run(rig, trial, experiment_id)
            finally:
                if self.beat is not None:
                    self.beat.release(trial)
            if not go_on:
                return
            _compact(self.plan, self.log, lambda root, campaign: storage.compact_if_due(root, campaign, finish=False))

    def _run(self, rig: Reactor, trial, experiment_id: str) -> bool:
        """Run one claimed trial and tell the study; False when this reactor must stop."""
        try:
            value, failure, row = _conduct(rig, self.plan, trial, experiment_id, self.objective, self.log)
        except LabNotReady as exc:
            with self.lock:
                ledger.set_aside(self.study, trial, f"not run: {type(exc).__name__}: {exc}")
                self.running -= 1
            if isinstance(exc, RefillNeeded) and self._refilled(rig, exc):
                return True
            self._stop(rig, exc, everyone=isinstance(exc, DataRootUnusable))
            return False
        except (FatalInstrumentError, InstrumentError) as exc:
            self._fail(trial, exc)
            self._stop(rig, exc, everyone=self.plan.target_r2 is not None)
            return False  # the rig is safe and the experiment recorded; a person must look at it
        except Exception as exc:  # the record could not be written, the ledger failed, or a bug
            self._fail(trial, exc)
            self._stop(rig, exc, everyone=True)
            return False
        def tell() -> None:
            if failure is not None:
                _tell_failure(self.study, trial, failure)
            else:
                ledger.tell_completed(self.study, trial, value, self.objective, row)

        with self.lock:
            self.running -= 1
            try:
                ledger.patiently(tell, self.log, f"recording trial {trial.number}")
                if failure is None:
                    self.log.info("trial %d (%s): %s = %s", trial.number, experiment_id,
                                  _what(self.objective), _show(value))
            except (ValueError, UpdateFinishedTrialError) as exc:
                # Settled by another process, which took it for abandoned (no heartbeat reached the
                # database for longer than the grace period): it read the same record from the dataset.
                self.log.warning("trial %d (%s) was settled by another campaign process meanwhile (%s); its "
                                 "record is in the dataset", trial.number, experiment_id, exc)
            if self.on_progress is not None:
                # The progress report reads the study too (the latest result): it waits for a
                # database restart as the counting does.
                done = ledger.patiently(lambda: len(ledger.finished(self.study)), self.log, "counting the trials")
                ledger.patiently(lambda: self.on_progress(done, self.plan.budget, self.study), self.log,
                                 "reporting progress")
        return True

    def _refilled(self, rig: Reactor, need: RefillNeeded) -> bool:
        """Ask for a refill; True when the syringes were refilled and the reactor can go on."""
        if self.confirm_refill is None:
            return False
        self.log.warning("reactor %s needs a refill (the rig is safe): %s", rig.name, need)
        if not self.confirm_refill(rig, need):
            return False
        self.log.info("reactor %s: syringes refilled (%s); the campaign goes on", rig.name, ", ".join(need.pumps))
        return True

    def _fail(self, trial, exc: BaseException) -> None:
        """Tell a trial FAIL with the reason; a ledger that fails here too is logged, not raised."""
        with self.lock:
            self.running -= 1
            try:
                _tell_failure(self.study, trial, exc)
            except Exception as tell_error:  # noqa: BLE001 - the first error is the one to report
                self.log.error("trial %d could not be told FAIL (%s); the next start settles it from the dataset",
                               trial.number, tell_error)

    def _stop(self, rig: Reactor, exc: BaseException, everyone: bool) -> None:
        """This reactor stops (and every reactor, when `everyone`); the first cause is raised at the end."""
        with self.lock:
            self.fatal = self.fatal or exc
            self.stopped = self.stopped or everyone
        self.log.error("reactor %s stopped: %s: %s", rig.name, type(exc).__name__, exc)


def _what(objective) -> str:
    return "(peak error nm, quality, FWHM)" if isinstance(objective, targets.TargetObjective) else objective.expression


def _show(value) -> str:
    return ", ".join(f"{v:.5g}" for v in np.atleast_1d(value))


def _conduct(reactor: Reactor, plan, trial, experiment_id, objective, log):
    """Run one trial's experiment: (objective value or vector, None, row) or (nan, why it has no
    value, row or None).

    Other failures propagate (the reactor is already safe and the experiment recorded).
    """
    try:
        row = reactor.conduct(condition=dict(trial.params), campaign=plan.campaign, experiment_id=experiment_id,
                              data_root=plan.data_root, seed=plan.seed, log=log)
    except SdflInputError as exc:  # a refused proposal is never run; record why and go on
        log.warning("trial %d not run: %s", trial.number, exc)
        return math.nan, exc, None
    value = objective(row)
    if not ledger.is_number(value):
        return math.nan, ValueError(f"objective {_what(objective)!r} is not a number for this run: {_show(value)}"), row
    return value, None, row


def _tell_failure(study, trial, exc: BaseException) -> None:
    trial.set_user_attr("failure_reason", f"{type(exc).__name__}: {exc}"[:2000])
    study.tell(trial, state=TrialState.FAIL)


def _record_crashed(reactor: Reactor, plan, trial, experiment_id: str) -> None:
    """A trial that was in flight when the process died: record it as crashed in the dataset."""
    platform = reactor.platform
    settings = features.FeatureSettings.from_config(platform.features)
    row = experiment_row(
        experiment_id=experiment_id, status="crashed", platform=platform, started_at=now_utc(),
        t_platform_start_s=reactor.now(), t_platform_end_s=reactor.now(), condition=dict(trial.params),
        failure_reason="interrupted: the campaign process stopped during this experiment", seed=plan.seed,
    )
    storage.write_or_rescue(row, [], storage.experiment_schema(platform, features.feature_columns(settings)),
                            plan.campaign, plan.data_root)


def _target_reached(study, platform, plan, state, n_done: int) -> bool:
    from tasks.surrogate import cross_validated_r2

    X, y = ledger.observations(study, platform)
    if len(y) < max(10, plan.initial) or n_done % plan.check_every:
        return False
    state.cv_r2 = cross_validated_r2(plan.surrogate, to_unit(platform, X), y, seed=plan.seed)
    return state.cv_r2 >= plan.target_r2


