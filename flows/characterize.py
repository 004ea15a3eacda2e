"""Characterization flows. residence_time_study: the paper's dynamic residence-time study.

Starting from a cell full of solvent, the rig steps through several reaction times (25, 31 and
42 s by default, by changing the total flow) without stopping, records PL and absorbance at a
steady cadence, and measures for each step the multiple of tau at which Abs_300, PL_I and PL_A
come within 1 % of their final values.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from prefect import get_run_logger

from flows.reactor import reactor_lock
from flows.settings import ResidenceTimeSettings, centred, settings_flow
from hardware.errors import SdflInputError
from hardware.platform import PlatformConfig, load_platform
from hardware.rig import Rig, open_rig
from tasks import acquisition, equilibration, features, formulation, reports, storage
from tasks.choices import StartFrom
from tasks.dataset import write_frame
from tasks.records import new_experiment_id
from tasks.transients import settling_time

STUDY_FEATURES = ["Abs_300", "PL_I", "PL_A"]


def centre_condition(platform: PlatformConfig) -> dict[str, float]:
    """The middle of the platform's parameter space."""
    return centred(platform, {})


def study_plans(platform: PlatformConfig, reaction_times_s: list[float],
                base_condition: dict[str, float] | None) -> list[formulation.Formulation]:
    """One formulation per reaction time; SdflInputError when the platform or a condition cannot."""
    if not reaction_times_s:
        raise SdflInputError("reaction_times_s: give at least one reaction time")
    if platform.flow_mode:
        raise SdflInputError(f"platform {platform.platform.name!r} sets its pump flows directly (no reaction-time "
                             "parameter); study the residence time by running its flowrates with run-experiment")
    time_param = formulation.parameter_by_kind(platform, "reaction_time")
    base = centred(platform, base_condition or {})
    return [formulation.formulate({**base, time_param: float(t)}, platform) for t in reaction_times_s]


def check_study(settings: ResidenceTimeSettings, platform: PlatformConfig) -> None:
    """Every check of a residence-time study's settings that needs the platform."""
    study_plans(platform, settings.reaction_times_s, settings.base_condition)


def study_residence_time(
    rig: Rig,
    reaction_times_s: list[float],
    base_condition: dict[str, float] | None = None,
    follow_tau: float = 3.0,
    interval_s: float = 1.0,
    tolerance: float = 0.01,
    start_from: StartFrom = "previous",
    log: logging.Logger | logging.LoggerAdapter | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """Step through `reaction_times_s` and time each transition. Returns (series, settling, steps).

    `start_from="previous"` steps directly from one reaction time to the next, as the paper did
    (small changes may then be lost in the noise); "solvent" flushes the cell with solvent before
    each step, so every reaction time is timed over a full transition. Pure orchestration over
    the rig; the Prefect flow adds storage and artifacts.
    """
    log = log or logging.getLogger(__name__)
    platform = rig.platform
    plans = study_plans(platform, reaction_times_s, base_condition)
    settings = features.FeatureSettings.from_config(platform.features)

    reference = acquisition.ensure_reference(rig, max_age_s=0.0)  # flushes: the cell holds solvent
    equilibration.heat_zones(rig, plans[0])
    frames, steps = [], []
    try:
        for i, plan in enumerate(plans):
            if start_from == "solvent" and i > 0:
                flush = formulation.solvent_flush(platform)
                equilibration.start_pumps(rig, flush)
                equilibration.wait_on_clock(rig, flush, flush.t_E_s, platform.equilibration.poll_interval)
            duration = follow_tau * plan.tau_s
            t_switch = equilibration.start_pumps(rig, plan, run_time_s=duration + 60.0)
            log.info("step %d: t_R %.1f s, tau %.1f s; following for %.0f s", i, plan.reaction_time_s, plan.tau_s, duration)
            trace = acquisition.monitor(rig, reference, duration, interval_s,
                                        check=lambda p=plan: equilibration.check_pumps(rig, p))
            table = features.extract_features(
                trace.pl_wavelength_nm, trace.pl_cps, trace.absorbance, settings,
                abs_wavelengths_nm=trace.abs_wavelength_nm, on_invalid="flag",
            )
            frame = table[STUDY_FEATURES].copy()
            frame.insert(0, "t_pl_s", trace.t_pl_s)
            frame.insert(1, "t_abs_s", trace.t_abs_s)
            frame.insert(2, "step", i)
            frame.insert(3, "reaction_time_s", plan.reaction_time_s)
            frame.insert(4, "tau_s", plan.tau_s)
            frames.append(frame)
            steps.append({"step": i, "t_s": t_switch, "tau_s": plan.tau_s, "reaction_time_s": plan.reaction_time_s,
                          "label": f"t_R {plan.reaction_time_s:.0f} s"})
    finally:
        rig.safe_state()
    series = pd.concat(frames, ignore_index=True)
    rows = []
    previous = None
    for step, frame in zip(steps, frames):
        step["settle"] = {}
        for feature in STUDY_FEATURES:
            time_column = "t_abs_s" if feature.startswith("Abs") else "t_pl_s"
            times = frame[time_column].to_numpy()
            before = None
            if start_from == "previous" and previous is not None:
                # After a direct step, the level before the switch is what was measured just
                # before it (the last half tau of the previous step).
                last = previous[time_column] >= step["t_s"] - 0.5 * previous["tau_s"].iloc[0]
                before = float(previous.loc[last, feature].mean())
            result = settling_time(times, frame[feature].to_numpy(), step["t_s"],
                                   step["tau_s"], feature, tolerance, y_before=before)
            step["settle"][feature] = result.settle_s
            rows.append({"step": step["step"], "reaction_time_s": step["reaction_time_s"], "tau_s": step["tau_s"],
                         **result.to_dict()})
        previous = frame
    settling = pd.DataFrame(rows)
    return series, settling, steps


def summarize_steps(settling: pd.DataFrame, tau_multiple: float) -> pd.DataFrame:
    """Per step: the slowest resolved feature's settling time in tau, and whether t_E covers it.

    A step whose changes are all within the noise reports 0 (nothing to wait for) and
    `resolved_features` = 0.
    """
    rows = []
    for step, group in settling.groupby("step", sort=True):
        resolved = group[group["resolved"]]
        worst = resolved.loc[resolved["settle_tau"].idxmax()] if len(resolved) else group.iloc[0]
        rows.append({
            "step": step, "reaction_time_s": worst["reaction_time_s"], "tau_s": worst["tau_s"],
            "slowest_feature": worst["feature"] if len(resolved) else None,
            "change_pct": float(worst["change_pct"]) if len(resolved) else float("nan"),
            "settle_s": float(worst["settle_s"]) if len(resolved) else 0.0,
            "settle_tau": float(worst["settle_tau"]) if len(resolved) else 0.0,
            "resolved_features": len(resolved),
        })
    out = pd.DataFrame(rows)
    out["steady_by_t_E"] = out["settle_tau"] <= tau_multiple
    return out


@settings_flow(ResidenceTimeSettings)
def residence_time_study(settings: ResidenceTimeSettings) -> dict[str, Any]:
    """Step between reaction times and measure how many tau each feature needs to settle.

    Writes the time series and the settling table under the data root, in
    studies/residence-time/, and publishes them (with a plot) as Prefect artifacts.
    """
    s = settings
    platform, reaction_times_s, base_condition, data_root, seed = (s.platform, s.reaction_times_s, s.base_condition,
                                                                   s.data_root, s.seed)
    follow_tau, interval_s, tolerance, start_from = s.follow_tau, s.interval_s, s.tolerance, s.start_from
    log = get_run_logger()
    config = load_platform(platform)
    check_study(settings, config)
    with reactor_lock(config.platform.name, log):
        rig = open_rig(config, seed)
        with rig.lock:
            series, settling, steps = study_residence_time(
                rig, reaction_times_s, base_condition, follow_tau, interval_s, tolerance, start_from, log)
    summary = summarize_steps(settling, config.equilibration.tau_multiple)
    study_id = new_experiment_id().replace("exp-", "rts-")
    folder = storage.data_root(data_root) / "studies" / "residence-time" / study_id
    write_frame(series, folder / "series.parquet")
    write_frame(settling, folder / "settling.parquet")
    plot = reports.plot_transients(series, steps, STUDY_FEATURES, folder / "transients.png")
    reports.publish_table("residence-time-settling", summary, "settling time per step, in multiples of tau")
    reports.publish_table("residence-time-features", settling, "fit per step and feature (tanks-in-series)")
    reports.publish_plot("residence-time-plot", plot, "Transients after each change of reaction time",
                         "Each feature against time. Grey: a change of reaction time; red dashed: 1.2 residence "
                         "times (tau) after it, when the loop starts measuring; green dotted: when the feature came "
                         "within 1 % of its new steady value.")
    worst = float(summary["settle_tau"].max())
    log.info("steady state reached by %.2f tau at the latest (t_E = %.2f tau)", worst, config.equilibration.tau_multiple)
    return {"study_id": study_id, "folder": str(folder), "max_settle_tau": worst,
            "steps": summary.to_dict(orient="records")}
