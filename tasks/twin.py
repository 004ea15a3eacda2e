"""The noiseless digital twin over the parameter space: true features and the true optimum.

For tests and benchmarks: what the virtual lab would measure at perfect steady state with no
noise, for many conditions at once, through the same formulation and feature code the loop uses.

The true optimum takes a minute or more of differential evolution on the full spectral twin, so
it is computed once for each shipped platform and objective and shipped beside the platform files
(`hardware/platforms/twin-optima.json`; `python -m tasks.twin` recomputes it); a copy of a
shipped platform that changes nothing of its twin (`TWIN_NEUTRAL`) uses it too. A user's own
platform gets a bounded search (about ten seconds) that logs its progress, cached under the data
root; its value is an estimate and is marked so.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
from scipy import optimize

from hardware.platform import PLATFORM_DIR, PlatformConfig
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
    exhaustive: bool = True
    """False for the bounded search of a platform without a shipped optimum (an estimate)."""


SHIPPED_OPTIMA = PLATFORM_DIR / "twin-optima.json"
BOUNDED_GENERATIONS = 40
"""Generations of the bounded search (population 30 per input): about ten seconds on two cores."""
FULL_GENERATIONS = 300
BRIGHTNESS = "PL_A / (1 - 10 ** (-Abs_300))"
"""PL per absorbed excitation: the PLQY proxy of a platform that does not declare its own."""


def shipped_objectives(platform: PlatformConfig) -> tuple[str, ...]:
    """What campaigns on a shipped platform maximise: PL_I (the default) and its PLQY proxy."""
    return ("PL_I", platform.features.plqy_proxy or BRIGHTNESS)

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

    def true_optimum(self, objective: str | Callable[[dict], float] = "PL_I", seed: int = 0,
                     generations: int = FULL_GENERATIONS, log: logging.Logger | None = None) -> Optimum:
        """The global maximum of `objective` over the space (differential evolution + polish).

        `generations` bounds the search; `log` gets a line every ten generations."""
        name = objective if isinstance(objective, str) else getattr(objective, "expression", "objective")
        started = time.monotonic()
        generation = 0

        def progress(intermediate_result) -> None:
            nonlocal generation
            generation += 1
            if log is not None and generation % 10 == 0:
                log.info("searching the twin's optimum of %s: generation %d of at most %d, best %.5g (%.0f s)",
                         name, generation, generations, -intermediate_result.fun, time.monotonic() - started)

        result = optimize.differential_evolution(
            lambda X: -self.objective(X.T, objective), self._bounds, seed=seed, vectorized=True,
            popsize=30, tol=1e-8, maxiter=generations, polish=False, updating="deferred", callback=progress,
        )
        polished = optimize.minimize(lambda x: -self.objective(x, objective)[0], result.x,
                                     method="L-BFGS-B", bounds=self._bounds)
        best = polished if polished.fun < result.fun else result
        return Optimum(dict(zip(self.names, map(float, best.x))), float(-best.fun), name,
                       exhaustive=generations >= FULL_GENERATIONS)


def objective_name(objective) -> str:
    return objective if isinstance(objective, str) else objective.expression


TWIN_NEUTRAL = {"source": True, "sha256": True, "platform": {"name": True, "base": True, "description": True},
                "virtual": {"pace": True}}
"""What a platform may change without changing its twin: its name, base and description, where
it was read from, and how fast the virtual lab's clock runs against the wall's."""


def twin_fingerprint(platform: PlatformConfig) -> str:
    """A hash of everything in the platform that shapes its twin's response (not TWIN_NEUTRAL)."""
    data = platform.model_dump(mode="json", exclude=TWIN_NEUTRAL)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


@functools.cache
def _shipped_fingerprints() -> dict[str, str]:
    """Twin fingerprint -> the shipped platform it belongs to (for files unchanged since shipping)."""
    from hardware.platform import load_platform

    table = json.loads(SHIPPED_OPTIMA.read_text()) if SHIPPED_OPTIMA.exists() else {}
    found = {}
    for name, entry in sorted(table.items()):
        shipped = load_platform(name)
        if shipped.sha256 == entry.get("sha256"):
            found.setdefault(twin_fingerprint(shipped), name)
    return found


def shipped_optimum(platform: PlatformConfig, objective) -> Optimum | None:
    """The optimum shipped for this platform and objective, if there is one: the platform's own,
    or that of a shipped platform with the same twin (a copy under another name, or paced)."""
    if not SHIPPED_OPTIMA.exists():
        return None
    table = json.loads(SHIPPED_OPTIMA.read_text())
    entry = table.get(platform.platform.name, {})
    if entry.get("sha256") != platform.sha256:
        entry = table.get(_shipped_fingerprints().get(twin_fingerprint(platform), ""), {})
    found = entry.get("objectives", {}).get(objective_name(objective))
    return Optimum(found["condition"], found["value"], objective_name(objective)) if found else None


def cached_true_optimum(platform: PlatformConfig, objective, root, log: logging.Logger | None = None) -> Optimum:
    """The twin's true optimum: the shipped one, else one cached under the data root, else a
    bounded search (logged as it goes, cached for the next campaign)."""
    shipped = shipped_optimum(platform, objective)
    if shipped is not None:
        return shipped
    name = objective_name(objective)
    key = hashlib.sha256(f"{platform.sha256}|{name}".encode()).hexdigest()[:16]
    path = data_root(root) / "twin" / f"optimum-{key}.json"
    if path.exists():
        data = json.loads(path.read_text())
        return Optimum(data["condition"], data["value"], data["objective"], data.get("exhaustive", True))
    log = log or logging.getLogger(__name__)
    log.info("no optimum is shipped for platform %s and %s: a bounded search of the twin (about ten seconds)",
             platform.platform.name, name)
    optimum = DigitalTwin(platform).true_optimum(objective, generations=BOUNDED_GENERATIONS, log=log)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"condition": optimum.condition, "value": optimum.value, "objective": name,
                                "exhaustive": optimum.exhaustive}))
    return optimum


def ship_optima(platforms: list[str]) -> dict:
    """Compute the full optimum of every platform and its shipped objectives; write SHIPPED_OPTIMA."""
    from hardware.platform import load_platform

    table = json.loads(SHIPPED_OPTIMA.read_text()) if SHIPPED_OPTIMA.exists() else {}
    for name in platforms:
        platform = load_platform(name)
        twin = DigitalTwin(platform)
        entry = {"sha256": platform.sha256, "objectives": {}}
        for objective in shipped_objectives(platform):
            started = time.monotonic()
            optimum = twin.true_optimum(as_objective(objective, platform))
            entry["objectives"][objective] = {"value": optimum.value, "condition": optimum.condition}
            print(f"{name} {objective}: {optimum.value:.6g} ({time.monotonic() - started:.0f} s)")
        table[name] = entry
    SHIPPED_OPTIMA.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    return table


def as_objective(expression: str, platform: PlatformConfig):
    """A feature name stays a name; a formula becomes the campaign's Objective."""
    from tasks.features import feature_columns
    from tasks.objective import parse_objective

    if expression in feature_columns(FeatureSettings.from_config(platform.features)):
        return expression
    return parse_objective(expression, feature_columns(FeatureSettings.from_config(platform.features)))


if __name__ == "__main__":
    import argparse

    from hardware.platform import load_platform, shipped_platforms

    parser = argparse.ArgumentParser(description="Recompute the shipped optima of the virtual platforms' twins.")
    parser.add_argument("platforms", nargs="*", help="default: every shipped platform with a twin")
    args = parser.parse_args()
    ship_optima(args.platforms or [p for p in shipped_platforms() if load_platform(p).platform.kind != "real"])
