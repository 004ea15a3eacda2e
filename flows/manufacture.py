"""manufacture: hold a recipe for hours with in-line QC spectra, statistical process control,
syringe refills and a yield estimate; one lot's records under <data root>/lots/<lot>/.

`run_lot` does the work on a rig with plain step functions (benchmarks call it directly). The
Prefect flow `manufacture` wraps it: task retries on instrument I/O, operator decisions through
input forms (`pause_flow_run`), progress and report artifacts, and hooks that make the rig safe
when the run is cancelled or crashes.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from prefect.input import RunInput
from pydantic import Field

from flows.operator import RefillConfirmation, pause_for, someone_can_answer
from flows.settings import ManufactureSettings, centred, settings_flow
from hardware.errors import SdflInputError
from hardware.platform import DEFAULT_PLATFORM, PlatformConfig, load_platform
from hardware.rig import Rig, open_rig
from tasks import acquisition, equilibration, features, formulation, inventory, lots, storage
from tasks.choices import OnAlarm
from tasks.objective import parse_objective
from tasks.retry import INSTRUMENT_RETRIES, INSTRUMENT_RETRY_DELAYS_S, is_transient
from tasks.spc import Signal, SpcSettings

Action = Literal["continue", "re-equilibrate", "stop"]


def _default(name: str):
    """A setting's default, as the manufacture flow declares it."""
    return ManufactureSettings.model_fields[name].default


DEFAULT_SPC_FEATURES = tuple(_default("spc_features"))
MIN_SAMPLE_SPACING_S = 30.0
"""A QC sample (autorange, 3 replicates, darks) takes ~20 s of platform time."""


@dataclass
class LotPlan:
    """What a manufacturing run should do. `validate_lot` checks it before anything moves."""

    lot: str
    recipe: dict[str, float]
    duration_h: float = _default("duration_h")
    qc_every_min: float = _default("qc_every_min")
    qualification_min: float = _default("qualification_min")
    qualification_points: int = _default("qualification_points")
    """QC samples in the qualification window (taken qualification_min / points apart)."""
    spc_features: tuple[str, ...] = DEFAULT_SPC_FEATURES
    spc: SpcSettings = field(default_factory=SpcSettings)
    on_alarm: OnAlarm = _default("on_alarm")
    decision_timeout_min: float = _default("decision_timeout_min")
    auto_refill: bool = _default("auto_refill")
    segment_min: float = _default("segment_min")
    """Pumps are programmed for this long at a time (x the volume margin): never continuous."""
    refill_horizon_min: float = 90.0
    """At a refill stop, also top up every syringe that would run dry within this time."""
    refill_time_min: float = 5.0
    """Virtual and emulated rigs: platform time an operator takes to refill."""
    product: str | None = None
    """Product formula for the yield (None: Cs3Cu2I5 when the stocks supply Cs, Cu and I)."""
    conversion: float | None = None
    """Share of the limiting precursor converted (None: the virtual lab's truth, if any)."""
    save_spectra: bool = True
    poll_s: float = 30.0
    """Pump checks while producing, in platform seconds."""
    seed: int | None = None
    data_root: str | None = None
    recipe_from: str = "recipe"


@dataclass(frozen=True)
class Decision:
    """What to do after an out-of-control signal, and who decided."""

    action: Action
    requalify: bool = False
    note: str = ""
    by: str = "policy"


@dataclass(frozen=True)
class Alarm:
    """The signals of one QC sample."""

    lot: str
    sample: int
    t_h: float
    signals: tuple[Signal, ...]

    def describe(self) -> str:
        return f"sample {self.sample} at {self.t_h:.2f} h: " + "; ".join(s.describe() for s in self.signals)


@dataclass(frozen=True)
class LotSteps:
    """The step functions a lot calls: plain functions or their Prefect tasks."""

    reference: Callable
    heater: Callable
    program: Callable
    produce_until: Callable
    acquire: Callable
    extract: Callable
    record_sample: Callable


def produce_until(rig: Rig, plan: formulation.Formulation, t_end_s: float, poll_s: float) -> None:
    """Let the pumps run until platform time `t_end_s`, checking them every `poll_s` (retry-safe)."""
    equilibration.wait_on_clock(rig, plan, max(t_end_s - rig.clock.now(), 0.0), poll_s)


PLAIN_LOT_STEPS = LotSteps(
    reference=acquisition.ensure_reference,
    heater=equilibration.heat_zones,
    program=equilibration.start_pumps,
    produce_until=produce_until,
    acquire=acquisition.acquire,
    extract=features.extract_features,
    record_sample=lots.write_sample,
)


def prefect_lot_steps(virtual: bool) -> LotSteps:
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    retry = dict(cache_policy=NO_CACHE, retries=INSTRUMENT_RETRIES, retry_condition_fn=is_transient,
                 retry_delay_seconds=0 if virtual else INSTRUMENT_RETRY_DELAYS_S)
    return LotSteps(
        reference=acquisition.reference_task.with_options(retry_delay_seconds=retry["retry_delay_seconds"]),
        heater=task(name="heater-stable", **retry)(equilibration.heat_zones),
        program=task(name="program-pumps", **retry)(equilibration.start_pumps),
        produce_until=task(name="produce", **retry)(produce_until),
        acquire=acquisition.acquire_task.with_options(retry_delay_seconds=retry["retry_delay_seconds"]),
        extract=features.extract_features_task,
        record_sample=lots.write_sample_task,
    )


# --- checking a plan -----------------------------------------------------------------------
def validate_lot(plan: LotPlan, platform: PlatformConfig) -> formulation.Formulation:
    """Check every setting; raise SdflInputError naming the field. Nothing has moved yet."""
    storage.check_name("lot", plan.lot)
    if not isinstance(plan.recipe, dict) or not plan.recipe:
        raise SdflInputError("recipe: give a condition (a value for each parameter of the space)")
    try:
        recipe = formulation.formulate(plan.recipe, platform)
    except SdflInputError as exc:
        raise SdflInputError(f"recipe: {exc}") from exc
    _positive("duration_h", plan.duration_h)
    _positive("qc_every_min", plan.qc_every_min)
    _positive("qualification_min", plan.qualification_min)
    _positive("segment_min", plan.segment_min)
    _positive("decision_timeout_min", plan.decision_timeout_min)
    _positive("poll_s", plan.poll_s)
    duration_min = plan.duration_h * 60.0
    if plan.qc_every_min > duration_min:
        raise SdflInputError(f"qc_every_min ({plan.qc_every_min:g} min) is longer than the run "
                             f"(duration_h = {plan.duration_h:g} h = {duration_min:g} min)")
    if plan.qc_every_min * 60.0 < MIN_SAMPLE_SPACING_S:
        raise SdflInputError(f"qc_every_min must be at least {MIN_SAMPLE_SPACING_S / 60:g} min (a QC sample "
                             f"takes ~20 s), got {plan.qc_every_min:g}")
    if plan.qualification_min >= duration_min:
        raise SdflInputError(f"qualification_min ({plan.qualification_min:g} min) must be shorter than the run "
                             f"({duration_min:g} min)")
    if not isinstance(plan.qualification_points, int) or plan.qualification_points < plan.spc.min_points:
        raise SdflInputError(f"qualification_points must be an integer >= {plan.spc.min_points} "
                             f"(points needed for control limits), got {plan.qualification_points!r}")
    if plan.qualification_min * 60.0 / plan.qualification_points < MIN_SAMPLE_SPACING_S:
        raise SdflInputError(f"qualification_points: {plan.qualification_points} samples in {plan.qualification_min:g} "
                             f"min are closer than {MIN_SAMPLE_SPACING_S:g} s; lower it or lengthen the window")
    if plan.segment_min < plan.qc_every_min + 2.0:
        raise SdflInputError(f"segment_min ({plan.segment_min:g}) must exceed qc_every_min + 2 min, so the pumps "
                             "cover a QC interval and its sample")
    if plan.refill_horizon_min < plan.segment_min:
        raise SdflInputError(f"refill_horizon_min ({plan.refill_horizon_min:g}) must be >= segment_min "
                             f"({plan.segment_min:g})")
    if plan.refill_time_min < 0:
        raise SdflInputError(f"refill_time_min must be >= 0, got {plan.refill_time_min}")
    if plan.auto_refill and platform.platform.kind == "real":
        raise SdflInputError("auto_refill: a real rig's syringes are refilled by a person; leave it off "
                             "(the run asks for each refill)")
    if plan.on_alarm not in ("pause", "continue", "stop"):
        raise SdflInputError(f"on_alarm must be 'pause', 'continue' or 'stop', got {plan.on_alarm!r}")
    columns = [c for c in features.feature_columns(features.FeatureSettings.from_config(platform.features))
               if not c.startswith("flag_")]
    unknown = [f for f in plan.spc_features if f not in columns]
    if unknown or not plan.spc_features:
        raise SdflInputError(f"spc_features: unknown {unknown or '(none given)'}; choose from {columns}")
    if plan.conversion is not None and not 0 < plan.conversion <= 1:
        raise SdflInputError(f"conversion must be in (0, 1], got {plan.conversion}")
    if plan.product is not None:
        inventory.estimate_yield(platform, recipe.flows_ul_min, plan.product, plan.conversion)
    inventory.check_segment_fits(recipe.flows_ul_min, {p.name: p.syringe_volume for p in platform.pumps},
                                 plan.segment_min * 60.0, platform.rules.volume_margin)
    return recipe


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value != value:
        raise SdflInputError(f"{name} must be a number > 0, got {value!r}")


def lot_name(template: str) -> str:
    """A lot name; "{date}" and "{time}" become the UTC date and time (scheduled runs: one lot each)."""
    from tasks.records import now_utc

    if not isinstance(template, str):
        raise SdflInputError(f"lot must be a name, got {template!r}")
    now = now_utc()
    try:
        name = template.format(date=f"{now:%Y%m%d}", time=f"{now:%H%M%S}")
    except (KeyError, IndexError, ValueError) as exc:
        raise SdflInputError(f"lot {template!r}: only {{date}} and {{time}} may be filled in ({exc})") from None
    return storage.check_name("lot", name)


def recipe_from_campaign(root, campaign: str, platform: PlatformConfig, objective: str = "PL_I") -> dict[str, float]:
    """The condition of a campaign's best completed experiment (by `objective`)."""
    frame = storage.read_experiments(root, campaign)
    if frame.empty or not (frame["status"] == "completed").any():
        raise SdflInputError(f"from_campaign: campaign {campaign!r} has no completed experiment under "
                             f"{storage.data_root(root)}")
    columns = features.feature_columns(features.FeatureSettings.from_config(platform.features))
    score = parse_objective(objective, columns)
    done = frame[frame["status"] == "completed"]
    values = [score(row) for row in done.to_dict(orient="records")]
    best = done.iloc[max(range(len(values)), key=lambda i: values[i] if values[i] == values[i] else -float("inf"))]
    return {name: float(best[name]) for name in platform.parameter_names}


# --- decisions -----------------------------------------------------------------------------
def policy_decision(on_alarm: OnAlarm) -> Decision | None:
    """Unattended runs: "continue" logs and goes on, "stop" ends the lot; None for "pause"."""
    if on_alarm == "continue":
        return Decision("continue", by="policy", note="on_alarm=continue")
    if on_alarm == "stop":
        return Decision("stop", by="policy", note="on_alarm=stop")
    return None


def decision_from_input(answer, timeout_min: float) -> Decision:
    """An operator's form (AlarmDecision) as a Decision; None (no answer in time) means stop."""
    if answer is None:
        return Decision("stop", by="timeout", note=f"no operator decision within {timeout_min:g} min")
    action = getattr(answer, "action", None)
    if action not in ("continue", "re-equilibrate", "stop"):
        raise SdflInputError(f"action must be 'continue', 're-equilibrate' or 'stop', got {action!r}")
    return Decision(action, requalify=bool(getattr(answer, "requalify", False)),
                    note=str(getattr(answer, "note", "") or ""), by="operator")


class AlarmDecision(RunInput):
    """The operator's form after an alarm (shown in the Prefect UI when the run pauses)."""

    action: Action = Field(description="continue: false alarm, go on; re-equilibrate: restart the flows and "
                           "wait t_E (after fixing something); stop: end the lot with the rig safe")
    requalify: bool = Field(default=False, description="with re-equilibrate: new control limits from a fresh "
                            "qualification window (the process has a new normal)")
    note: str = Field(default="", description="what you saw or did")


def ask_operator(alarm: Alarm, plan: LotPlan) -> Decision:
    """Pause for an operator decision on an alarm (Prefect input form); a timeout means stop.
    Without a Prefect server nobody could answer the form: the lot stops safely at once."""
    if not someone_can_answer():
        return Decision("stop", by="policy", note="on_alarm=pause, but no Prefect server to ask an operator "
                        "(set PREFECT_API_URL, or choose on_alarm continue or stop)")
    text = (f"## Lot `{alarm.lot}`: out of control\n\n{alarm.describe()}\n\n"
            "The pumps run to the end of their programmed segment, then stop by themselves. "
            f"Without an answer within {plan.decision_timeout_min:g} min the lot stops safely.")
    answer = pause_for(AlarmDecision, text, plan.decision_timeout_min, f"alarm-{alarm.sample}", action="continue")
    return decision_from_input(answer, plan.decision_timeout_min)


def ask_refill(request: inventory.RefillRequest, plan: LotPlan) -> bool:
    """Pause until the operator confirms the refill; False (stop) when refused or not answered."""
    text = (f"## Lot `{plan.lot}`: refill syringes\n\n{request.describe()}.\n\nThe pumps are stopped. Refill, "
            "then confirm; the process re-equilibrates before QC resumes.")
    answer = pause_for(RefillConfirmation, text, plan.decision_timeout_min, f"refill-{uuid.uuid4().hex[:8]}",
                        refilled=True)
    return bool(answer is not None and answer.refilled)


def run_lot(rig: Rig, plan: LotPlan, steps: LotSteps = PLAIN_LOT_STEPS,
            decide: Callable[[Alarm], Decision] | None = None,
            confirm_refill: Callable[[inventory.RefillRequest], bool] | None = None,
            on_sample: Callable[[float, dict], None] | None = None, flow_run_id: str | None = None,
            log: logging.Logger | logging.LoggerAdapter | None = None) -> dict[str, Any]:
    """Run one lot on `rig` and record it. Returns the lot record (its row in lot.parquet).

    `decide(alarm)` answers out-of-control signals when on_alarm="pause"; `confirm_refill(request)`
    answers refill prompts when auto_refill is off (True: the syringes were refilled). Bad
    settings raise before the rig is touched; a fault leaves the rig safe and the lot failed.
    """
    recipe = validate_lot(plan, rig.platform)
    if plan.on_alarm == "pause" and decide is None:
        raise SdflInputError("on_alarm='pause' needs an operator (the Prefect flow asks through a form); "
                             "use 'continue' or 'stop' for unattended runs")
    if lots.lot_exists(plan.data_root, plan.lot):
        raise SdflInputError(f"lot {plan.lot!r} already exists under {lots.lot_folder(plan.data_root, plan.lot)}; "
                             "choose a new lot name")
    storage.check_writable(storage.data_root(plan.data_root), lots.lot_folder(plan.data_root, plan.lot))
    from flows.lot_run import LotRun

    run = LotRun(rig, plan, recipe, steps, decide, confirm_refill, on_sample, flow_run_id,
                 log or logging.getLogger(__name__))
    return run.run()


# --- the Prefect flow ----------------------------------------------------------------------
_RUNNING: dict[str, str] = {}
"""flow run id -> lot name (the parameter may be a template), for the hooks."""


def lot_safe_hook(flow, flow_run, state) -> None:
    """Prefect hook (cancelled or crashed run): rig to its safe state, a running lot marked so."""
    import math

    import pandas as pd

    from tasks.records import now_utc

    params = dict(flow_run.parameters or {})
    log = logging.getLogger(__name__)
    try:
        platform = load_platform(params.get("platform") or DEFAULT_PLATFORM)
        problems = open_rig(platform, params.get("seed")).safe_state()
    except Exception as exc:  # the hook must never raise
        log.error("hook: could not make the rig safe: %s", exc)
        return
    root, lot = params.get("data_root"), _RUNNING.pop(str(flow_run.id), None)
    if lot is None:
        return  # the run stopped before its lot existed
    try:
        tables = lots.read_lot(root, lot)
        if tables["lot"].empty or tables["lot"].loc[0, "status"] != "running":
            return
        row = {k: (None if (isinstance(v, float) and math.isnan(v)) or v is pd.NaT else v)
               for k, v in tables["lot"].iloc[0].to_dict().items()}
        status = "cancelled" if state.is_cancelled() else "crashed"
        row.update(status=status, finished_at=now_utc(), reason=f"flow run {status}: {state.message or ''}"
                   + (f" | safe state: {'; '.join(problems)}" if problems else ""))
        lots.write_lot(root, lot, row, lots.lot_schema(platform))
    except Exception as exc:
        log.error("hook: could not record lot %s as stopped: %s", lot, exc)


def plan_from(settings: ManufactureSettings, platform: PlatformConfig, lot: str | None = None) -> LotPlan:
    """The plan of a manufacture flow's settings: the recipe given, or the best of a campaign."""
    if settings.recipe is None and settings.from_campaign is None:
        raise SdflInputError("recipe: give the recipe (a value for each parameter of the space) or from_campaign "
                             "(the best experiment of a campaign)")
    recipe_from = "recipe"
    if settings.from_campaign is not None:
        recipe = recipe_from_campaign(settings.data_root, settings.from_campaign, platform, settings.objective)
        recipe_from = f"campaign {settings.from_campaign} (best {settings.objective})"
    else:
        recipe = centred(platform, settings.recipe)
    return LotPlan(lot=lot or lot_name(settings.lot), recipe=recipe, duration_h=settings.duration_h,
                   qc_every_min=settings.qc_every_min, qualification_min=settings.qualification_min,
                   qualification_points=settings.qualification_points, spc_features=tuple(settings.spc_features),
                   on_alarm=settings.on_alarm, decision_timeout_min=settings.decision_timeout_min,
                   auto_refill=settings.auto_refill, segment_min=settings.segment_min,
                   conversion=settings.conversion, seed=settings.seed, data_root=settings.data_root,
                   recipe_from=recipe_from)


def check_lot(settings: ManufactureSettings, platform: PlatformConfig, lot: str | None = None) -> LotPlan:
    """Every check of a manufacture flow's settings that needs the platform; returns its plan."""
    plan = plan_from(settings, platform, lot)
    validate_lot(plan, platform)
    if lots.lot_exists(settings.data_root, plan.lot):
        raise SdflInputError(f"lot {plan.lot!r} already exists under {lots.lot_folder(settings.data_root, plan.lot)}; "
                             "choose a new lot name")
    return plan


@settings_flow(ManufactureSettings, on_cancellation=[lot_safe_hook], on_crashed=[lot_safe_hook])
def manufacture(settings: ManufactureSettings) -> dict[str, Any]:
    """Hold a recipe for hours with QC samples at a fixed interval, control charts from a
    qualification window, operator decisions on alarms (on_alarm pause: a form with continue,
    re-equilibrate or stop), refill prompts before a syringe runs dry, and a yield estimate.
    Returns the lot summary; the report is published as artifacts."""
    from prefect import get_run_logger
    from prefect.artifacts import create_progress_artifact, update_progress_artifact
    from prefect.runtime import flow_run as current_flow_run

    from flows.manufacture_report import build_report
    from flows.reactor import reactor_lock

    log = get_run_logger()
    config = load_platform(settings.platform)
    plan = check_lot(settings, config)  # before the rig is opened
    lot, data_root, seed = plan.lot, plan.data_root, plan.seed
    if settings.from_campaign is not None:
        log.info("recipe from %s: %s", plan.recipe_from, plan.recipe)
    if plan.on_alarm == "pause" and not someone_can_answer():
        log.warning("lot %s: on_alarm is pause, but there is no Prefect server to ask an operator; an alarm "
                    "stops the lot (set PREFECT_API_URL to decide in the UI)", lot)
    run_id = current_flow_run.get_id()
    progress = create_progress_artifact(progress=0.0, description=f"lot {lot}: share of the run done")

    def on_sample(fraction: float, row: dict) -> None:
        update_progress_artifact(progress, progress=round(100.0 * min(fraction, 1.0), 1))

    try:
        with reactor_lock(config.platform.name, log):  # one run drives a reactor at a time
            rig = open_rig(config, seed)
            if run_id:
                _RUNNING[run_id] = lot
            with rig.lock:
                record = run_lot(rig, plan, prefect_lot_steps(config.platform.kind != "real"),
                                 decide=lambda alarm: ask_operator(alarm, plan),
                                 confirm_refill=lambda request: ask_refill(request, plan),
                                 on_sample=on_sample, flow_run_id=run_id, log=log)
    except Exception:
        _RUNNING.pop(run_id or "", None)  # recorded (failed) by the run itself
        raise
    finally:  # the report of any lot that started, failed ones included
        summary = None
        if lots.lot_exists(data_root, lot):
            try:
                summary = build_report(data_root, lot, plan.spc, publish=True)
            except Exception as exc:  # never hide the run's own error behind the report's
                log.error("lot %s: the QC report failed: %s", lot, exc)
    _RUNNING.pop(run_id or "", None)  # a cancellation or crash (BaseException) leaves it for the hook
    log.info("lot %s: %s (%s)", lot, record["status"], record.get("reason") or "")
    return summary or record
