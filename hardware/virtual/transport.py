"""Transport in the virtual reactor: what is in a flow cell at a given moment.

Everything runs in volume coordinates, so it holds for any sequence of flow changes:
- each pump follows its set rate with a first-order lag (syringe and tubing compliance);
- a stream (junction -> segmentation) is a single-phase line whose dispersion is that of
  N stirred tanks in series; its outlet composition is exact for piecewise-constant inlets;
- after segmentation each droplet keeps its own content; the droplets found in a flow cell
  are spread around the plug-flow position by a narrow gamma distribution (N_eff tanks,
  moment-matched over the segments on the way);
- each droplet's reaction time is the time it spent in the heated segment, so a change of
  flow makes the droplets already in the reactor see a mix of the old and new times.
Steady state after ~1.2 tau is a consequence of these dispersions, not an input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import special

from hardware.platform import PlatformConfig


def gamma_quantiles(q, tanks, mean):
    """Quantiles `q` of the time (or volume) spent in `tanks` stirred tanks in series of total
    `mean`: a gamma distribution of shape `tanks` (scipy.stats.gamma.ppf, without importing
    scipy.stats, which costs every process about 2 CPU-s)."""
    return mean / tanks * special.gammaincinv(tanks, q)


# Droplets sampled per flow-cell reading (equal-weight quantiles of the dispersion).
DROPLET_NODES = 64


@dataclass
class PumpTrack:
    """Set-rate history of one pump; actual flow lags the set rate by `lag_s`."""

    lag_s: float
    starts: list[float] = field(default_factory=lambda: [-1e12])
    rates: list[float] = field(default_factory=lambda: [0.0])
    flow_at_start: list[float] = field(default_factory=lambda: [0.0])
    volume_at_start: list[float] = field(default_factory=lambda: [0.0])
    _arrays: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def set_rate(self, t: float, rate_ul_min: float) -> None:
        if t < self.starts[-1]:
            raise ValueError("pump history must grow forward in time")
        q, v = float(self.flow(t)), float(self.volume(t))
        self._arrays = None
        if t == self.starts[-1]:
            self.rates[-1] = rate_ul_min / 60.0
            return
        self.starts.append(t)
        self.rates.append(rate_ul_min / 60.0)  # uL/s inside
        self.flow_at_start.append(q)
        self.volume_at_start.append(v)

    def _history(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The history as arrays, built once per change (long runs query it many times)."""
        arrays = self._arrays
        if arrays is None:
            arrays = self._arrays = tuple(np.asarray(a, dtype=float) for a in
                                          (self.starts, self.rates, self.flow_at_start, self.volume_at_start))
        return arrays

    def _parts(self, t):
        t = np.asarray(t, dtype=float)
        starts = self._history()[0]
        i = np.searchsorted(starts, t, side="right") - 1
        i = np.minimum(np.maximum(i, 0), len(starts) - 1)
        dt = np.maximum(t - starts[i], 0.0)
        return i, dt

    def flow(self, t):
        """Actual flow in uL/s."""
        i, dt = self._parts(t)
        _, rates, flows, _ = self._history()
        r, q0 = rates[i], flows[i]
        decay = np.exp(-dt / self.lag_s) if self.lag_s > 0 else 0.0
        return r + (q0 - r) * decay

    def volume(self, t):
        """Cumulative dispensed volume in uL."""
        i, dt = self._parts(t)
        _, rates, flows, volumes = self._history()
        r, q0, v0 = rates[i], flows[i], volumes[i]
        ramp = self.lag_s * (1.0 - np.exp(-dt / self.lag_s)) if self.lag_s > 0 else 0.0
        return v0 + r * dt + (q0 - r) * ramp

    def change_times(self) -> list[float]:
        return self.starts[1:]

    def last_run(self) -> tuple[float, float] | None:
        """(start, end) of the latest stretch of positive set rate, end inf while it lasts; None
        when the pump never ran."""
        i = len(self.rates) - 1
        while i >= 0 and self.rates[i] <= 0:
            i -= 1
        if i < 0:
            return None
        end = self.starts[i + 1] if i + 1 < len(self.starts) else math.inf
        while i > 0 and self.rates[i - 1] > 0:
            i -= 1
        return self.starts[i], end


def mix_stocks(platform: PlatformConfig, rates: dict[str, float | np.ndarray]) -> tuple[dict, dict]:
    """Flow-weighted composition of the liquid from the given pumps: (molar mM, volume fractions)."""
    molar_keys = sorted({k for s in platform.stocks.values() for k in s.molar_mM})
    fraction_keys = sorted({k for s in platform.stocks.values() for k in s.volume_fraction})
    total = sum(np.asarray(r, dtype=float) for r in rates.values())
    safe = np.where(total > 0, total, 1.0)
    molar, fraction = {}, {}
    for key in molar_keys:
        molar[key] = sum(np.asarray(r, dtype=float) * platform.stocks[platform.pump(n).stock].molar_mM.get(key, 0.0)
                         for n, r in rates.items()) / safe
    for key in fraction_keys:
        fraction[key] = sum(np.asarray(r, dtype=float)
                            * platform.stocks[platform.pump(n).stock].volume_fraction.get(key, 0.0)
                            for n, r in rates.items()) / safe
    return molar, fraction


def invert_monotone(times: np.ndarray, values: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """First time at which a non-decreasing sampled function reaches each target."""
    idx = np.searchsorted(values, targets, side="left")
    idx = np.clip(idx, 1, len(values) - 1)
    v0, v1 = values[idx - 1], values[idx]
    t0, t1 = times[idx - 1], times[idx]
    span = np.where(v1 > v0, v1 - v0, 1.0)
    frac = np.clip((targets - v0) / span, 0.0, 1.0)
    return t0 + frac * (t1 - t0)


@dataclass
class Droplets:
    """The droplets in a flow cell at one moment, with what each one saw."""

    weight: np.ndarray
    blank: np.ndarray
    """True for liquid that was in the tubing before the first pump started (solvent)."""
    formed_s: np.ndarray
    molar_mM: dict[str, np.ndarray]
    volume_fraction: dict[str, np.ndarray]
    reaction_time_s: np.ndarray
    reactor_mid_s: np.ndarray
    """Time at the middle of each droplet's stay in the reactor (for its temperature)."""
    precursor_flow_ul_min: np.ndarray
    reactive_fraction: np.ndarray
    """Share of the tube volume that is reactive phase (the rest is carrier)."""
    zone_time_s: dict[str, np.ndarray] = field(default_factory=dict)
    """Time each droplet spent in each heater zone."""
    zone_mid_s: dict[str, np.ndarray] = field(default_factory=dict)
    """Time at the middle of each droplet's stay in each zone (for the zone's temperature)."""


def segment_times(platform: PlatformConfig, entry: np.ndarray, exit_: np.ndarray, reaction: list[int]):
    """Reaction time, its mid-time and per-zone (time, mid-time) from each segment's entry/exit times.

    `entry` and `exit_` have shape (segments, droplets)."""
    stay = np.maximum(exit_ - entry, 0.0)
    t_R = stay[reaction].sum(axis=0)
    mid_R = entry[reaction[0]] + 0.5 * (exit_[reaction[-1]] - entry[reaction[0]])
    zone_time, zone_mid = {}, {}
    for zone in sorted({seg.zone for seg in platform.path if seg.zone}):
        rows = [i for i, seg in enumerate(platform.path) if seg.zone == zone and i < len(entry)]
        if rows:
            zone_time[zone] = stay[rows].sum(axis=0)
            zone_mid[zone] = entry[rows[0]] + 0.5 * (exit_[rows[-1]] - entry[rows[0]])
    return t_R, mid_R, zone_time, zone_mid


class FlowPath:
    """Streams, segmentation and the post-junction path of one platform."""

    def __init__(self, platform: PlatformConfig, pump_lag_s: float):
        self.platform = platform
        self.tracks = {p.name: PumpTrack(lag_s=pump_lag_s) for p in platform.pumps}
        self.streams = platform.streams
        self.carrier = platform.rules.carrier_pump
        self._epoch_cache: dict = {}
        self.species_molar = sorted({k for s in platform.stocks.values() for k in s.molar_mM})
        self.species_fraction = sorted({k for s in platform.stocks.values() for k in s.volume_fraction})
        # Post-junction geometry, cumulative volumes along the path.
        edges = np.cumsum([0.0] + [s.volume for s in platform.path])
        self._edges = edges
        self._reaction = platform.reaction_segments
        self._timed = max([*self._reaction, *[i for i, seg in enumerate(platform.path) if seg.zone]])
        """Last segment whose crossing times matter (reaction or zone)."""
        self._cells = {}
        for i, seg in enumerate(platform.path):
            if seg.detector:
                mean = edges[i] + 0.5 * seg.volume
                var = sum(s.volume**2 / s.dispersion_tanks for s in platform.path[:i])
                var += (0.5 * seg.volume) ** 2 / seg.dispersion_tanks
                self._cells[seg.detector] = (mean, var)

    # --- recording ---------------------------------------------------------------------
    def set_rate(self, pump: str, t: float, rate_ul_min: float) -> None:
        self.tracks[pump].set_rate(t, rate_ul_min)

    # --- queries -----------------------------------------------------------------------
    def _stream_pumps(self, stream: str):
        return [p for p in self.platform.pumps if p.stream == stream]

    def stream_volume(self, stream: str, t):
        return sum(self.tracks[p.name].volume(t) for p in self._stream_pumps(stream))

    def stream_flow(self, stream: str, t):
        return sum(self.tracks[p.name].flow(t) for p in self._stream_pumps(stream))

    def post_volume(self, t):
        total = sum(self.stream_volume(s.name, t) for s in self.streams)
        if self.carrier:
            total = total + self.tracks[self.carrier].volume(t)
        return total

    def _stream_epochs(self, stream: str):
        """Change times of the stream's inlet composition, with the composition after each."""
        pumps = self._stream_pumps(stream)
        key = (stream, sum(len(self.tracks[p.name].starts) for p in pumps))
        if key in self._epoch_cache:
            return self._epoch_cache[key]
        times = sorted({t for p in pumps for t in self.tracks[p.name].change_times()})
        epochs = []
        previous = None
        for t in times:
            rates = {p.name: float(np.asarray(self.tracks[p.name].rates)[
                np.searchsorted(self.tracks[p.name].starts, t, side="right") - 1]) for p in pumps}
            if sum(rates.values()) <= 0:
                continue  # nothing flows: no new liquid enters
            molar, fraction = mix_stocks(self.platform, rates)
            comp = {k: float(v) for k, v in {**molar, **fraction}.items()}
            if comp != previous:
                epochs.append((t, comp, float(self.stream_volume(stream, t))))
                previous = comp
        self._epoch_cache[key] = epochs
        return epochs

    def stream_outlet(self, stream_cfg, t: np.ndarray) -> dict[str, np.ndarray]:
        """Composition leaving a stream's line at times `t` (tanks in series, volume coordinate)."""
        keys = self.species_molar + self.species_fraction
        out = {k: np.zeros_like(t, dtype=float) for k in keys}
        w_now = self.stream_volume(stream_cfg.name, t)
        n = stream_cfg.dispersion_tanks
        previous = {k: 0.0 for k in keys}
        for _, comp, w_e in self._stream_epochs(stream_cfg.name):
            passed = np.maximum(w_now - w_e, 0.0) / stream_cfg.line_volume
            share = special.gammainc(n, n * passed)
            for k in keys:
                out[k] += (comp[k] - previous[k]) * share
            previous = comp
        return out

    def droplets_in_cell(self, detector: str, t: float) -> Droplets:
        """The droplets seen by the `detector` flow cell at time `t`."""
        mean, var = self._cells[detector]
        n_eff = mean**2 / var
        q = (np.arange(DROPLET_NODES) + 0.5) / DROPLET_NODES
        offsets = gamma_quantiles(q, n_eff, mean)
        p_now = float(self.post_volume(t))
        p0 = p_now - offsets
        blank = p0 <= 0.0

        # Sample the post-junction volume on a time grid to invert it.
        grid = self._time_grid(t, p_now - float(offsets[-1]))
        p_grid = self.post_volume(grid)
        formed = invert_monotone(grid, p_grid, np.maximum(p0, 0.0))
        # Plug flow in volume: a droplet crosses edge k when p0 + edge_k has gone in.
        crossings = np.array([invert_monotone(grid, p_grid, np.maximum(p0, 0.0) + e)
                              for e in self._edges[: self._timed + 2]])
        reaction_time, reactor_mid, zone_time, zone_mid = segment_times(
            self.platform, crossings[:-1], crossings[1:], self._reaction)

        molar = {k: np.zeros(DROPLET_NODES) for k in self.species_molar}
        fraction = {k: np.zeros(DROPLET_NODES) for k in self.species_fraction}
        flows = {s.name: self.stream_flow(s.name, formed) for s in self.streams}
        precursor = sum(flows.values())
        safe_total = np.where(precursor > 0, precursor, 1.0)
        for stream in self.streams:
            comp = self.stream_outlet(stream, formed)
            share = flows[stream.name] / safe_total
            for k in molar:
                molar[k] += share * comp[k]
            for k in fraction:
                fraction[k] += share * comp[k]
        carrier = self.tracks[self.carrier].flow(formed) if self.carrier else 0.0
        reactive = precursor / np.maximum(precursor + carrier, 1e-12)
        return Droplets(
            weight=np.full(DROPLET_NODES, 1.0 / DROPLET_NODES),
            blank=blank,
            formed_s=formed,
            molar_mM=molar,
            volume_fraction=fraction,
            reaction_time_s=reaction_time,
            reactor_mid_s=reactor_mid,
            precursor_flow_ul_min=precursor * 60.0,
            reactive_fraction=np.where(blank, 0.5, reactive),
            zone_time_s=zone_time,
            zone_mid_s=zone_mid,
        )

    def _time_grid(self, t: float, oldest_volume: float) -> np.ndarray:
        """Times from when the oldest droplet of interest formed to `t`, dense enough to invert."""
        lo, hi = self._first_change(), t
        if oldest_volume > 0 and lo < t:
            # Bisection on the (monotone) post-junction volume for the oldest droplet.
            for _ in range(60):
                mid = 0.5 * (lo + hi)
                if float(self.post_volume(mid)) < oldest_volume:
                    lo = mid
                else:
                    hi = mid
            start = lo
        else:
            start = self._first_change()
        start = min(start, t - 1.0)
        lag = max(tr.lag_s for tr in self.tracks.values())
        changes = [c for tr in self.tracks.values() for c in tr.change_times() if start <= c <= t]
        base = np.linspace(start, t, 400)
        extra = [np.linspace(c, min(c + 8 * lag + 1e-9, t), 48) for c in changes]
        return np.unique(np.concatenate([base, *extra, [t]]))

    def _first_change(self) -> float:
        changes = [c for tr in self.tracks.values() for c in tr.change_times()]
        return min(changes) if changes else 0.0

    def tau_s(self, detector: str, t: float) -> float:
        """Mean residence time at the current flows (stream line + path to the cell)."""
        mean, _ = self._cells[detector]
        stream = next(s for s in self.streams if s.name == self.platform.rules.tau_from_stream)
        q_stream = float(self.stream_flow(stream.name, t))
        q_post = float(sum(self.stream_flow(s.name, t) for s in self.streams))
        if self.carrier:
            q_post += float(self.tracks[self.carrier].flow(t))
        if q_stream <= 0 or q_post <= 0:
            return float("inf")
        return stream.line_volume / q_stream + mean / q_post


class CascadePath(FlowPath):
    """A single-phase path with staged injections (a stream that joins part-way, such as the shell
    precursor of a CSTR cascade).

    The flow grows at each injection, so one volume coordinate no longer describes the path.
    Instead each sampled fluid element is followed backwards from the flow cell, segment by
    segment: in segment i it had to see X_i of liquid pass, X_i drawn from the segment's
    tanks-in-series distribution (exponential with mean V_i for one stirred tank), counted in
    that segment's own throughput. This is exact for stirred tanks under any flow history. Where
    a stream joins, the element takes on the injected liquid in proportion to the two flows at
    that moment. The draws are a fixed scrambled Sobol set, so readings are smooth in time.
    """

    def __init__(self, platform: PlatformConfig, pump_lag_s: float):
        super().__init__(platform, pump_lag_s)
        self._joined_at = {s.name: 0 if s.joins_at is None else [seg.name for seg in platform.path].index(s.joins_at)
                           for s in platform.streams}
        self._index = {seg.detector: i for i, seg in enumerate(platform.path) if seg.detector}
        from scipy.stats import qmc  # here, not at the top: it costs every process ~2 CPU-s to import

        u = np.clip(qmc.Sobol(d=len(platform.path), scramble=True, seed=20240501).random(DROPLET_NODES),
                    1e-6, 1.0 - 1e-6)
        # Liquid each element sees pass through each segment (the cell's own: to its middle).
        self._passed = [gamma_quantiles(u[:, i], seg.dispersion_tanks, seg.volume)
                        for i, seg in enumerate(platform.path)]
        self._passed_to_middle = [0.5 * x for x in self._passed]

    def segment_throughput(self, i: int, t):
        """Liquid that has flowed through segment `i` by time `t` (uL)."""
        return sum(self.stream_volume(s.name, t) for s in self.streams if self._joined_at[s.name] <= i)

    def _grid(self, i: int, t_hi: float, oldest: float) -> np.ndarray:
        lo, hi = self._first_change(), t_hi
        if oldest > 0 and lo < hi:
            for _ in range(60):
                mid = 0.5 * (lo + hi)
                if float(self.segment_throughput(i, mid)) < oldest:
                    lo = mid
                else:
                    hi = mid
        start = min(lo, t_hi - 1.0)
        lag = max(tr.lag_s for tr in self.tracks.values())
        changes = [c for tr in self.tracks.values() for c in tr.change_times() if start <= c <= t_hi]
        extra = [np.linspace(c, min(c + 8 * lag + 1e-9, t_hi), 48) for c in changes]
        return np.unique(np.concatenate([np.linspace(start, t_hi, 600), *extra, [t_hi]]))

    def droplets_in_cell(self, detector: str, t: float) -> Droplets:
        k = self._index[detector]
        entry = np.zeros((k + 1, DROPLET_NODES))
        exit_ = np.zeros((k + 1, DROPLET_NODES))
        blank = np.zeros(DROPLET_NODES, dtype=bool)
        t_out = np.full(DROPLET_NODES, float(t))
        for i in range(k, -1, -1):
            passed = self._passed_to_middle[i] if i == k else self._passed[i]
            w_in = self.segment_throughput(i, t_out) - passed
            blank |= w_in <= 0.0
            grid = self._grid(i, float(t_out.max()), float(np.maximum(w_in, 0.0).min()))
            t_in = invert_monotone(grid, self.segment_throughput(i, grid), np.maximum(w_in, 0.0))
            entry[i], exit_[i] = t_in, t_out
            t_out = t_in
        formed = entry[0]
        keys = self.species_molar + self.species_fraction
        comp = {key: np.zeros(DROPLET_NODES) for key in keys}
        upstream = np.zeros(DROPLET_NODES)
        for i in range(k + 1):
            joining = [s for s in self.streams if self._joined_at[s.name] == i]
            if not joining:
                continue
            at = entry[i]
            for stream in joining:
                q = self.stream_flow(stream.name, at)
                outlet = self.stream_outlet(stream, at)
                total = np.maximum(upstream + q, 1e-12)
                for key in keys:
                    comp[key] = (upstream * comp[key] + q * outlet[key]) / total
                upstream = upstream + q
        reaction_time, reactor_mid, zone_time, zone_mid = segment_times(self.platform, entry, exit_, self._reaction)
        start_flow = sum(self.stream_flow(s.name, formed) for s in self.streams if self._joined_at[s.name] == 0)
        return Droplets(
            weight=np.full(DROPLET_NODES, 1.0 / DROPLET_NODES),
            blank=blank,
            formed_s=formed,
            molar_mM={key: comp[key] for key in self.species_molar},
            volume_fraction={key: comp[key] for key in self.species_fraction},
            reaction_time_s=reaction_time,
            reactor_mid_s=reactor_mid,
            precursor_flow_ul_min=start_flow * 60.0,
            reactive_fraction=np.ones(DROPLET_NODES),
            zone_time_s=zone_time,
            zone_mid_s=zone_mid,
        )


def flow_path(platform: PlatformConfig, pump_lag_s: float) -> FlowPath:
    """The transport model a platform needs: staged injections need the element-by-element walk."""
    if any(s.joins_at for s in platform.streams):
        return CascadePath(platform, pump_lag_s)
    return FlowPath(platform, pump_lag_s)
