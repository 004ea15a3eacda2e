"""The virtual lab: a physics-based twin of one platform, on a simulated clock.

It wires the simulated instruments to the transport, chemistry and optics models. The
instruments are the only way in for flows and tasks (they see a rig like any other); tests and
benchmarks may also ask the lab for noiseless steady-state spectra (`steady_state_signals`).
"""

from __future__ import annotations

import numpy as np

from hardware.clock import SimClock
from hardware.platform import PlatformConfig
from hardware.virtual.chemistry import OpticalOutcome, ReactorState, ZoneState, load_chemistry
from hardware.virtual.devices import (
    VirtualHeater,
    VirtualLightSource,
    VirtualPump,
    VirtualSpectrometer,
    VirtualValve,
)
from hardware.virtual.faults import FaultInjector, FaultPlan
from hardware.virtual.optics import (
    FLOW_CELL_PATH_CM,
    Detector,
    absorbance_per_cm,
    lamp_spectrum,
    led_spectrum,
    render_bands,
)
from hardware.virtual.transport import CascadePath, flow_path, gamma_quantiles, mix_stocks

PL_GAIN_CPS = 4.0e8
"""Counts per second at the PL detector per unit of emission density, LED on."""
LAMP_PEAK_CPS = 2.5e6
"""Counts per second at the brightest lamp pixel, through solvent."""
STRAY_LIGHT = 3.0e-4
CLOG_STALL_AFTER_S = 15.0
NORMAL_PRESSURE_KPA_PER_UL_MIN = 0.12



class VirtualLab:
    """One virtual rig. Build it with `VirtualLab(load_platform("virtual-cs3cu2i5"), seed=1)`."""

    def __init__(self, platform: PlatformConfig, seed: int | None = None, faults: FaultPlan | None = None):
        if platform.chemistry is None:
            raise ValueError(f"platform {platform.platform.name!r} has no [chemistry] section to simulate")
        self.platform = platform
        v = platform.virtual
        self.seed = v.seed if seed is None else int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.clock = SimClock(pace=platform.virtual.pace)
        self.faults = FaultInjector((faults or v.faults).model_copy(), self.seed)
        self.chemistry = load_chemistry(platform.chemistry.model, platform.chemistry.options, source=platform.source)
        self._check_species()
        self.path = flow_path(platform, v.pump_response_time)
        self.pumps = {p.name: VirtualPump(p, self) for p in platform.pumps}
        self.heaters = {zone: VirtualHeater(cfg, platform.rules.max_temperature, self)
                        for zone, cfg in platform.heaters.items()}
        reactor_zone = platform.reactor.zone
        self.heater = self.heaters[reactor_zone] if reactor_zone else None
        """The heater of the reactor zone (None at room temperature)."""
        self.light_sources = {role: VirtualLightSource(cfg, self) for role, cfg in platform.light_sources.items()}
        self.valves = {key: VirtualValve(cfg.name, self) for key, cfg in platform.valves.items()}
        self.spectrometers = {role: VirtualSpectrometer(role, cfg, self) for role, cfg in platform.spectrometers.items()}
        self.detectors = {
            role: Detector.for_pixels(cfg.pixels, cfg.max_counts, np.random.default_rng([self.seed, i]))
            for i, (role, cfg) in enumerate(sorted(platform.spectrometers.items()))
        }
        self._noise_state: dict[str, tuple[float, float]] = {}
        self._visits: list[tuple[float, float]] = []
        self._last_droplets_formed = np.zeros(0)

    def path_factor(self, role: str) -> float:
        """The flow cell's optical path relative to the default 0.04 inch bore."""
        return self.platform.spectrometers[role].path_length / 10.0 / FLOW_CELL_PATH_CM

    @property
    def excitation_nm(self) -> float:
        """Centre of the PL excitation source (300 nm when the config does not say)."""
        return self.platform.light_sources["pl"].wavelength or 300.0

    def _check_species(self) -> None:
        from hardware.errors import PlatformConfigError

        available = {k: "mM" for s in self.platform.stocks.values() for k in s.molar_mM}
        available |= {k: "fraction" for s in self.platform.stocks.values() for k in s.volume_fraction}
        for name, unit in self.chemistry.required_species.items():
            if available.get(name) != unit:
                raise PlatformConfigError(
                    f"{self.platform.source}: chemistry model needs species {name!r} as {unit}, "
                    f"but the stocks give {available.get(name, 'nothing')}"
                )

    # --- events -------------------------------------------------------------------------
    def sync(self) -> None:
        """Apply everything that happened up to now: automatic stops, empty syringes, faults.

        For each pump the earliest event wins: a programmed infusion that ended before a stall
        or before the syringe ran dry simply ended. A clog (`clog_at_s`) blocks the line until the
        plan's `clog_at_s` is cleared: a pump that pushes into it for CLOG_STALL_AFTER_S stops with
        the over-pressure alarm, whenever it started.
        """
        now = self.clock.now()
        plan = self.faults.plan
        for pump in self.pumps.values():
            track = self.path.tracks[pump.name]
            if track.rates[-1] <= 0:
                continue
            last = track.starts[-1]
            stop_at = pump.scheduled_stop()
            horizon = now if stop_at is None else min(now, stop_at)
            stall_at = plan.stall_at_s if plan.stall_pump == pump.name and pump.alarm is None else None
            clog_stall_at = self._clog_stall_at(pump) if pump.alarm is None else None
            events = []
            if stall_at is not None and stall_at <= horizon:
                events.append((max(stall_at, last), "stalled: motor not advancing"))
            if clog_stall_at is not None and clog_stall_at <= horizon:
                events.append((max(clog_stall_at, last), "over pressure: line clogged"))
            if pump.liquid_left_ul(horizon) <= 0:
                events.append((self._time_empty(pump, last, horizon), "syringe empty"))
            if events:
                pump.halt(*min(events))
            elif stop_at is not None and stop_at <= now:
                pump.halt(max(stop_at, last))

    def _clog_stall_at(self, pump: VirtualPump) -> float | None:
        """When a running pump stalls against the clog: CLOG_STALL_AFTER_S after it began to push
        into the blocked line (None without a clog)."""
        clog = self.faults.plan.clog_at_s
        run = None if clog is None else self.path.tracks[pump.name].last_run()
        return None if run is None else max(clog, run[0]) + CLOG_STALL_AFTER_S

    def _clog_push_s(self, now: float) -> float:
        """How long the pumps have pushed into the blocked line (the longest latest run since the clog)."""
        clog = self.faults.plan.clog_at_s
        if clog is None or now < clog:
            return 0.0
        pushed = 0.0
        for track in self.path.tracks.values():
            run = track.last_run()
            if run is not None:
                pushed = max(pushed, min(run[1], now) - max(run[0], clog))
        return pushed

    def _time_empty(self, pump: VirtualPump, lo: float, hi: float) -> float:
        for _ in range(50):
            mid = 0.5 * (lo + hi)
            if pump.liquid_left_ul(mid) > 0:
                lo = mid
            else:
                hi = mid
        return hi

    def on_pumps_programmed(self, now: float) -> None:
        """A new condition starts: its droplets get their own small absorbance offset.

        Each start of the flows segments a little differently (droplet length, traces of
        scattering), which the paper saw as a larger spread of Abs_300 between replicate
        visits (~2.8 %) than within one steady run (~1.3 %).
        """
        if not self._visits or self._visits[-1][0] != now:
            self._visits.append((now, self.platform.virtual.film_offset * self.rng.standard_normal()))

    def visit_offsets(self, formed_s: np.ndarray) -> np.ndarray:
        """The absorbance offset of droplets formed at the given times."""
        if not self._visits:
            return np.zeros_like(formed_s)
        starts = np.array([v[0] for v in self._visits])
        values = np.array([0.0] + [v[1] for v in self._visits])
        return values[np.searchsorted(starts, formed_s, side="right")]

    def accuracy_factor(self) -> float:
        return 1.0 + self.platform.virtual.pump_accuracy * self.rng.standard_normal()

    def pressure_kpa(self) -> float:
        now = self.clock.now()
        flow = sum(float(t.flow(now)) for t in self.path.tracks.values()) * 60.0
        pressure = 20.0 + NORMAL_PRESSURE_KPA_PER_UL_MIN * flow
        pushed_s = min(self._clog_push_s(now), CLOG_STALL_AFTER_S)
        if pushed_s > 0:  # the blocked line holds its pressure until the clog is cleared
            pressure *= np.exp(3.0 * pushed_s / CLOG_STALL_AFTER_S)
        return float(pressure)

    def refill_all(self) -> None:
        for pump in self.pumps.values():
            pump.refill()

    # --- noise --------------------------------------------------------------------------
    def _ou(self, channel: str, sigma: float, correlation_s: float | None = None) -> float:
        """Ornstein-Uhlenbeck noise sampled at the current time (exact update)."""
        now = self.clock.now()
        tau = correlation_s or self.platform.virtual.noise_correlation_time
        if channel not in self._noise_state:
            value = sigma * self.rng.standard_normal()
        else:
            t_last, x = self._noise_state[channel]
            if now == t_last:
                return x
            a = np.exp(-(now - t_last) / tau)
            value = a * x + sigma * np.sqrt(1.0 - a * a) * self.rng.standard_normal()
        self._noise_state[channel] = (now, value)
        return value

    # --- what the detectors see ----------------------------------------------------------
    def droplet_outcome(self, role: str) -> tuple[OpticalOutcome, np.ndarray, np.ndarray, np.ndarray]:
        """Chemistry of the droplets in a flow cell now: (outcome, weights, blank, reactive share)."""
        now = self.clock.now()
        drops = self.path.droplets_in_cell(role, now)
        self._last_droplets_formed = drops.formed_s
        hours = drops.formed_s / 3600.0
        ageing = np.clip(1.0 - self.platform.virtual.stock_decay_per_hour * hours, 0.0, 1.0)
        faults = self.faults
        unknown = set(faults.plan.stock_step_species) - set(drops.molar_mM) - set(drops.volume_fraction)
        if unknown:
            raise ValueError(f"fault stock_step_species: {sorted(unknown)} are not species of the stocks")
        state = ReactorState(
            molar_mM={k: v * ageing * faults.stock_factor(k, drops.formed_s) for k, v in drops.molar_mM.items()},
            volume_fraction={k: v * faults.stock_factor(k, drops.formed_s) for k, v in drops.volume_fraction.items()},
            temperature_c=self.temperature_at(self.platform.reactor.zone, drops.reactor_mid_s),
            reaction_time_s=drops.reaction_time_s,
            precursor_flow_ul_min=drops.precursor_flow_ul_min,
            zones={zone: ZoneState(self.temperature_at(zone, drops.zone_mid_s[zone]), drops.zone_time_s[zone])
                   for zone in drops.zone_time_s},
        )
        outcome = faults.apply_plqy_drift(self.chemistry.outcome(state), drops.formed_s)
        return outcome, drops.weight, drops.blank, drops.reactive_fraction

    def temperature_at(self, zone: str | None, t: np.ndarray) -> np.ndarray:
        """Temperature of a heater zone at times `t`; ambient where there is no heater."""
        if zone is None:
            return np.full(np.shape(t), self.platform.rules.ambient_temperature, dtype=float)
        return self.heaters[zone].temperature_at(t)

    def signal_cps(self, role: str) -> np.ndarray:
        """Light on the detector of `role` now, in counts per second (before detector noise)."""
        wl = self.spectrometers[role].wavelengths()
        if not self.light_sources[role].is_on():
            return np.zeros_like(wl)
        outcome, weights, blank, reactive = self.droplet_outcome(role)
        v = self.platform.virtual
        amount = 1.0 + self._ou("process", v.process_noise)
        live = weights * (~blank)
        if role == "pl":
            flicker = 1.0 + self._ou("pl", v.pl_noise)  # excitation LED output
            return flicker * pl_signal(wl, outcome, live, reactive, amount * self.path_factor("pl"),
                                       self.platform.spectrometers["pl"].resolution,
                                       self.excitation_nm)
        hours = self.clock.now() / 3600.0
        lamp = 1.0 - v.lamp_drift_per_hour * hours
        offsets = np.where(blank, 0.0, self.visit_offsets(self._last_droplets_formed))
        return abs_signal(wl, outcome, live, weights, reactive,
                          amount * self.path_factor("abs") * (1.0 + self._ou("abs", v.absorbance_noise)),
                          self.platform.spectrometers["abs"].resolution, lamp, offsets)

    # --- noiseless steady state, for tests and benchmarks --------------------------------
    def _rtd_averaged_signals(self, flows_ul_min, temperature_c, reaction_time_s, zones, nodes: int = 32):
        """Steady-state signals averaged over the zones' time distributions (gamma, equal-weight nodes)."""
        m = np.atleast_1d(np.asarray(reaction_time_s, dtype=float)).size
        names = sorted(zones)
        from scipy.stats import qmc  # only here: the lab runs without it (import cost)

        u = np.clip(qmc.Sobol(d=len(names), scramble=True, seed=7).random(nodes), 1e-6, 1 - 1e-6)
        reaction_zone = next((p.zones[0] for p in self.platform.parameters if p.kind == "reaction_time" and p.zones),
                             None)
        spread = {}
        for j, zone in enumerate(names):
            n = zone_tanks(self.platform, zone)
            mean = np.atleast_1d(np.asarray(zones[zone].time_s, dtype=float))
            spread[zone] = (mean[:, None] * gamma_quantiles(u[:, j], n, 1.0)[None, :]).ravel()

        def repeat(a):
            return np.repeat(np.broadcast_to(np.atleast_1d(np.asarray(a, dtype=float)), (m,)), nodes)

        node_zones = {z: ZoneState(repeat(zones[z].temperature_c), spread[z]) for z in names}
        time = spread[reaction_zone] if reaction_zone in spread else repeat(reaction_time_s)
        pl, sample, reference = self._signals_at(
            {k: repeat(v) for k, v in flows_ul_min.items()}, repeat(temperature_c), time, node_zones)
        shape = (m, nodes, -1)
        return pl.reshape(shape).mean(axis=1), sample.reshape(shape).mean(axis=1), reference[:m]

    def steady_state_signals(self, flows_ul_min: dict[str, np.ndarray], temperature_c, reaction_time_s,
                             zones: dict[str, ZoneState] | None = None):
        """Noiseless PL and absorbance signals (cps) at steady state for many conditions at once.

        `zones` gives the temperature and mean time of each heater zone (multi-stage platforms).
        On a path of stirred tanks the product is a mix of elements that stayed shorter and
        longer than the mean; the signals are then averaged over that distribution (what a
        perfect measurement would see), not taken at the mean times.
        Returns (pl_cps, abs_sample_cps, abs_reference_cps), each of shape (m, pixels).
        """
        if zones and isinstance(self.path, CascadePath):
            return self._rtd_averaged_signals(flows_ul_min, temperature_c, reaction_time_s, zones)
        return self._signals_at(flows_ul_min, temperature_c, reaction_time_s, zones)

    def _signals_at(self, flows_ul_min, temperature_c, reaction_time_s, zones):
        reagents = {n: np.atleast_1d(np.asarray(q, dtype=float)) for n, q in flows_ul_min.items()
                    if self.platform.pump(n).role == "reagent"}
        precursor = sum(reagents.values())
        carrier = self.platform.rules.carrier_pump
        carrier_flow = np.atleast_1d(np.asarray(flows_ul_min.get(carrier, 0.0), dtype=float)) if carrier else 0.0
        molar, fraction = mix_stocks(self.platform, reagents)
        state = ReactorState(molar, fraction, np.atleast_1d(temperature_c).astype(float),
                             np.atleast_1d(reaction_time_s).astype(float), precursor, dict(zones or {}))
        outcome = self.chemistry.outcome(state)
        m = precursor.size
        ones = np.ones(m)
        reactive = precursor / (precursor + carrier_flow)
        wl_pl = self.spectrometers["pl"].wavelengths()
        wl_abs = self.spectrometers["abs"].wavelengths()
        pl = pl_signal(wl_pl, outcome, ones, reactive, self.path_factor("pl"), self.platform.spectrometers["pl"].resolution,
                       self.excitation_nm, per_droplet=True)
        res = self.platform.spectrometers["abs"].resolution
        sample = abs_signal(wl_abs, outcome, ones, ones, reactive, self.path_factor("abs"), res, 1.0, 0.0,
                            per_droplet=True)
        blank = OpticalOutcome(emission=[], absorption=[])
        reference = abs_signal(wl_abs, blank, np.zeros(1), np.ones(1), np.ones(1), 1.0, res, 1.0, 0.0)
        return pl, sample, np.broadcast_to(reference, sample.shape)


def zone_tanks(platform, zone: str) -> float:
    """Equivalent tanks in series of one zone: (sum V)^2 / sum(V^2 / n) over its segments."""
    segs = [s for s in platform.path if s.zone == zone]
    return sum(s.volume for s in segs) ** 2 / sum(s.volume**2 / s.dispersion_tanks for s in segs)


def pl_signal(wl, outcome, live, reactive, amount, resolution_nm, excitation_nm=300.0, per_droplet=False):
    """PL counts/s: each droplet emits in proportion to the excitation it absorbs."""
    a_exc = absorbance_per_cm(np.array([excitation_nm]), outcome)[:, 0] * FLOW_CELL_PATH_CM * amount
    absorbed = 1.0 - 10.0 ** (-a_exc)
    emission = render_bands(wl, outcome.emission, resolution_nm)
    per = (live * reactive * absorbed)[:, None] * emission * PL_GAIN_CPS
    turbidity = np.clip(np.atleast_1d(outcome.scattering_at_400nm), 0, None)
    scatter = PL_GAIN_CPS * 1e-6 * (0.5 + 50.0 * turbidity)[:, None] * led_spectrum(wl, excitation_nm)[None, :]
    if per_droplet:
        signal = per + scatter
    else:
        signal = per.sum(axis=0) + (np.asarray(live)[:, None] * scatter).sum(axis=0) / max(np.sum(live), 1e-12)
    return signal + STRAY_LIGHT * 1e-3 * signal.mean(axis=-1, keepdims=True)


def abs_signal(wl, outcome, live, weights, reactive, amount, resolution_nm, lamp_factor, offsets, per_droplet=False):
    """Transmitted lamp light: a time average over droplets and carrier slugs in the beam.

    `offsets` is an extra absorbance per droplet (flat in wavelength)."""
    lamp = LAMP_PEAK_CPS * lamp_factor * lamp_spectrum(wl)
    if outcome.absorption or np.any(np.asarray(outcome.edge_height)):
        absorb = absorbance_per_cm(wl, outcome, resolution_nm) * FLOW_CELL_PATH_CM * amount
        droplet_t = 10.0 ** (-(absorb + np.asarray(offsets, dtype=float).reshape(-1, 1)))
    else:
        droplet_t = np.ones((np.size(live), wl.size))
    seen = np.asarray(reactive)[:, None] * droplet_t + (1.0 - np.asarray(reactive)[:, None])
    seen = np.where(np.asarray(live)[:, None] > 0, seen, 1.0)
    if per_droplet:
        transmission = seen
    else:
        transmission = (np.asarray(weights)[:, None] * seen).sum(axis=0) / np.sum(weights)
    signal = lamp * transmission
    return signal + STRAY_LIGHT * signal.mean(axis=-1, keepdims=True)
