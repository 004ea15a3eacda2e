"""Inner diameters of common syringes, for `set diameter` on a syringe pump.

A pump turns plunger travel into volume through the inner diameter, so a wrong diameter is a
wrong flow rate. The values are the ones vendors and pump makers publish; check a new syringe
against its own datasheet (or weigh what it delivers) before trusting them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hardware.errors import SdflInputError


@dataclass(frozen=True)
class Syringe:
    name: str
    volume_ul: float
    inner_diameter_mm: float
    source: str

    @property
    def stroke_mm(self) -> float:
        """Plunger travel for the full volume."""
        return stroke_mm(self.volume_ul, self.inner_diameter_mm)


def _table(*rows: tuple[str, float, float, str]) -> dict[str, Syringe]:
    return {name: Syringe(name, volume_ml * 1000.0, diameter, source) for name, volume_ml, diameter, source in rows}


SYRINGES: dict[str, Syringe] = _table(
    # The default platform's stainless-steel syringes (values of its config file).
    ("stainless-50ml", 50.0, 28.6, "platform virtual-cs3cu2i5 (Chemyx stainless steel, 50 mL)"),
    ("stainless-100ml", 100.0, 34.9, "platform virtual-cs3cu2i5 (Chemyx stainless steel, 100 mL)"),
    # Hamilton Gastight 1000 series (glass, PTFE-tipped plunger).
    ("hamilton-1001", 1.0, 4.61, "Hamilton Gastight 1001"),
    ("hamilton-1002", 2.5, 7.29, "Hamilton Gastight 1002"),
    ("hamilton-1005", 5.0, 10.30, "Hamilton Gastight 1005"),
    ("hamilton-1010", 10.0, 14.57, "Hamilton Gastight 1010"),
    ("hamilton-1025", 25.0, 23.03, "Hamilton Gastight 1025"),
    ("hamilton-1050", 50.0, 32.57, "Hamilton Gastight 1050"),
    # BD Plastipak (disposable polypropylene), as pump makers list them.
    ("bd-plastipak-1ml", 1.0, 4.699, "BD Plastipak 1 mL"),
    ("bd-plastipak-3ml", 3.0, 8.585, "BD Plastipak 3 mL"),
    ("bd-plastipak-5ml", 5.0, 11.989, "BD Plastipak 5 mL"),
    ("bd-plastipak-10ml", 10.0, 14.427, "BD Plastipak 10 mL"),
    ("bd-plastipak-20ml", 20.0, 19.05, "BD Plastipak 20 mL"),
    ("bd-plastipak-30ml", 30.0, 21.59, "BD Plastipak 30 mL"),
    ("bd-plastipak-60ml", 60.0, 26.594, "BD Plastipak 50/60 mL"),
)


def stroke_mm(volume_ul: float, inner_diameter_mm: float) -> float:
    """Plunger travel (mm) that moves `volume_ul` through a barrel of that inner diameter."""
    return volume_ul / (math.pi * (inner_diameter_mm / 2.0) ** 2)


def lookup(name: str) -> Syringe:
    """A syringe of the table by name; the error lists the known names."""
    try:
        return SYRINGES[name.strip().lower()]
    except KeyError:
        raise SdflInputError(f"unknown syringe {name!r}; known: {', '.join(sorted(SYRINGES))}") from None


def check_diameter(volume_ul: float, inner_diameter_mm: float) -> None:
    """Refuse a diameter that cannot belong to a syringe of that volume (a typo, or mm vs cm).

    Lab syringes have strokes between about 10 and 150 mm; anything outside is a units mistake.
    """
    stroke = stroke_mm(volume_ul, inner_diameter_mm)
    if not 10.0 <= stroke <= 150.0:
        raise SdflInputError(
            f"a {volume_ul:g} uL syringe with a {inner_diameter_mm:g} mm bore would have a {stroke:.0f} mm "
            "stroke; lab syringes have 10-150 mm: check the inner diameter (in mm) against the syringe's datasheet"
        )
