"""Platform configs: one TOML file describes a rig (instruments, syringes, plumbing, rules, space).

`load_platform("virtual-cs3cu2i5")` reads a shipped config; `load_platform("my-rig.toml")` reads
any file. The file is validated on load; an error names the file, the field and what is allowed.
"""

from __future__ import annotations

import hashlib
import math
import tomllib
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hardware.errors import InvalidCondition, PlatformConfigError
from hardware.safety import temperature_limit
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
)
from hardware.virtual.faults import FaultPlan

PLATFORM_DIR = Path(__file__).parent / "platforms"
DEFAULT_PLATFORM = "virtual-cs3cu2i5"


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

    @model_validator(mode="after")
    def _check(self) -> ParameterConfig:
        dimension = _KIND_DIMENSION[self.kind]
        allowed = _KIND_UNITS[self.kind]
        if self.unit not in allowed:
            if self.kind != "flowrate":
                check_unit(self.unit, dimension)
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
    source: str = ""


class RegimeConfig(_Strict):
    """Flow-regime checks at formulation: the fluids, the reactor tube and the rules (paper 002).

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


class PlatformConfig(_Strict):
    """A whole rig, as read from its TOML file (all quantities in canonical units)."""

    platform: PlatformInfo
    chemistry: ChemistryConfig | None = None
    stocks: dict[str, Stock]
    pumps: list[PumpConfig] = Field(min_length=1)
    streams: list[StreamConfig] = Field(min_length=1)
    path: list[SegmentConfig] = Field(min_length=1)
    rules: RulesConfig
    heater: HeaterConfig | None = Field(default=None, description="the single reactor heater (zone 'reactor')")
    heaters: dict[str, HeaterConfig] = Field(default_factory=dict, description="heaters by zone name")
    regime: RegimeConfig | None = None
    valves: dict[str, ValveConfig] = Field(default_factory=dict)
    procedures: dict[Literal["startup", "shutdown"], list[ProcedureStep]] = Field(default_factory=dict)
    spectrometers: dict[Literal["pl", "abs"], SpectrometerConfig]
    light_sources: dict[Literal["pl", "abs"], LightSourceConfig]
    parameters: list[ParameterConfig] = Field(min_length=1)
    equilibration: EquilibrationConfig = EquilibrationConfig()
    acquisition: AcquisitionConfig = AcquisitionConfig()
    features: FeaturesConfig
    virtual: VirtualConfig = VirtualConfig()
    source: str = Field(default="", description="file the config was read from")
    sha256: str = Field(default="", description="hash of the file bytes (provenance)")

    @model_validator(mode="before")
    @classmethod
    def _single_heater(cls, data: Any) -> Any:
        """`[heater]` is the heater of zone "reactor"; `[heaters.<zone>]` names several."""
        if isinstance(data, dict) and data.get("heater") and data.get("heaters"):
            raise ValueError("give either [heater] (one reactor heater) or [heaters.<zone>], not both")
        if isinstance(data, dict) and data.get("heater"):
            data = {**data, "heaters": {"reactor": data["heater"]}}
        return data

    @model_validator(mode="after")
    def _cross_references(self) -> PlatformConfig:
        pumps = {p.name: p for p in self.pumps}
        streams = {s.name: s for s in self.streams}
        _unique("pumps", [p.name for p in self.pumps])
        _unique("streams", [s.name for s in self.streams])
        _unique("parameters", [p.name for p in self.parameters])
        _unique("path", [s.name for s in self.path])
        for i, pump in enumerate(self.pumps):
            if pump.stock not in self.stocks:
                raise ValueError(f"pumps[{i}].stock: pump {pump.name!r} uses stock {pump.stock!r}; "
                                 f"known stocks: {sorted(self.stocks)}")
            if pump.role == "reagent" and pump.stream not in streams:
                raise ValueError(f"pumps[{i}].stream: pump {pump.name!r} feeds stream {pump.stream!r}; "
                                 f"known streams: {sorted(streams)}")
        for i, stream in enumerate(self.streams):
            for name in [*([stream.balance_pump] if stream.balance_pump else []), *stream.solvent_pumps]:
                if name not in pumps or pumps[name].stream != stream.name:
                    raise ValueError(f"streams[{i}]: pump {name!r} is not a pump of stream {stream.name!r}")
        for name in self.rules.equal_stream_flows:
            if name not in streams:
                raise ValueError(f"rules.equal_stream_flows names unknown stream {name!r}")
        limit, why = temperature_limit(self.platform.tubing_material, self.platform.carrier_phase)
        if self.rules.max_temperature > limit:
            raise ValueError(f"rules.max_temperature ({self.rules.max_temperature:g} C) is above the {why}; "
                             "lower it (see hardware/safety.py)")
        if self.rules.tau_from_stream not in streams:
            raise ValueError(f"rules.tau_from_stream names unknown stream {self.rules.tau_from_stream!r}")
        carrier = self.rules.carrier_pump
        if carrier is not None and (carrier not in pumps or pumps[carrier].role != "carrier"):
            raise ValueError(f"rules.carrier_pump {carrier!r} is not a pump with role 'carrier'")
        self._check_path(streams)
        for name, steps in self.procedures.items():
            for i, step in enumerate(steps):
                if step.valve is not None and step.valve not in self.valves:
                    raise ValueError(f"procedures.{name}[{i}]: unknown valve {step.valve!r}; valves: {sorted(self.valves)}")
        if self.valves and self.platform.kind != "virtual":
            raise ValueError("valves run on virtual platforms only so far (no valve driver yet); "
                             "remove [valves] from a driver-based rig")
        for role in ("pl", "abs"):
            if [s.detector for s in self.path].count(role) != 1:
                raise ValueError(f"path must hold exactly one segment with detector = {role!r}")
        self._check_parameters(pumps, streams)
        return self

    def _check_path(self, streams: dict[str, StreamConfig]) -> None:
        segments = [seg.name for seg in self.path]
        if not any(seg.reactor for seg in self.path):
            raise ValueError("path needs at least one segment with reactor = true (or heated = true)")
        used = {seg.zone for seg in self.path if seg.zone}
        for zone in sorted(used - set(self.heaters)):
            raise ValueError(f"path: zone {zone!r} has no heater; add [heaters.{zone}] (or [heater] for 'reactor')")
        for zone in sorted(set(self.heaters) - used):
            raise ValueError(f"heaters.{zone}: no path segment has zone = {zone!r}")
        first_detector = min(i for i, seg in enumerate(self.path) if seg.detector)
        for stream in self.streams:
            if stream.joins_at is None:
                continue
            if stream.joins_at not in segments:
                raise ValueError(f"streams: {stream.name!r} joins at unknown segment {stream.joins_at!r}; "
                                 f"path segments: {segments}")
            if segments.index(stream.joins_at) > first_detector:
                raise ValueError(f"streams: {stream.name!r} joins after the first detector; move it upstream")
            if self.rules.carrier_pump:
                raise ValueError("staged injections (joins_at) are for single-phase paths, not with a carrier")
        if streams[self.rules.tau_from_stream].joins_at is not None:
            raise ValueError("rules.tau_from_stream must name a stream that joins at the first junction")
        for name in self.rules.stream_ratios:
            if name not in streams:
                raise ValueError(f"rules.stream_ratios names unknown stream {name!r}")
        if self.platform.kind != "virtual" and (len(self.heaters) > 1 or (self.heaters and self.heater is None)):
            raise ValueError("driver-based rigs support one heater, given as [heater], for now; several zones "
                             "run on virtual platforms")

    def _check_parameters(self, pumps: dict[str, PumpConfig], streams: dict[str, StreamConfig]) -> None:
        kinds = [p.kind for p in self.parameters]
        n_time, n_flow = kinds.count("reaction_time"), kinds.count("flowrate")
        if n_flow and (n_time or "fraction" in kinds):
            raise ValueError("parameters: flowrate parameters set the pumps directly; they cannot be mixed "
                             "with reaction_time or fraction parameters")
        if not n_flow and n_time != 1:
            raise ValueError(f"parameters need exactly one of kind 'reaction_time' (or flowrate parameters), "
                             f"found {n_time}")
        if n_time:
            for stream in self.streams:
                if stream.balance_pump is None:
                    raise ValueError(f"streams: {stream.name!r} needs a balance_pump (the pump that makes up "
                                     "its flow when fractions set the others)")
            leader = self.rules.equal_stream_flows[0] if self.rules.equal_stream_flows else self.streams[0].name
            paced = set(self.rules.equal_stream_flows) | set(self.rules.stream_ratios) | {leader}
            if set(streams) - paced:
                raise ValueError(
                    "with more than one stream, rules.equal_stream_flows or rules.stream_ratios must set every "
                    f"stream's flow (streams: {sorted(streams)}; not set: {sorted(set(streams) - paced)})")
        zones_set: dict[str, str] = {}
        set_by: dict[str, str] = {}
        for i, param in enumerate(self.parameters):
            where = f"parameters[{i}]"
            if param.kind == "temperature":
                if not self.heaters:
                    raise ValueError(f"{where}: {param.name!r} sets a temperature but the platform has no heater")
                if param.high > self.rules.max_temperature:
                    raise ValueError(f"{where}: {param.name!r} goes up to {param.high:g} C, above "
                                     f"rules.max_temperature ({self.rules.max_temperature:g} C)")
                for zone in param.zones or list(self.heaters):
                    if zone not in self.heaters:
                        raise ValueError(f"{where}: {param.name!r} sets unknown zone {zone!r}; zones: "
                                         f"{sorted(self.heaters)}")
                    if zone in zones_set:
                        raise ValueError(f"{where}: zone {zone!r} is set by {zones_set[zone]!r} and {param.name!r}")
                    zones_set[zone] = param.name
            if param.kind == "reaction_time" and param.zones:
                if len(param.zones) != 1 or param.zones[0] not in self.heaters:
                    raise ValueError(f"{where}: {param.name!r} must name one heater zone, got {param.zones}")
            if param.kind in ("fraction", "flowrate"):
                pump = pumps.get(param.pump or "")
                if pump is None:
                    raise ValueError(f"{where}: parameter {param.name!r} names unknown pump {param.pump!r}; "
                                     f"known pumps: {sorted(pumps)}")
                if pump.role != "reagent":
                    raise ValueError(f"{where}: parameter {param.name!r} names the {pump.role} pump {pump.name!r}; "
                                     "parameters set reagent pumps (the carrier follows the precursor flow)")
                if param.kind == "fraction" and pump.name == streams[pump.stream].balance_pump:
                    raise ValueError(
                        f"{where}: parameter {param.name!r} sets the balance pump {pump.name!r}, whose flow is computed"
                    )
                if pump.name in set_by:
                    raise ValueError(f"{where}: parameters {set_by[pump.name]!r} and {param.name!r} both set "
                                     f"pump {pump.name!r}; give each pump one parameter")
                set_by[pump.name] = param.name
        for zone, heater in self.heaters.items():
            if zone not in zones_set and heater.setpoint is None:
                raise ValueError(f"heaters.{zone}: no temperature parameter sets this zone; give it a setpoint")
        if n_flow:
            unset = [p.name for p in self.pumps if p.role == "reagent" and p.name not in set_by]
            if unset:
                raise ValueError(f"parameters: with flowrate parameters every reagent pump needs one; not set: {unset}")

    # --- convenience views -------------------------------------------------------------
    def pump(self, name: str) -> PumpConfig:
        for pump in self.pumps:
            if pump.name == name:
                return pump
        raise KeyError(f"platform {self.platform.name!r} has no pump {name!r}")

    def stream_pumps(self, stream: str) -> list[PumpConfig]:
        return [p for p in self.pumps if p.stream == stream]

    @property
    def parameter_names(self) -> list[str]:
        return [p.name for p in self.parameters]

    @property
    def reactor(self) -> SegmentConfig:
        """The first reactor segment."""
        return next(s for s in self.path if s.reactor)

    @property
    def reactor_volume(self) -> float:
        """Volume of all reactor segments (uL)."""
        return sum(s.volume for s in self.path if s.reactor)

    @property
    def flow_mode(self) -> bool:
        """True when flowrate parameters set the pumps (no reaction-time parameter)."""
        return any(p.kind == "flowrate" for p in self.parameters)

    def validate_condition(self, condition: dict[str, float]) -> dict[str, float]:
        """Check names, types and bounds of a condition; return it as plain floats in space order."""
        if not isinstance(condition, dict):
            raise InvalidCondition(f"a condition is a mapping of parameter to value, got {type(condition).__name__}")
        known = self.parameter_names
        unknown = sorted(set(condition) - set(known))
        missing = [n for n in known if n not in condition]
        problems = []
        if unknown:
            problems.append(f"unknown parameter(s) {unknown}")
        if missing:
            problems.append(f"missing parameter(s) {missing}")
        out: dict[str, float] = {}
        for param in self.parameters:
            if param.name not in condition:
                continue
            raw = condition[param.name]
            if isinstance(raw, bool) or not isinstance(raw, (int, float, np.integer, np.floating)):
                problems.append(f"{param.name} = {raw!r} is not a number")
                continue
            value = float(raw)
            # Snap float round-off at the edges (1e-9 of the range), e.g. from flowrates.
            slack = 1e-9 * (param.high - param.low)
            if param.low - slack <= value < param.low:
                value = param.low
            elif param.high < value <= param.high + slack:
                value = param.high
            if not math.isfinite(value) or not (param.low <= value <= param.high):
                problems.append(
                    f"{param.name} = {value:g} is outside [{param.low:g}, {param.high:g}] {param.unit}"
                )
            out[param.name] = value
        if problems:
            raise InvalidCondition(
                f"condition rejected for platform {self.platform.name!r}: " + "; ".join(problems)
                + f". The space is: {self.describe_space()}"
            )
        return out

    def describe_space(self) -> str:
        return ", ".join(f"{p.name} in [{p.low:g}, {p.high:g}] {p.unit}" for p in self.parameters)


def _unique(what: str, names: list[str]) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{what}: name {name!r} appears twice")
        seen.add(name)


def shipped_platforms() -> list[str]:
    """Names of the platform configs that ship with sdfl."""
    return sorted(p.stem for p in PLATFORM_DIR.glob("*.toml"))


def resolve_platform_path(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    if text.endswith(".toml") or "/" in text:
        return Path(text).expanduser()
    return PLATFORM_DIR / f"{text}.toml"


def load_platform(name_or_path: str | Path = DEFAULT_PLATFORM) -> PlatformConfig:
    """Read and validate a platform config by shipped name or by file path."""
    path = resolve_platform_path(name_or_path)
    if not path.is_file():
        raise PlatformConfigError(
            f"platform config {str(name_or_path)!r} not found (looked for {path}); "
            f"shipped platforms: {shipped_platforms()}; or give a path to a .toml file"
        )
    data, digest = _read_with_base(path, [])
    data["source"] = str(path)
    data["sha256"] = digest.hexdigest()
    try:
        return PlatformConfig.model_validate(data)
    except ValidationError as exc:
        raise PlatformConfigError(format_validation_error(path, exc)) from None


def _read_with_base(path: Path, chain: list[Path]):
    """The file's tables merged over its base platform's (recursively), and a hash of all files."""
    if path.resolve() in chain:
        raise PlatformConfigError(f"{path}: platform.base makes a loop: {' -> '.join(map(str, chain + [path]))}")
    raw = path.read_bytes()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PlatformConfigError(f"{path}: not valid TOML: {exc}") from exc
    base = data.get("platform", {}).get("base")
    if not base:
        return data, hashlib.sha256(raw)
    base_path = resolve_platform_path(base)
    if not base_path.is_absolute() and not base_path.exists():
        base_path = path.parent / base_path
    if not base_path.is_file():
        raise PlatformConfigError(f"{path}: platform.base {base!r} not found (looked for {base_path}); "
                                  f"shipped platforms: {shipped_platforms()}")
    base_data, digest = _read_with_base(base_path, [*chain, path.resolve()])
    digest.update(raw)
    return merge_tables(base_data, data), digest


def merge_tables(base: dict, override: dict) -> dict:
    """`override` over `base`: tables merge key by key, arrays of named tables merge by `name`
    (a new name is appended), anything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            out[key] = merge_tables(old, value)
        elif _named_tables(old) and _named_tables(value):
            merged = {item["name"]: item for item in old}
            for item in value:
                merged[item["name"]] = merge_tables(merged.get(item["name"], {}), item)
            out[key] = list(merged.values())
        else:
            out[key] = value
    return out


def _named_tables(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) and "name" in v for v in value)


def format_validation_error(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: {exc.error_count()} problem(s) in the platform config"]
    for error in exc.errors():
        loc = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in error["loc"]).replace(".[", "[")
        message = error["msg"].removeprefix("Value error, ")
        where = loc or "(top level)"
        value = error.get("input")
        shown = "" if error["type"] == "missing" or isinstance(value, (dict, list)) else f" (got {value!r})"
        lines.append(f"  {where}: {message}{shown}")
    return "\n".join(lines)
