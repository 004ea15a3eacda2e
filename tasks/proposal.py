"""Proposal: the next condition(s) to run, from a surrogate and a decision policy.

Policies (all maximise; points live in the unit cube of the parameter space):
- `lhs`: Latin-hypercube initial design (scipy.stats.qmc);
- `mv`: maximum variance, pure exploration (where the surrogate is least sure; the paper's);
- `ivr`: integrated variance reduction, exploration for a global model: the point whose
  measurement would cut the posterior variance most on average over the whole space (active
  learning Cohn). MV runs to the corners of the cube; IVR fills the space where it is unknown;
- `ei`: expected improvement over the best observed value;
- `ucb`: upper confidence bound, mean + kappa x sd;
- `eplt`: pure exploitation, the highest predicted mean;
- `random`: uniform random (a baseline).
Optuna's TPE (and GP, when torch is installed) are peers through `tasks/ledger.py`.

For several objectives folded into a desirability (target campaigns, `tasks/targets.py`):
- `desirability-ei`: one surrogate per modelled quantity; the expected improvement of the
  desirability over the best measured one, by Monte Carlo over the surrogates' posteriors
  (`propose_by_desirability`).

The acquisition is maximised over quasi-random candidates, local perturbations of the best
observations, then a bounded L-BFGS polish. A batch of q points uses the kriging believer: each
chosen point is added with its predicted mean (and raises the incumbent for EI) before the next
is chosen, and no proposed point lies within 1 % of the cube of a measured point, a running
experiment or another point of its batch. Both `propose` and `propose_by_desirability` run this
one loop (`_kriging_believer`) and differ only by the scoring step they pass in. Every point goes
through `feasible()` (the formulation rules) before it is returned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import optimize, stats
from scipy.stats import qmc

from tasks.choices import EI_MARGIN
from tasks.surrogate import SurrogateKind, make_surrogate
from tasks.threads import single_threaded

Policy = Literal["mv", "ivr", "ei", "ucb", "eplt", "random"]
POLICIES: tuple[str, ...] = ("mv", "ivr", "ei", "ucb", "eplt", "random")
DESIRABILITY_POLICIES: tuple[str, ...] = ("desirability-ei", "random")

N_CANDIDATES = 2048
N_LOCAL = 512
N_POLISH = 3
N_FACES = 384
"""Candidates on the boundary of the box (`face_candidates`)."""
N_REFERENCE = 256
"""Sobol points over which IVR averages the variance it would remove."""
MAX_RANDOM_DRAWS = 100_000
MIN_SEPARATION = 0.01
"""A proposal closer than this (in the unit cube) to a measured, running or batch point would be
the same experiment twice."""
N_POSTERIOR_SAMPLES = 128
"""Monte Carlo draws per candidate for the expected desirability (the same draws for every candidate)."""


@dataclass(frozen=True)
class PolicySettings:
    kappa: float = 2.0
    """UCB exploration weight."""
    xi: float = EI_MARGIN
    """EI margin, as a share of the spread of the observed objective (`tasks.choices.EI_MARGIN`)."""
    smooth: bool = False
    """GP length scales of at least 0.1 of the box instead of 0.01 (an ablation switch)."""
    wide_prior: bool = False
    """GP hyperparameters under wide priors (`tasks.surrogate.HyperPrior`, "wide") instead of the
    default moderate ones (an ablation switch)."""
    likelihood_only: bool = False
    """GP hyperparameters by the likelihood alone, no priors (an ablation switch)."""
    faces: bool = False
    """Also score candidates on the faces, edges and corners of the box (`face_candidates`); off
    until the optimizer comparison (benchmarks/policies.py) shows it helps."""


def latin_hypercube(n: int, d: int, seed: int) -> np.ndarray:
    """`n` unit-cube points, one in each of n slices of every axis (optimised for spread)."""
    return qmc.LatinHypercube(d=d, seed=seed, optimization="random-cd").random(n)


def design_conditions(platform, n: int, seed: int) -> list[dict[str, float]]:
    """A Latin-hypercube design of `n` conditions in the platform's parameter units."""
    from tasks.surrogate import from_unit

    points = from_unit(platform, latin_hypercube(n, len(platform.parameters), seed))
    return [dict(zip(platform.parameter_names, map(float, row))) for row in points]


def acquisition(policy: Policy, mean: np.ndarray, sd: np.ndarray, best: float, y_scale: float,
                settings: PolicySettings = PolicySettings()) -> np.ndarray:
    """Score to maximise for each candidate."""
    sd = np.maximum(sd, 1e-12)
    if policy == "mv":
        return sd
    if policy == "ivr":
        raise ValueError("ivr scores need the model's covariance: use variance_reduction()")
    if policy == "eplt":
        return mean
    if policy == "ucb":
        return mean + settings.kappa * sd
    if policy == "ei":
        gain = mean - best - settings.xi * y_scale
        z = gain / sd
        return gain * stats.norm.cdf(z) + sd * stats.norm.pdf(z)
    raise ValueError(f"unknown policy {policy!r}; choose one of {POLICIES}")


def variance_reduction(model, U: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Mean cut in the posterior variance over `reference` if each point of U were measured.

    For a Gaussian process the cut at r from one measurement at u is cov(r, u)^2 / (var(u) +
    noise): the joint covariance of reference and candidates gives it for all at once.
    """
    n, chunk = len(reference), 512
    scores = []
    for start in range(0, len(U), chunk):  # chunks keep the joint covariance small
        cov = model.covariance(np.vstack([reference, U[start:start + chunk]]))
        cross, var = cov[:n, n:], np.clip(np.diag(cov)[n:], 0.0, None)
        scores.append((cross**2).mean(axis=0) / (var + model.noise_variance()))
    return np.concatenate(scores)


def face_candidates(top: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` points on the boundary of the unit cube: copies of the best points `top` with some
    inputs moved to a bound (each input with probability 1/3, to the nearer bound, at least one per
    point), and half as many random points of the faces, edges and corners.

    Quasi-random candidates almost never lie on the boundary (a Sobol point has every input
    strictly inside), and a box whose optimum sits on a face (a temperature or a fraction at its
    limit, as a recipe at the edge of what the rig can do often is) was approached but never
    reached: the polish from three candidates moved along the face too slowly.
    """
    d = top.shape[1]
    centres = top[rng.integers(0, len(top), n - n // 3)]
    snap = rng.random(centres.shape) < 1 / 3
    snap[np.arange(len(snap)), rng.integers(0, d, len(snap))] = True
    moved = np.where(snap, np.round(centres), centres)
    free = rng.random((n // 3, d))
    on_face = rng.random(free.shape) < 0.5
    return np.vstack([moved, np.where(on_face, np.round(free), free)])


def _candidates(X: np.ndarray, y: np.ndarray, d: int, rng: np.random.Generator,
                settings: PolicySettings = PolicySettings()) -> np.ndarray:
    sobol = qmc.Sobol(d=d, seed=rng).random(N_CANDIDATES)
    parts = [sobol]
    if len(y):
        top = X[np.argsort(y)[::-1][:5]]
        for width in (0.02, 0.08, 0.2):
            centres = top[rng.integers(0, len(top), N_LOCAL // 3)]
            parts.append(np.clip(centres + width * rng.standard_normal(centres.shape), 0.0, 1.0))
        parts.append(top)
        if settings.faces:
            parts.append(face_candidates(top, N_FACES, rng))
    return np.vstack(parts)


def _maximise(score: Callable[[np.ndarray], np.ndarray], candidates: np.ndarray,
              feasible: Callable[[np.ndarray], bool]) -> np.ndarray:
    """The best feasible point: best candidates polished with L-BFGS-B inside the unit cube."""
    values = score(candidates)
    order = np.argsort(values)[::-1]
    d = candidates.shape[1]
    step = 1e-4

    def negative_with_gradient(u: np.ndarray) -> tuple[float, np.ndarray]:
        # One batched call for the value and a forward (or, at the upper edge, backward)
        # difference along every axis, instead of d + 1 separate predictions.
        steps = np.where(u + step <= 1.0, step, -step)
        points = np.vstack([u, u + np.diag(steps)])
        scores = score(points)
        return -float(scores[0]), -(scores[1:] - scores[0]) / steps

    polished = []
    for i in order[:N_POLISH]:
        result = optimize.minimize(negative_with_gradient, candidates[i], jac=True, method="L-BFGS-B",
                                   bounds=[(0.0, 1.0)] * d, options={"maxiter": 50})
        polished.append((float(-result.fun), np.clip(result.x, 0.0, 1.0)))
    ranked = sorted(polished, key=lambda p: -p[0]) + [(float(values[i]), candidates[i]) for i in order]
    for _, point in ranked:
        if feasible(point):
            return point
    raise RuntimeError("no feasible candidate: every candidate broke a formulation rule")


@dataclass
class _Surrogates:
    """The surrogates of one proposal, one per modelled column, and the data they learn from:
    the measured rows, any prior rows, and points believed at their predicted mean."""

    models: list
    X: np.ndarray
    Y: np.ndarray
    """(n, k): one column per model."""

    @classmethod
    def fit(cls, models: list, X: np.ndarray, Y: np.ndarray) -> _Surrogates:
        for j, model in enumerate(models):
            model.fit(X, Y[:, j])
        return cls(models, X, Y)

    def posterior(self, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Means and standard deviations at U, each (n, k)."""
        pairs = [model.predict(U) for model in self.models]
        return np.column_stack([p[0] for p in pairs]), np.column_stack([p[1] for p in pairs])

    def believe(self, points: np.ndarray) -> np.ndarray:
        """Kriging believer: count `points` as observed at their predicted means and refit.
        Returns those means (len(points), k)."""
        believed = self.posterior(points)[0]
        self.X, self.Y = np.vstack([self.X, points]), np.vstack([self.Y, believed])
        for j, model in enumerate(self.models):
            model.fit(self.X, self.Y[:, j])
        return believed


Scoring = Callable[[_Surrogates, np.ndarray, float], Callable[[np.ndarray], np.ndarray]]
"""The scoring step of the loop: (surrogates, this round's candidates, incumbent) -> the score to
maximise over unit-cube points (n, d) -> (n,)."""


def _kriging_believer(surrogates: _Surrogates, scoring: Scoring, value: Callable[[np.ndarray], np.ndarray],
                      best: float, *, q: int, measured: np.ndarray, pending: np.ndarray,
                      rng: np.random.Generator, feasible: Callable[[np.ndarray], bool],
                      settings: PolicySettings = PolicySettings()) -> np.ndarray:
    """`q` points, one at a time: each maximises the score, then counts as observed at its
    predicted mean (raising the incumbent `best` if its `value` is higher) before the next.

    No point comes closer than MIN_SEPARATION to a measured point, a running one (`pending`) or an
    earlier point of the batch: that would be the same experiment twice (a flat score can peak
    exactly on a measured point). `value(Y)` turns modelled rows (n, k) into the quantity the
    incumbent and the local candidates are ranked by (n,).
    """
    d = surrogates.X.shape[1]
    taken = [*measured, *pending]
    points: list[np.ndarray] = []
    for _ in range(q):
        candidates = _candidates(surrogates.X, value(surrogates.Y), d, rng, settings)
        score = scoring(surrogates, candidates, best)

        def new_and_feasible(u, taken=tuple(taken)):
            return all(np.linalg.norm(u - t) > MIN_SEPARATION for t in taken) and feasible(u)

        point = _maximise(score, candidates, new_and_feasible)
        points.append(point)
        taken.append(point)
        if len(points) < q:
            believed = surrogates.believe(point[None, :])
            best = max(best, float(value(believed)[0]))
    return np.array(points)


@single_threaded
def propose(
    policy: Policy,
    X: np.ndarray,
    y: np.ndarray,
    *,
    q: int = 1,
    surrogate: SurrogateKind = "gp",
    seed: int = 0,
    pending: np.ndarray | None = None,
    prior: tuple[np.ndarray, np.ndarray] | None = None,
    feasible: Callable[[np.ndarray], bool] = lambda u: True,
    settings: PolicySettings = PolicySettings(),
    model=None,
) -> tuple[np.ndarray, object | None]:
    """Next `q` unit-cube points for `policy` given observations (X, y). Returns (points, model).

    `pending`: points already running (treated as observed at their predicted mean).
    `prior`: extra (X, y) from an earlier campaign or a digital twin, used to train the
    surrogate (knowledge transfer). `model`: a surrogate to warm-start from. No point comes
    within 1 % of the cube of a measured or running one (`_kriging_believer`).
    """
    X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=float)
    if X.ndim != 2 or len(X) != len(y):
        raise ValueError(f"X must be (n, d) with one y per row; got X {X.shape}, y {y.shape}")
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {POLICIES}")
    d = X.shape[1]
    rng = np.random.default_rng(seed)
    if policy == "random":
        return random_points(d, q, rng, feasible), None
    train_X, train_y = X, y
    if prior is not None and len(prior[1]):
        train_X, train_y = np.vstack([prior[0], X]), np.concatenate([prior[1], y])
    if len(train_y) < 2:
        raise ValueError(f"policy {policy!r} needs at least 2 observations to train a surrogate (has "
                         f"{len(train_y)}); start with an initial design")
    if model is None:
        model = make_surrogate(surrogate, seed)
        if settings.smooth and surrogate == "gp":
            model.shortest_length_scale = 0.1
        if surrogate == "gp" and (settings.wide_prior or settings.likelihood_only):
            model.prior = None if settings.likelihood_only else "wide"
    surrogates = _Surrogates.fit([model], train_X, train_y[:, None])
    pending = _as_points(pending, d)
    if len(pending):
        surrogates.believe(pending)
    best = float(np.max(y)) if len(y) else float(np.max(surrogates.Y))
    y_scale = float(np.ptp(surrogates.Y)) or 1.0
    reference = qmc.Sobol(d=d, seed=rng).random(N_REFERENCE) if policy == "ivr" else None
    scoring = _acquisition_scoring(policy, y_scale, settings, reference)
    points = _kriging_believer(surrogates, scoring, lambda Y: Y[:, 0], best, q=q, measured=X, pending=pending,
                               rng=rng, feasible=feasible, settings=settings)
    return points, model


def _acquisition_scoring(policy: Policy, y_scale: float, settings: PolicySettings,
                         reference: np.ndarray | None) -> Scoring:
    """The scoring step of `propose`: the policy's acquisition on the one surrogate."""
    def scoring(surrogates: _Surrogates, candidates: np.ndarray, best: float):
        model = surrogates.models[0]
        if policy == "ivr":
            return lambda U: variance_reduction(model, U, reference)

        def score(U):
            mean, sd = model.predict(U)
            return acquisition(policy, mean, sd, best, y_scale, settings)

        return score

    return scoring


def _as_points(pending, d: int) -> np.ndarray:
    """Running experiments as an (n, d) array (n may be 0)."""
    if pending is None or not len(pending):
        return np.empty((0, d))
    return np.atleast_2d(np.asarray(pending, dtype=float))


def random_points(d: int, q: int, rng: np.random.Generator,
                  feasible: Callable[[np.ndarray], bool] = lambda u: True) -> np.ndarray:
    """`q` uniform random unit-cube points that pass `feasible()` (the random policy)."""
    points = []
    for _ in range(MAX_RANDOM_DRAWS):
        u = rng.random(d)
        if feasible(u):
            points.append(u)
            if len(points) == q:
                return np.array(points)
    raise RuntimeError(f"no feasible candidate: {MAX_RANDOM_DRAWS} random points gave {len(points)} of {q} "
                       "that pass the formulation rules; check the bounds against the rules")


def expected_desirability_gain(means: np.ndarray, sds: np.ndarray, desirability, best: float,
                               draws: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Monte Carlo over independent Gaussian posteriors of each modelled quantity.

    means, sds: (n, k); draws: (s, k) standard normal draws, shared by all candidates so scores
    are smooth in the candidate. Returns, per candidate, the expected improvement of the
    desirability over `best`, the expected desirability and the expected shortfall (how far
    outside the acceptable ranges).
    """
    samples = means[None, :, :] + sds[None, :, :] * draws[:, None, :]
    values = desirability(samples)
    gain = np.maximum(values - best, 0.0).mean(axis=0)
    shortfall = desirability.shortfall(samples).mean(axis=0) if hasattr(desirability, "shortfall") else 0.0 * gain
    return gain, values.mean(axis=0), shortfall


@single_threaded
def propose_by_desirability(
    X: np.ndarray,
    Y: np.ndarray,
    desirability,
    *,
    q: int = 1,
    surrogate: SurrogateKind = "gp",
    seed: int = 0,
    pending: np.ndarray | None = None,
    feasible: Callable[[np.ndarray], bool] = lambda u: True,
    samples: int = N_POSTERIOR_SAMPLES,
) -> tuple[np.ndarray, list]:
    """Next `q` unit-cube points that most raise the expected desirability. Returns (points, models).

    Y (n, k) holds the modelled quantities of each observation (e.g. peak nm, quality, FWHM);
    `desirability(Y)` maps arrays (..., k) to 0-1 (and may offer `shortfall(Y)`, >= 0, how far
    outside its acceptable ranges). One surrogate per column of Y. The score is the expected
    improvement of the desirability over the best one at the observed points (by the surrogates'
    means: measurements are noisy); where no candidate can improve
    it, the expected desirability; where that is 0 everywhere, the smallest expected shortfall
    (towards the acceptable ranges). Batches, running and measured experiments are handled by the
    loop `propose` uses (`_kriging_believer`: kriging believer on every surrogate, 1 % separation
    from measured, running and batch points, `feasible()` on every point).
    """
    X, Y = np.asarray(X, dtype=float), np.asarray(Y, dtype=float)
    if X.ndim != 2 or Y.ndim != 2 or len(X) != len(Y):
        raise ValueError(f"X must be (n, d) and Y (n, k) with one row per observation; got X {X.shape}, Y {Y.shape}")
    d, k = X.shape[1], Y.shape[1]
    rng = np.random.default_rng(seed)
    if len(Y) < 2:
        raise ValueError(f"a desirability policy needs at least 2 observations to train its surrogates (has "
                         f"{len(Y)}); start with an initial design")
    surrogates = _Surrogates.fit([make_surrogate(surrogate, seed + j) for j in range(k)], X, Y)
    pending = _as_points(pending, d)
    if len(pending):
        surrogates.believe(pending)
    draws = rng.standard_normal((samples, k))
    # the incumbent: the best desirability of the surrogates' means at the observed points, not of the
    # noisy measurements (a lucky noisy measurement would otherwise hold EI at one spot)
    best = float(np.max(desirability(surrogates.posterior(X)[0])))
    scoring = _desirability_scoring(desirability, draws)
    points = _kriging_believer(surrogates, scoring, desirability, best, q=q, measured=X, pending=pending, rng=rng,
                               feasible=feasible)
    return points, surrogates.models


def _desirability_scoring(desirability, draws: np.ndarray) -> Scoring:
    """The scoring step of `propose_by_desirability`. Each round picks what to maximise from its
    candidates: the expected gain of desirability; where no candidate can gain, the expected
    desirability; where that is 0 everywhere, minus the expected shortfall."""
    def scoring(surrogates: _Surrogates, candidates: np.ndarray, best: float):
        gain, expected, _ = expected_desirability_gain(*surrogates.posterior(candidates), desirability, best,
                                                       draws)
        which = 0 if gain.max() > 0 else 1 if expected.max() > 0 else 2

        def score(U):
            parts = expected_desirability_gain(*surrogates.posterior(U), desirability, best, draws)
            return -parts[2] if which == 2 else parts[which]

        return score

    return scoring
