"""Targets: reach a chosen emission peak with the brightest and narrowest emission at once.

The Artificial Chemist idea (P2: Epps 2020): for any desired peak emission, optimise the
emission bandwidth and the PLQY together. A `Target` names the peak (nm, or eV converted to
nm), how close counts as on target, the quality to maximise (a relative PLQY proxy by default)
and the FWHM to minimise. Each experiment gives an objective vector

    (peak error |peak - target| in nm: minimise, quality: maximise, FWHM in nm: minimise)

which the Optuna study stores as a multi-objective trial. A declared Derringer-Suich
desirability folds the vector into one number in 0-1, to rank experiments and to steer our own
policy. Pure numpy, no Prefect.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from hardware.errors import SdflInputError
from tasks.objective import Objective, parse_objective

HC_EV_NM = 1239.84198
PEAK_FEATURE = "PL_peak_nm"
DEFAULT_QUALITY = "PL_A / (1 - 10 ** (-Abs_300))"
"""Relative PLQY: PL area per share of the excitation absorbed (Abs_300 is the absorbance at the
platform's abs_wavelength, the excitation wavelength)."""
DEFAULT_FWHM = "FWHM_nm"
OBJECTIVES = ("peak_error_nm", "quality", "fwhm_nm")
DIRECTIONS = ("minimize", "maximize", "minimize")
PEAK_RANGE_PER_TOLERANCE = 4.0
QUALITY_HEADROOM = 1.2
"""Undeclared quality range: full desirability at this multiple of the best quality seen."""
FWHM_HEADROOM = 0.8
"""Undeclared FWHM range: full desirability at this multiple of the narrowest FWHM seen ..."""
FWHM_SPAN = 2.0
"""... and none at this multiple."""


@dataclass(frozen=True)
class Target:
    """What a target campaign aims for. Wavelengths in nm; ranges are (low, high)."""

    peak_nm: float
    tolerance_nm: float = 2.0
    """On target when |peak - peak_nm| <= this."""
    quality: str | None = None
    """Objective expression to maximise (the PLQY proxy), e.g. PL_I or PL_A / (1 - 10 ** (-Abs_300))."""
    fwhm: str = DEFAULT_FWHM
    """Objective expression to minimise (the emission width); FWHM_nm by default."""
    max_fwhm_nm: float | None = None
    """Hard limit: a wider emission is not on target (in the units of `fwhm`: nm for FWHM_nm)."""
    min_quality: float | None = None
    """Hard limit: a lower quality is not on target."""
    peak_range_nm: float | None = None
    """Peak error at which the peak desirability reaches 0 (default 4 x tolerance)."""
    quality_range: tuple[float, float] | None = None
    """Declared quality (desirability 0, desirability 1); default (0, 1.2 x the best seen)."""
    fwhm_range_nm: tuple[float, float] | None = None
    """Declared FWHM (desirability 1, desirability 0); default (0.8 x, 2 x the narrowest seen)."""
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Weights of peak, quality and FWHM in the geometric mean."""

    @classmethod
    def at_energy(cls, peak_ev: float, tolerance_mev: float | None = None, **settings) -> Target:
        """A target given as a photon energy (eV); a tolerance in meV is converted at the target."""
        peak_ev = _number("target_peak_ev", peak_ev)
        if peak_ev <= 0:
            raise SdflInputError(f"target_peak_ev must be a positive energy in eV, got {peak_ev}")
        peak_nm = HC_EV_NM / peak_ev
        if tolerance_mev is not None:
            tolerance_mev = _number("tolerance_mev", tolerance_mev)
            if tolerance_mev < 0:
                raise SdflInputError(f"tolerance_mev must not be negative, got {tolerance_mev}")
            settings["tolerance_nm"] = peak_nm ** 2 / HC_EV_NM * tolerance_mev / 1000.0
        return cls(peak_nm=peak_nm, **settings)

    @property
    def peak_ev(self) -> float:
        return HC_EV_NM / self.peak_nm

    @property
    def peak_range(self) -> float:
        return self.peak_range_nm if self.peak_range_nm is not None else PEAK_RANGE_PER_TOLERANCE * self.tolerance_nm

    def describe(self) -> str:
        """One line, also the study's objective attribute (a resumed campaign must match it)."""
        limits = [f"{self.fwhm} <= {self.max_fwhm_nm:g}"] if self.max_fwhm_nm is not None else []
        limits += [f"{self.quality} >= {self.min_quality:g}"] if self.min_quality is not None else []
        quality = self.quality or "the platform's relative PLQY"
        text = (f"target {PEAK_FEATURE} {self.peak_nm:.2f} nm ({self.peak_ev:.4f} eV) +/- {self.tolerance_nm:g} nm; "
                f"maximise {quality}; minimise {self.fwhm}")
        return text + (f"; limits {', '.join(limits)}" if limits else "")

    def settings(self) -> dict:
        """The target as plain data (JSON-ready), for the study and the summary."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def make_target(peak_nm: float | None = None, peak_ev: float | None = None, **settings) -> Target:
    """A Target from a wavelength or an energy (exactly one), as the flow's form gives them."""
    if (peak_nm is None) == (peak_ev is None):
        raise SdflInputError("give the target peak as target_peak_nm or as target_peak_ev (exactly one), "
                             f"got target_peak_nm={peak_nm!r}, target_peak_ev={peak_ev!r}")
    if peak_ev is not None:
        return Target.at_energy(peak_ev, **settings)
    return Target(peak_nm=_number("target_peak_nm", peak_nm), **settings)


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SdflInputError(f"{name} must be a finite number, got {value!r}")
    return float(value)


# --- checking a target against a platform --------------------------------------------------------
@dataclass(frozen=True)
class TargetObjective:
    """A checked target: turns an experiment row into its objective vector."""

    target: Target
    quality: Objective
    fwhm: Objective
    expression: str = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "expression", self.target.describe())

    def peak(self, row: dict) -> float:
        value = row.get(PEAK_FEATURE)
        try:
            value = float(value)
        except (TypeError, ValueError):
            return math.nan
        return value if math.isfinite(value) else math.nan

    def __call__(self, row: dict) -> tuple[float, float, float]:
        """(peak error nm, quality, FWHM) of one experiment row; NaN where a feature is missing."""
        return (abs(self.peak(row) - self.target.peak_nm), self.quality(row), self.fwhm(row))

    def measured(self, row: dict) -> tuple[float, float, float]:
        """(peak nm, quality, FWHM): what the surrogates model (the peak keeps its sign)."""
        return (self.peak(row), self.quality(row), self.fwhm(row))

    def annotations(self, row: dict) -> tuple[dict, dict]:
        """(user attributes, constraints) for the Optuna trial of this row; constraints <= 0 hold."""
        vector = self(row)
        return {"peak_nm": self.peak(row)}, constraint_values(vector, self.target)


def check_target(target: Target, platform) -> TargetObjective:
    """Check a target against a platform; raise SdflInputError naming the bad field."""
    from tasks.feature_names import FeatureSettings, feature_columns

    if not isinstance(target, Target):
        raise SdflInputError(f"target must be a Target, got {type(target).__name__}")
    settings = FeatureSettings.from_config(platform.features)
    low, high = settings.pl_window
    peak = _number("target_peak_nm", target.peak_nm)
    if not low <= peak <= high:
        raise SdflInputError(
            f"target_peak_nm {peak:.2f} nm ({HC_EV_NM / peak:.4f} eV) is outside the PL window of platform "
            f"{platform.platform.name!r} ({low:g}-{high:g} nm, features.pl_window): the peak cannot be measured there")
    tolerance = _number("tolerance_nm", target.tolerance_nm)
    if tolerance <= 0:
        raise SdflInputError(f"tolerance_nm must be a positive width in nm (e.g. 2 for 'within 2 nm'), got {tolerance}")
    if target.peak_range_nm is not None and _number("peak_range_nm", target.peak_range_nm) <= tolerance:
        raise SdflInputError(f"peak_range_nm ({target.peak_range_nm}) must be larger than tolerance_nm ({tolerance})")
    if target.max_fwhm_nm is not None and _number("max_fwhm_nm", target.max_fwhm_nm) <= 0:
        raise SdflInputError(f"max_fwhm_nm must be a positive width, got {target.max_fwhm_nm}")
    if target.min_quality is not None:
        _number("min_quality", target.min_quality)
    for name, bounds in (("quality_range", target.quality_range), ("fwhm_range_nm", target.fwhm_range_nm)):
        if bounds is not None:
            if len(bounds) != 2 or not _number(name, bounds[0]) < _number(name, bounds[1]):
                raise SdflInputError(f"{name} must be (low, high) with low < high, got {bounds!r}")
    weights = target.weights
    if len(weights) != 3 or any(_number("weights", w) <= 0 for w in weights):
        raise SdflInputError(f"weights must be three positive numbers (peak, quality, FWHM), got {weights!r}")
    columns = feature_columns(settings)
    quality_field = "quality"
    if target.quality is None:
        # No quality given: the platform's relative PLQY, its own formula where it has one.
        target = replace(target, quality=platform.features.plqy_proxy or DEFAULT_QUALITY)
        if platform.features.plqy_proxy:
            quality_field = f"features.plqy_proxy of {platform.source or platform.platform.name}"
    quality = _parse(quality_field, target.quality, columns)
    fwhm = _parse("fwhm", target.fwhm, columns)
    return TargetObjective(target, quality, fwhm)


def _parse(field_name: str, expression: str, columns: list[str]) -> Objective:
    try:
        return parse_objective(expression, columns)
    except SdflInputError as exc:
        raise SdflInputError(f"{field_name}: {exc}") from None


# --- objective vectors, limits ----------------------------------------------------------------------
def objective_vectors(rows, objective: TargetObjective) -> np.ndarray:
    """(n, 3) objective vectors of experiment rows (dicts or a DataFrame); NaN where missing."""
    if hasattr(rows, "to_dict"):
        rows = rows.to_dict(orient="records")
    return np.array([objective(r) for r in rows], dtype=float).reshape(-1, 3)


def errors_from_peaks(measured: np.ndarray, target: Target) -> np.ndarray:
    """Objective vectors from (peak nm, quality, FWHM) arrays of any leading shape."""
    measured = np.asarray(measured, dtype=float)
    out = measured.copy()
    out[..., 0] = np.abs(measured[..., 0] - target.peak_nm)
    return out


def constraint_values(vector: Sequence[float], target: Target) -> dict[str, float]:
    """The hard limits as Optuna constraints (a limit holds when its value is <= 0)."""
    error, quality, fwhm = (float(v) for v in vector)
    out = {"peak_within_tolerance": error - target.tolerance_nm}
    if target.max_fwhm_nm is not None:
        out["fwhm_within_limit"] = fwhm - target.max_fwhm_nm
    if target.min_quality is not None:
        out["quality_above_floor"] = target.min_quality - quality
    return out


def meets_target(values: np.ndarray, target: Target) -> np.ndarray:
    """Which objective vectors are on target: peak within tolerance and every hard limit kept."""
    values = np.atleast_2d(np.asarray(values, dtype=float))
    ok = np.all(np.isfinite(values), axis=1) & (values[:, 0] <= target.tolerance_nm)
    if target.max_fwhm_nm is not None:
        ok &= values[:, 2] <= target.max_fwhm_nm
    if target.min_quality is not None:
        ok &= values[:, 1] >= target.min_quality
    return ok


# --- desirability (Derringer-Suich) ------------------------------------------------------------------
@dataclass(frozen=True)
class Desirability:
    """Per-objective ramps (linear, clipped to 0-1), hard limits, and their weighted geometric mean.

    - peak error: 1 up to `tolerance`, falling to 0 at `peak_zero`;
    - quality: 0 at `quality_zero`, 1 at `quality_one` (larger is better), and 0 below
      `quality_floor` (a hard limit), if set;
    - FWHM: 1 at `fwhm_one`, 0 at `fwhm_zero` (smaller is better), and 0 above `fwhm_limit`
      (a hard limit), if set.
    One desirability of 0 makes the whole 0: a value outside a declared range or beyond a hard
    limit is unacceptable. The hard limits are cliffs, not the ends of the ramps, so inside them
    a 1 % narrower emission counts about as much as a 1 % higher quality.
    """

    tolerance: float
    peak_zero: float
    quality_zero: float
    quality_one: float
    fwhm_one: float
    fwhm_zero: float
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    fwhm_limit: float | None = None
    quality_floor: float | None = None

    def parts(self, values: np.ndarray) -> np.ndarray:
        """Per-objective desirabilities, same shape as `values` (..., 3); NaN in, 0 out."""
        v = np.asarray(values, dtype=float)
        peak = 1.0 - (v[..., 0] - self.tolerance) / (self.peak_zero - self.tolerance)
        quality = (v[..., 1] - self.quality_zero) / (self.quality_one - self.quality_zero)
        fwhm = (self.fwhm_zero - v[..., 2]) / (self.fwhm_zero - self.fwhm_one)
        if self.quality_floor is not None:
            quality = np.where(v[..., 1] < self.quality_floor, 0.0, quality)
        if self.fwhm_limit is not None:
            fwhm = np.where(v[..., 2] > self.fwhm_limit, 0.0, fwhm)
        parts = np.clip(np.stack([peak, quality, fwhm], axis=-1), 0.0, 1.0)
        return np.nan_to_num(parts, nan=0.0)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """Overall desirability in 0-1 of objective vectors (..., 3)."""
        parts = self.parts(values)
        w = np.asarray(self.weights, dtype=float)
        with np.errstate(divide="ignore"):
            logs = np.where(parts > 0, np.log(np.maximum(parts, 1e-300)), -np.inf)
        return np.exp((logs * w).sum(axis=-1) / w.sum())

    def shortfall(self, values: np.ndarray) -> np.ndarray:
        """How far beyond the zero points and limits (in spans of each ramp): 0 where every part is
        above 0."""
        v = np.asarray(values, dtype=float)
        q_span, f_span = self.quality_one - self.quality_zero, self.fwhm_zero - self.fwhm_one
        q_edge = max(self.quality_zero, self.quality_floor if self.quality_floor is not None else -np.inf)
        f_edge = min(self.fwhm_zero, self.fwhm_limit if self.fwhm_limit is not None else np.inf)
        beyond = np.stack([
            (v[..., 0] - self.peak_zero) / (self.peak_zero - self.tolerance),
            (q_edge - v[..., 1]) / q_span,
            (v[..., 2] - f_edge) / f_span,
        ], axis=-1)
        return np.nan_to_num(np.maximum(beyond, 0.0), nan=1e6).sum(axis=-1)


@dataclass(frozen=True)
class MeasuredDesirability:
    """The desirability of what the surrogates model, (peak nm, quality, FWHM), instead of the
    objective vector: the peak error is taken from the peak first."""

    desirability: Desirability
    target: Target

    def __call__(self, measured: np.ndarray) -> np.ndarray:
        return self.desirability(errors_from_peaks(measured, self.target))

    def shortfall(self, measured: np.ndarray) -> np.ndarray:
        return self.desirability.shortfall(errors_from_peaks(measured, self.target))


def desirability_for(target: Target, observed: np.ndarray | None = None) -> Desirability:
    """The target's declared ranges, with undeclared ones taken from the observed vectors (n, 3):
    quality from 0 to 1.2 x the best seen, FWHM from 0.8 x to 2 x the narrowest seen. The hard
    limits (max_fwhm_nm, min_quality) are cliffs on top."""
    observed = np.empty((0, 3)) if observed is None else np.atleast_2d(np.asarray(observed, dtype=float))
    ok = observed[np.all(np.isfinite(observed), axis=1)]
    if target.quality_range is not None:
        q_zero, q_one = target.quality_range
    else:
        q_zero = 0.0
        best = float(ok[:, 1].max()) if len(ok) else 1.0
        q_one = QUALITY_HEADROOM * best if best > 0 else 1.0
    if target.fwhm_range_nm is not None:
        f_one, f_zero = target.fwhm_range_nm
    else:
        seen = ok[:, 2][ok[:, 2] > 0]
        narrowest = float(seen.min()) if len(seen) else target.max_fwhm_nm or 1.0
        f_one, f_zero = FWHM_HEADROOM * narrowest, FWHM_SPAN * narrowest
    return Desirability(target.tolerance_nm, target.peak_range, float(q_zero), float(q_one), float(f_one),
                        float(f_zero), tuple(float(w) for w in target.weights), target.max_fwhm_nm,
                        target.min_quality)


# --- Pareto -------------------------------------------------------------------------------------------
def non_dominated_sort(values: np.ndarray, directions: Sequence[str] = DIRECTIONS) -> np.ndarray:
    """Pareto rank of each row: 0 for the front, 1 for the front once it is removed, ...

    Rows with a non-finite value get rank -1 (not ranked). A row dominates another when it is
    no worse in every objective and better in at least one.
    """
    values = np.atleast_2d(np.asarray(values, dtype=float))
    signs = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    v = values * signs
    finite = np.all(np.isfinite(v), axis=1)
    ranks = np.full(len(v), -1)
    remaining = np.flatnonzero(finite)
    rank = 0
    while len(remaining):
        sub = v[remaining]
        no_worse = np.all(sub[:, None, :] <= sub[None, :, :], axis=2)
        better = np.any(sub[:, None, :] < sub[None, :, :], axis=2)
        dominated = np.any(no_worse & better, axis=0)  # column j is dominated by some row i
        ranks[remaining[~dominated]] = rank
        remaining = remaining[dominated]
        rank += 1
    return ranks


def pareto_front(values: np.ndarray, directions: Sequence[str] = DIRECTIONS) -> np.ndarray:
    """Boolean mask of the non-dominated rows."""
    return non_dominated_sort(values, directions) == 0


def best_index(values: np.ndarray, target: Target, desirability: Desirability | None = None) -> int | None:
    """The row with the highest desirability among those on target (or among all, if none is)."""
    values = np.atleast_2d(np.asarray(values, dtype=float))
    finite = np.all(np.isfinite(values), axis=1)
    if not finite.any():
        return None
    desirability = desirability or desirability_for(target, values)
    score = np.where(finite, desirability(values), -np.inf)
    on = meets_target(values, target)
    pool = on if on.any() else finite
    return int(np.flatnonzero(pool)[np.argmax(score[pool])])


def experiments_since_best(values: np.ndarray, target: Target) -> int | None:
    """Experiments run after the best on-target one (rows in run order, NaN rows for failures);
    None while no experiment is on target. The stopping rule's `patience` counts these."""
    values = np.atleast_2d(np.asarray(values, dtype=float))
    on = meets_target(values, target)
    if not on.any():
        return None
    best = best_index(values, target)
    return len(values) - 1 - best
