"""One manufacturing lot on a rig, step by step: equilibrate, qualify, produce with QC samples on
control charts, refill, answer alarms, record. Called by `flows.manufacture.run_lot`.

Time runs on the platform clock (simulated on the virtual lab). The pumps are always programmed
for a finite segment (`segment_min` x the volume margin) and re-programmed before it ends, so a
dead orchestrator cannot pump for more than one segment.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from flows.operator import perform_refill
from hardware.errors import SdflInputError, SyringeEmpty
from tasks import acquisition, equilibration, features, inventory, lots, spc
from tasks.records import now_utc, provenance, summarize_features

if TYPE_CHECKING:
    from flows.manufacture import LotPlan

DEFAULT_PRODUCT = "Cs3Cu2I5"


class LotStop(Exception):
    """Ends a lot early with a status (stopped by a decision, qualification impossible...)."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def conversion_estimate(rig, recipe, plan: LotPlan) -> tuple[float | None, str]:
    """The conversion to use for the yield: the plan's, else the virtual lab's truth at the recipe."""
    if plan.conversion is not None:
        return plan.conversion, "given"
    if rig.platform.platform.kind == "real" or rig.platform.chemistry is None:
        return None, "none"
    from tasks.twin import DigitalTwin

    truth = DigitalTwin(rig.platform).features([recipe.condition])
    if "yield_fraction" not in truth:
        return None, "none"
    return float(truth["yield_fraction"].iloc[0]), "virtual lab truth (the chemistry model's yield_fraction)"


class LotRun:
    def __init__(self, rig, plan: LotPlan, recipe, steps, decide, confirm_refill, on_sample, flow_run_id, log):
        self.rig, self.plan, self.recipe, self.steps, self.log = rig, plan, recipe, steps, log
        self.decide, self.confirm_refill, self.on_sample, self.flow_run_id = decide, confirm_refill, on_sample, flow_run_id
        platform = rig.platform
        self.settings = features.FeatureSettings.from_config(platform.features)
        self.sample_schema = lots.sample_schema(features.feature_columns(self.settings), [p.name for p in platform.pumps])
        self.lot_schema = lots.lot_schema(platform)
        self.virtual = platform.platform.kind != "real"
        self.segment_s = plan.segment_min * 60.0
        self.margin = platform.rules.volume_margin
        self.acq_s = platform.acquisition.budget
        self.flows = {n: q for n, q in recipe.flows_ul_min.items() if q > 0}
        self.started_at = now_utc()
        self.t_start = rig.clock.now()
        self.t_prod: float | None = None
        self.t_end = math.inf
        self.segment_end = -math.inf
        self.producing_since: float | None = None
        self.produced_s = 0.0
        self.n_samples = self.n_events = self.n_alarms = self.n_refills = 0
        self.qualification = -1
        self.qual_rows: list[dict] = []
        self.qual_start = 0.0
        self.limits: dict[str, spc.Limits] | None = None
        self.states: dict[str, spc.ChartState] = {}
        self.limit_rows: list[dict] = []
        self.last_sample_t: float | None = None
        self.abs_ref: float | None = None
        self.yields: list[float] = []
        self.status, self.reason = "running", None
        self.reference = None
        self.estimate = self._yield()

    # --- the lot ------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        plan = self.plan
        lots.lot_folder(plan.data_root, plan.lot).mkdir(parents=True, exist_ok=True)
        self.write_lot()
        recipe = ", ".join(f"{k} = {v:.4g}" for k, v in self.recipe.condition.items())
        self.event("start", f"recipe {recipe} ({plan.recipe_from}); tau {self.recipe.tau_s:.1f} s, "
                   f"t_E {self.recipe.t_E_s:.1f} s; " + (self.estimate.describe() if self.estimate else "no yield estimate"))
        try:
            self.reference = self.steps.reference(self.rig)
            self.equilibrate("start")
            self.t_prod = self.rig.clock.now()
            self.t_end = self.t_prod + plan.duration_h * 3600.0
            self.begin_qualification()
            while True:
                t_next = self.next_sample_time()
                if t_next + self.acq_s > self.t_end:
                    self.keep_running(self.t_end)
                    self.steps.produce_until(self.rig, self.recipe, self.t_end, plan.poll_s)
                    break
                self.keep_running(t_next + self.acq_s)
                self.steps.produce_until(self.rig, self.recipe, t_next, plan.poll_s)
                self.take_sample()
            self.finish("completed", f"ran {plan.duration_h:g} h at the recipe")
        except LotStop as stop:
            self.finish(stop.status, stop.reason)
        except Exception as exc:
            problems = self.rig.safe_state()
            reason = f"{type(exc).__name__}: {exc}" + (f" | safe state: {'; '.join(problems)}" if problems else "")
            self.log.error("lot %s failed, rig made safe: %s", plan.lot, reason)
            self.event("fault", reason)
            self.finish("failed", reason)
            raise
        except BaseException as exc:  # Ctrl-C, cancellation: safe first, then record what we can
            self.rig.safe_state()
            self.finish("cancelled", f"interrupted: {type(exc).__name__} {exc}")
            raise
        return self.lot_row()

    def finish(self, status: str, reason: str) -> None:
        self.stop_production()
        problems = self.rig.safe_state()
        self.status, self.reason = status, reason + (f" | safe state: {'; '.join(problems)}" if problems else "")
        self.event("end", f"{status}: {self.reason}")
        self.write_lot()

    # --- flows and inventory ------------------------------------------------------------
    def equilibrate(self, why: str, check_inventory: bool = True) -> None:
        """Heater stable at the recipe, pumps programmed for a segment, wait t_E."""
        rig, recipe, cfg = self.rig, self.recipe, self.rig.platform
        if check_inventory:
            request = self.refill_request()
            if request is not None:
                self.refill(request)
                return  # the refill re-equilibrates
        self.steps.heater(rig, recipe)
        t_on = self.steps.program(rig, recipe, run_time_s=self.segment_s)
        self.segment_end = t_on + self.segment_s
        self.steps.produce_until(rig, recipe, t_on + recipe.t_E_s, cfg.equilibration.poll_interval)
        self.producing_since = rig.clock.now()
        self.event("equilibrated", f"{why}: heater at {recipe.temperature_c:g} C, pumps on, waited t_E = "
                   f"{recipe.t_E_s:.1f} s")

    def keep_running(self, t_until: float) -> None:
        """Make sure the pumps flow at least until `t_until`: re-program (or refill) if not."""
        if self.pumps_stopped():
            self.stop_production()
            self.event("restart", "the pumps had finished their segment (a long pause); re-equilibrating")
            self.equilibrate("restart")
        if self.segment_end >= t_until:
            return
        request = self.refill_request()
        if request is not None:
            self.refill(request)
            return
        t_on = self.steps.program(self.rig, self.recipe, run_time_s=self.segment_s)
        self.segment_end = t_on + self.segment_s

    def pumps_stopped(self) -> bool:
        """True when a pump that should flow finished its programmed volume; alarms raise."""
        for name in self.flows:
            status = self.rig.pumps[name].status()
            if status.alarm:
                equilibration.check_pumps(self.rig, self.recipe)  # raises the named fault
            if not status.running:
                return True
        return False

    def refill_request(self) -> inventory.RefillRequest | None:
        return inventory.refill_needed(self.rig.remaining_ul(), self.flows, self.segment_s, self.margin,
                                       self.plan.refill_horizon_min * 60.0)

    def refill(self, request: inventory.RefillRequest) -> None:
        """Stop, refill (ask the operator unless auto_refill), then re-equilibrate."""
        self.stop_production()
        self.rig.stop_pumps()
        self.segment_end = -math.inf
        self.event("refill_request", request.describe())
        if self.plan.auto_refill:
            ok, by = True, "auto"
        elif self.confirm_refill is not None:
            ok, by = bool(self.confirm_refill(request)), "operator"
        else:
            ok, by = False, "nobody (no operator and auto_refill off)"
        if not ok:
            raise LotStop("stopped", f"refill of {', '.join(request.pumps)} not confirmed ({by})")
        added = perform_refill(self.rig, request.pumps)
        if self.virtual and self.plan.refill_time_min > 0:
            self.rig.clock.sleep(self.plan.refill_time_min * 60.0)
        self.n_refills += 1
        self.event("refill", "; ".join(f"{n} +{v:.0f} uL" for n, v in added.items()), by=by)
        still = self.refill_request()
        if still is not None:
            raise SyringeEmpty(", ".join(still.short), f"still short after the refill: {still.describe()}")
        self.reference = self.steps.reference(self.rig)  # a new one only when the old is > 8 h old
        self.equilibrate("after refill", check_inventory=False)

    def stop_production(self) -> None:
        if self.producing_since is not None:
            self.produced_s += self.rig.clock.now() - self.producing_since
            self.producing_since = None

    # --- QC and SPC ---------------------------------------------------------------------
    def begin_qualification(self) -> None:
        self.qualification += 1
        self.limits, self.states, self.qual_rows = None, {}, []
        self.qual_start = self.rig.clock.now()
        self.event("qualification", f"window {self.qualification}: {self.plan.qualification_points} QC samples over "
                   f"{self.plan.qualification_min:g} min set the control limits")

    def next_sample_time(self) -> float:
        if self.limits is None:
            cadence = self.plan.qualification_min * 60.0 / self.plan.qualification_points
            t = self.qual_start + len(self.qual_rows) * cadence
        else:
            t = self.last_sample_t + self.plan.qc_every_min * 60.0
        return max(t, self.rig.clock.now())

    def take_sample(self) -> None:
        rig, plan = self.rig, self.plan
        t = rig.clock.now()
        self.n_samples += 1
        i = self.n_samples
        acquired = self.steps.acquire(rig, self.reference)
        table = self.steps.extract(
            acquired.pl[0].wavelength_nm, acquired.pl_cps(), _absorbance(acquired), self.settings,
            abs_wavelengths_nm=acquired.abs_samples[0].wavelength_nm, pl_raw_max_counts=acquired.pl_raw_max(),
            max_counts=rig.spectrometers["pl"].max_counts, on_invalid="flag")
        values = summarize_features(table)
        signals: list[spc.Signal] = []
        if self.limits is not None:
            charted = values
            if values.get("flag_saturated") or values.get("flag_invalid"):  # clipped or NaN: not a measurement
                charted = {**values, **{f: math.nan for f in plan.spc_features}}
            self.states, signals = spc.update_all(self.limits, self.states, charted, i, plan.spc)
        row = {
            "sample_id": lots.sample_id(plan.lot, i), "lot": plan.lot, "sample": i,
            "phase": "qualification" if self.limits is None else "production", "qualification": self.qualification,
            "t_platform_s": t, "t_h": self.t_h(t), "recorded_at": now_utc(),
            "temperature_measured_c": (rig.heater.read_temperature() if rig.heater is not None
                                       else rig.platform.rules.ambient_temperature),
            "in_control": None if self.limits is None else not signals,
            "alarms": "; ".join(f"{s.rule}:{s.feature}" for s in signals) or None,
            "yield_g_h": self.sample_yield(values.get("Abs_300")), **values,
            **{f"remaining_{n}_ul": v for n, v in rig.remaining_ul().items()},
        }
        spectra = [s for s in acquired.rows() if s["kind"] in ("pl_cps", "absorbance")] if plan.save_spectra else None
        self.steps.record_sample(plan.data_root, plan.lot, row, self.sample_schema, spectra)
        self.last_sample_t = t
        if row["phase"] == "production" and row["yield_g_h"] is not None:
            self.yields.append(row["yield_g_h"])
        if self.limits is None:
            self.qual_rows.append(values)
            if len(self.qual_rows) >= plan.qualification_points:
                self.set_limits()
        if self.on_sample is not None:
            self.on_sample((rig.clock.now() - self.t_prod) / (plan.duration_h * 3600.0), row)
        if signals:
            self.handle_alarm(i, signals)

    def set_limits(self) -> None:
        window = {f: [row.get(f) if row.get(f) is not None else math.nan for row in self.qual_rows]
                  for f in self.plan.spc_features}
        try:
            self.limits = spc.estimate_all(window, self.plan.spc_features, self.plan.spc)
        except SdflInputError as exc:
            raise LotStop("failed", f"qualification {self.qualification} gave no control limits: {exc}") from exc
        abs_values = [r.get("Abs_300") for r in self.qual_rows if r.get("Abs_300") is not None]
        self.abs_ref = float(np.mean(abs_values)) if abs_values else None
        t_to = self.t_h(self.rig.clock.now())
        for lim in self.limits.values():
            lcl, ucl = lim.band(self.plan.spc.shewhart_k)
            self.limit_rows.append({"qualification": self.qualification, "feature": lim.feature, "center": lim.center,
                                    "sigma": lim.sigma, "sigma_mr": lim.sigma_mr, "sigma_sd": lim.sigma_sd,
                                    "floor": lim.floor, "n": lim.n, "excluded": lim.excluded, "lcl": lcl, "ucl": ucl,
                                    "t_from_h": self.t_h(self.qual_start), "t_to_h": t_to})
        lots.write_limits(self.plan.data_root, self.plan.lot, self.limit_rows)
        self.event("qualified", "; ".join(f"{lim.feature} {lim.center:.6g} +/- {lim.sigma:.3g}" for lim in
                                         self.limits.values()))

    def handle_alarm(self, sample: int, signals: list[spc.Signal]) -> None:
        from flows.manufacture import Alarm, policy_decision

        self.n_alarms += 1
        alarm = Alarm(self.plan.lot, sample, self.t_h(self.rig.clock.now()), tuple(signals))
        for s in signals:
            self.event("alarm", s.describe(), sample=sample, feature=s.feature, rule=s.rule)
        decision = policy_decision(self.plan.on_alarm) or self.decide(alarm)
        self.event("decision", decision.note, sample=sample, action=decision.action, by=decision.by)
        if decision.action == "stop":
            raise LotStop("stopped", f"stopped after the alarm at sample {sample} ({decision.by}"
                          f"{': ' + decision.note if decision.note else ''}): {alarm.describe()}")
        if decision.action == "re-equilibrate":
            self.stop_production()
            self.rig.stop_pumps()
            self.segment_end = -math.inf
            self.equilibrate("operator asked to re-equilibrate")
            self.states = {}
            if decision.requalify:
                self.begin_qualification()

    # --- records ------------------------------------------------------------------------
    def t_h(self, t: float) -> float:
        return (t - self.t_start) / 3600.0

    def _yield(self) -> inventory.YieldEstimate | None:
        product = self.plan.product
        if product is None:
            try:
                inventory.estimate_yield(self.rig.platform, self.flows, DEFAULT_PRODUCT)
            except SdflInputError:
                return None
            product = DEFAULT_PRODUCT
        conversion, source = conversion_estimate(self.rig, self.recipe, self.plan)
        return inventory.estimate_yield(self.rig.platform, self.flows, product, conversion, source)

    def sample_yield(self, abs_300: float | None) -> float | None:
        """The nominal yield scaled by Abs_300 (the yield proxy) against the qualification window."""
        if self.estimate is None or self.estimate.g_h is None:
            return None
        if self.abs_ref and abs_300 is not None and math.isfinite(abs_300):
            return self.estimate.g_h * abs_300 / self.abs_ref
        return self.estimate.g_h

    def event(self, kind: str, detail: str = "", **fields) -> None:
        self.n_events += 1
        now = self.rig.clock.now()
        row = {"event_id": lots.event_id(self.plan.lot, self.n_events), "lot": self.plan.lot, "event": self.n_events,
               "kind": kind, "t_platform_s": now, "t_h": self.t_h(now), "recorded_at": now_utc(), "detail": detail,
               **fields}
        lots.write_event(self.plan.data_root, self.plan.lot, row)
        self.log.info("lot %s [%.2f h] %s: %s", self.plan.lot, self.t_h(now), kind, detail)

    def lot_row(self) -> dict[str, Any]:
        plan, recipe, est = self.plan, self.recipe, self.estimate
        produced_h = (self.produced_s + (self.rig.clock.now() - self.producing_since
                                         if self.producing_since is not None else 0.0)) / 3600.0
        mean_yield = float(np.mean(self.yields)) if self.yields else (est.g_h if est else None)
        done = self.status != "running"
        return {
            "lot": plan.lot, "status": self.status, "reason": self.reason, "platform": self.rig.platform.platform.name,
            "platform_sha256": self.rig.platform.sha256, **provenance(), "flow_run_id": self.flow_run_id,
            "seed": plan.seed, "started_at": self.started_at, "finished_at": now_utc() if done else None,
            "recipe_from": plan.recipe_from, "duration_h": plan.duration_h, "qc_every_min": plan.qc_every_min,
            "qualification_min": plan.qualification_min, "on_alarm": plan.on_alarm, "tau_s": recipe.tau_s,
            "t_E_s": recipe.t_E_s, "t_start_s": self.t_start, "t_production_start_s": self.t_prod,
            "t_end_s": self.rig.clock.now() if done else None, "produced_h": produced_h, "samples": self.n_samples,
            "alarms": self.n_alarms, "refills": self.n_refills, "product": est.product if est else None,
            "limiting_species": est.limiting_species if est else None,
            "yield_theoretical_g_h": est.theoretical_g_h if est else None,
            "conversion": est.conversion if est else None, "conversion_source": est.conversion_source if est else None,
            "yield_g_h": mean_yield, "product_g": mean_yield * produced_h if mean_yield is not None else None,
            **recipe.condition, **{f"q_{n}_ul_min": q for n, q in recipe.flows_ul_min.items()},
        }

    def write_lot(self) -> None:
        lots.write_lot(self.plan.data_root, self.plan.lot, self.lot_row(), self.lot_schema)


def _absorbance(acquired: acquisition.Acquisition) -> np.ndarray:
    """Absorbance with the no-light pixels (NaN by design) set to 0 (as the experiment flow does)."""
    from flows.experiment import _absorbance_for_features

    return _absorbance_for_features(acquired)
