"""The ledger: Optuna studies record every trial of a campaign (ask/tell, persistent storage).

One study per campaign, in an SQLite file under the data root by default or any SQLAlchemy URL.
The paper's policies run as a custom Optuna sampler (`PolicySampler`); Optuna's TPE and GP
samplers are peers. A target campaign's study is multi-objective (peak error, quality, FWHM:
see `tasks/targets.py`); its policies run as `TargetSampler`, with Optuna's multi-objective TPE
as the peer. The Parquet dataset and the study together are the campaign's state: `reconcile`
settles the trials a crash left running, so a campaign resumes where it stopped.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import FloatDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

from hardware.errors import SdflInputError
from hardware.platform import PlatformConfig
from tasks.proposal import POLICIES, PolicySettings, propose, propose_by_desirability, random_points
from tasks.storage import data_root, experiment_path, read_experiments
from tasks.surrogate import SurrogateKind, from_unit, to_unit

SAMPLERS = (*POLICIES, "tpe", "gp")
TARGET_SAMPLERS = ("desirability-ei", "random", "tpe")
optuna.logging.set_verbosity(optuna.logging.WARNING)


def storage_url(root: str | os.PathLike | None = None, url: str | None = None) -> str:
    """The Optuna storage: `url` if given, else an SQLite file under the data root."""
    if url:
        return url
    path = data_root(root) / "optuna.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def distributions(platform: PlatformConfig) -> dict[str, FloatDistribution]:
    return {p.name: FloatDistribution(p.low, p.high) for p in platform.parameters}


def space_signature(platform: PlatformConfig) -> list[list]:
    return [[p.name, p.low, p.high] for p in platform.parameters]


def experiment_id_for(campaign: str, trial_number: int) -> str:
    return f"{campaign}-t{trial_number:04d}"


def trial_seed(campaign_seed: int, trial_number: int) -> int:
    """An independent random stream per (campaign seed, trial). `seed + trial` would give seeds
    1 and 2 the same draws one trial apart, so benchmark seeds would not be independent."""
    return int(np.random.SeedSequence([campaign_seed, trial_number]).generate_state(1)[0]) % 2**31


class PolicySampler(BaseSampler):
    """The paper's policies (MV, EI, UCB, EPLT, random) as an Optuna sampler.

    Trains the surrogate on the study's completed trials (plus prior data, if any), treats
    running trials as pending (kriging believer) and proposes one point per trial. Enqueued
    trials (the initial design) are left alone.
    """

    def __init__(self, platform: PlatformConfig, policy: str, surrogate: SurrogateKind = "gp", seed: int = 0,
                 prior: tuple[np.ndarray, np.ndarray] | None = None, settings: PolicySettings = PolicySettings(),
                 feasible=None):
        if policy not in POLICIES:
            raise SdflInputError(f"unknown policy {policy!r}; choose one of {SAMPLERS}")
        self.platform, self.policy, self.surrogate, self.seed = platform, policy, surrogate, seed
        self.prior, self.settings = prior, settings
        self.feasible = feasible or (lambda u: True)
        self._fallback = RandomSampler(seed=seed)
        self._model = None
        self.last_model = None

    def infer_relative_search_space(self, study, trial):
        return distributions(self.platform)

    def sample_relative(self, study, trial, search_space):
        if not search_space or "fixed_params" in trial.system_attrs:
            return {}
        X, y = observations(study, self.platform)
        has_prior = self.prior is not None and len(self.prior[1]) >= 2
        policy = self.policy
        if policy != "random" and len(y) < 2 and not has_prior:
            policy = "random"  # not enough to train on yet: a random point that keeps the rules
        running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                   if t.number != trial.number and t.params]
        pending = to_unit(self.platform, [[t.params[n] for n in self.platform.parameter_names] for t in running]) \
            if running else None
        points, model = propose(policy, to_unit(self.platform, X) if len(y) else np.empty((0, len(search_space))),
                                y, surrogate=self.surrogate, seed=trial_seed(self.seed, trial.number), pending=pending,
                                prior=self.prior, feasible=self.feasible, settings=self.settings, model=self._model)
        if model is not None:
            self._model = self.last_model = model
        values = from_unit(self.platform, points[0])
        return {name: float(v) for name, v in zip(self.platform.parameter_names, values)}

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)


class TargetSampler(BaseSampler):
    """Our policies for a target campaign (multi-objective study) as an Optuna sampler.

    "desirability-ei": one surrogate each for the peak (nm), the quality and the FWHM, trained
    on the completed trials; the next condition maximises the expected improvement of the
    target's desirability (`tasks.proposal.propose_by_desirability`). "random": a uniform random
    point that keeps the rules. Running trials are pending; enqueued trials are left alone.
    """

    def __init__(self, platform: PlatformConfig, objective, policy: str = "desirability-ei",
                 surrogate: SurrogateKind = "gp", seed: int = 0, feasible=None):
        if policy not in TARGET_SAMPLERS or policy == "tpe":
            raise SdflInputError(f"unknown target policy {policy!r}; choose one of {TARGET_SAMPLERS}")
        self.platform, self.objective, self.policy = platform, objective, policy
        self.surrogate, self.seed = surrogate, seed
        self.feasible = feasible or (lambda u: True)
        self._fallback = RandomSampler(seed=seed)
        self.last_models = None

    def infer_relative_search_space(self, study, trial):
        return distributions(self.platform)

    def sample_relative(self, study, trial, search_space):
        from tasks.targets import MeasuredDesirability, desirability_for, errors_from_peaks

        if not search_space or "fixed_params" in trial.system_attrs:
            return {}
        X, Y = target_observations(study, self.platform)
        # one independent stream per (campaign seed, trial): seed + trial would give seeds 1 and 2
        # the same points one trial apart
        rng_seed = trial_seed(self.seed, trial.number)
        d = len(self.platform.parameters)
        if self.policy == "random" or len(Y) < 2:
            point = random_points(d, 1, np.random.default_rng(rng_seed), self.feasible)[0]
        else:
            running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                       if t.number != trial.number and t.params]
            pending = to_unit(self.platform, [[t.params[n] for n in self.platform.parameter_names]
                                              for t in running]) if running else None
            target = self.objective.target
            desirability = MeasuredDesirability(desirability_for(target, errors_from_peaks(Y, target)), target)
            points, self.last_models = propose_by_desirability(
                to_unit(self.platform, X), Y, desirability, surrogate=self.surrogate, seed=rng_seed,
                pending=pending, feasible=self.feasible)
            point = points[0]
        values = from_unit(self.platform, point)
        return {name: float(v) for name, v in zip(self.platform.parameter_names, values)}

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)


def make_target_sampler(name: str, platform: PlatformConfig, objective, surrogate: SurrogateKind, seed: int,
                        feasible=None) -> BaseSampler:
    """The sampler of a target campaign: ours, random, or Optuna's multi-objective TPE (which reads
    the hard limits from the trials' constraints)."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=0, multivariate=True)
    if name in TARGET_SAMPLERS:
        return TargetSampler(platform, objective, name, surrogate, seed, feasible)
    raise SdflInputError(f"unknown target policy {name!r}; choose one of {list(TARGET_SAMPLERS)}")


def make_sampler(name: str, platform: PlatformConfig, surrogate: SurrogateKind, seed: int,
                 prior=None, settings: PolicySettings = PolicySettings(), feasible=None) -> BaseSampler:
    if name in POLICIES:
        return PolicySampler(platform, name, surrogate, seed, prior, settings, feasible)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=0, multivariate=True)
    if name == "gp":
        try:
            import torch  # noqa: F401
        except ImportError:
            raise SdflInputError("policy 'gp' is Optuna's GPSampler, which needs torch: "
                                 "pip install 'sdfl[gp]' (or torch==2.13.0 from the local disk)") from None
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=0)
    raise SdflInputError(f"unknown policy {name!r}; choose one of {SAMPLERS}")


def open_study(campaign: str, platform: PlatformConfig, objective: str, storage: str,
               sampler: BaseSampler, directions: Sequence[str] | None = None) -> tuple[optuna.Study, bool]:
    """Create the campaign's study or load it (checking it is the same space and objective).

    `directions`: one per objective for a multi-objective study (a target campaign); default a
    single objective to maximise. Returns (study, created).
    """
    directions = list(directions or ["maximize"])
    existing = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    if campaign not in existing:
        study = optuna.create_study(study_name=campaign, storage=storage, sampler=sampler,
                                    directions=directions, load_if_exists=True)
        study.set_user_attr("platform", platform.platform.name)
        study.set_user_attr("space", space_signature(platform))
        study.set_user_attr("objective", objective)
        return study, True
    study = optuna.load_study(study_name=campaign, storage=storage, sampler=sampler)
    attrs = study.user_attrs
    same_directions = [d.name.lower() for d in study.directions] == directions
    if attrs.get("space") != space_signature(platform) or attrs.get("objective") != objective or not same_directions:
        raise SdflInputError(
            f"campaign {campaign!r} already exists with platform {attrs.get('platform')!r}, objective "
            f"{attrs.get('objective')!r} and another parameter space; resume it with the same settings or "
            "choose a new campaign name"
        )
    return study, False


def observations(study: optuna.Study, platform: PlatformConfig) -> tuple[np.ndarray, np.ndarray]:
    """Completed trials as (X in parameter units, y)."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    names = platform.parameter_names
    X = np.array([[t.params[n] for n in names] for t in done], dtype=float).reshape(-1, len(names))
    y = np.array([t.value for t in done], dtype=float)
    return X, y


def target_observations(study: optuna.Study, platform: PlatformConfig) -> tuple[np.ndarray, np.ndarray]:
    """Completed trials of a target study as (X in parameter units, Y = (peak nm, quality, FWHM))."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values is not None and len(t.values) == 3 and "peak_nm" in t.user_attrs]
    names = platform.parameter_names
    X = np.array([[t.params[n] for n in names] for t in done], dtype=float).reshape(-1, len(names))
    Y = np.array([[t.user_attrs["peak_nm"], t.values[1], t.values[2]] for t in done], dtype=float).reshape(-1, 3)
    return X, Y


def tell_completed(study: optuna.Study, trial, values, objective=None, row: dict | None = None) -> None:
    """Tell a finished experiment's value(s); a target objective first annotates the trial with
    its measured peak (user attribute) and its hard limits (Optuna constraints)."""
    annotate = getattr(objective, "annotations", None)
    if annotate is not None and row is not None:
        attrs, constraints = annotate(row)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        for key, value in constraints.items():
            trial.set_constraint(key, value)
    study.tell(trial, values)


def is_number(values) -> bool:
    """A value, or every value of a vector, is a finite number."""
    return all(math.isfinite(v) for v in np.atleast_1d(np.asarray(values, dtype=float)))


def finished(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))


@dataclass
class Reconciled:
    completed: list[int]
    failed: list[int]
    rerun: list[int]


def reconcile(study: optuna.Study, campaign: str, root, objective_fn, in_flight: str = "fail",
              record_failure=None) -> Reconciled:
    """Settle trials left RUNNING by a crash, from what the dataset says happened.

    - a completed experiment row: told COMPLETE with its objective, a single value or a target's
      vector (it finished; the tell was lost);
    - a failed row: told FAIL;
    - no row: the experiment was in flight; `record_failure(trial)` writes it as crashed, the
      trial is told FAIL, and with in_flight="rerun" its condition is queued again.
    """
    if in_flight not in ("fail", "rerun"):
        raise SdflInputError(f"in_flight must be 'fail' or 'rerun', got {in_flight!r}")
    rows = read_experiments(root, campaign)
    by_id = {r["experiment_id"]: r for r in rows.to_dict(orient="records")} if not rows.empty else {}
    out = Reconciled([], [], [])
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        experiment_id = trial.user_attrs.get("experiment_id") or experiment_id_for(campaign, trial.number)
        row = by_id.get(experiment_id)
        # A still-running trial can be reopened by id to annotate it before it is told.
        handle = optuna.trial.Trial(study, trial._trial_id)
        if row is not None and row["status"] == "completed":
            values = objective_fn(row)
            if is_number(values):
                tell_completed(study, handle, values, objective_fn, row)
                out.completed.append(trial.number)
                continue
            handle.set_user_attr("failure_reason", "the recorded experiment gives no number for the objective")
        else:
            if row is None and record_failure is not None:
                record_failure(trial, experiment_id)
            handle.set_user_attr("failure_reason", "interrupted: the process stopped mid-experiment")
        study.tell(trial.number, state=TrialState.FAIL)
        out.failed.append(trial.number)
        if in_flight == "rerun" and trial.params and (row is None or row["status"] != "completed"):
            study.enqueue_trial(dict(trial.params), user_attrs={"rerun_of": trial.number})
            out.rerun.append(trial.number)
    return out


def prior_from_campaign(root, campaign: str, platform: PlatformConfig, objective_fn) -> tuple[np.ndarray, np.ndarray]:
    """Completed experiments of an earlier campaign as (X, y), checked against this space."""
    rows = read_experiments(root, campaign)
    if rows.empty:
        raise SdflInputError(f"prior campaign {campaign!r} has no experiments under {data_root(root)}")
    missing = [n for n in platform.parameter_names if n not in rows.columns]
    if missing:
        raise SdflInputError(f"prior campaign {campaign!r} comes from a different parameter space: it has no "
                             f"{missing}; the space is {platform.describe_space()}")
    rows = rows[rows["status"] == "completed"]
    X = rows[platform.parameter_names].to_numpy(dtype=float)
    low = np.array([p.low for p in platform.parameters])
    high = np.array([p.high for p in platform.parameters])
    if np.any(X < low - 1e-9) or np.any(X > high + 1e-9):
        raise SdflInputError(f"prior campaign {campaign!r} has conditions outside this space "
                             f"({platform.describe_space()}); it comes from a different parameter space")
    y = np.array([objective_fn(r) for r in rows.to_dict(orient="records")], dtype=float)
    keep = np.isfinite(y)
    return X[keep], y[keep]


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """The study as a table (number, state, value, params, experiment id)."""
    return study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs"))


def existing_experiment(root, campaign: str, experiment_id: str) -> bool:
    return experiment_path(data_root(root), campaign, experiment_id).exists()
