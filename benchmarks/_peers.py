"""The optimizers of the comparison, each behind one small ask/tell interface on the unit cube.

Ours (`tasks.proposal.propose`) and its peers at their libraries' defaults: Optuna's GPSampler and
TPE, a standard BoTorch loop (SingleTaskGP + qLogNoisyExpectedImprovement), scikit-optimize's GP
optimizer, and random points. Every optimizer starts from the same initial design, told to it as
measured points; then it asks for one point at a time. A peer whose library is not installed is
named by `missing()` and skipped by the benchmark.
"""

from __future__ import annotations

import abc
import importlib.util
import time
from dataclasses import dataclass, field

import numpy as np

PEERS: dict[str, tuple[str, ...]] = {
    "optuna-gp": ("optuna", "torch"),
    "botorch-qlognei": ("botorch", "gpytorch", "torch"),
    "skopt-gp": ("skopt",),
    "optuna-tpe": ("optuna",),
    "random": (),
}
"""Each peer and the modules it needs."""


def missing(name: str) -> list[str]:
    """The modules `name` needs that are not installed (empty: it can run)."""
    return [module for module in PEERS.get(name, ()) if importlib.util.find_spec(module) is None]


@dataclass
class Optimizer(abc.ABC):
    """Ask/tell on the unit cube of d inputs; maximises. Subclasses implement `_ask`."""

    d: int
    seed: int
    X: list = field(default_factory=list)
    y: list = field(default_factory=list)
    cpu_s: list = field(default_factory=list)
    """CPU seconds of each `ask` (the proposal, model fit included)."""
    cpu_in_tell: float = 0.0
    """CPU seconds an optimizer spent in `tell` since the last ask (one that fits there), counted
    with the next proposal."""

    def tell(self, u: np.ndarray, value: float) -> None:
        self.X.append(np.asarray(u, dtype=float))
        self.y.append(float(value))

    def ask(self) -> np.ndarray:
        started = time.process_time()
        u = np.clip(np.asarray(self._ask(), dtype=float).reshape(self.d), 0.0, 1.0)
        self.cpu_s.append(time.process_time() - started + self.cpu_in_tell)
        self.cpu_in_tell = 0.0
        return u

    @abc.abstractmethod
    def _ask(self) -> np.ndarray:
        """The next unit-cube point, from what was told so far."""


@dataclass
class Ours(Optimizer):
    """sdfl's policies (`tasks.proposal.propose`): `policy` and its options."""

    policy: str = "ei"
    options: dict = field(default_factory=dict)

    def _ask(self):
        from tasks.proposal import propose
        from tasks.samplers import trial_seed

        points, _ = propose(self.policy, np.array(self.X), np.array(self.y), seed=trial_seed(self.seed, len(self.y)),
                            **self.options)
        return points[0]


@dataclass
class RandomPoints(Optimizer):
    def _ask(self):
        return np.random.default_rng([self.seed, len(self.y)]).random(self.d)


@dataclass
class OptunaPeer(Optimizer):
    """An Optuna sampler on a study whose first trials are the design (added as complete)."""

    kind: str = "gp"

    def __post_init__(self):
        import optuna
        from optuna.distributions import FloatDistribution

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._space = {f"x{i}": FloatDistribution(0.0, 1.0) for i in range(self.d)}
        self._study = None
        self._trial = None

    def _sampler(self, design_size: int):
        import optuna

        if self.kind == "gp":
            return optuna.samplers.GPSampler(seed=self.seed, n_startup_trials=design_size)
        return optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=design_size)

    def tell(self, u, value):
        super().tell(u, value)
        if self._study is None:
            return  # still the design: added as a whole at the first ask
        self._study.tell(self._trial, float(value))

    def _ask(self):
        import optuna

        if self._study is None:
            self._study = optuna.create_study(direction="maximize", sampler=self._sampler(len(self.y)))
            for x, value in zip(self.X, self.y):
                self._study.add_trial(optuna.trial.create_trial(
                    params={f"x{i}": float(v) for i, v in enumerate(x)}, distributions=self._space, value=value))
        self._trial = self._study.ask(self._space)
        return np.array([self._trial.params[f"x{i}"] for i in range(self.d)])


@dataclass
class BoTorchPeer(Optimizer):
    """The loop of BoTorch's tutorials: a SingleTaskGP (standardised outcome, default priors) fitted
    by marginal likelihood, qLogNoisyExpectedImprovement on the measured points, optimize_acqf with
    10 restarts from 512 raw samples."""

    def _ask(self):
        import torch
        from botorch.acquisition.logei import qLogNoisyExpectedImprovement
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from botorch.models.transforms.outcome import Standardize
        from botorch.optim import optimize_acqf
        from gpytorch.mlls import ExactMarginalLogLikelihood

        torch.manual_seed(self.seed * 100_003 + len(self.y))
        train_X = torch.tensor(np.array(self.X), dtype=torch.double)
        train_Y = torch.tensor(np.array(self.y), dtype=torch.double).unsqueeze(-1)
        model = SingleTaskGP(train_X, train_Y, outcome_transform=Standardize(m=1))
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        acquisition = qLogNoisyExpectedImprovement(model, X_baseline=train_X, prune_baseline=True)
        bounds = torch.stack([torch.zeros(self.d, dtype=torch.double), torch.ones(self.d, dtype=torch.double)])
        candidate, _ = optimize_acqf(acquisition, bounds=bounds, q=1, num_restarts=10, raw_samples=512)
        return candidate.detach().numpy()[0]


@dataclass
class SkoptPeer(Optimizer):
    """scikit-optimize's Optimizer with its GP and default acquisition (gp_hedge); it minimises."""

    def _ask(self):
        if not hasattr(self, "_opt"):
            from skopt import Optimizer as SkoptOptimizer

            self._opt = SkoptOptimizer([(0.0, 1.0)] * self.d, base_estimator="GP", n_initial_points=0,
                                       random_state=self.seed)
            self._opt.tell([list(map(float, x)) for x in self.X], [-v for v in self.y])
        return np.array(self._opt.ask())

    def tell(self, u, value):
        super().tell(u, value)
        if hasattr(self, "_opt"):  # skopt fits its model and picks the next point here, not in ask
            started = time.process_time()
            self._opt.tell(list(map(float, u)), -float(value))
            self.cpu_in_tell += time.process_time() - started


def check_name(name: str) -> None:
    """Refuse an optimizer name `make` would not know, saying what the names are (SystemExit)."""
    from dataclasses import fields

    from tasks.proposal import POLICIES, PolicySettings

    flags = [f.name for f in fields(PolicySettings) if f.type in (bool, "bool")]
    if name.startswith("sdfl-"):
        policy, *wrong = name.removeprefix("sdfl-").split("+")
        wrong = [flag for flag in wrong if flag not in flags]
        if policy in POLICIES and not wrong:
            return
    elif name in PEERS:
        return
    raise SystemExit(f"--optimizers: no optimizer named {name!r}; choose from {', '.join(PEERS)} or "
                     f"sdfl-<policy>[+<flag>] with a policy of {', '.join(POLICIES)} and flags "
                     f"{', '.join(flags)}")


def make(name: str, d: int, seed: int) -> Optimizer:
    """The optimizer called `name`: a peer of PEERS, or ours as "sdfl-<policy>"."""
    if name.startswith("sdfl-"):  # sdfl-<policy>[+<setting>...]: a PolicySettings flag switched on
        from tasks.proposal import PolicySettings

        policy, *flags = name.removeprefix("sdfl-").split("+")
        options = {"settings": PolicySettings(**dict.fromkeys(flags, True))} if flags else {}
        return Ours(d, seed, policy=policy, options=options)
    if name == "random":
        return RandomPoints(d, seed)
    if name == "optuna-gp":
        return OptunaPeer(d, seed, kind="gp")
    if name == "optuna-tpe":
        return OptunaPeer(d, seed, kind="tpe")
    if name == "botorch-qlognei":
        return BoTorchPeer(d, seed)
    if name == "skopt-gp":
        return SkoptPeer(d, seed)
    raise ValueError(f"unknown optimizer {name!r}: one of {', '.join(PEERS)} or sdfl-<policy>[+<flag>]")


def run(problem, name: str, seed: int, design: np.ndarray, budget: int) -> dict:
    """One optimizer on one problem and seed: the design, then asks up to `budget` experiments.
    Returns the measured values, the TRUE value at the best measured point so far after each
    experiment, and the CPU seconds of each proposal."""
    optimizer = make(name, problem.d, seed)
    points = []
    for k, u in enumerate(design):
        value = float(problem.measure(u[None, :], seed, k)[0])
        optimizer.tell(u, value)
        points.append(u)
    for k in range(len(design), budget):
        u = optimizer.ask()
        optimizer.tell(u, float(problem.measure(u[None, :], seed, k)[0]))
        points.append(u)
    measured = np.array(optimizer.y)
    truth = problem.truth(np.array(points))
    best_so_far = np.maximum.accumulate(measured)
    leader = np.maximum.accumulate(np.where(measured >= best_so_far, np.arange(len(measured)), 0))
    return {"problem": problem.name, "optimizer": name, "seed": seed, "measured": measured,
            "truth_best": truth[leader], "best_measured": best_so_far, "cpu_s": np.array(optimizer.cpu_s)}
