"""Flow-regime numbers (Re, Pe, Da, Ca, Bo, We) and the rules a platform applies to them.

Pure functions, SI units throughout (kg/m3, Pa s, m2/s, N/m, m, m3/s, 1/s, s). Nothing here
knows about Prefect or the platform config: a caller builds a `Fluid`, a `Channel` and a flow,
gets the numbers from `regime_numbers`, checks them with `check_regime` against a list of
`RegimeRule`s and, if it wants rejections to stop a condition, calls `enforce_regime`.

Conventions follow the flow-synthesis review (paper 002, FACTS.md section P2 "Design numbers"):

- Re = rho U D / eta with D the channel (hydrodynamic) diameter [P2:L29].
- The characteristic diffusion length x is half the channel diameter in single-phase flow and a
  quarter of it in segmented (two-phase) flow, because recirculation inside the plugs shortens
  the radial path [P2:L88]. Pe and the mixing Da use x, which is why the review says Pe halves
  and Da falls to a quarter when going from single- to two-phase flow.
- Da is the mixing Damkohler number: diffusion time t_diff = x^2 / (2 D_AB) [P2:L82] over the
  reaction time 1/k [P2:L80]. Da < 1 means mixing outpaces the reaction [P2:L84]. The classical
  reactor Damkohler number k * tau (residence time over reaction time) is a different quantity
  with the opposite "good" direction (> 1 means the reaction completes in the reactor); it is
  reported separately as ``Da_I`` when a residence time is given, and no default rule uses it.
- Ca, Bo and We describe the stability of segmented flow and need a carrier fluid and the
  interfacial tension between the reactive fluid and the carrier [P2:L96].

A number that cannot be computed from what was given is absent from the result (not NaN);
`absent_numbers` says what is missing for each.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Literal

import pint

from hardware.errors import InfeasibleCondition, SdflInputError
from hardware.units import parse_quantity, registry

GRAVITY_M_S2 = 9.80665
"""Standard gravity, for the Bond number."""

NUMBERS = ("Re", "Pe", "Da", "Da_I", "Ca", "Bo", "We")
"""Every number `regime_numbers` can return, in a stable order."""


# --- inputs --------------------------------------------------------------------------------


def _positive(what: str, value: float, unit: str) -> float:
    """Return `value` as a float if it is finite and > 0, else raise SdflInputError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SdflInputError(f"{what} must be a number in {unit}, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise SdflInputError(f"{what} must be positive and finite (in {unit}), got {value!r}")
    return value


@dataclass(frozen=True)
class Fluid:
    """A liquid (or gas) and the properties the regime numbers need, in SI units.

    `diffusivity_m2_s` is the molecular diffusivity of the species whose mixing matters
    (precursor, monomer or particle) in this fluid; `interfacial_tension_n_m` is the tension
    between this (reactive) fluid and the carrier of a segmented flow.
    """

    name: str
    density_kg_m3: float
    viscosity_pa_s: float
    diffusivity_m2_s: float | None = None
    interfacial_tension_n_m: float | None = None

    def __post_init__(self) -> None:
        _positive(f"{self.name}: density", self.density_kg_m3, "kg/m3")
        _positive(f"{self.name}: viscosity", self.viscosity_pa_s, "Pa s")
        if self.diffusivity_m2_s is not None:
            _positive(f"{self.name}: diffusivity", self.diffusivity_m2_s, "m2/s")
        if self.interfacial_tension_n_m is not None:
            _positive(f"{self.name}: interfacial tension", self.interfacial_tension_n_m, "N/m")


@dataclass(frozen=True)
class Channel:
    """A circular channel (tube) of inner diameter `diameter_m`."""

    diameter_m: float
    name: str = "channel"

    def __post_init__(self) -> None:
        _positive(f"{self.name}: inner diameter", self.diameter_m, "m")

    @property
    def area_m2(self) -> float:
        """Cross-section pi d^2 / 4."""
        return math.pi * self.diameter_m**2 / 4.0


# --- unit helpers --------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def si(text: str | float, unit: str) -> float:
    """Parse a quantity such as "0.554 mPa s" or "1.5875 mm" and return its magnitude in `unit`.

    Cached: the twin checks the same platform's fluid table for thousands of conditions.

    Uses the project's pint registry (hardware/units.py), so config files can write fluid
    properties with any unit. A bare number is refused: the unit must be written.
    """
    quantity = parse_quantity(text)
    if quantity.dimensionless and not registry().Quantity(1.0, unit).dimensionless:
        raise SdflInputError(f"{text!r} has no unit: write it in {unit} or a compatible unit")
    try:
        return float(quantity.to(unit).magnitude)
    except pint.DimensionalityError as exc:
        raise SdflInputError(f"{text!r} cannot be converted to {unit}") from exc


def ml_per_h_to_m3_s(flow_ml_h: float) -> float:
    """mL/h -> m3/s (1 mL/h = 1e-6 m3 / 3600 s)."""
    return float(flow_ml_h) * 1e-6 / 3600.0


def ul_per_min_to_m3_s(flow_ul_min: float) -> float:
    """uL/min -> m3/s (1 uL/min = 1e-9 m3 / 60 s); uL/min is the flow unit of the platform configs."""
    return float(flow_ul_min) * 1e-9 / 60.0


def flow_m3_s(text: str | float) -> float:
    """Parse a flowrate such as "1000 mL/h" or "600 uL/min" into m3/s."""
    return si(text, "m**3/s")


# --- the numbers ---------------------------------------------------------------------------


def mean_velocity(flow_m3_s: float, channel: Channel) -> float:
    """Mean (superficial) velocity U = Q / (pi d^2 / 4), in m/s.

    Q is the total volumetric flow through the channel (for segmented flow: reactive phase +
    carrier, which move together as a train of plugs).
    """
    return _positive("flow", flow_m3_s, "m3/s") / channel.area_m2


def reynolds(fluid: Fluid, velocity_m_s: float, diameter_m: float) -> float:
    """Reynolds number Re = rho U d / mu [P2:L29]: inertial over viscous forces.

    In a straight tube the flow is laminar below about 1800-2300 [P0:L58]; microfluidic
    reactors sit far below that [P2:L27].
    """
    return fluid.density_kg_m3 * velocity_m_s * diameter_m / fluid.viscosity_pa_s


def diffusion_length(diameter_m: float, segmented: bool) -> float:
    """Characteristic radial diffusion length x [P2:L88]: d/2 in single-phase flow, d/4 in
    segmented flow (the recirculation inside each plug halves the path)."""
    return diameter_m / (4.0 if segmented else 2.0)


def diffusion_time(diameter_m: float, diffusivity_m2_s: float, segmented: bool) -> float:
    """Radial diffusion time t_diff = x^2 / (2 D) [P2:L82], in s."""
    return diffusion_length(diameter_m, segmented) ** 2 / (2.0 * diffusivity_m2_s)


def peclet(velocity_m_s: float, diameter_m: float, diffusivity_m2_s: float, segmented: bool) -> float:
    """Peclet number Pe = U x / D: advection over diffusion across the channel.

    The length is the diffusion length x (d/2 single-phase, d/4 segmented), not the channel
    diameter or the reactor length, because the review ties Pe to x (Pe halves in two-phase
    flow [P2:L88]). Pe = 1e3-1e5 is the favourable range [P2:L86]. Note: with x = d/2 this Pe is
    half of the common U d / D.
    """
    return velocity_m_s * diffusion_length(diameter_m, segmented) / diffusivity_m2_s


def damkohler_mixing(
    rate_constant_per_s: float, diameter_m: float, diffusivity_m2_s: float, segmented: bool
) -> float:
    """Mixing Damkohler number Da = t_diff / t_reaction = k x^2 / (2 D) [P2:L80-84].

    k is a first-order rate constant (t_reaction = 1/k). Da < 1: reaction-limited, the species
    are mixed faster than they are consumed (homogeneous, the desired regime); Da > 1:
    mass-transfer limited, mixing cannot keep up (inhomogeneous particles) [P2:L84]. Da falls
    to a quarter in segmented flow because x halves [P2:L88].
    """
    return rate_constant_per_s * diffusion_time(diameter_m, diffusivity_m2_s, segmented)


def damkohler_residence(rate_constant_per_s: float, residence_time_s: float) -> float:
    """Reactor (first) Damkohler number Da_I = k tau: residence time over reaction time 1/k.

    Da_I >> 1 means a first-order reaction completes inside the reactor (conversion
    1 - exp(-Da_I) in plug flow). Not the review's Da (see `damkohler_mixing`).
    """
    return rate_constant_per_s * residence_time_s


def capillary(carrier: Fluid, velocity_m_s: float, interfacial_tension_n_m: float) -> float:
    """Capillary number Ca = mu U / gamma: viscous over interfacial forces [P2:L96].

    mu is the carrier's viscosity: the carrier is the continuous phase that wets the wall and
    shears the plugs (for PFO-carried organic plugs, the PFO). Ca > 0.01 tends to annular flow.
    """
    return carrier.viscosity_pa_s * velocity_m_s / interfacial_tension_n_m


def bond(fluid: Fluid, carrier: Fluid, diameter_m: float, interfacial_tension_n_m: float) -> float:
    """Bond (Eotvos) number Bo = |rho_fluid - rho_carrier| g d^2 / gamma: gravity over
    interfacial forces [P2:L96]. Near 1 the lubrication film around the plugs breaks."""
    delta_rho = abs(fluid.density_kg_m3 - carrier.density_kg_m3)
    return delta_rho * GRAVITY_M_S2 * diameter_m**2 / interfacial_tension_n_m


def weber(fluid: Fluid, velocity_m_s: float, diameter_m: float, interfacial_tension_n_m: float) -> float:
    """Weber number We = rho U^2 d / gamma: inertia over interfacial forces [P2:L96].

    rho is the reactive (plug-forming) fluid's density: We > 1 means its inertia wins over the
    interface at the junction and the stream jets instead of pinching into plugs.
    """
    return fluid.density_kg_m3 * velocity_m_s**2 * diameter_m / interfacial_tension_n_m


def _check_optional(what: str, value: float | None, unit: str) -> float | None:
    return None if value is None else _positive(what, value, unit)


def regime_numbers(
    fluid: Fluid,
    channel: Channel,
    flow_m3_s: float,
    *,
    carrier: Fluid | None = None,
    rate_constant_per_s: float | None = None,
    residence_time_s: float | None = None,
) -> dict[str, float]:
    """Every regime number that the inputs allow, keyed "Re", "Pe", "Da", "Da_I", "Ca", "Bo", "We".

    `flow_m3_s` is the total flow through `channel`. Giving a `carrier` makes the flow
    segmented (x = d/4 for Pe and Da) and enables Ca, Bo and We, which also need
    `fluid.interfacial_tension_n_m`. Pe needs `fluid.diffusivity_m2_s`; Da needs it and the
    rate constant; Da_I needs the rate constant and the residence time. Anything missing leaves
    its number out; `absent_numbers` explains why.
    """
    rate = _check_optional("reaction rate constant", rate_constant_per_s, "1/s")
    tau = _check_optional("residence time", residence_time_s, "s")
    u = mean_velocity(flow_m3_s, channel)
    d = channel.diameter_m
    segmented = carrier is not None
    numbers = {"Re": reynolds(fluid, u, d)}
    diffusivity = fluid.diffusivity_m2_s
    if diffusivity is not None:
        numbers["Pe"] = peclet(u, d, diffusivity, segmented)
        if rate is not None:
            numbers["Da"] = damkohler_mixing(rate, d, diffusivity, segmented)
    if rate is not None and tau is not None:
        numbers["Da_I"] = damkohler_residence(rate, tau)
    gamma = fluid.interfacial_tension_n_m
    if carrier is not None and gamma is not None:
        numbers["Ca"] = capillary(carrier, u, gamma)
        numbers["Bo"] = bond(fluid, carrier, d, gamma)
        numbers["We"] = weber(fluid, u, d, gamma)
    return numbers


def absent_numbers(
    fluid: Fluid,
    *,
    carrier: Fluid | None = None,
    rate_constant_per_s: float | None = None,
    residence_time_s: float | None = None,
) -> dict[str, str]:
    """For each number `regime_numbers` would leave out with these inputs: what is missing."""
    missing: dict[str, str] = {}
    no_d = f"needs the diffusivity of {fluid.name} (Fluid.diffusivity_m2_s)"
    if fluid.diffusivity_m2_s is None:
        missing["Pe"] = no_d
    needs = []
    if rate_constant_per_s is None:
        needs.append("a reaction rate constant (rate_constant_per_s)")
    if fluid.diffusivity_m2_s is None:
        needs.append(f"the diffusivity of {fluid.name}")
    if needs:
        missing["Da"] = "needs " + " and ".join(needs)
    needs_i = []
    if rate_constant_per_s is None:
        needs_i.append("a reaction rate constant")
    if residence_time_s is None:
        needs_i.append("a residence time")
    if needs_i:
        missing["Da_I"] = "needs " + " and ".join(needs_i)
    if carrier is None:
        why = "segmented flow only: needs a carrier fluid"
    elif fluid.interfacial_tension_n_m is None:
        why = f"needs the interfacial tension of {fluid.name} against {carrier.name}"
    else:
        why = ""
    if why:
        missing.update({"Ca": why, "Bo": why, "We": why})
    return missing


# --- rules -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegimeRule:
    """A bound on one regime number: below `min` or above `max` triggers `action`.

    `source` says in a few words why the bound is there; it is shown with every breach, so it
    speaks to the user ("annular flow above"). Literature references belong in comments.
    """

    number: str
    min: float | None = None
    max: float | None = None
    action: Literal["warn", "reject"] = "warn"
    source: str = ""

    def __post_init__(self) -> None:
        if self.number not in NUMBERS:
            raise SdflInputError(f"regime rule on unknown number {self.number!r}: use one of {NUMBERS}")
        if self.min is None and self.max is None:
            raise SdflInputError(f"regime rule on {self.number} needs a min or a max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise SdflInputError(f"regime rule on {self.number}: min {self.min} > max {self.max}")
        if self.action not in ("warn", "reject"):
            raise SdflInputError(f"regime rule action must be 'warn' or 'reject', got {self.action!r}")

    @property
    def rule_name(self) -> str:
        """Name used in `InfeasibleCondition.rule`: "regime_<number>"."""
        return f"regime_{self.number}"

    def breach(self, value: float) -> str | None:
        """A message such as "Ca = 0.03 > 0.01 (annular flow above)" if `value` breaks the rule, else None."""
        source = f" ({self.source})" if self.source else ""
        if self.min is not None and value < self.min:
            return f"{self.number} = {value:.3g} < {self.min:.3g}{source}"
        if self.max is not None and value > self.max:
            return f"{self.number} = {value:.3g} > {self.max:.3g}{source}"
        return None


@dataclass(frozen=True)
class Breach:
    rule: RegimeRule
    value: float
    message: str


@dataclass(frozen=True)
class RegimeReport:
    """Numbers, and the rules they broke. `skipped` lists rules whose number was not computed."""

    numbers: dict[str, float]
    warnings: list[Breach] = field(default_factory=list)
    rejections: list[Breach] = field(default_factory=list)
    skipped: list[RegimeRule] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is rejected (warnings allowed)."""
        return not self.rejections

    def as_record(self) -> dict:
        """A JSON-ready summary to store with an experiment."""
        return {
            "numbers": dict(self.numbers),
            "warnings": [b.message for b in self.warnings],
            "rejections": [b.message for b in self.rejections],
            "skipped": [r.rule_name for r in self.skipped],
        }


def check_regime(numbers: dict[str, float], rules: list[RegimeRule]) -> RegimeReport:
    """Apply every rule to `numbers`; a rule whose number is absent is skipped, not failed."""
    warnings: list[Breach] = []
    rejections: list[Breach] = []
    skipped: list[RegimeRule] = []
    for rule in rules:
        if rule.number not in numbers:
            skipped.append(rule)
            continue
        value = numbers[rule.number]
        message = rule.breach(value)
        if message is not None:
            (rejections if rule.action == "reject" else warnings).append(Breach(rule, value, message))
    return RegimeReport(dict(numbers), warnings, rejections, skipped)


def enforce_regime(report: RegimeReport) -> RegimeReport:
    """Raise `InfeasibleCondition(rule="regime_<number>")` for the first rejection (the message
    lists them all); return the report unchanged when nothing is rejected."""
    if report.rejections:
        first = report.rejections[0]
        listed = "; ".join(b.message for b in report.rejections)
        raise InfeasibleCondition(
            rule=first.rule.rule_name,
            message=f"flow regime outside the platform's limits: {listed}",
        )
    return report


def default_rules_single_phase() -> list[RegimeRule]:
    """The review's mass-transfer gates plus the laminar limit, all as warnings (single-phase
    flow has no plugs to break up, so nothing here makes a condition impossible)."""
    return [
        # Re [P0:L58], Pe [P2:L86], Da [P2:L84]
        RegimeRule("Re", max=1800.0, action="warn", source="laminar below 1800-2300"),
        RegimeRule("Pe", min=1e3, max=1e5, action="warn", source="mixing range for reproducible products"),
        RegimeRule("Da", max=1.0, action="warn", source="reaction faster than mixing above 1"),
    ]


def default_rules_segmented() -> list[RegimeRule]:
    """The review's ranges for segmented (two-phase) flow [P2:L70-96].

    Mass transfer (Pe 1e3-1e5, Da < 1) and the ideal Bo < 0.01 are warnings: they degrade the
    product but do not stop the flow. The flow-pattern limits reject: Ca > 0.01 goes annular,
    Bo past 0.3 (the highest stable value reported; near 1 the film breaks) and We > 1 jets, so
    the plugs the platform relies on do not form.
    """
    return [
        *default_rules_single_phase(),
        # all four [P2:L96]
        RegimeRule("Ca", max=0.01, action="reject", source="annular flow above"),
        RegimeRule("Bo", max=0.01, action="warn", source="ideal segmented flow below"),
        RegimeRule("Bo", max=0.3, action="reject", source="highest stable value reported"),
        RegimeRule("We", max=1.0, action="reject", source="jetting above"),
    ]


# --- fitting a tube diameter to published Reynolds numbers ------------------------------------


def best_fit_diameter(fluid: Fluid, points: list[tuple[float, float]]) -> tuple[float, float]:
    """The one tube diameter that best reproduces published (flow m3/s, Re) pairs.

    For a fixed fluid Re = 4 rho Q / (pi mu d), so each pair implies a diameter d_i. The
    diameter minimising the largest relative error is the midpoint of the smallest and largest
    d_i, and that error is (d_max - d_min) / (d_max + d_min). Returns (diameter m, max relative
    error).
    """
    if not points:
        raise SdflInputError("best_fit_diameter needs at least one (flow, Re) pair")
    implied = []
    for flow, re in points:
        q = _positive("flow", flow, "m3/s")
        r = _positive("Reynolds number", re, "-")
        implied.append(4.0 * fluid.density_kg_m3 * q / (math.pi * fluid.viscosity_pa_s * r))
    lo, hi = min(implied), max(implied)
    return (lo + hi) / 2.0, (hi - lo) / (hi + lo)


# --- a platform's [regime] table -----------------------------------------------------------------


def fluid_from_config(cfg, interfacial_tension: str | None = None) -> Fluid:
    """A `Fluid` from a platform's fluid table (quantities with units)."""
    return Fluid(
        name=cfg.name,
        density_kg_m3=si(cfg.density, "kg/m^3"),
        viscosity_pa_s=si(cfg.viscosity, "Pa*s"),
        diffusivity_m2_s=si(cfg.diffusivity, "m^2/s") if cfg.diffusivity else None,
        interfacial_tension_n_m=si(interfacial_tension, "N/m") if interfacial_tension else None,
    )


def rules_from_config(cfg) -> list[RegimeRule]:
    """The platform's rules: the defaults it picks, with every number it names replaced by its own."""
    defaults = {"single_phase": default_rules_single_phase, "segmented": default_rules_segmented,
                "none": list}[cfg.defaults]()
    own = [RegimeRule(r.number, r.min, r.max, r.action, r.source or "platform config") for r in cfg.rules]
    named = {r.number for r in own}
    return [r for r in defaults if r.number not in named] + own


def platform_regime(cfg, diameter_mm: float | None, flow_ul_min: float, reaction_time_s: float) -> RegimeReport:
    """Regime numbers and rule breaches for `flow_ul_min` through the reactor tube.

    `cfg` is the platform's RegimeConfig; `diameter_mm` a segment's own bore (else the table's)."""
    fluid = fluid_from_config(cfg.fluid, cfg.interfacial_tension)
    carrier = fluid_from_config(cfg.carrier) if cfg.carrier else None
    channel = Channel((diameter_mm or cfg.channel_diameter) * 1e-3, name="reactor tube")
    rate = si(cfg.rate_constant, "1/s") if cfg.rate_constant else None
    numbers = regime_numbers(fluid, channel, ul_per_min_to_m3_s(flow_ul_min), carrier=carrier,
                             rate_constant_per_s=rate, residence_time_s=reaction_time_s)
    return check_regime(numbers, rules_from_config(cfg))
