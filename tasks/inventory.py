"""Reagent inventory (what each syringe holds, when it runs dry, what to refill) and the
yield estimate of a manufacturing run (g/h from flowrates and stock concentrations).

Pure functions: the flow reads the pumps and passes plain numbers in.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from hardware.errors import SdflInputError
from hardware.platform import PlatformConfig

ATOMIC_MASS_G_MOL = {
    "H": 1.008, "C": 12.011, "N": 14.007, "O": 15.999, "F": 18.998, "P": 30.974, "S": 32.06, "Cl": 35.45,
    "Cu": 63.546, "Zn": 65.38, "Br": 79.904, "Ag": 107.8682, "Cd": 112.414, "In": 114.818, "Sn": 118.71,
    "I": 126.90447, "Cs": 132.90545, "Pb": 207.2, "Mn": 54.938, "Sb": 121.76, "Bi": 208.98,
}
_ELEMENT = re.compile(r"([A-Z][a-z]?)(\d*)")


# --- syringes ------------------------------------------------------------------------------
def minutes_left(remaining_ul: Mapping[str, float], flows_ul_min: Mapping[str, float]) -> dict[str, float]:
    """How long each running pump can go on at its flow (inf for idle pumps)."""
    return {name: (remaining_ul[name] / rate if rate > 0 else math.inf) for name, rate in flows_ul_min.items()}


def segment_volumes(flows_ul_min: Mapping[str, float], segment_s: float, margin: float) -> dict[str, float]:
    """Volume to program per pump for one production segment: flow x segment x margin."""
    return {name: rate * segment_s / 60.0 * margin for name, rate in flows_ul_min.items() if rate > 0}


def check_segment_fits(flows_ul_min: Mapping[str, float], syringe_ul: Mapping[str, float], segment_s: float,
                       margin: float) -> None:
    """A segment's volume must fit in each syringe, else no refill could ever cover it."""
    too_big = {n: v for n, v in segment_volumes(flows_ul_min, segment_s, margin).items() if v > syringe_ul[n]}
    if too_big:
        worst = max(too_big, key=lambda n: too_big[n] / syringe_ul[n])
        raise SdflInputError(
            f"segment_min: pump {worst!r} would need {too_big[worst]:.0f} uL per segment, more than its "
            f"{syringe_ul[worst]:.0f} uL syringe; shorten segment_min")


@dataclass(frozen=True)
class RefillRequest:
    """Syringes to refill before the next segment, and why."""

    pumps: tuple[str, ...]
    short: tuple[str, ...]
    """The pumps that could not cover the next segment (the others are topped up at the same stop)."""
    remaining_ul: dict[str, float]
    minutes_left: dict[str, float]

    def describe(self) -> str:
        parts = [f"{n} ({self.remaining_ul[n]:.0f} uL, {self.minutes_left[n]:.0f} min left)" for n in self.pumps]
        return f"refill {', '.join(parts)}; {', '.join(self.short)} would run dry within the next segment"


def refill_needed(remaining_ul: Mapping[str, float], flows_ul_min: Mapping[str, float], segment_s: float,
                  margin: float, horizon_s: float) -> RefillRequest | None:
    """None when every running syringe holds a whole next segment (x margin).

    Otherwise the request lists the short pumps plus every pump that would run dry within
    `horizon_s`, so one stop serves several syringes.
    """
    need = segment_volumes(flows_ul_min, segment_s, margin)
    short = tuple(n for n, v in need.items() if remaining_ul[n] < v)
    if not short:
        return None
    soon = segment_volumes(flows_ul_min, max(horizon_s, segment_s), margin)
    pumps = tuple(n for n in flows_ul_min if n in soon and (n in short or remaining_ul[n] < soon[n]))
    left = minutes_left(remaining_ul, flows_ul_min)
    return RefillRequest(pumps=pumps, short=short, remaining_ul={n: float(remaining_ul[n]) for n in pumps},
                         minutes_left={n: left[n] for n in pumps})


# --- yield ---------------------------------------------------------------------------------
def parse_formula(formula: str) -> dict[str, int]:
    """'Cs3Cu2I5' -> {'Cs': 3, 'Cu': 2, 'I': 5}. Simple formulas only (no brackets)."""
    if not isinstance(formula, str) or not formula or "".join(a + b for a, b in _ELEMENT.findall(formula)) != formula:
        raise SdflInputError(f"product: {formula!r} is not a simple chemical formula like 'Cs3Cu2I5'")
    counts: dict[str, int] = {}
    for element, n in _ELEMENT.findall(formula):
        if element not in ATOMIC_MASS_G_MOL:
            raise SdflInputError(f"product: element {element!r} of {formula!r} has no atomic mass here")
        counts[element] = counts.get(element, 0) + int(n or 1)
    return counts


def molar_mass(formula: str) -> float:
    return sum(ATOMIC_MASS_G_MOL[e] * n for e, n in parse_formula(formula).items())


def species_flows_nmol_min(platform: PlatformConfig, flows_ul_min: Mapping[str, float]) -> dict[str, float]:
    """Molar flow of each molar species into the reactor: sum of flow (uL/min) x concentration (mM).

    1 uL x 1 mM = 1 nmol.
    """
    out: dict[str, float] = {}
    for pump in platform.pumps:
        rate = flows_ul_min.get(pump.name, 0.0)
        for species, mM in platform.stocks[pump.stock].molar_mM.items():
            out[species] = out.get(species, 0.0) + rate * mM
    return out


@dataclass(frozen=True)
class YieldEstimate:
    """Product per hour at a recipe's flowrates."""

    product: str
    molar_mass_g_mol: float
    limiting_species: str
    formula_units_nmol_min: float
    """Formula units the limiting precursor could make per minute (full conversion)."""
    theoretical_g_h: float
    conversion: float | None
    conversion_source: str
    g_h: float | None
    """theoretical_g_h x conversion (None without a conversion estimate)."""

    def describe(self) -> str:
        head = (f"{self.product} ({self.molar_mass_g_mol:.1f} g/mol), limited by {self.limiting_species}: "
                f"{self.theoretical_g_h * 1e3:.2f} mg/h at full conversion")
        if self.g_h is None:
            return head + "; no conversion estimate"
        return head + f"; x conversion {self.conversion:.3f} ({self.conversion_source}) = {self.g_h * 1e3:.2f} mg/h"


def estimate_yield(platform: PlatformConfig, flows_ul_min: Mapping[str, float], product: str,
                   conversion: float | None = None, conversion_source: str = "given") -> YieldEstimate:
    """Yield (g/h) = formula units from the limiting precursor x conversion x molar mass.

    Assumptions: every element of the product comes only from the stocks' molar species of the
    same name (Cs from Cs-oleate, Cu and I from CuI); the limiting precursor is the element
    with the smallest molar flow / stoichiometric coefficient; `conversion` is the share of it
    that ends up as product (ligands, solvent and the carrier add no mass).
    """
    counts = parse_formula(product)
    flows = species_flows_nmol_min(platform, flows_ul_min)
    missing = [e for e in counts if flows.get(e, 0.0) <= 0]
    if missing:
        raise SdflInputError(f"product: no stock of this recipe supplies {missing} for {product}; "
                             "check the product formula or the platform's stocks")
    per_unit = {e: flows[e] / n for e, n in counts.items()}
    limiting = min(per_unit, key=per_unit.get)
    mass = molar_mass(product)
    theoretical = per_unit[limiting] * 1e-9 * 60.0 * mass
    if conversion is not None and not 0 < conversion <= 1:
        raise SdflInputError(f"conversion must be in (0, 1], got {conversion}")
    return YieldEstimate(product=product, molar_mass_g_mol=mass, limiting_species=limiting,
                         formula_units_nmol_min=per_unit[limiting], theoretical_g_h=theoretical,
                         conversion=conversion, conversion_source=conversion_source if conversion else "none",
                         g_h=theoretical * conversion if conversion is not None else None)
