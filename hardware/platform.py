"""Platform configs: one TOML file describes a rig (instruments, syringes, plumbing, rules, space).

`load_platform("virtual-cs3cu2i5")` reads a shipped config; `load_platform("my-rig.toml")` reads
any file. The file is validated on load; an error names the file, the field and what is allowed.
"""

from __future__ import annotations

import hashlib
import math
import tomllib
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError, model_validator

from hardware.errors import InvalidCondition, PlatformConfigError
from hardware.platform_tables import (  # noqa: F401 - the tables are part of this module's API
    AcquisitionConfig,
    ChemistryConfig,
    EquilibrationConfig,
    FeaturesConfig,
    FluidConfig,
    HeaterConfig,
    LightSourceConfig,
    ParameterConfig,
    ParameterKind,
    PlatformInfo,
    ProcedureStep,
    PumpConfig,
    RegimeConfig,
    RegimeRuleConfig,
    RulesConfig,
    SegmentConfig,
    SpectrometerConfig,
    Stock,
    StreamConfig,
    ValveConfig,
    VirtualConfig,
    _Strict,
)
from hardware.safety import temperature_limit

PLATFORM_DIR = Path(__file__).parent / "platforms"
DEFAULT_PLATFORM = "virtual-cs3cu2i5"


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
    def reaction_segments(self) -> list[int]:
        """Indices of the path segments whose time is the reaction time: those of the zone the
        reaction-time parameter names, else the reactor segments."""
        zones = next((p.zones for p in self.parameters if p.kind == "reaction_time"), [])
        if zones:
            return [i for i, seg in enumerate(self.path) if seg.zone == zones[0]]
        return [i for i, seg in enumerate(self.path) if seg.reactor]

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
                    f"{param.name} = {value:g} is outside {param.range_text}"
                )
            out[param.name] = value
        if problems:
            raise InvalidCondition(
                f"condition rejected for platform {self.platform.name!r}: " + "; ".join(problems)
                + f". The space is: {self.describe_space()}"
            )
        return out

    def describe_space(self) -> str:
        """The space in one line: "temperature_c in [120, 150] degC, cui_fraction in [0.15, 0.55], ..."."""
        return ", ".join(f"{p.name} in {p.range_text}" for p in self.parameters)


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
