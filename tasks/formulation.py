"""Formulation: turn a condition into one flowrate per syringe pump, honouring the platform's rules.

A condition is written in the platform's parameter space (temperature, reaction time and the
volume fraction of each stock in its stream). The rules come from the platform config:
equal stream flows (1:1 injection), carrier flow = ratio x precursor flow, a minimum total
precursor flow, pump rate limits, enough liquid in every syringe. A condition that breaks a
rule raises `InfeasibleCondition` naming the rule; nothing is ever clipped.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from prefect import task
from prefect.cache_policies import NO_CACHE

from hardware.errors import InfeasibleCondition
from hardware.platform import PlatformConfig
from tasks.retry import INSTRUMENT_RETRIES, INSTRUMENT_RETRY_DELAYS_S, is_transient

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
    """Equilibration wait: tau_multiple x tau."""
    run_time_s: float
    """How long the pumps are programmed to flow: t_E plus the acquisition budget."""
    volumes_ul: dict[str, float] = field(default_factory=dict)
    """Liquid each pump dispenses over `run_time_s`."""

    def to_dict(self) -> dict:
        return asdict(self)


def syringe_levels(rig) -> dict[str, float]:
    """Liquid left in each syringe (uL), as the pumps report it."""
    return rig.remaining_ul()


def parameter_by_kind(platform: PlatformConfig, kind: str) -> str:
    return next(p.name for p in platform.parameters if p.kind == kind)


def _leader_stream(platform: PlatformConfig) -> str:
    equal = platform.rules.equal_stream_flows
    return equal[0] if equal else platform.streams[0].name


def flow_through_reactor(platform: PlatformConfig, precursor_flow_ul_min: float) -> float:
    """Precursor plus carrier flow: what moves the droplets through the reactor."""
    ratio = platform.rules.carrier_ratio if platform.rules.carrier_pump else 0.0
    return precursor_flow_ul_min * (1.0 + ratio)


def residence_times(platform: PlatformConfig, stream_flows: dict[str, float], post_flow: float) -> tuple[float, float]:
    """(reaction time, tau) in seconds for the given stream flows and post-junction flow."""
    if post_flow <= 0:
        raise InfeasibleCondition("min_total_flow", "total flow must be positive")
    t_R = platform.reactor.volume / post_flow * 60.0
    stream = next(s for s in platform.streams if s.name == platform.rules.tau_from_stream)
    last_detector = max(i for i, seg in enumerate(platform.path) if seg.detector)
    post_volume = sum(seg.volume for seg in platform.path[: last_detector + 1])
    tau = stream.line_volume / stream_flows[stream.name] * 60.0 + post_volume / post_flow * 60.0
    return t_R, tau


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
    temperature = condition[parameter_by_kind(platform, "temperature")]
    reaction_time = condition[parameter_by_kind(platform, "reaction_time")]
    if temperature > rules.max_temperature + _EPS:
        raise InfeasibleCondition(
            "max_temperature",
            f"{temperature:g} C is above the platform limit of {rules.max_temperature:g} C "
            f"({platform.platform.carrier_phase or 'carrier'} in {platform.platform.tubing_material or 'tubing'})",
        )
    if reaction_time <= 0:
        raise InfeasibleCondition("reaction_time", f"reaction time must be positive, got {reaction_time:g} s")

    post_flow = platform.reactor.volume / reaction_time * 60.0
    ratio = rules.carrier_ratio if rules.carrier_pump else 0.0
    precursor_flow = post_flow / (1.0 + ratio)
    stream_flow = precursor_flow / len(platform.streams)

    fractions = {p.pump: condition[p.name] for p in platform.parameters if p.kind == "fraction"}
    flows: dict[str, float] = {}
    for stream in platform.streams:
        used = 0.0
        for pump in platform.stream_pumps(stream.name):
            if pump.name == stream.balance_pump:
                continue
            share = fractions.get(pump.name, 0.0)
            flows[pump.name] = share * stream_flow
            used += share
        if used > 1.0 + _EPS:
            raise InfeasibleCondition(
                "stream_composition",
                f"the fractions of stream {stream.name!r} add up to {used:.4g} > 1, so its balance pump "
                f"{stream.balance_pump!r} would need a negative flow; lower them",
            )
        flows[stream.balance_pump] = max(0.0, 1.0 - used) * stream_flow
    if rules.carrier_pump:
        flows[rules.carrier_pump] = precursor_flow * ratio
    stream_flows = {s.name: stream_flow for s in platform.streams}
    return _finish(platform, condition, temperature, flows, stream_flows, precursor_flow, remaining_ul)


def formulate_from_flowrates(
    flows_ul_min: dict[str, float],
    temperature_c: float,
    platform: PlatformConfig,
    remaining_ul: dict[str, float] | None = None,
) -> Formulation:
    """Formulate from explicit pump flowrates (the paper's 6 flowrates + temperature).

    Give every reagent pump except the balance pumps of the follower streams: those are
    computed so the streams stay 1:1, and the carrier follows the precursor flow.
    """
    rules = platform.rules
    leader = _leader_stream(platform)
    followers = [s for s in platform.streams if s.name != leader]
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
    leader_flow = sum(flows[p.name] for p in platform.stream_pumps(leader))
    if leader_flow <= 0:
        raise InfeasibleCondition("min_total_flow", f"stream {leader!r} has no flow")
    for stream in followers:
        given = sum(flows[p.name] for p in platform.stream_pumps(stream.name) if p.name != stream.balance_pump)
        balance = leader_flow - given
        if balance < -_EPS * leader_flow:
            raise InfeasibleCondition(
                "equal_stream_flows",
                f"stream {stream.name!r} already carries {given:.4g} uL/min, more than stream {leader!r} "
                f"({leader_flow:.4g} uL/min); the 1:1 rule needs {stream.balance_pump!r} = {balance:.4g} uL/min",
            )
        flows[stream.balance_pump] = max(0.0, balance)
    precursor_flow = leader_flow * len(platform.streams)
    ratio = rules.carrier_ratio if rules.carrier_pump else 0.0
    if rules.carrier_pump:
        flows[rules.carrier_pump] = precursor_flow * ratio
    stream_flows = {s.name: leader_flow for s in platform.streams}
    # Express it in the parameter space too, so every record carries the same inputs.
    post_flow = precursor_flow * (1.0 + ratio)
    condition = {}
    for param in platform.parameters:
        if param.kind == "temperature":
            condition[param.name] = float(temperature_c)
        elif param.kind == "reaction_time":
            condition[param.name] = platform.reactor.volume / post_flow * 60.0
        else:
            condition[param.name] = flows[param.pump] / leader_flow
    platform.validate_condition(condition)
    if temperature_c > rules.max_temperature + _EPS:
        raise InfeasibleCondition("max_temperature", f"{temperature_c:g} C is above {rules.max_temperature:g} C")
    return _finish(platform, condition, float(temperature_c), flows, stream_flows, precursor_flow, remaining_ul)


def _finish(
    platform: PlatformConfig,
    condition: dict[str, float],
    temperature: float,
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
    post_flow = flow_through_reactor(platform, precursor_flow)
    t_R, tau = residence_times(platform, stream_flows, post_flow)
    t_E = platform.equilibration.tau_multiple * tau
    run_time = t_E + platform.acquisition.budget
    volumes = {name: rate * run_time / 60.0 for name, rate in flows.items()}
    if remaining_ul is not None:
        short = []
        for name, need in volumes.items():
            have = remaining_ul.get(name, 0.0)
            if need > 0 and have < need * rules.volume_margin:
                short.append(f"{name} needs {need * rules.volume_margin:.0f} uL, holds {have:.0f} uL")
        if short:
            raise InfeasibleCondition(
                "syringe_volume",
                "not enough liquid for this run (" + "; ".join(short) + "): refill the syringe(s)",
            )
    return Formulation(
        condition=dict(condition),
        temperature_c=temperature,
        reaction_time_s=t_R,
        flows_ul_min={p.name: flows.get(p.name, 0.0) for p in platform.pumps},
        stream_flows_ul_min=stream_flows,
        precursor_flow_ul_min=precursor_flow,
        carrier_flow_ul_min=flows.get(rules.carrier_pump, 0.0) if rules.carrier_pump else 0.0,
        tau_s=tau,
        t_E_s=t_E,
        run_time_s=run_time,
        volumes_ul={p.name: volumes.get(p.name, 0.0) for p in platform.pumps},
    )


def solvent_flush(platform: PlatformConfig, taus: float = 2.0) -> Formulation:
    """Solvent-only flows (each stream's solvent pumps, plus the carrier) at the minimum total flow.

    Run for `taus` residence times it leaves the flow cells full of solvent droplets, as the
    absorbance reference needs.
    """
    rules = platform.rules
    precursor_flow = max(rules.min_total_precursor_flow, 1.0)
    stream_flow = precursor_flow / len(platform.streams)
    flows = {p.name: 0.0 for p in platform.pumps}
    for stream in platform.streams:
        solvents = stream.solvent_pumps or [stream.balance_pump]
        for name in solvents:
            flows[name] = stream_flow / len(solvents)
    ratio = rules.carrier_ratio if rules.carrier_pump else 0.0
    if rules.carrier_pump:
        flows[rules.carrier_pump] = precursor_flow * ratio
    stream_flows = {s.name: stream_flow for s in platform.streams}
    t_R, tau = residence_times(platform, stream_flows, flow_through_reactor(platform, precursor_flow))
    run_time = taus * tau + platform.acquisition.budget
    return Formulation(
        condition={}, temperature_c=float("nan"), reaction_time_s=t_R, flows_ul_min=flows,
        stream_flows_ul_min=stream_flows, precursor_flow_ul_min=precursor_flow,
        carrier_flow_ul_min=flows.get(rules.carrier_pump, 0.0) if rules.carrier_pump else 0.0,
        tau_s=tau, t_E_s=taus * tau, run_time_s=run_time,
        volumes_ul={name: rate * run_time / 60.0 for name, rate in flows.items()},
    )


# --- Prefect task ---------------------------------------------------------------------------

formulate_task = task(name="formulate", cache_policy=NO_CACHE)(formulate)
syringe_levels_task = task(
    name="syringe-levels", cache_policy=NO_CACHE, retries=INSTRUMENT_RETRIES,
    retry_delay_seconds=INSTRUMENT_RETRY_DELAYS_S, retry_condition_fn=is_transient,
)(syringe_levels)
formulate_from_flowrates_task = task(name="formulate-from-flowrates", cache_policy=NO_CACHE)(formulate_from_flowrates)
