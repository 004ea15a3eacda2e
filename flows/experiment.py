"""run_experiment: one condition end to end (formulate, equilibrate, acquire, extract, record).

Retries cover instrument I/O only (timeouts, garbled replies). Any other failure after the rig
was touched puts it in its safe state (pumps stopped, heater to standby, lights off) and writes
the experiment as failed; cancellation and crashes do the same from Prefect hooks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from prefect import get_run_logger
from prefect.runtime import flow_run as current_flow_run

from flows.reactor import reactor_lock
from flows.settings import ExperimentSettings, check_request, settings_flow
from hardware.errors import LabNotReady, SdflInputError, failure_kind
from hardware.platform import DEFAULT_PLATFORM, PlatformConfig, load_platform
from hardware.rig import Rig, open_rig
from tasks import acquisition, equilibration, features, formulation, storage
from tasks.choices import Finish
from tasks.records import experiment_row, new_experiment_id, now_utc, summarize_features


@dataclass(frozen=True)
class Steps:
    """The step functions an experiment calls: plain functions or their Prefect tasks."""

    levels: Callable
    formulate: Callable
    formulate_from_flowrates: Callable
    reference: Callable
    equilibrate: Callable
    acquire: Callable
    extract: Callable
    record: Callable


PLAIN_STEPS = Steps(
    levels=formulation.syringe_levels,
    formulate=formulation.formulate,
    formulate_from_flowrates=formulation.formulate_from_flowrates,
    reference=acquisition.ensure_reference,
    equilibrate=equilibration.equilibrate,
    acquire=acquisition.acquire,
    extract=features.extract_features,
    record=storage.write_experiment,
)


def prefect_steps(virtual: bool) -> Steps:
    """The Prefect tasks; on a virtual rig retries need no real back-off."""
    delay = {"retry_delay_seconds": 0} if virtual else {}
    return Steps(
        levels=formulation.syringe_levels_task.with_options(**delay),
        formulate=formulation.formulate_task,
        formulate_from_flowrates=formulation.formulate_from_flowrates_task,
        reference=acquisition.reference_task.with_options(**delay),
        equilibrate=equilibration.equilibrate_task.with_options(**delay),
        acquire=acquisition.acquire_task.with_options(**delay),
        extract=features.extract_features_task,
        record=storage.write_experiment_task,
    )


def conduct_experiment(
    rig: Rig,
    *,
    condition: dict[str, float] | None = None,
    flowrates_ul_min: dict[str, float] | None = None,
    temperature_c: float | None = None,
    campaign: str = "default",
    experiment_id: str | None = None,
    replicates: int | None = None,
    steady_check: bool | None = None,
    finish: Finish = "stop",
    data_root: str | None = None,
    seed: int | None = None,
    flow_run_id: str | None = None,
    steps: Steps = PLAIN_STEPS,
    log: logging.Logger | logging.LoggerAdapter | None = None,
) -> dict[str, Any]:
    """Run one experiment on `rig` and record it. Returns the experiment row.

    Nothing is recorded, and nothing moves, when the request is wrong (SdflInputError) or the
    data root cannot take the record (LabNotReady); a rig held by the previous experiment is made
    safe first. Syringes that hold too little (RefillNeeded, checked before the pumps start)
    leave the rig safe and record nothing: the condition never ran. From the first command to the rig on, any
    failure leaves the rig safe and records the experiment as failed, with whatever spectra
    were taken, before the error is raised again. An experiment id is never reused: a recorded
    experiment is never replaced by another one.
    """
    log = log or logging.getLogger(__name__)
    platform: PlatformConfig = rig.platform
    request = dict(condition=condition, flowrates_ul_min=flowrates_ul_min, temperature_c=temperature_c)
    try:
        check_request(platform, **request, campaign=campaign, experiment_id=experiment_id, replicates=replicates,
                      finish=finish)
        experiment_id = experiment_id or new_experiment_id()
        storage.check_data_root(data_root, campaign)
        if (found := storage.existing_record(data_root, campaign, experiment_id)) is not None:
            raise SdflInputError(f"experiment id {experiment_id!r} is already recorded in campaign {campaign!r} "
                                 f"({found}); a recorded experiment is never replaced. Leave the id empty for a "
                                 "new one, or choose another")
    except (SdflInputError, LabNotReady):
        if rig.held:  # the previous experiment left the flows on: nothing follows them now
            rig.safe_state()
        raise
    settings = features.FeatureSettings.from_config(platform.features)
    schema = storage.experiment_schema(platform, features.feature_columns(settings))
    started_at, t_start = now_utc(), rig.clock.now()
    flow_run_id = flow_run_id or current_flow_run.get_id()  # the campaign's run, when a campaign runs it
    context: dict[str, Any] = dict(experiment_id=experiment_id, platform=platform, started_at=started_at,
                                   t_platform_start_s=t_start, flow_run_id=flow_run_id, seed=seed)

    plan = equilibrated = acquired = None
    try:
        remaining = steps.levels(rig)
        if condition is not None:
            plan = steps.formulate(condition, platform, remaining)
        else:
            plan = steps.formulate_from_flowrates(flowrates_ul_min, temperature_c, platform, remaining)
        log.info("experiment %s: %s; tau %.1f s, t_E %.1f s", experiment_id,
                 ", ".join(f"{k}={v:.4g}" for k, v in plan.condition.items()), plan.tau_s, plan.t_E_s)
        reference = steps.reference(rig)
        equilibrated = steps.equilibrate(rig, plan, steady_check, lambda: acquisition.pl_reading(rig))
        acquired = steps.acquire(rig, reference, replicates)
        acquisition.check_saturation(acquired, {r: s.max_counts for r, s in rig.spectrometers.items()})
        table = steps.extract(
            acquired.pl[0].wavelength_nm, acquired.pl_cps(), _absorbance_for_features(acquired),
            settings, abs_wavelengths_nm=acquired.abs_samples[0].wavelength_nm,
            pl_raw_max_counts=acquired.pl_raw_max(), max_counts=rig.spectrometers["pl"].max_counts,
        )
        row = experiment_row(
            status="completed", t_platform_end_s=rig.clock.now(), formulation=plan,
            equilibration=equilibrated.to_dict(), acquisition_info=_acquisition_info(acquired),
            features=summarize_features(table), **context,
        )
    except Exception as exc:
        problems = rig.safe_state()
        if isinstance(exc, LabNotReady):
            raise  # the syringes are short (checked before any pump starts): the condition never ran
        reason = f"{type(exc).__name__}: {exc}" + (f" | safe state: {'; '.join(problems)}" if problems else "")
        log.error("experiment %s failed, rig made safe: %s", experiment_id, reason)
        failed = _failed_row(reason, plan, equilibrated, acquired, condition, rig, context)
        storage.write_or_rescue(failed, _spectra_rows(acquired), schema, campaign, data_root)
        raise
    except BaseException:
        rig.safe_state()
        raise
    try:
        storage.write_or_rescue(row, acquired.rows(), schema, campaign, data_root, write=steps.record)
    except BaseException:
        rig.safe_state()  # the data root failed: nothing more can be recorded, so nothing more runs
        raise
    if finish == "stop":
        rig.safe_state()
    else:
        rig.held = True
    log.info("experiment %s done: PL_I %.4g cps, Abs_300 %.4g", experiment_id,
             row.get("PL_I") or float("nan"), row.get("Abs_300") or float("nan"))
    return row


def _failed_row(reason: str, plan, equilibrated, acquired, condition, rig: Rig, context: dict) -> dict:
    """The record of a failed experiment, with as much as was learnt; a bare record if the details
    themselves cannot be summarised (the failure must be recorded whatever it was)."""
    try:
        return experiment_row(
            status="failed", failure_reason=reason, t_platform_end_s=rig.clock.now(), formulation=plan,
            condition=condition, equilibration=equilibrated.to_dict() if equilibrated else None,
            acquisition_info=_acquisition_info(acquired) if acquired else None, **context,
        )
    except Exception as exc:  # noqa: BLE001 - fall back to what surely builds
        return experiment_row(status="failed", failure_reason=f"{reason} | (details not recorded: {exc})",
                              t_platform_end_s=rig.clock.now(), condition=condition, **context)


def _spectra_rows(acquired) -> list[dict]:
    """The spectra taken so far, if any can be turned into rows."""
    if acquired is None:
        return []
    try:
        return acquired.rows()
    except Exception:  # noqa: BLE001 - keep the raw spectra at least
        return [s.row() for s in acquired.spectra]


def _absorbance_for_features(acquired: acquisition.Acquisition):
    """Absorbance with the no-light pixels (NaN by design) set to 0, so only real NaN is an error."""
    spectra = acquired.absorbance()
    ref = acquired.reference
    ref_cps = (ref.light.counts - ref.dark.counts)
    dark_pixels = ref_cps <= acquisition.NO_LIGHT_FRACTION * ref_cps.max()
    return np.where(dark_pixels[None, :], 0.0, spectra)


def _acquisition_info(acquired: acquisition.Acquisition) -> dict:
    return {
        "replicates": len(acquired.pl),
        "integration_ms_pl": acquired.pl_dark.integration_ms,
        "integration_ms_abs": acquired.abs_dark.integration_ms,
        "t_first_spectrum_s": acquired.pl[0].t_platform_s if acquired.pl else None,
    }


# --- the Prefect flow ---------------------------------------------------------------------
_IN_FLIGHT: dict[str, str] = {}
"""flow run id -> experiment id, so the cancellation/crash hooks know what to record."""


def make_rig_safe_hook(flow, flow_run, state) -> None:
    """Prefect hook (cancelled or crashed run): rig to its safe state, experiment recorded."""
    params = dict(flow_run.parameters or {})
    log = logging.getLogger(__name__)
    if str(flow_run.id) not in _IN_FLIGHT:
        # The run never held the reactor (cancelled while waiting for it) or had already finished:
        # the rig may be running another run's experiment, so leave it alone.
        log.info("hook: flow run %s held no reactor; the rig is left as it is", flow_run.id)
        return
    try:
        platform = load_platform(params.get("platform") or DEFAULT_PLATFORM)
        rig = open_rig(platform, params.get("seed"))
        problems = rig.safe_state()
    except Exception as exc:  # the hook must never raise
        log.error("hook: could not make the rig safe: %s", exc)
        return
    experiment_id = _IN_FLIGHT.pop(str(flow_run.id), None)
    campaign = params.get("campaign") or "default"
    if not experiment_id:
        return
    if storage.existing_record(params.get("data_root"), campaign, experiment_id) is not None:
        return
    status = "cancelled" if state.is_cancelled() else "crashed"
    settings = features.FeatureSettings.from_config(platform.features)
    row = experiment_row(
        experiment_id=experiment_id, status=status, platform=platform, started_at=now_utc(),
        t_platform_start_s=rig.clock.now(), t_platform_end_s=rig.clock.now(),
        condition=params.get("condition"), flow_run_id=str(flow_run.id), seed=params.get("seed"),
        failure_reason=f"flow run {status}: {state.message or ''}" + (f" | {'; '.join(problems)}" if problems else ""),
    )
    try:
        storage.write_or_rescue(row, [], storage.experiment_schema(platform, features.feature_columns(settings)),
                                campaign, params.get("data_root"))
    except Exception as exc:  # the hook must never raise
        log.error("hook: the %s experiment %s could not be recorded: %s", status, experiment_id, exc)


@settings_flow(ExperimentSettings, on_cancellation=[make_rig_safe_hook], on_crashed=[make_rig_safe_hook])
def run_experiment(settings: ExperimentSettings) -> dict[str, Any]:
    """Run one condition on a platform and append it to the campaign's dataset.

    The condition maps parameters of the platform's space to values (see `sdfl platform`; a
    parameter left out takes the centre of its range); alternatively give the pump flowrates
    (uL/min) and the temperature. finish "hold" keeps the pumps and heater on for a next
    experiment; "stop" leaves the rig in its safe state.
    """
    run_id = current_flow_run.get_id()
    try:
        return _run_experiment(settings, run_id)
    except Exception as exc:
        _label_failure(run_id, exc)
        raise


FAILURE_KIND_LABEL = "sdfl.failure-kind"
"""The flow run label that says what kind of failure ended a failed run (`hardware.errors.FailureKind`):
how a campaign on another machine learns it, as data, not from the error's text."""


def _label_failure(run_id: str | None, exc: BaseException) -> None:
    if not run_id:
        return
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run_labels(run_id, {FAILURE_KIND_LABEL: str(failure_kind(exc))})
    except Exception as label_error:  # noqa: BLE001 - the run's own failure is the one to report
        logging.getLogger(__name__).warning("the failure kind of flow run %s was not labelled: %s", run_id,
                                            label_error)


def _run_experiment(settings: ExperimentSettings, run_id: str | None) -> dict[str, Any]:
    s = settings
    platform, campaign, data_root, seed = s.platform, s.campaign, s.data_root, s.seed
    flowrates_ul_min, temperature_c, replicates = s.flowrates_ul_min, s.temperature_c, s.replicates
    steady_check, finish, experiment_id = s.steady_check, s.finish, s.experiment_id
    logger = get_run_logger()
    config = load_platform(platform)
    condition = s.condition_on(config)
    # Bad input and an unusable data root are refused at once, not after waiting for the reactor.
    check_request(config, condition=condition, flowrates_ul_min=flowrates_ul_min, temperature_c=temperature_c,
                  campaign=campaign, experiment_id=experiment_id, replicates=replicates, finish=finish)
    storage.check_data_root(data_root, campaign)
    experiment_id = experiment_id or new_experiment_id()
    try:
        with reactor_lock(config.platform.name, logger):
            rig = open_rig(config, seed)
            with rig.lock:
                if run_id:
                    _IN_FLIGHT[run_id] = experiment_id
                row = conduct_experiment(
                    rig, condition=condition, flowrates_ul_min=flowrates_ul_min, temperature_c=temperature_c,
                    campaign=campaign, experiment_id=experiment_id, replicates=replicates,
                    steady_check=steady_check, finish=finish, data_root=data_root, seed=seed,
                    flow_run_id=run_id, steps=prefect_steps(config.platform.kind != "real"), log=logger,
                )
    except Exception:
        _IN_FLIGHT.pop(run_id or "", None)  # recorded as failed by the body
        raise
    # A cancellation or crash (BaseException) leaves the entry for the hook.
    _IN_FLIGHT.pop(run_id or "", None)
    _show_spectra(data_root, campaign, row["experiment_id"], logger)
    return row


def _show_spectra(data_root, campaign: str, experiment_id: str, log) -> None:
    """The experiment's spectra as a plot in the run's artifacts (a plot never fails the run)."""
    from flows.spectra_report import publish_spectra

    folder = storage.data_root(data_root) / "campaigns" / campaign / "spectra"
    try:
        publish_spectra(f"{campaign}-latest-spectra", data_root, campaign, experiment_id,
                        f"Experiment {experiment_id} ({campaign})", folder / f"{experiment_id}.png")
    except Exception as exc:  # noqa: BLE001
        log.warning("the spectra of %s could not be plotted: %s", experiment_id, exc)
