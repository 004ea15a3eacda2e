"""Physical quantities in config files ("840 uL", "600 uL/min", "150 degC"), parsed with pint.

Every quantity is converted at the boundary to the one unit sdfl computes in, so the rest of
the code works with plain floats whose unit is in the name (`volume_ul`, `flow_ul_min`).
"""

from __future__ import annotations

import re
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Annotated

import pint
import platformdirs
from pydantic import BeforeValidator

_NUMBER_AND_UNIT = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(.*?)\s*$")

# Canonical unit per dimension, with an example shown in error messages.
CANONICAL = {
    "volume": ("uL", "840 uL"),
    "flowrate": ("uL/min", "600 uL/min"),
    "time": ("s", "30 s"),
    "temperature": ("degC", "150 degC"),
    "temperature_delta": ("delta_degC", "0.5 K"),
    "length": ("nm", "450 nm"),
    "distance": ("mm", "28.6 mm"),
    "concentration": ("mM", "7.5 mM"),
    "fraction": ("dimensionless", "20 %"),
}


@lru_cache(maxsize=1)
def registry() -> pint.UnitRegistry:
    """pint's full registry, its parsed definitions kept on disk between processes.

    Parsing pint's definitions takes 0.5-0.9 CPU-s, and every process that reads a platform file
    pays it: each `sdfl` command, each flow run a worker starts. From the cache it takes about
    0.05 s. A cache that cannot be written or read (a read-only home, a file half-written by a
    process starting at the same moment) is set aside and the definitions parsed as before."""
    folder = unit_cache_folder()
    try:
        return pint.UnitRegistry(autoconvert_offset_to_baseunit=True, cache_folder=folder)
    except Exception:  # noqa: BLE001 - any failure of the cache; the registry itself is fine
        shutil.rmtree(folder, ignore_errors=True)
        return pint.UnitRegistry(autoconvert_offset_to_baseunit=True)


def unit_cache_folder() -> Path:
    """The user's cache folder for pint's parsed definitions, one per pint version."""
    return platformdirs.user_cache_path("sdfl", appauthor=False) / f"pint-{pint.__version__}"


def parse_quantity(text: str | float) -> pint.Quantity:
    """Parse "840 uL" into a pint quantity; a bare number is dimensionless."""
    ureg = registry()
    if isinstance(text, bool):
        raise ValueError(f"expected a quantity such as '840 uL', got {text!r}")
    if isinstance(text, (int, float)):
        return ureg.Quantity(float(text), "dimensionless")
    if not isinstance(text, str):
        raise ValueError(f"expected a quantity such as '840 uL', got {text!r}")
    match = _NUMBER_AND_UNIT.match(text)
    if not match:
        raise ValueError(f"cannot read {text!r}: write a number then a unit, such as '840 uL'")
    number, unit = float(match.group(1)), match.group(2) or "dimensionless"
    unit = unit.replace("%", "percent")
    try:
        return ureg.Quantity(number, unit)
    except (pint.UndefinedUnitError, AttributeError, TypeError, ValueError) as exc:
        raise ValueError(f"unknown unit {match.group(2)!r} in {text!r}") from exc


def to_canonical(text: str | float, dimension: str) -> float:
    """Parse `text` and return its magnitude in the canonical unit of `dimension`."""
    unit, example = CANONICAL[dimension]
    quantity = parse_quantity(text)
    if dimension == "fraction" and isinstance(text, (int, float)):
        return float(text)
    if dimension != "fraction" and quantity.dimensionless:
        raise ValueError(f"{text!r} has no unit: write a {dimension} such as '{example}'")
    try:
        return float(quantity.to(unit).magnitude)
    except pint.DimensionalityError as exc:
        raise ValueError(
            f"{text!r} is not a {dimension}: write a {dimension} such as '{example}'"
        ) from exc


DIMENSIONLESS = frozenset({"1", "", "dimensionless"})
"""How a config writes "no unit" (a fraction between 0 and 1)."""


def unit_label(unit: str) -> str:
    """The unit as a user should see it after a number: "" for a dimensionless fraction ("1")."""
    return "" if unit.strip() in DIMENSIONLESS else unit


def with_unit(text: str, unit: str) -> str:
    """`text` followed by its unit ("[120, 150] degC"), or `text` alone for a fraction."""
    label = unit_label(unit)
    return f"{text} {label}" if label else text


def unit_validator(dimension: str) -> BeforeValidator:
    return BeforeValidator(lambda value: to_canonical(value, dimension))


def check_unit(unit: str, dimension: str) -> str:
    """Check that `unit` is a known unit of `dimension`; return it unchanged."""
    canonical, example = CANONICAL[dimension]
    try:
        quantity = registry().Quantity(1.0, unit.replace("%", "percent"))
    except (pint.UndefinedUnitError, AttributeError, TypeError, ValueError) as exc:
        raise ValueError(f"unknown unit {unit!r}: use {canonical!r} (as in '{example}')") from exc
    try:
        quantity.to(canonical)
    except pint.DimensionalityError as exc:
        raise ValueError(f"unit {unit!r} is not a {dimension}: use {canonical!r}") from exc
    return unit


VolumeUL = Annotated[float, unit_validator("volume")]
FlowULMin = Annotated[float, unit_validator("flowrate")]
Seconds = Annotated[float, unit_validator("time")]
Celsius = Annotated[float, unit_validator("temperature")]
Kelvins = Annotated[float, unit_validator("temperature_delta")]
Nanometres = Annotated[float, unit_validator("length")]
Millimetres = Annotated[float, unit_validator("distance")]
Fraction = Annotated[float, unit_validator("fraction")]
