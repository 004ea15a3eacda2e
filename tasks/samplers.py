"""Samplers: the campaign policies as Optuna samplers, next to Optuna's own as peers.

The policies a campaign offers are declared once, in `tasks.choices` (light, so the command line
and the forms can list them without numpy or Optuna); this module builds the sampler behind each
name (`build_sampler`). `PolicySampler` runs the surrogate policies of `tasks.proposal` (EI, UCB,
EPLT, MV, IVR, random) on a single-objective study; `TargetSampler` runs desirability-EI on a
target campaign's multi-objective study. Both are `ProposalSampler`s: running trials are pending
points (kriging believer), and enqueued trials (the initial design, reruns) are left alone.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import get_args

import numpy as np
import optuna
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import TrialState

from hardware.errors import SdflInputError
from hardware.platform import PlatformConfig
from tasks import choices
from tasks.choices import Policy, policy_help, policy_names, resolve_policy  # noqa: F401  (the registry)
from tasks.ledger import distributions, observations, target_observations
from tasks.proposal import POLICIES, PolicySettings, propose, propose_by_desirability, random_points
from tasks.surrogate import SurrogateKind, from_unit, to_unit

FAMILIES: tuple[str, ...] = get_args(choices.Family)
"""The kinds of campaign: optimize, explore, target."""
DEFAULT_POLICY: dict[str, str] = {family: policy_names(family)[0] for family in FAMILIES}
SAMPLERS: tuple[str, ...] = policy_names("optimize")
"""Every policy of a single-objective campaign (an explore campaign offers some of them)."""
TARGET_SAMPLERS: tuple[str, ...] = policy_names("target")


def trial_seed(campaign_seed: int, trial_number: int) -> int:
    """An independent random stream per (campaign seed, trial). `seed + trial` would give seeds
    1 and 2 the same draws one trial apart, so benchmark seeds would not be independent."""
    return int(np.random.SeedSequence([campaign_seed, trial_number]).generate_state(1)[0]) % 2**31


class ProposalSampler(BaseSampler):
    """What our policy samplers share; a subclass only says how to pick the next point (`pick`).

    The search space is the platform's parameters. Enqueued trials (the initial design, reruns:
    they carry fixed_params) are left alone, running trials are passed to `pick` as pending
    unit-cube points, and any parameter outside the relative space is drawn at random.
    """

    def __init__(self, platform: PlatformConfig, seed: int = 0, feasible=None):
        self.platform, self.seed = platform, seed
        self.feasible = feasible or (lambda u: True)
        self._fallback = RandomSampler(seed=seed)

    @abc.abstractmethod
    def pick(self, study: optuna.Study, trial, pending: np.ndarray) -> np.ndarray:
        """The next condition as a unit-cube point (d,); `pending` (n, d) holds the running ones."""

    def random_point(self, trial) -> np.ndarray:
        """A uniform random unit-cube point that keeps the rules, from this trial's own stream."""
        rng = np.random.default_rng(trial_seed(self.seed, trial.number))
        return random_points(len(self.platform.parameters), 1, rng, self.feasible)[0]

    def infer_relative_search_space(self, study, trial):
        return distributions(self.platform)

    def sample_relative(self, study, trial, search_space):
        if not search_space or "fixed_params" in trial.system_attrs:
            return {}
        values = from_unit(self.platform, self.pick(study, trial, self._pending(study, trial)))
        return {name: float(v) for name, v in zip(self.platform.parameter_names, values)}

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def _pending(self, study, trial) -> np.ndarray:
        """The other running trials' conditions as unit-cube points (n, d). A trial whose ask was cut
        short may hold part of a condition: it is not running anything, and is left out."""
        names = self.platform.parameter_names
        running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                   if t.number != trial.number and all(n in t.params for n in names)]
        if not running:
            return np.empty((0, len(names)))
        return to_unit(self.platform, [[t.params[n] for n in names] for t in running])


class PolicySampler(ProposalSampler):
    """The surrogate policies of `tasks.proposal` (MV, IVR, EI, UCB, EPLT, random) on a study.

    Trains the surrogate on the study's completed trials (plus prior data, if any) and proposes
    one point per trial; a random point that keeps the rules until there are two observations.
    """

    def __init__(self, platform: PlatformConfig, policy: str, surrogate: SurrogateKind = "gp", seed: int = 0,
                 prior: tuple[np.ndarray, np.ndarray] | None = None,
                 settings: PolicySettings = PolicySettings(), feasible=None):
        if policy not in POLICIES:
            raise SdflInputError(f"unknown policy {policy!r} for PolicySampler; choose one of "
                                 f"{list(POLICIES)} (build_sampler builds Optuna's own samplers)")
        super().__init__(platform, seed, feasible)
        self.policy, self.surrogate, self.prior, self.settings = policy, surrogate, prior, settings
        self._model = None
        self.last_model = None

    def pick(self, study, trial, pending):
        if self.policy == "random":
            return self.random_point(trial)
        X, y = observations(study, self.platform)
        has_prior = self.prior is not None and len(self.prior[1]) >= 2
        if len(y) < 2 and not has_prior:
            return self.random_point(trial)  # not enough to train on yet
        U = to_unit(self.platform, X) if len(y) else np.empty((0, len(self.platform.parameters)))
        points, model = propose(self.policy, U, y, surrogate=self.surrogate,
                                seed=trial_seed(self.seed, trial.number), pending=pending, prior=self.prior,
                                feasible=self.feasible, settings=self.settings, model=self._model)
        self._model = self.last_model = model
        return points[0]


class TargetSampler(ProposalSampler):
    """Desirability-EI for a target campaign (multi-objective study).

    One surrogate each for the peak (nm), the quality and the FWHM, trained on the completed
    trials; the next condition maximises the expected improvement of the target's desirability
    (`tasks.proposal.propose_by_desirability`). A random point that keeps the rules until there
    are two observations (or always, for policy "random").
    """

    def __init__(self, platform: PlatformConfig, objective, policy: str = "desirability-ei",
                 surrogate: SurrogateKind = "gp", seed: int = 0, feasible=None):
        if policy not in ("desirability-ei", "random"):
            raise SdflInputError(f"unknown policy {policy!r} for TargetSampler; "
                                 "choose 'desirability-ei' or 'random'")
        super().__init__(platform, seed, feasible)
        self.objective, self.policy, self.surrogate = objective, policy, surrogate
        self.last_models = None

    def pick(self, study, trial, pending):
        from tasks.targets import MeasuredDesirability, desirability_for, errors_from_peaks

        if self.policy == "random":
            return self.random_point(trial)
        X, Y = target_observations(study, self.platform)
        if len(Y) < 2:
            return self.random_point(trial)
        target = self.objective.target
        desirability = MeasuredDesirability(desirability_for(target, errors_from_peaks(Y, target)), target)
        points, self.last_models = propose_by_desirability(
            to_unit(self.platform, X), Y, desirability, surrogate=self.surrogate,
            seed=trial_seed(self.seed, trial.number), pending=pending, feasible=self.feasible)
        return points[0]


# --- the sampler behind each policy name -----------------------------------------------------------


def _surrogate_policy(name, platform, surrogate, seed, *, prior, settings, feasible, objective):
    return PolicySampler(platform, name, surrogate, seed, prior, settings, feasible)


def _desirability_policy(name, platform, surrogate, seed, *, prior, settings, feasible, objective):
    if objective is None:
        raise ValueError(f"policy {name!r} needs the target objective (objective=...)")
    return TargetSampler(platform, objective, name, surrogate, seed, feasible)


def _optuna_tpe(name, platform, surrogate, seed, *, prior, settings, feasible, objective):
    """Optuna's TPE; on a target study it reads the hard limits from the trials' constraints."""
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=0, multivariate=True)


def _optuna_gp(name, platform, surrogate, seed, *, prior, settings, feasible, objective):
    try:
        import torch  # noqa: F401
    except ImportError:
        raise SdflInputError("policy 'gp' is Optuna's GPSampler, which needs torch: install the gp extra "
                             "(make gp, or pip install -e '.[gp]' in the sdfl folder: a CPU build of torch)") from None
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=0)


BUILDERS: dict[str, Callable[..., BaseSampler]] = {
    **{name: _surrogate_policy for name in POLICIES},  # random too: the same draws in every kind of campaign
    "desirability-ei": _desirability_policy,
    "tpe": _optuna_tpe,
    "gp": _optuna_gp,
}
"""How each declared policy (`tasks.choices.POLICIES`) becomes a sampler."""


def build_sampler(policy: Policy | str, family: str, platform: PlatformConfig, surrogate: SurrogateKind,
                  seed: int, *, prior: tuple[np.ndarray, np.ndarray] | None = None,
                  settings: PolicySettings = PolicySettings(), feasible=None, objective=None) -> BaseSampler:
    """The Optuna sampler that runs `policy` in a campaign of `family` (optimize, explore, target).

    `prior` (unit-cube X, y) and `settings` (kappa, xi) serve the surrogate policies; a target
    campaign passes its `objective` (a `TargetObjective`). Raises SdflInputError for a policy the
    family does not offer, or for gp without torch.
    """
    policy = resolve_policy(policy if isinstance(policy, str) else policy.name, family)
    return BUILDERS[policy.name](policy.name, platform, surrogate, seed, prior=prior, settings=settings,
                                 feasible=feasible, objective=objective)


def make_sampler(name: str, platform: PlatformConfig, surrogate: SurrogateKind, seed: int,
                 prior=None, settings: PolicySettings = PolicySettings(), feasible=None) -> BaseSampler:
    """The sampler of a single-objective campaign: any policy of `SAMPLERS`."""
    return build_sampler(name, "optimize", platform, surrogate, seed, prior=prior, settings=settings,
                         feasible=feasible)


def make_target_sampler(name: str, platform: PlatformConfig, objective, surrogate: SurrogateKind, seed: int,
                        feasible=None) -> BaseSampler:
    """The sampler of a target campaign: desirability-EI, Optuna's multi-objective TPE, or random."""
    return build_sampler(name, "target", platform, surrogate, seed, feasible=feasible, objective=objective)
