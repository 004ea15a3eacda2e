"""Surrogate models of an objective over the parameter space: mean and uncertainty.

Inputs are scaled to the unit cube of the platform's bounds (each X_i = (x - low) / (high - low),
the dimensionless form the policies work in); outputs are standardised inside each model.
- `EnsembleMLP`: bootstrap members of scikit-learn MLPs, as in the paper (ensemble neural
  network); the spread of the members is the uncertainty.
- `GaussianProcess`: an anisotropic Matern-5/2 kernel plus white noise, its hyperparameters
  the most probable under moderate priors (`HyperPrior`), fitted from scratch with restarts at
  every retrain below 100 points. Warm-starting from the previous fit was cheaper but
  let the hyperparameters learned from the first few points stick: on the virtual lab it cost IVR
  about 0.1 of R^2 at 30 points and EI several experiments to 95 % of the optimum. From 100 points
  on, the hyperparameters are optimised again only when the data has grown by a fifth, so the
  cost of a proposal does not grow with the lab's history as the optimisation would.
"""

from __future__ import annotations

import hashlib
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
from sklearn.neural_network import MLPRegressor

from hardware.platform import PlatformConfig
from tasks.threads import single_threaded

SurrogateKind = Literal["gp", "ensemble"]
PRIORS: tuple[str, ...] = ("moderate", "wide")
"""The kinds of `HyperPrior` over a GP's hyperparameters; the first is the default."""


class Surrogate(Protocol):
    def fit(self, X: np.ndarray, y: np.ndarray) -> Surrogate:
        ...

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation at unit-cube points X (n, d)."""
        ...


def bounds(platform: PlatformConfig) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([p.low for p in platform.parameters]), np.array([p.high for p in platform.parameters]))


def to_unit(platform: PlatformConfig, X: np.ndarray) -> np.ndarray:
    low, high = bounds(platform)
    return (np.asarray(X, dtype=float) - low) / (high - low)


def from_unit(platform: PlatformConfig, U: np.ndarray) -> np.ndarray:
    low, high = bounds(platform)
    return low + np.clip(np.asarray(U, dtype=float), 0.0, 1.0) * (high - low)


def _standardise(y: np.ndarray) -> tuple[np.ndarray, float, float]:
    mean, scale = float(np.mean(y)), float(np.std(y)) or 1.0
    return (y - mean) / scale, mean, scale


@dataclass
class EnsembleMLP:
    """Bootstrap ensemble of small MLPs; uncertainty = spread of the members."""

    members: int = 10
    hidden: tuple[int, ...] = (32, 32)
    alpha: float = 1e-3
    seed: int = 0
    models: list = field(default_factory=list, repr=False)
    _y: tuple[float, float] = (0.0, 1.0)
    out_of_bag_residuals: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    """y_i minus the mean of the members that did not see point i (about a third of them: each
    trains on a bootstrap sample); NaN where every member saw it."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> EnsembleMLP:
        X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=float)
        ys, mean, scale = _standardise(y)
        rng = np.random.default_rng(self.seed)
        self.models = []
        out_of_bag = [[] for _ in range(len(X))]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for member in range(self.members):
                rows = rng.integers(0, len(X), len(X)) if len(X) > 3 else np.arange(len(X))
                net = MLPRegressor(hidden_layer_sizes=self.hidden, solver="lbfgs", alpha=self.alpha,
                                   max_iter=1000, random_state=self.seed * 1000 + member)
                self.models.append(net.fit(X[rows], ys[rows]))
                unseen = np.setdiff1d(np.arange(len(X)), rows)
                for i, value in zip(unseen, net.predict(X[unseen]) if len(unseen) else []):
                    out_of_bag[i].append(value)
        self._y = (mean, scale)
        self.out_of_bag_residuals = np.array([scale * (ys[i] - np.mean(v)) if v else np.nan
                                              for i, v in enumerate(out_of_bag)])
        return self

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        preds = np.stack([m.predict(np.atleast_2d(X)) for m in self.models])
        mean, scale = self._y
        return mean + scale * preds.mean(axis=0), scale * preds.std(axis=0)

    def covariance(self, X: np.ndarray) -> np.ndarray:
        """Covariance of the predictions at X (n, n), from the spread of the members."""
        preds = np.stack([m.predict(np.atleast_2d(X)) for m in self.models])
        return self._y[1] ** 2 * np.cov(preds, rowvar=False, bias=True)

    def noise_variance(self) -> float:
        """The members model no measurement noise: a small floor keeps ratios finite."""
        return 1e-4 * self._y[1] ** 2


@dataclass
class GaussianProcess:
    """GP with an anisotropic Matern-5/2 kernel and a fitted noise level."""

    seed: int = 0
    restarts: int = 2
    restarts_below: int = 30
    """Random restarts only below this many points: from 30 points on, the default start alone
    found the same likelihood optimum (measured at 30, 100 and 300) at a fifth of the cost."""
    hold_from: int = 100
    """From this many points on, a refit of the same model keeps the hyperparameters of its last
    optimisation until the data has grown by `regrow` (a share): the kernel then changes little,
    and the optimisation is most of the cost (12.6 CPU-s of a fit at 1000 points, against the
    Cholesky factor's 0.1). Below it, every fit optimises from scratch: early hyperparameters
    learned from few points must not stick."""
    regrow: float = 0.2
    shortest_length_scale: float = 1e-2
    """Lower bound of every length scale (unit cube). A higher floor keeps a model of few points
    from explaining noise with wiggles: a crude prior towards smooth responses."""
    prior: str | None = PRIORS[0]
    """Fit the hyperparameters by their posterior under `HyperPrior(kind=prior)` ("moderate" or
    "wide"); None: by the likelihood alone. Moderate priors made our EI reach 95 % of the optimum
    in 18 of 40 runs of the public test set against 14 by the likelihood alone, at half the CPU
    (docs/benchmarks.md); wide ones in 10."""
    model: GaussianProcessRegressor | None = field(default=None, repr=False)
    _y: tuple[float, float] = (0.0, 1.0)
    optimised_at: int = 0
    """Points of the last fit that optimised the hyperparameters."""

    def _kernel(self, d: int):
        return (ConstantKernel(1.0, (1e-3, 1e3))
                * Matern(length_scale=np.full(d, 0.5), length_scale_bounds=(self.shortest_length_scale, 1e2),
                         nu=2.5)
                + WhiteKernel(1e-2, (1e-6, 1.0)))

    def fit(self, X: np.ndarray, y: np.ndarray) -> GaussianProcess:
        """Fit the hyperparameters from scratch: the default kernel, then (below `restarts_below`
        points) `restarts` random starts; keeps the best. From `hold_from` points on, a refit
        keeps the last optimised hyperparameters until the data has grown by `regrow`."""
        X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=float)
        ys, mean, scale = _standardise(y)
        n, hold = len(X), self.model is not None and self.optimised_at >= self.hold_from
        if hold and self.optimised_at <= n < (1 + self.regrow) * self.optimised_at:
            gp = GaussianProcessRegressor(self.model.kernel_, normalize_y=False, optimizer=None)
        else:
            restarts = self.restarts if n < self.restarts_below else 0
            gp = GaussianProcessRegressor(self._kernel(X.shape[1]), normalize_y=False,
                                          n_restarts_optimizer=restarts, random_state=self.seed,
                                          optimizer=HyperPrior(X.shape[1], self.prior) if self.prior else "fmin_l_bfgs_b")
            self.optimised_at = n
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model = gp.fit(X, ys)
        self._y = (mean, scale)
        return self

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, sd = self.model.predict(np.atleast_2d(X), return_std=True)
        mean, scale = self._y
        return mean + scale * mu, scale * sd

    def covariance(self, X: np.ndarray) -> np.ndarray:
        """Posterior covariance of the latent objective at X (n, n), noise excluded."""
        _, cov = self.model.predict(np.atleast_2d(X), return_cov=True)
        cov = cov - self.model.kernel_.k2.noise_level * np.eye(len(cov))
        return self._y[1] ** 2 * cov

    def noise_variance(self) -> float:
        """The fitted measurement-noise variance, in objective units squared."""
        return float(self.model.kernel_.k2.noise_level) * self._y[1] ** 2

    def loo_residuals(self) -> np.ndarray:
        """y_i minus the prediction at x_i from every other point, for each training point, in
        objective units. With K the fitted covariance of the observations (noise included), that
        miss is [K^-1 y]_i / [K^-1]_ii (Rasmussen and Williams, section 5.4.2): one Cholesky
        factor gives all n at once, with the hyperparameters fitted on all points."""
        from scipy.linalg import cho_solve

        inverse = cho_solve((self.model.L_, True), np.eye(len(self.model.L_)))
        return self._y[1] * self.model.alpha_ / np.diag(inverse)

    def length_scales(self) -> np.ndarray:
        return np.asarray(self.model.kernel_.k1.k2.length_scale)


@dataclass(frozen=True)
class HyperPrior:
    """Maximum a posteriori hyperparameters: scikit-learn's `optimizer`, the negative log
    likelihood plus a negative log prior over theta (the logs of the kernel's parameters: the
    signal variance, d length scales, the noise variance of the standardised objective).

    - `wide`: a log-normal prior on every length scale, centred on sqrt(2) + log(d)/2 in log
      units with a spread of sqrt(3) (Hvarfner, Hellsten and Nardi, 2024; BoTorch's default),
      and a log-normal noise prior centred on exp(-4).
    - `moderate`: on every inverse squared length scale s = 1/l^2 a prior proportional to
      exp(-(0.1/s + 0.1 s)), most likely at l = 1 (the width of the box) and falling off
      towards both short and long scales; a gamma(2, 1) prior on the signal variance and a
      gamma(1.1, 30) prior on the noise variance (Optuna's GPSampler).

    With a handful of points in 6 or 7 inputs the likelihood alone often picks length scales at
    a bound: the model then knows nothing between its points, or believes a flat response.
    """

    d: int
    kind: str = PRIORS[0]

    def __post_init__(self):
        if self.kind not in PRIORS:
            raise ValueError(f"unknown prior {self.kind!r}: use {' or '.join(map(repr, PRIORS))}")

    def negative_log_prior(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        scales = slice(1, 1 + self.d)  # theta: log signal variance, d log length scales, log noise
        gradient = np.zeros_like(theta)
        if self.kind == "wide":
            centre, spread = np.sqrt(2.0) + 0.5 * np.log(self.d), np.sqrt(3.0)
            offset = theta[scales] - centre
            noise = theta[-1] + 4.0
            gradient[scales], gradient[-1] = offset / spread**2, noise
            return 0.5 * np.sum(offset**2) / spread**2 + 0.5 * noise**2, gradient
        up, down = 0.1 * np.exp(2 * theta[scales]), 0.1 * np.exp(-2 * theta[scales])  # 0.1/s and 0.1 s (s = 1/l^2)
        signal, noise = np.exp(theta[0]), np.exp(theta[-1])
        gradient[scales] = 2 * up - 2 * down
        gradient[0] = signal - 1.0
        gradient[-1] = 30.0 * noise - 0.1
        return float(np.sum(up + down) + signal - theta[0] + 30.0 * noise - 0.1 * theta[-1]), gradient

    def __call__(self, objective, theta0: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, float]:
        from scipy.optimize import minimize

        def negative_log_posterior(theta):
            value, gradient = objective(theta, eval_gradient=True)
            prior, prior_gradient = self.negative_log_prior(theta)
            return value + prior, np.asarray(gradient, dtype=float) + prior_gradient

        result = minimize(negative_log_posterior, theta0, jac=True, method="L-BFGS-B", bounds=bounds)
        return result.x, float(result.fun)


def make_surrogate(kind: SurrogateKind, seed: int = 0) -> Surrogate:
    if kind == "gp":
        return GaussianProcess(seed=seed)
    if kind == "ensemble":
        return EnsembleMLP(seed=seed)
    raise ValueError(f"unknown surrogate {kind!r}: use 'gp' or 'ensemble'")


MIN_POINTS_FOR_R2 = 10
"""Below this many points no R^2 is given (NaN): too few to say how well the model predicts."""


@single_threaded
def cross_validated_r2(kind: SurrogateKind, X: np.ndarray, y: np.ndarray, seed: int = 0,
                       model: Surrogate | None = None) -> float:
    """R^2 of predictions each made by a model that did not see the point it predicts.

    Every point is predicted once, so the score does not swing with which fifth of the data a
    single 80/20 split happened to hold out (on a 60-experiment exploration that split read -0.05
    where the model's R^2 against the noiseless twin was 0.94).
    - `gp`: leave-one-out, in closed form from one fit (`GaussianProcess.loo_residuals`);
    - `ensemble`: out of bag, also from one fit: each point predicted by the members whose
      bootstrap sample left it out (`EnsembleMLP.out_of_bag_residuals`).
    `model`: the surrogate of `kind` already fitted on (X, y), so it is not fitted again.
    NaN below MIN_POINTS_FOR_R2 points, or when every y is the same.
    """
    X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=float)
    if len(y) < MIN_POINTS_FOR_R2 or np.ptp(y) == 0.0:
        return float("nan")
    model = model or make_surrogate(kind, seed).fit(X, y)
    residuals = model.loo_residuals() if kind == "gp" else model.out_of_bag_residuals
    scored = np.isfinite(residuals)
    return float(1.0 - np.sum(residuals[scored] ** 2) / np.sum((y[scored] - y.mean()) ** 2))


def data_key(X: np.ndarray, y: np.ndarray, kind: str) -> str:
    """A hash of the training data, to cache and name trained models."""
    digest = hashlib.sha256()
    digest.update(kind.encode())
    digest.update(np.ascontiguousarray(X, dtype=np.float64).tobytes())
    digest.update(np.ascontiguousarray(y, dtype=np.float64).tobytes())
    return digest.hexdigest()[:16]


def save_model(model: Surrogate, path: Path, meta: dict) -> Path:
    """Pickle a trained surrogate with what it was trained for (parameter names, objective)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as handle:
        pickle.dump({"model": model, **meta}, handle)
    tmp.replace(path)
    return path


def load_model(path: Path) -> dict:
    """Read a model saved by `save_model` (only load files you wrote yourself: it is a pickle)."""
    with open(path, "rb") as handle:
        return pickle.load(handle)
