"""Formulation: turn a condition into one flowrate per syringe pump, honouring the platform's rules.

A condition is written in the platform's parameter space (temperature, reaction time and the
volume fraction of each stock in its stream). The rules come from the platform config:
equal stream flows (1:1 injection), carrier flow = ratio x precursor flow, a minimum total
precursor flow, pump rate limits. A condition that breaks a rule raises `InfeasibleCondition`
naming the rule; nothing is ever clipped. Too little liquid left in a syringe is a state of the
rig, not of the condition: it raises `RefillNeeded` (rule "syringe_volume").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from scipy import special

from hardware.errors import InfeasibleCondition, RefillNeeded
from hardware.platform import PlatformConfig
from tasks import regime

# Relative slack for float round-off when a value sits exactly on a limit.
_EPS = 1e-9


@dataclass(frozen=True)
class Formulation:
    """Everything the rig needs to run one condition, in canonical units."""

    condition: dict[str, float]
    temperature_c: float
    reaction_time_s: float
    flows_ul_min: dict[str, float]
    """One flowrate per pump (0 = pump idle)."""
    stream_flows_ul_min: dict[str, float]
    precursor_flow_ul_min: float
    carrier_flow_ul_min: float
    tau_s: float
    """Mean residence time from the first mixing junction to the last flow cell."""
    t_E_s: float
    """Equilibration wait: tau_multiple x tau, or from the residence-time distribution."""
    run_time_s: float
    """How long the pumps are programmed to flow: t_E plus the acquisition budget."""
    volumes_ul: dict[str, float] = field(default_factory=dict)
    """Liquid each pump dispenses over `run_time_s`."""
    temperatures_c: dict[str, float] = field(default_factory=dict)
    """Setpoint of each heater zone (empty on a room-temperature platform)."""
    zone_times_s: dict[str, float] = field(default_factory=dict)
    """Mean time spent in each heater zone."""
    rtd_tanks: float = float("inf")
    """Spread of the residence-time distribution as an equivalent number of tanks in series."""
    regime: dict = field(default_factory=dict)
    """Flow-regime numbers at the reactor and the rules they broke (see tasks/regime.py)."""

    def to_dict(self) -> dict:
        return asdict(self)


def syringe_levels(rig) -> dict[str, float]:
    """Liquid left in each syringe (uL), as the pumps report it."""
    return rig.remaining_ul()


def check_levels(wanted_ul: dict[str, float], remaining_ul: dict[str, float], what: str) -> None:
    """Raise `RefillNeeded` naming every syringe that holds less than it is about to give.

    A syringe missing from `remaining_ul` counts as empty. Running out of liquid is a state of
    the rig (a person refills), not a fault of the condition.
    """
    short = {name: (need, remaining_ul.get(name, 0.0)) for name, need in wanted_ul.items()
             if remaining_ul.get(name, 0.0) < need}
    if short:
        listed = "; ".join(f"{name} needs {need:.0f} uL, holds {have:.0f} uL" for name, (need, have) in short.items())
        raise RefillNeeded(f"{what} ({listed}): refill the syringe(s)", short)


def parameter_by_kind(platform: PlatformConfig, kind: str) -> str:
    return next(p.name for p in platform.parameters if p.kind == kind)


def stream_ratios(platform: PlatformConfig) -> dict[str, float]:
    """Each stream's flow relative to the first (leader) stream, in reaction-time mode."""
    equal = platform.rules.equal_stream_flows
    leader = equal[0] if equal else platform.streams[0].name
    ratios = {s.name: 1.0 for s in platform.streams if s.name in equal or s.name == leader}
    return {s.name: platform.rules.stream_ratios.get(s.name, ratios.get(s.name, 1.0)) for s in platform.streams}


def path_flows(platform: PlatformConfig, stream_flows: dict[str, float], carrier_flow: float = 0.0) -> list[float]:
    """Flow through each path segment (uL/min): the streams joined so far plus the carrier."""
    joins = {s.name: s.joins_at for s in platform.streams}
    flow = carrier_flow + sum(q for name, q in stream_flows.items() if joins[name] is None)
    out = []
    for seg in platform.path:
        flow += sum(q for name, q in stream_flows.items() if joins[name] == seg.name)
        out.append(flow)
    return out


@dataclass(frozen=True)
class Residence:
    """Times along the path at one set of flows."""

    reaction_time_s: float
    tau_s: float
    """Mean residence time from the first junction (through the tau stream's line) to the last cell."""
    rtd_tanks: float
    """Equivalent number of tanks in series of the whole residence-time distribution (tau^2 / variance)."""
    zone_times_s: dict[str, float]


def residence(platform: PlatformConfig, stream_flows: dict[str, float], carrier_flow: float = 0.0) -> Residence:
    """Reaction time, tau and the spread of the residence-time distribution at these flows."""
    flows = path_flows(platform, stream_flows, carrier_flow)
    if min(flows) <= 0:
        raise InfeasibleCondition("min_total_flow", "every segment of the path needs a positive flow")
    times = [seg.volume / q * 60.0 for seg, q in zip(platform.path, flows, strict=True)]
    last = max(i for i, seg in enumerate(platform.path) if seg.detector)
    tau = sum(times[: last + 1])
    variance = sum(t**2 / seg.dispersion_tanks for t, seg in zip(times[: last + 1], platform.path, strict=False))
    stream = next(s for s in platform.streams if s.name == platform.rules.tau_from_stream)
    if stream_flows.get(stream.name, 0.0) > 0:
        line = stream.line_volume / stream_flows[stream.name] * 60.0
        tau += line
        variance += line**2 / stream.dispersion_tanks
    zones: dict[str, float] = {}
    for seg, t in zip(platform.path, times, strict=True):
        if seg.zone:
            zones[seg.zone] = zones.get(seg.zone, 0.0) + t
    t_R = sum(times[i] for i in platform.reaction_segments)
    return Residence(t_R, tau, tau**2 / variance, zones)


def equilibration_time(platform: PlatformConfig, res: Residence) -> float:
    """t_E: tau_multiple x tau, or the time the path's step response reaches `washout` (rtd rule)."""
    cfg = platform.equilibration
    if cfg.rule == "tau_multiple":
        return cfg.tau_multiple * res.tau_s
    n = res.rtd_tanks
    return res.tau_s * float(special.gammaincinv(n, cfg.washout)) / n


def zone_temperatures(platform: PlatformConfig, condition: dict[str, float]) -> dict[str, float]:
    """Setpoint of every heater zone: from its temperature parameter, else its fixed setpoint."""
    temps = {zone: h.setpoint for zone, h in platform.heaters.items() if h.setpoint is not None}
    for param in platform.parameters:
        if param.kind == "temperature":
            for zone in param.zones or list(platform.heaters):
                temps[zone] = float(condition[param.name])
    return temps


def formulate(
    condition: dict[str, float],
    platform: PlatformConfig,
    remaining_ul: dict[str, float] | None = None,
    *,
    check_bounds: bool = True,
) -> Formulation:
    """Pump flowrates, tau and t_E for a condition in the platform's parameter space.

    `remaining_ul` is the liquid left in each syringe; when given, every pump must hold
    `volume_margin` times what the run needs. `check_bounds=False` lets the virtual twin
    be queried outside the search space (the hard rules still apply).
    """
    if check_bounds:
        condition = platform.validate_condition(condition)
    else:
        condition = {k: float(v) for k, v in condition.items()}
    rules = platform.rules
    temperatures = zone_temperatures(platform, condition)
    for zone, value in temperatures.items():
        if value > rules.max_temperature + _EPS:
            raise InfeasibleCondition(
                "max_temperature",
                f"zone {zone!r} at {value:g} C is above the platform limit of {rules.max_temperature:g} C "
                f"({platform.platform.carrier_phase or 'carrier'} in {platform.platform.tubing_material or 'tubing'})",
            )
    ratio = rules.carrier_ratio if rules.carrier_pump else 0.0
    flows: dict[str, float] = {}
    if platform.flow_mode:
        for param in platform.parameters:
            if param.kind == "flowrate":
                flows[param.pump] = condition[param.name] * param.to_canonical
        stream_flows = {s.name: sum(flows.get(p.name, 0.0) for p in platform.stream_pumps(s.name))
                        for s in platform.streams}
    else:
        param = next(p for p in platform.parameters if p.kind == "reaction_time")
        reaction_time = condition[param.name] * param.to_canonical
        if reaction_time <= 0:
            raise InfeasibleCondition("reaction_time", f"reaction time must be positive, got {reaction_time:g} s")
        shares = stream_ratios(platform)
        per_leader = path_flows(platform, shares, ratio * sum(shares.values()))
        leader_flow = sum(platform.path[i].volume / per_leader[i] for i in platform.reaction_segments) \
            * 60.0 / reaction_time
        stream_flows = {name: share * leader_flow for name, share in shares.items()}
        fractions = {p.pump: condition[p.name] for p in platform.parameters if p.kind == "fraction"}
        for stream in platform.streams:
            used = 0.0
            for pump in platform.stream_pumps(stream.name):
                if pump.name == stream.balance_pump:
                    continue
                share = fractions.get(pump.name, 0.0)
                flows[pump.name] = share * stream_flows[stream.name]
                used += share
            if used > 1.0 + _EPS:
                raise InfeasibleCondition(
                    "stream_composition",
                    f"the fractions of stream {stream.name!r} add up to {used:.4g} > 1, so its balance pump "
                    f"{stream.balance_pump!r} would need a negative flow; lower them",
                )
            flows[stream.balance_pump] = max(0.0, 1.0 - used) * stream_flows[stream.name]
    precursor_flow = sum(stream_flows.values())
    if rules.carrier_pump:
        flows[rules.carrier_pump] = precursor_flow * ratio
    return _finish(platform, condition, temperatures, flows, stream_flows, precursor_flow, remaining_ul)


def formulate_from_flowrates(
    flows_ul_min: dict[str, float],
    temperature_c: float | None,
    platform: PlatformConfig,
    remaining_ul: dict[str, float] | None = None,
) -> Formulation:
    """Formulate from explicit pump flowrates (the paper's 6 flowrates + temperature).

    Give every reagent pump except the balance pumps of the follower streams: those are
    computed so the streams keep their ratios, and the carrier follows the precursor flow.
    `temperature_c` sets every heater zone a temperature parameter sets (None on a platform
    without a temperature parameter).
    """
    rules = platform.rules
    ratios = stream_ratios(platform)
    leader = next(iter(ratios)) if platform.flow_mode else next(n for n, r in ratios.items() if r == 1.0)
    followers = [] if platform.flow_mode else [s for s in platform.streams if s.name != leader]
    expected = [
        p.name for p in platform.pumps
        if p.role == "reagent" and not any(p.name == s.balance_pump for s in followers)
    ]
    unknown = sorted(set(flows_ul_min) - set(expected))
    missing = [n for n in expected if n not in flows_ul_min]
    if unknown or missing:
        raise InfeasibleCondition(
            "flowrate_inputs",
            f"give flowrates for exactly {expected} (uL/min); unknown: {unknown}, missing: {missing}",
        )
    flows = {name: float(value) for name, value in flows_ul_min.items()}
    bad = {k: v for k, v in flows.items() if not math.isfinite(v) or v < 0}
    if bad:
        raise InfeasibleCondition("pump_rate_limits", f"flowrates must be finite and >= 0, got {bad}")
    temperature_params = [p for p in platform.parameters if p.kind == "temperature"]
    if temperature_params and temperature_c is None:
        raise InfeasibleCondition("flowrate_inputs", "give temperature_c with the flowrates")
    if not temperature_params and temperature_c is not None:
        raise InfeasibleCondition("flowrate_inputs", f"platform {platform.platform.name!r} has no temperature "
                                  "parameter; leave temperature_c empty")
    condition: dict[str, float] = {p.name: float(temperature_c) for p in temperature_params}
    if platform.flow_mode:
        for param in platform.parameters:
            if param.kind == "flowrate":
                condition[param.name] = flows[param.pump] / param.to_canonical
        return formulate(condition, platform, remaining_ul)
    leader_flow = sum(flows[p.name] for p in platform.stream_pumps(leader))
    if leader_flow <= 0:
        raise InfeasibleCondition("min_total_flow", f"stream {leader!r} has no flow")
    for stream in followers:
        want = ratios[stream.name] * leader_flow
        given = sum(flows[p.name] for p in platform.stream_pumps(stream.name) if p.name != stream.balance_pump)
        balance = want - given
        if balance < -_EPS * leader_flow:
            raise InfeasibleCondition(
                "equal_stream_flows",
                f"stream {stream.name!r} already carries {given:.4g} uL/min, more than stream {leader!r} "
                f"({leader_flow:.4g} uL/min) allows at a ratio of {ratios[stream.name]:g}; the flow rule needs "
                f"{stream.balance_pump!r} = {balance:.4g} uL/min",
            )
        flows[stream.balance_pump] = max(0.0, balance)
    stream_flows = {name: ratios[name] * leader_flow for name in ratios}
    precursor_flow = sum(stream_flows.values())
    ratio = rules.carrier_ratio if rules.carrier_pump else 0.0
    if rules.carrier_pump:
        flows[rules.carrier_pump] = precursor_flow * ratio
    # Express it in the parameter space too, so every record carries the same inputs.
    res = residence(platform, stream_flows, precursor_flow * ratio)
    for param in platform.parameters:
        if param.kind == "reaction_time":
            condition[param.name] = res.reaction_time_s / param.to_canonical
        elif param.kind == "fraction":
            stream = platform.pump(param.pump).stream
            condition[param.name] = flows[param.pump] / stream_flows[stream]
    platform.validate_condition(condition)
    temperatures = zone_temperatures(platform, condition)
    if any(t > rules.max_temperature + _EPS for t in temperatures.values()):
        raise InfeasibleCondition("max_temperature", f"{temperature_c:g} C is above {rules.max_temperature:g} C")
    return _finish(platform, condition, temperatures, flows, stream_flows, precursor_flow, remaining_ul)


def _finish(
    platform: PlatformConfig,
    condition: dict[str, float],
    temperatures: dict[str, float],
    flows: dict[str, float],
    stream_flows: dict[str, float],
    precursor_flow: float,
    remaining_ul: dict[str, float] | None,
) -> Formulation:
    rules = platform.rules
    floor = rules.min_total_precursor_flow
    if precursor_flow < floor * (1 - _EPS):
        raise InfeasibleCondition(
            "min_total_flow",
            f"total precursor flow {precursor_flow:.4g} uL/min is below the mixing-independence floor of "
            f"{floor:g} uL/min; shorten the reaction time or raise the flows",
        )
    for pump in platform.pumps:
        rate = flows.get(pump.name, 0.0)
        if rate == 0.0:
            continue
        if rate < pump.min_rate * (1 - _EPS) or rate > pump.max_rate * (1 + _EPS):
            raise InfeasibleCondition(
                "pump_rate_limits",
                f"pump {pump.name!r} would run at {rate:.4g} uL/min, outside its syringe's range "
                f"[{pump.min_rate:g}, {pump.max_rate:g}] uL/min",
            )
    carrier_flow = flows.get(rules.carrier_pump, 0.0) if rules.carrier_pump else 0.0
    res = residence(platform, stream_flows, carrier_flow)
    regime_record = check_platform_regime(platform, stream_flows, carrier_flow, res)
    t_E = equilibration_time(platform, res)
    run_time = t_E + platform.acquisition.budget
    volumes = {name: rate * run_time / 60.0 for name, rate in flows.items()}
    if remaining_ul is not None:
        wanted = {name: need * rules.volume_margin for name, need in volumes.items() if need > 0}
        check_levels(wanted, remaining_ul, "not enough liquid for this run")
    zone = platform.reactor.zone
    return Formulation(
        condition=dict(condition),
        temperature_c=temperatures[zone] if zone else rules.ambient_temperature,
        reaction_time_s=res.reaction_time_s,
        flows_ul_min={p.name: flows.get(p.name, 0.0) for p in platform.pumps},
        stream_flows_ul_min=stream_flows,
        precursor_flow_ul_min=precursor_flow,
        carrier_flow_ul_min=carrier_flow,
        tau_s=res.tau_s,
        t_E_s=t_E,
        run_time_s=run_time,
        volumes_ul={p.name: volumes.get(p.name, 0.0) for p in platform.pumps},
        temperatures_c=temperatures,
        zone_times_s=res.zone_times_s,
        rtd_tanks=res.rtd_tanks,
        regime=regime_record,
    )


def check_platform_regime(platform: PlatformConfig, stream_flows: dict[str, float], carrier_flow: float,
                          res: Residence) -> dict:
    """Regime numbers at the first reactor segment; raise `InfeasibleCondition` naming the rule
    a rejecting rule breaks. Returns the record kept with the experiment ({} without [regime])."""
    if platform.regime is None:
        return {}
    index = next(i for i, seg in enumerate(platform.path) if seg.reactor)
    flow = path_flows(platform, stream_flows, carrier_flow)[index]
    report = regime.platform_regime(platform.regime, platform.path[index].inner_diameter, flow, res.reaction_time_s)
    regime.enforce_regime(report)
    return report.as_record()


def solvent_flush(platform: PlatformConfig, taus: float = 2.0) -> Formulation:
    """Solvent-only flows (each stream's solvent pumps, plus the carrier).

    The streams run at the minimum total flow (reaction-time platforms) or at the low bounds of
    their flowrate parameters; a stream without a solvent pump stays idle. Run for `taus`
    residence times it leaves the flow cells full of solvent, as the absorbance reference needs.
    """
    rules = platform.rules
    flows = {p.name: 0.0 for p in platform.pumps}
    if platform.flow_mode:
        low = {p.pump: p.low * p.to_canonical for p in platform.parameters if p.kind == "flowrate"}
        stream_flows = {s.name: sum(low.get(p.name, 0.0) for p in platform.stream_pumps(s.name))
                        if s.solvent_pumps else 0.0 for s in platform.streams}
    else:
        shares = stream_ratios(platform)
        total = max(rules.flush_flow or rules.min_total_precursor_flow, 1.0)
        stream_flows = {name: total * share / sum(shares.values()) for name, share in shares.items()}
    for stream in platform.streams:
        solvents = stream.solvent_pumps or ([stream.balance_pump] if stream.balance_pump else [])
        for name in solvents:
            flows[name] = stream_flows[stream.name] / len(solvents)
        if not solvents:
            stream_flows[stream.name] = 0.0
    precursor_flow = sum(stream_flows.values())
    ratio = rules.carrier_ratio if rules.carrier_pump else 0.0
    if rules.carrier_pump:
        flows[rules.carrier_pump] = precursor_flow * ratio
    res = residence(platform, stream_flows, flows.get(rules.carrier_pump, 0.0) if rules.carrier_pump else 0.0)
    run_time = taus * res.tau_s + platform.acquisition.budget
    return Formulation(
        condition={}, temperature_c=float("nan"), reaction_time_s=res.reaction_time_s, flows_ul_min=flows,
        stream_flows_ul_min=stream_flows, precursor_flow_ul_min=precursor_flow,
        carrier_flow_ul_min=flows.get(rules.carrier_pump, 0.0) if rules.carrier_pump else 0.0,
        tau_s=res.tau_s, t_E_s=taus * res.tau_s, run_time_s=run_time,
        volumes_ul={name: rate * run_time / 60.0 for name, rate in flows.items()},
        rtd_tanks=res.rtd_tanks, zone_times_s=res.zone_times_s,
    )


# --- Prefect tasks -------------------------------------------------------------------------
def _make_tasks() -> dict:
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    from tasks.retry import INSTRUMENT_RETRIES, INSTRUMENT_RETRY_DELAYS_S, is_transient

    return {
        "formulate_task": task(name="formulate", cache_policy=NO_CACHE)(formulate),
        "syringe_levels_task": task(
            name="syringe-levels", cache_policy=NO_CACHE, retries=INSTRUMENT_RETRIES,
            retry_delay_seconds=INSTRUMENT_RETRY_DELAYS_S, retry_condition_fn=is_transient,
        )(syringe_levels),
        "formulate_from_flowrates_task": task(name="formulate-from-flowrates",
                                              cache_policy=NO_CACHE)(formulate_from_flowrates),
    }


def __getattr__(name: str):
    """The Prefect tasks are made on first use: checking a condition needs no Prefect."""
    if name in ("formulate_task", "syringe_levels_task", "formulate_from_flowrates_task"):
        globals().update(_make_tasks())
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
