"""Samplers: the campaign policies as Optuna samplers, next to Optuna's own as peers.

`PolicySampler` runs the paper's policies (MV, EI, UCB, EPLT, random, and IVR) on a surrogate
trained on the study's completed trials; `TargetSampler` runs a target campaign's policies on
its multi-objective study. Running trials are pending points (kriging believer), and enqueued
trials (the initial design, reruns) are left alone.
"""

from __future__ import annotations

import numpy as np
import optuna
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import TrialState

from hardware.errors import SdflInputError
from hardware.platform import PlatformConfig
from tasks.ledger import distributions, observations, target_observations
from tasks.proposal import POLICIES, PolicySettings, propose, propose_by_desirability, random_points
from tasks.surrogate import SurrogateKind, from_unit, to_unit

SAMPLERS = (*POLICIES, "tpe", "gp")
TARGET_SAMPLERS = ("desirability-ei", "random", "tpe")


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
