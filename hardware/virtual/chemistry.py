"""The chemistry plug-in interface of the virtual lab: reactor state in, optical outcome out.

A chemistry model is any class with `required_species` and `outcome(state)`. The platform config
names it by import path (`[chemistry] model = "package.module:ClassName"`), so a response model
fitted to your own data drops in without editing sdfl. All fields may be numpy arrays of the
same shape: models are written with numpy operations and so evaluate many states at once.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from hardware.errors import PlatformConfigError

ArrayLike = float | np.ndarray


@dataclass
class ZoneState:
    """What a droplet saw in one temperature zone of the path (e.g. the core or shell tanks)."""

    temperature_c: ArrayLike
    time_s: ArrayLike


@dataclass
class ReactorState:
    """What a droplet saw: its composition, temperature, time in the reactor and the flow."""

    molar_mM: dict[str, ArrayLike]
    """Molar species in the reactive phase (mmol/L), e.g. {"Cs": 5.0, "Cu": 1.2}."""
    volume_fraction: dict[str, ArrayLike]
    """Liquid species as volume fractions of the reactive phase, e.g. {"OA": 0.05}."""
    temperature_c: ArrayLike
    reaction_time_s: ArrayLike
    precursor_flow_ul_min: ArrayLike
    """Total precursor flow: sets droplet velocity and so mixing."""
    zones: dict[str, ZoneState] = field(default_factory=dict)
    """Temperature and time in each heater zone of the path, by zone name. A one-reactor platform
    has a single zone ("reactor"), equal to temperature_c and reaction_time_s; multi-stage
    platforms (a CSTR cascade) have one per stage."""

    def species(self, name: str) -> ArrayLike:
        if name in self.molar_mM:
            return self.molar_mM[name]
        return self.volume_fraction.get(name, 0.0)


@dataclass
class Band:
    """A spectral band, Gaussian in photon energy. `height` is in the model's emission units
    (emission) or in absorbance per cm (absorption)."""

    center_nm: ArrayLike
    fwhm_nm: ArrayLike
    height: ArrayLike


@dataclass
class OpticalOutcome:
    """The optical properties of the product in a droplet after the reactor."""

    emission: list[Band]
    """Emission bands under the PL excitation, per unit excitation absorbed."""
    absorption: list[Band]
    """Absorption bands, absorbance per cm."""
    edge_nm: ArrayLike = 0.0
    """Band edge below which the product absorbs as a continuum (0 = none)."""
    edge_height: ArrayLike = 0.0
    """Absorbance per cm of the continuum well below the edge."""
    edge_width_nm: ArrayLike = 5.0
    scattering_at_400nm: ArrayLike = 0.0
    """Rayleigh-like scattering, absorbance per cm at 400 nm, scaling as lambda^-4."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Model-specific truths (yield, PLQY) for tests; not seen by the detectors."""


@runtime_checkable
class ChemistryModel(Protocol):
    required_species: dict[str, str]
    """Species the model reads, each "mM" or "fraction"."""

    def outcome(self, state: ReactorState) -> OpticalOutcome:
        ...


def import_object(path: str) -> Any:
    module_name, _, attribute = path.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute)


def load_chemistry(path: str, options: dict[str, Any] | None = None, *, source: str = "") -> ChemistryModel:
    """Import and build the chemistry model named by `path` ('package.module:ClassName')."""
    where = f"{source}: " if source else ""
    try:
        cls = import_object(path)
    except (ImportError, AttributeError, ValueError) as exc:
        raise PlatformConfigError(
            f"{where}chemistry.model: cannot import {path!r} ({exc}); give 'package.module:ClassName' "
            "of a class importable in this environment"
        ) from exc
    try:
        model = cls(**(options or {}))
    except Exception as exc:  # any error a plug-in raises on its options is a config error
        raise PlatformConfigError(f"{where}chemistry.options: {path} rejected its options: {exc}") from exc
    if not isinstance(model, ChemistryModel):
        raise PlatformConfigError(
            f"{where}chemistry.model: {path} is not a chemistry model: it needs `required_species` "
            "and `outcome(state) -> OpticalOutcome`"
        )
    return model
