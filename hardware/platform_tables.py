"""The tables of a platform file, one pydantic model each (stocks, pumps, streams, path, rules,
heaters, spectrometers, parameters, regime, procedures, ...). hardware/platform.py puts them
together into PlatformConfig, checks how they refer to each other, and reads the files."""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hardware.units import (
    Celsius,
    FlowULMin,
    Kelvins,
    Millimetres,
    Nanometres,
    Seconds,
    VolumeUL,
    check_unit,
    parse_quantity,
    with_unit,
)
from hardware.virtual.faults import FaultPlan


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PlatformInfo(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    kind: Literal["virtual", "emulated", "real"] = Field(description=(
        "virtual: simulated instruments; emulated: the real drivers talking to protocol emulators "
        "driven by the virtual lab; real: the instruments in the device tables"))
    base: str | None = Field(default=None, description="a platform this file extends (shipped name or path)")
    description: str = ""
    carrier_phase: str = ""
    tubing_material: str = ""


class ChemistryConfig(_Strict):
    model: str = Field(description="import path 'package.module:ClassName' of the chemistry model")
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("model")
    @classmethod
    def _import_path(cls, value: str) -> str:
        if ":" not in value:
            raise ValueError(f"{value!r} is not an import path: write 'package.module:ClassName'")
        return value


class Stock(_Strict):
    description: str = ""
    species: dict[str, str] = Field(default_factory=dict)

    @field_validator("species")
    @classmethod
    def _concentrations(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            quantity = parse_quantity(text)
            if not (quantity.dimensionless or quantity.check("[substance]/[length]**3")):
                raise ValueError(
                    f"species {name!r}: {text!r} is neither a molar concentration ('7.5 mM') "
                    "nor a volume fraction ('20 %')"
                )
        return value

    @cached_property
    def _split(self) -> tuple[dict[str, float], dict[str, float]]:
        molar, fraction = {}, {}
        for name, text in self.species.items():
            quantity = parse_quantity(text)
            if quantity.dimensionless:
                fraction[name] = float(quantity.to("dimensionless").magnitude)
            else:
                molar[name] = float(quantity.to("mM").magnitude)
        return molar, fraction

    @property
    def molar_mM(self) -> dict[str, float]:
        """Molar species in mmol/L."""
        return self._split[0]

    @property
    def volume_fraction(self) -> dict[str, float]:
        """Liquid species as volume fractions (0-1)."""
        return self._split[1]


class PumpConfig(_Strict):
    name: str
    stock: str
    stream: str | None = None
    role: Literal["reagent", "carrier"] = "reagent"
    syringe_volume: VolumeUL = Field(gt=0)
    syringe_inner_diameter: Millimetres = Field(gt=0)
    min_rate: FlowULMin = Field(gt=0)
    max_rate: FlowULMin = Field(gt=0)
    device: dict[str, Any] = Field(default_factory=dict, description="driver settings (real rigs)")

    @model_validator(mode="after")
    def _rates(self) -> PumpConfig:
        if self.min_rate >= self.max_rate:
            raise ValueError(f"min_rate ({self.min_rate} uL/min) must be below max_rate ({self.max_rate})")
        return self


class StreamConfig(_Strict):
    name: str
    junction: str = ""
    line_volume: VolumeUL = Field(gt=0)
    dispersion_tanks: float = Field(ge=1)
    balance_pump: str | None = Field(default=None, description=(
        "the pump that makes up the stream's flow (needed when fractions set the composition)"))
    solvent_pumps: list[str] = Field(default_factory=list)
    joins_at: str | None = Field(default=None, description=(
        "path segment at whose inlet this stream joins (a staged injection); empty: at the first junction"))


class SegmentConfig(_Strict):
    """One piece of the path after the first junction, in flow order."""

    name: str
    volume: VolumeUL = Field(gt=0)
    heated: bool = Field(default=False, description="legacy: the one heated reactor (zone 'reactor')")
    zone: str | None = Field(default=None, description="the heater zone that sets its temperature; empty: ambient")
    reactor: bool = Field(default=False, description="the reaction time counts the time spent here")
    dispersion_tanks: float = Field(ge=1)
    detector: Literal["pl", "abs"] | None = None
    inner_diameter: Millimetres | None = Field(default=None, gt=0, description="tube bore, for the regime numbers")

    @model_validator(mode="before")
    @classmethod
    def _legacy_heated(cls, data: Any) -> Any:
        """`heated = true` (one-reactor platforms) means zone "reactor" and reactor = true."""
        if isinstance(data, dict) and data.get("heated"):
            data = {"zone": "reactor", "reactor": True, **data}
        if isinstance(data, dict) and data.get("zone"):
            data = {**data, "heated": True}
        return data


class RulesConfig(_Strict):
    equal_stream_flows: list[str] = Field(default_factory=list)
    stream_ratios: dict[str, float] = Field(default_factory=dict, description=(
        "flow of a stream relative to the first stream (staged injections), e.g. {shell = 0.5}"))
    carrier_pump: str | None = None
    carrier_ratio: float = Field(default=1.0, gt=0)
    min_total_precursor_flow: FlowULMin = Field(ge=0)
    volume_margin: float = Field(default=1.25, ge=1)
    tau_from_stream: str
    max_temperature: Celsius
    ambient_temperature: Celsius = Field(default=22.0, description="temperature of unheated segments")
    flush_flow: FlowULMin | None = Field(default=None, gt=0, description=(
        "total solvent flow of a flush (reaction-time platforms); empty: min_total_precursor_flow"))

    @field_validator("stream_ratios")
    @classmethod
    def _ratios(cls, value: dict[str, float]) -> dict[str, float]:
        for name, ratio in value.items():
            if not (math.isfinite(ratio) and ratio > 0):
                raise ValueError(f"stream_ratios.{name} must be a positive number, got {ratio!r}")
        return value


class HeaterConfig(_Strict):
    name: str
    ambient: Celsius
    time_constant: Seconds = Field(gt=0)
    stable_band: Kelvins = Field(gt=0)
    stable_hold: Seconds = Field(ge=0)
    max_wait: Seconds = Field(gt=0)
    setpoint: Celsius | None = Field(default=None, description="fixed setpoint of a zone no parameter sets")
    device: dict[str, Any] = Field(default_factory=dict)


class SpectrometerConfig(_Strict):
    name: str
    serial_number: str
    pixels: int = Field(ge=16)
    wavelength_min: Nanometres = Field(gt=0)
    wavelength_max: Nanometres = Field(gt=0)
    resolution: Nanometres = Field(gt=0)
    min_integration: Seconds = Field(gt=0)
    max_integration: Seconds = Field(gt=0)
    max_counts: float = Field(gt=0)
    path_length: Millimetres = Field(default=1.016, gt=0, description=(
        "optical path of the flow cell this spectrometer looks through (0.04 inch tubing by default)"))
    device: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _ranges(self) -> SpectrometerConfig:
        if self.wavelength_min >= self.wavelength_max:
            raise ValueError("wavelength_min must be below wavelength_max")
        if self.min_integration >= self.max_integration:
            raise ValueError("min_integration must be below max_integration")
        return self


class LightSourceConfig(_Strict):
    name: str
    kind: Literal["led", "deuterium-halogen", "halogen", "laser"]
    wavelength: Nanometres | None = None
    device: dict[str, Any] = Field(default_factory=dict)


ParameterKind = Literal["temperature", "reaction_time", "fraction", "flowrate"]
_KIND_DIMENSION = {"temperature": "temperature", "reaction_time": "time", "fraction": "fraction",
                   "flowrate": "volume/time"}
_KIND_UNITS = {"temperature": {"degC": 1.0}, "reaction_time": {"s": 1.0, "min": 60.0}, "fraction": {"1": 1.0},
               "flowrate": {"uL/min": 1.0, "mL/min": 1000.0, "mL/h": 1000.0 / 60.0}}
"""Units each kind accepts, with the factor to the canonical unit (degC, s, 1, uL/min)."""


class ParameterConfig(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    kind: ParameterKind
    unit: str = "1"
    low: float
    high: float
    pump: str | None = None
    zones: list[str] = Field(default_factory=list, description=(
        "temperature: the heater zones it sets (empty: every zone); reaction_time: the zone whose "
        "time it sets (empty: the reactor segments)"))
    description: str = ""

    @property
    def to_canonical(self) -> float:
        """Factor from the parameter's unit to the canonical one (s, uL/min, ...)."""
        return _KIND_UNITS[self.kind][self.unit]

    @property
    def range_text(self) -> str:
        """The bounds as a user reads them: "[120, 150] degC", "[0.15, 0.55]" for a fraction."""
        return with_unit(f"[{self.low:g}, {self.high:g}]", self.unit)

    @model_validator(mode="after")
    def _check(self) -> ParameterConfig:
        dimension = _KIND_DIMENSION[self.kind]
        allowed = _KIND_UNITS[self.kind]
        if self.unit not in allowed:
            if self.kind != "flowrate":
                check_unit(self.unit, dimension)
            if self.kind == "fraction":
                raise ValueError(f"parameter {self.name!r} of kind 'fraction' is a number between 0 and 1 "
                                 f"without a unit; leave out unit = {self.unit!r}")
            units = f"unit {next(iter(allowed))!r}" if len(allowed) == 1 else f"one of the units {sorted(allowed)}"
            raise ValueError(f"parameter {self.name!r} of kind {self.kind!r} must use {units}, not {self.unit!r}")
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError(f"parameter {self.name!r}: need finite low < high, got {self.low}..{self.high}")
        if self.kind in ("fraction", "flowrate") and self.pump is None:
            raise ValueError(f"{self.kind} parameter {self.name!r} must name its pump")
        if self.kind == "fraction" and (self.low < 0 or self.high > 1):
            raise ValueError(f"fraction parameter {self.name!r} must stay within 0..1")
        if self.kind == "flowrate" and self.low <= 0:
            raise ValueError(f"flowrate parameter {self.name!r} must stay above 0 (a pump that may stop "
                             "needs no parameter)")
        if self.zones and self.kind not in ("temperature", "reaction_time"):
            raise ValueError(f"parameter {self.name!r}: only temperature and reaction_time parameters name zones")
        return self


class EquilibrationConfig(_Strict):
    rule: Literal["tau_multiple", "rtd"] = Field(default="tau_multiple", description=(
        "tau_multiple: t_E = tau_multiple x tau; rtd: t_E is when the step response of the path's "
        "residence-time distribution reaches `washout` (long, well-mixed paths such as CSTR cascades)"))
    tau_multiple: float = Field(default=1.2, gt=0)
    washout: float = Field(default=0.99, gt=0.5, lt=1.0)
    steady_check: bool = False
    steady_threshold: float = Field(default=0.02, gt=0)
    steady_readings: int = Field(default=3, ge=2)
    steady_interval: Seconds = Field(default=5.0, gt=0)
    max_wait_tau: float = Field(default=3.0, gt=0)
    poll_interval: Seconds = Field(default=5.0, gt=0)


class AcquisitionConfig(_Strict):
    scans: int = Field(default=5, ge=1, le=1000)
    replicates: int = Field(default=3, ge=1, le=100)
    replicate_interval: Seconds = Field(default=5.0, ge=0)
    target_fill: float = Field(default=0.75, gt=0.05, lt=0.95)
    budget: Seconds = Field(default=90.0, gt=0, description="time the pumps keep flowing after t_E")


class FeaturesConfig(_Strict):
    pl_window: tuple[Nanometres, Nanometres]
    abs_wavelength: Nanometres
    abs_peak_window: tuple[Nanometres, Nanometres]
    onset_window: tuple[Nanometres, Nanometres]
    baseline_window: tuple[Nanometres, Nanometres]
    quiet_window: tuple[Nanometres, Nanometres]
    side_peaks: dict[str, Nanometres] = Field(default_factory=dict)
    side_peak_ratio_flag: float = Field(default=0.1, gt=0)
    min_snr: float = Field(default=10.0, gt=0)
    plqy_proxy: str | None = Field(default=None, description=(
        "this platform's relative PLQY as a formula of features (PL per absorbed excitation); empty: "
        "PL_A / (1 - 10 ** (-Abs_300)), right when the PL and absorbance cells have the same path"))


class ValveConfig(_Strict):
    """An on/off valve; `gas` names what it lets in (e.g. argon for a purge)."""

    name: str
    gas: str = ""
    device: dict[str, Any] = Field(default_factory=dict)


class ProcedureStep(_Strict):
    """One step of a start-up or shut-down procedure.

    purge: open `valve` for `duration` with the pumps stopped (the gas sweeps the path);
    fill / flush: run the solvent pumps for `taus` residence times (fill an empty path at
    start-up, wash the product out at the end)."""

    step: Literal["purge", "fill", "flush"]
    valve: str | None = None
    duration: Seconds | None = Field(default=None, gt=0)
    taus: float | None = Field(default=None, gt=0, le=20)

    @model_validator(mode="after")
    def _fields(self) -> ProcedureStep:
        if self.step == "purge" and (self.valve is None or self.duration is None):
            raise ValueError("a purge step needs valve and duration")
        if self.step != "purge" and self.taus is None:
            raise ValueError(f"a {self.step} step needs taus (residence times of solvent)")
        return self


class FluidConfig(_Strict):
    """A fluid's properties for the regime numbers (each a quantity with its unit)."""

    name: str
    density: str = Field(description="e.g. '862 kg/m^3'")
    viscosity: str = Field(description="e.g. '0.55 mPa*s'")
    diffusivity: str | None = Field(default=None, description="of the precursor in this fluid, e.g. '1e-9 m^2/s'")

    @model_validator(mode="after")
    def _units(self) -> FluidConfig:
        for what, dimension in (("density", "[mass]/[length]**3"), ("viscosity", "[mass]/[length]/[time]"),
                                ("diffusivity", "[length]**2/[time]")):
            text = getattr(self, what)
            if text is not None and not parse_quantity(text).check(dimension):
                raise ValueError(f"fluid {self.name!r}: {what} {text!r} does not have the units of {what}")
        return self


class RegimeRuleConfig(_Strict):
    number: Literal["Re", "Pe", "Da", "Da_I", "Ca", "Bo", "We"]
    min: float | None = None
    max: float | None = None
    action: Literal["warn", "reject"] = "warn"
    source: str = Field(default="", description=(
        "why the bound is there, in words a user reads in the warning (keep literature tags in a # comment)"))


# The rules and their ranges come from the flow-synthesis review (paper 002, FACTS.md section P2).
class RegimeConfig(_Strict):
    """Flow-regime checks at formulation: the fluids, the reactor tube and the rules.

    The numbers are computed at the first reactor segment for the total flow through it. `rules`
    replace the defaults for each number they name."""

    fluid: FluidConfig
    carrier: FluidConfig | None = Field(default=None, description="segmented flow: the carrier phase")
    interfacial_tension: str | None = Field(default=None, description="fluid against carrier, e.g. '8 mN/m'")
    channel_diameter: Millimetres = Field(gt=0, description="reactor tube bore (a segment's inner_diameter wins)")
    rate_constant: str | None = Field(default=None, description="reaction rate constant if known, e.g. '0.16 1/s'")
    defaults: Literal["single_phase", "segmented", "none"] = "single_phase"
    rules: list[RegimeRuleConfig] = Field(default_factory=list)


class VirtualConfig(_Strict):
    seed: int = 0
    pump_response_time: Seconds = Field(default=2.0, ge=0)
    pump_accuracy: float = Field(default=0.0035, ge=0, lt=0.2)
    process_noise: float = Field(default=0.01, ge=0, lt=0.5)
    absorbance_noise: float = Field(default=0.008, ge=0, lt=0.5)
    pl_noise: float = Field(default=0.004, ge=0, lt=0.5)
    noise_correlation_time: Seconds = Field(default=3.0, gt=0)
    film_offset: float = Field(default=0.004, ge=0, lt=1, description="sd of the absorbance offset drawn per start of the flows")
    stock_decay_per_hour: float = Field(default=0.0, ge=0, lt=1)
    lamp_drift_per_hour: float = Field(default=0.0, ge=0, lt=1)
    pace: float | None = Field(default=None, gt=0, description=(
        "simulated seconds per wall second; unset: waits cost no wall time"))
    faults: FaultPlan = Field(default_factory=FaultPlan)
