"""The noiseless digital twin over the parameter space: true features and the true optimum.

For tests and benchmarks: what the virtual lab would measure at perfect steady state with no
noise, for many conditions at once, through the same formulation and feature code the loop uses.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
from scipy import optimize

from hardware.platform import PlatformConfig
from hardware.virtual.chemistry import ReactorState, ZoneState
from hardware.virtual.lab import VirtualLab
from tasks.features import FeatureSettings, extract_features
from tasks.formulation import formulate
from tasks.storage import data_root


@dataclass
class Optimum:
    condition: dict[str, float]
    value: float
    objective: str


class DigitalTwin:
    """Steady-state, noiseless response of a virtual platform."""

    def __init__(self, platform: PlatformConfig, seed: int = 0):
        self.platform = platform
        self.lab = VirtualLab(platform, seed=seed)
        self.settings = FeatureSettings.from_config(platform.features)

    @property
    def names(self) -> list[str]:
        return self.platform.parameter_names

    def features(self, conditions: list[dict[str, float]] | pd.DataFrame, check_bounds: bool = True) -> pd.DataFrame:
        """Noiseless features (and the model's own truths: plqy, yield...) for each condition."""
        rows = conditions.to_dict(orient="records") if isinstance(conditions, pd.DataFrame) else list(conditions)
        plans = [formulate(row, self.platform, check_bounds=check_bounds) for row in rows]
        flows = {p.name: np.array([plan.flows_ul_min[p.name] for plan in plans]) for p in self.platform.pumps}
        temperature = np.array([plan.temperature_c for plan in plans])
        reaction_time = np.array([plan.reaction_time_s for plan in plans])
        zones = {zone: ZoneState(np.array([plan.temperatures_c[zone] for plan in plans]),
                                 np.array([plan.zone_times_s[zone] for plan in plans]))
                 for zone in self.platform.heaters}
        pl, sample, reference = self.lab.steady_state_signals(flows, temperature, reaction_time, zones)
        absorbance = -np.log10(np.clip(sample / reference, 1e-6, None))
        wl_pl = self.lab.spectrometers["pl"].wavelengths()
        wl_abs = self.lab.spectrometers["abs"].wavelengths()
        table = extract_features(wl_pl, pl, absorbance, self.settings, abs_wavelengths_nm=wl_abs)
        truths = self.truths(flows, temperature, reaction_time, zones)
        return pd.concat([pd.DataFrame(rows), table, truths], axis=1)

    def truths(self, flows, temperature, reaction_time, zones=None) -> pd.DataFrame:
        from hardware.virtual.transport import mix_stocks

        reagents = {n: q for n, q in flows.items() if self.platform.pump(n).role == "reagent"}
        molar, fraction = mix_stocks(self.platform, reagents)
        state = ReactorState(molar, fraction, temperature, reaction_time, sum(reagents.values()), dict(zones or {}))
        extras = self.lab.chemistry.outcome(state).extras
        return pd.DataFrame({k: np.broadcast_to(np.asarray(v, dtype=float), temperature.shape)
                             for k, v in extras.items()})

    def objective(self, x: np.ndarray, objective: str | Callable[[dict], float]) -> np.ndarray:
        """Objective (a feature name or an Objective) for rows of parameter vectors (space order)."""
        rows = [dict(zip(self.names, map(float, row))) for row in np.atleast_2d(x)]
        table = self.features(rows)
        if isinstance(objective, str):
            return table[objective].to_numpy()
        return np.array([objective(r) for r in table.to_dict(orient="records")], dtype=float)

    def monte_carlo(self, n: int = 1000, seed: int = 0) -> np.ndarray:
        """`n` uniform random conditions over the space (parameter units)."""
        rng = np.random.default_rng(seed)
        low, high = np.array(self._bounds).T
        return low + rng.random((n, len(low))) * (high - low)

    @cached_property
    def _bounds(self) -> list[tuple[float, float]]:
        return [(p.low, p.high) for p in self.platform.parameters]

    def true_optimum(self, objective: str | Callable[[dict], float] = "PL_I", seed: int = 0) -> Optimum:
        """The global maximum of `objective` over the space (differential evolution + polish)."""
        result = optimize.differential_evolution(
            lambda X: -self.objective(X.T, objective), self._bounds, seed=seed, vectorized=True,
            popsize=30, tol=1e-8, maxiter=300, polish=False, updating="deferred",
        )
        polished = optimize.minimize(lambda x: -self.objective(x, objective)[0], result.x,
                                     method="L-BFGS-B", bounds=self._bounds)
        best = polished if polished.fun < result.fun else result
        name = objective if isinstance(objective, str) else getattr(objective, "expression", "objective")
        return Optimum(dict(zip(self.names, map(float, best.x))), float(-best.fun), name)


def cached_true_optimum(platform: PlatformConfig, objective, root) -> Optimum:
    """The twin's true optimum, cached under the data root per platform file and objective."""
    name = objective if isinstance(objective, str) else objective.expression
    key = hashlib.sha256(f"{platform.sha256}|{name}".encode()).hexdigest()[:16]
    path = data_root(root) / "twin" / f"optimum-{key}.json"
    if path.exists():
        data = json.loads(path.read_text())
        return Optimum(data["condition"], data["value"], data["objective"])
    optimum = DigitalTwin(platform).true_optimum(objective)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"condition": optimum.condition, "value": optimum.value, "objective": name}))
    return optimum
