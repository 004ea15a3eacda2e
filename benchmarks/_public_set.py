"""The public test set of the optimizer benchmark: response surfaces nobody tuned for.

Every problem maps unit-cube points (n, d) to values to MAXIMISE, scaled so that the worst value
in the box is about 0 and the best is `optimum` (the share of the optimum a policy reached is then
the share of the box's range it climbed). Measurements carry multiplicative noise,
y = f(u) x (1 + noise x e), with e drawn from a stream that depends on the problem, the seed and
the experiment's number only: every policy's k-th experiment of a seed sees the same e.

- `hartmann6`: the classic Hartmann function in 6-D (six local maxima, one global);
- `ackley7`: Ackley's function in 7-D, its optimum moved off the centre (a rugged surface
  around one funnel);
- `rosenbrock6`: the Rosenbrock valley in 6-D on a log scale (a long, curved, flat-bottomed ridge);
- `boundary7`: a smooth 7-D surface whose optimum lies on an edge of the box (two inputs at a
  bound), where a policy that keeps away from faces stalls;
- `narrow6`: a broad local peak (80 % of the optimum) and a narrow global one in 6-D;
- the shipped virtual platforms, through their noiseless digital twins and default objectives
  (`twin_problem`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import optimize

NOISE = 0.015
"""Multiplicative measurement noise (SD as a share of the value) of the synthetic problems."""


@dataclass(frozen=True)
class Problem:
    name: str
    d: int
    truth: Callable[[np.ndarray], np.ndarray]
    """Noiseless values at unit-cube points (n, d) -> (n,)."""
    optimum: float
    """The largest value in the box."""
    argmax: tuple[float, ...] | None
    """Where it is (unit cube), when known."""
    noise: float = NOISE
    note: str = ""

    def measure(self, U: np.ndarray, seed: int, first: int) -> np.ndarray:
        """Noisy measurements of the experiments numbered first, first + 1, ... of this seed."""
        U = np.atleast_2d(U)
        e = np.array([noise_draw(self.name, seed, first + k) for k in range(len(U))])
        return self.truth(U) * (1.0 + self.noise * e)


def noise_draw(problem: str, seed: int, number: int) -> float:
    """The standard normal draw of experiment `number` of a seed: the same for every policy."""
    key = [seed, number, *problem.encode()]
    return float(np.random.default_rng(np.random.SeedSequence(key)).standard_normal())


# --- Hartmann-6 ------------------------------------------------------------------------------
_H6_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])
_H6_A = np.array([[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14],
                  [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]], dtype=float)
_H6_P = 1e-4 * np.array([[1312, 1696, 5569, 124, 8283, 5886], [2329, 4135, 8307, 3736, 1004, 9991],
                         [2348, 1451, 3522, 2883, 3047, 6650], [4047, 8828, 8732, 5743, 1091, 381]], dtype=float)
H6_ARGMAX = (0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573)
H6_MAX = 3.322368


def hartmann6(U: np.ndarray) -> np.ndarray:
    U = np.atleast_2d(U)
    inner = ((U[:, None, :] - _H6_P[None]) ** 2 * _H6_A[None]).sum(axis=2)
    return (_H6_ALPHA * np.exp(-inner)).sum(axis=1)  # >= 0; the usual minimisation form is its negative


# --- shifted Ackley --------------------------------------------------------------------------
ACKLEY_BOX = 3.0
"""Ackley's inputs span [-3, 3] on each axis."""
ACKLEY_SHIFT = np.array([0.9, -1.4, 0.35, 1.7, -0.6, -2.1, 1.2])
"""Where the optimum is, in Ackley's inputs."""


def _ackley(X: np.ndarray) -> np.ndarray:
    d = X.shape[1]
    return (-20.0 * np.exp(-0.2 * np.sqrt((X**2).sum(axis=1) / d)) - np.exp(np.cos(2 * np.pi * X).sum(axis=1) / d)
            + 20.0 + np.e)


def _ackley_inputs(U: np.ndarray) -> np.ndarray:
    return (2.0 * np.atleast_2d(U) - 1.0) * ACKLEY_BOX - ACKLEY_SHIFT


# --- Rosenbrock on a log scale ---------------------------------------------------------------
ROSENBROCK_LOW, ROSENBROCK_HIGH = -2.0, 2.0


def _rosenbrock(X: np.ndarray) -> np.ndarray:
    return (100.0 * (X[:, 1:] - X[:, :-1] ** 2) ** 2 + (1.0 - X[:, :-1]) ** 2).sum(axis=1)


def _rosenbrock_inputs(U: np.ndarray) -> np.ndarray:
    return ROSENBROCK_LOW + np.atleast_2d(U) * (ROSENBROCK_HIGH - ROSENBROCK_LOW)


# --- optimum on an edge of the box -----------------------------------------------------------
BOUNDARY_CENTRE = np.array([1.0, 0.62, 0.35, 0.0, 0.7, 0.45, 0.55])
"""The optimum: input 0 at its upper bound, input 3 at its lower bound, the rest inside."""
BOUNDARY_WIDTH = np.array([0.55, 0.3, 0.35, 0.45, 0.4, 0.5, 0.45])


def boundary7(U: np.ndarray) -> np.ndarray:
    z = (np.atleast_2d(U) - BOUNDARY_CENTRE) / BOUNDARY_WIDTH
    return np.exp(-0.5 * (z**2).sum(axis=1))


# --- a broad local peak and a narrow global one ----------------------------------------------
BROAD_CENTRE = np.array([0.3, 0.35, 0.6, 0.4, 0.3, 0.65])
BROAD_HEIGHT, BROAD_WIDTH = 0.8, 0.3
NARROW_CENTRE = np.array([0.78, 0.72, 0.2, 0.8, 0.75, 0.25])
NARROW_HEIGHT, NARROW_WIDTH = 1.0, 0.12


def narrow6(U: np.ndarray) -> np.ndarray:
    U = np.atleast_2d(U)
    broad = BROAD_HEIGHT * np.exp(-0.5 * ((U - BROAD_CENTRE) ** 2).sum(axis=1) / BROAD_WIDTH**2)
    narrow = NARROW_HEIGHT * np.exp(-0.5 * ((U - NARROW_CENTRE) ** 2).sum(axis=1) / NARROW_WIDTH**2)
    return broad + narrow


def _scaled(f: Callable[[np.ndarray], np.ndarray], low: float, high: float) -> Callable[[np.ndarray], np.ndarray]:
    """f rescaled so that `low` maps to 0 and `high` to 1."""
    return lambda U: (f(U) - low) / (high - low)


def synthetic_problems() -> list[Problem]:
    ackley_worst = float(_ackley(_ackley_inputs(np.array([[0, 1, 0, 0, 1, 1, 0]], dtype=float)))[0])
    ackley = _scaled(lambda U: -_ackley(_ackley_inputs(U)), -ackley_worst, 0.0)
    rosen_worst = float(np.log1p(_rosenbrock(np.full((1, 6), ROSENBROCK_LOW)))[0])
    rosen = _scaled(lambda U: -np.log1p(_rosenbrock(_rosenbrock_inputs(U))), -rosen_worst, 0.0)
    unit = lambda x, low, high: tuple(float(v) for v in (np.asarray(x) - low) / (high - low))  # noqa: E731
    return [
        Problem("hartmann6", 6, hartmann6, H6_MAX, H6_ARGMAX, note="six local maxima"),
        Problem("ackley7", 7, ackley, 1.0, unit(ACKLEY_SHIFT, -ACKLEY_BOX, ACKLEY_BOX),
                note="rugged, one funnel, optimum off-centre"),
        Problem("rosenbrock6", 6, rosen, 1.0, unit(np.ones(6), ROSENBROCK_LOW, ROSENBROCK_HIGH),
                note="curved valley, log scale"),
        Problem("boundary7", 7, boundary7, 1.0, tuple(BOUNDARY_CENTRE), note="optimum on an edge of the box"),
        Problem("narrow6", 6, narrow6, *_peak_near(narrow6, NARROW_CENTRE),
                note="broad local peak at 80 %, narrow global peak"),
    ]


def _peak_near(f: Callable[[np.ndarray], np.ndarray], start: np.ndarray) -> tuple[float, tuple[float, ...]]:
    """The maximum of f polished from `start` (the broad peak's tail moves the narrow one a little)."""
    found = optimize.minimize(lambda u: -float(f(u[None, :])[0]), start, method="L-BFGS-B",
                              bounds=[(0.0, 1.0)] * len(start))
    return -float(found.fun), tuple(float(v) for v in found.x)


@dataclass
class TwinProblem:
    """A shipped virtual platform: its noiseless twin's default objective over the unit cube of its
    space. Measurements come from the twin with the benchmark's multiplicative noise (the twin's own
    lab noise is not drawn: every policy sees the same noise)."""

    platform_name: str
    noise: float = NOISE

    @cached_property
    def _twin(self):
        from hardware.platform import load_platform
        from tasks.twin import DigitalTwin

        platform = load_platform(self.platform_name)
        return DigitalTwin(platform), platform

    @property
    def name(self) -> str:
        return f"twin:{self.platform_name}"

    @property
    def d(self) -> int:
        return len(self._twin[1].parameters)

    @cached_property
    def objective(self) -> str:
        """The platform's default objective: PL_I, or its PLQY proxy."""
        from _campaigns import platform_objective

        return platform_objective(self.platform_name)

    def truth(self, U: np.ndarray) -> np.ndarray:
        from tasks.surrogate import from_unit
        from tasks.twin import as_objective

        twin, platform = self._twin
        return twin.objective(from_unit(platform, np.atleast_2d(U)), as_objective(self.objective, platform))

    @cached_property
    def optimum(self) -> float:
        """The shipped optimum of the twin (differential evolution + polish, computed once)."""
        from tasks.twin import shipped_optimum

        return float(shipped_optimum(self._twin[1], self.objective).value)

    argmax = None
    note = "noiseless digital twin"
    measure = Problem.measure


def check_optimum(problem: Problem, starts: int = 64, seed: int = 0) -> float:
    """The largest value a multi-start L-BFGS-B finds in the box (to check `optimum`)."""
    rng = np.random.default_rng(seed)
    best = -np.inf
    for start in rng.random((starts, problem.d)):
        result = optimize.minimize(lambda u: -float(problem.truth(u[None, :])[0]), start, method="L-BFGS-B",
                                   bounds=[(0.0, 1.0)] * problem.d)
        best = max(best, -float(result.fun))
    return best
