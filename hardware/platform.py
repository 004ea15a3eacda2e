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
    balance_pump: str
    solvent_pumps: list[str] = Field(default_factory=list)


class SegmentConfig(_Strict):
    name: str
    volume: VolumeUL = Field(gt=0)
    heated: bool = False
    dispersion_tanks: float = Field(ge=1)
    detector: Literal["pl", "abs"] | None = None


class RulesConfig(_Strict):
    equal_stream_flows: list[str] = Field(default_factory=list)
    carrier_pump: str | None = None
    carrier_ratio: float = Field(default=1.0, gt=0)
    min_total_precursor_flow: FlowULMin = Field(ge=0)
    volume_margin: float = Field(default=1.25, ge=1)
    tau_from_stream: str
    max_temperature: Celsius


class HeaterConfig(_Strict):
    name: str
    ambient: Celsius
    time_constant: Seconds = Field(gt=0)
    stable_band: Kelvins = Field(gt=0)
    stable_hold: Seconds = Field(ge=0)
    max_wait: Seconds = Field(gt=0)
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


ParameterKind = Literal["temperature", "reaction_time", "fraction"]
_KIND_DIMENSION = {"temperature": "temperature", "reaction_time": "time", "fraction": "fraction"}
_KIND_UNIT = {"temperature": "degC", "reaction_time": "s", "fraction": "1"}


class ParameterConfig(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    kind: ParameterKind
    unit: str = "1"
    low: float
    high: float
    pump: str | None = None
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> ParameterConfig:
        dimension = _KIND_DIMENSION[self.kind]
        if self.unit != _KIND_UNIT[self.kind]:
            check_unit(self.unit, dimension)
            raise ValueError(
                f"parameter {self.name!r} of kind {self.kind!r} must use unit {_KIND_UNIT[self.kind]!r}, "
                f"not {self.unit!r}"
            )
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError(f"parameter {self.name!r}: need finite low < high, got {self.low}..{self.high}")
        if self.kind == "fraction":
            if self.pump is None:
                raise ValueError(f"fraction parameter {self.name!r} must name its pump")
            if self.low < 0 or self.high > 1:
                raise ValueError(f"fraction parameter {self.name!r} must stay within 0..1")
        return self


class EquilibrationConfig(_Strict):
    tau_multiple: float = Field(default=1.2, gt=0)
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
    heater: HeaterConfig
    spectrometers: dict[Literal["pl", "abs"], SpectrometerConfig]
    light_sources: dict[Literal["pl", "abs"], LightSourceConfig]
    parameters: list[ParameterConfig] = Field(min_length=1)
    equilibration: EquilibrationConfig = EquilibrationConfig()
    acquisition: AcquisitionConfig = AcquisitionConfig()
    features: FeaturesConfig
    virtual: VirtualConfig = VirtualConfig()
    source: str = Field(default="", description="file the config was read from")
    sha256: str = Field(default="", description="hash of the file bytes (provenance)")

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
            for name in [stream.balance_pump, *stream.solvent_pumps]:
                if name not in pumps or pumps[name].stream != stream.name:
                    raise ValueError(f"streams[{i}]: pump {name!r} is not a pump of stream {stream.name!r}")
        for name in self.rules.equal_stream_flows:
            if name not in streams:
                raise ValueError(f"rules.equal_stream_flows names unknown stream {name!r}")
        if len(streams) > 1 and set(self.rules.equal_stream_flows) != set(streams):
            raise ValueError(
                "with more than one stream, rules.equal_stream_flows must list every stream "
                f"(streams: {sorted(streams)})"
            )
        limit, why = temperature_limit(self.platform.tubing_material, self.platform.carrier_phase)
        if self.rules.max_temperature > limit:
            raise ValueError(f"rules.max_temperature ({self.rules.max_temperature:g} C) is above the {why}; "
                             "lower it (see hardware/safety.py)")
        if self.rules.tau_from_stream not in streams:
            raise ValueError(f"rules.tau_from_stream names unknown stream {self.rules.tau_from_stream!r}")
        carrier = self.rules.carrier_pump
        if carrier is not None and (carrier not in pumps or pumps[carrier].role != "carrier"):
            raise ValueError(f"rules.carrier_pump {carrier!r} is not a pump with role 'carrier'")
        if sum(s.heated for s in self.path) != 1:
            raise ValueError("path must have exactly one segment with heated = true (the reactor)")
        for role in ("pl", "abs"):
            if [s.detector for s in self.path].count(role) != 1:
                raise ValueError(f"path must hold exactly one segment with detector = {role!r}")
        kinds = [p.kind for p in self.parameters]
        for kind in ("temperature", "reaction_time"):
            if kinds.count(kind) != 1:
                raise ValueError(f"parameters need exactly one of kind {kind!r}, found {kinds.count(kind)}")
        set_by: dict[str, str] = {}
        for i, param in enumerate(self.parameters):
            where = f"parameters[{i}]"
            if param.kind == "temperature" and param.high > self.rules.max_temperature:
                raise ValueError(f"{where}: {param.name!r} goes up to {param.high:g} C, above "
                                 f"rules.max_temperature ({self.rules.max_temperature:g} C)")
            if param.kind == "fraction":
                pump = pumps.get(param.pump or "")
                if pump is None:
                    raise ValueError(f"{where}: parameter {param.name!r} names unknown pump {param.pump!r}; "
                                     f"known pumps: {sorted(pumps)}")
                if pump.role != "reagent":
                    raise ValueError(f"{where}: parameter {param.name!r} names the {pump.role} pump {pump.name!r}; "
                                     "fractions set reagent pumps (the carrier follows the precursor flow)")
                if pump.name == streams[pump.stream].balance_pump:
                    raise ValueError(
                        f"{where}: parameter {param.name!r} sets the balance pump {pump.name!r}, whose flow is computed"
                    )
                if pump.name in set_by:
                    raise ValueError(f"{where}: parameters {set_by[pump.name]!r} and {param.name!r} both set "
                                     f"pump {pump.name!r}; give each pump one parameter")
                set_by[pump.name] = param.name
        return self

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
        return next(s for s in self.path if s.heated)

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
