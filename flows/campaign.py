"""Closed-loop campaigns as Prefect flows: `optimize` (maximise an objective), `explore` (build a
digital twin) and `seek_target` (reach a target emission peak with the highest quality and the
narrowest FWHM).

The loop itself is `flows.campaign_loop.run_campaign` (plain Python); these flows add the
reactor lock, Prefect tasks with retries for every step, a progress artifact, the end-of-campaign
report, and a refill form in the Prefect UI when a reactor's syringes run short (with a Prefect
server; without one the campaign stops and says how to resume). Running a campaign again with
the same name resumes it.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

from flows.campaign_loop import (  # noqa: F401 - the campaign API, importable from here
    CampaignPlan,
    CampaignState,
    check_campaign,
    directions,
    run_campaign,
    target_vectors,
    validate,
)
from flows.operator import RefillConfirmation, pause_for, perform_refill, someone_can_answer
from flows.settings import (
    CampaignSettings,
    ExploreSettings,
    OptimizeSettings,
    SeekTargetSettings,
    settings_flow,
)
from hardware.errors import RefillNeeded
from tasks import ledger, storage

REFILL_WAIT_MIN = 60.0
"""How long a campaign waits for an operator to confirm a refill before it stops (it resumes
when started again)."""


def ask_for_refill(campaign: str, reactors: int):
    """The campaign's refill step: a form in the Prefect UI (one reactor, with a server)."""

    def confirm(reactor, need: RefillNeeded) -> bool:
        if reactors != 1 or not someone_can_answer():
            return False
        short = "\n".join(f"- **{pump}**: the next experiment needs {need_ul / 1000:.2f} mL, it holds "
                          f"{have_ul / 1000:.2f} mL" for pump, (need_ul, have_ul) in sorted(need.short.items()))
        text = (f"## Campaign `{campaign}`: refill syringes\n\n{short}\n\nThe pumps are stopped and the "
                "heaters are in standby. Refill these syringes, then submit with *Refilled* on: the campaign "
                "goes on with the same condition. Submit with *Refilled* off to stop the campaign; without an "
                f"answer within {REFILL_WAIT_MIN:g} min it stops too. Run it again with the same name to resume.")
        answer = pause_for(RefillConfirmation, text, REFILL_WAIT_MIN, f"refill-{uuid.uuid4().hex[:8]}",
                           refilled=True)
        if answer is None or not answer.refilled:
            return False
        perform_refill(reactor.rig, need.pumps)  # a reactor of this machine: only its own syringes run short
        return True

    return confirm


def _campaign_flow(settings: CampaignSettings, explain_model: bool) -> dict:
    from prefect import get_run_logger
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    from flows.campaign_report import build_report
    from flows.experiment import prefect_steps
    from flows.reactor import reactor_lock
    from flows.remote import DeploymentReactor
    from flows.spectra_report import LatestSpectra
    from flows.target_report import build_target_report
    from hardware.platform import load_platform
    from hardware.rig import open_rig

    log = get_run_logger()
    config = load_platform(settings.platform)
    plan = check_campaign(settings, config)  # bad settings stop here, before the lock, the rig or the study
    reactors, seed_rig = settings.reactors, settings.seed
    remote_reactors = getattr(settings, "remote_reactors", None)
    remote = [DeploymentReactor(name, config).checked() for name in remote_reactors or []]
    storage.check_data_root(plan.data_root, plan.campaign)
    progress = create_progress_artifact(progress=0.0, description=f"campaign {plan.campaign}: experiments done")
    latest = LatestSpectra(plan.data_root, plan.campaign, log)

    def on_progress(done: int, budget: int, study) -> None:
        update_progress_artifact(progress, progress=100.0 * done / budget)
        latest(study)

    with reactor_lock(config.platform.name, log):
        rigs = [open_rig(config, seed_rig if k == 0 else (seed_rig or 0) + 1000 * k) for k in range(reactors)]
        rigs += remote
        with contextlib.ExitStack() as stack:
            for rig in rigs:
                stack.enter_context(rig.lock)
            state = run_campaign(rigs, plan, prefect_steps(config.platform.kind != "real"), on_progress, log,
                                 confirm_refill=ask_for_refill(plan.campaign, len(rigs)))
    update_progress_artifact(progress, progress=100.0)  # done, also when it stopped before the budget
    study = ledger.open_study(plan.campaign, config, state.objective.expression,
                              ledger.storage_url(plan.data_root, plan.storage), None, directions(plan))[0]
    log.info("campaign %s: writing the report (final model, plots%s)", plan.campaign,
             ", Pareto front" if plan.target is not None else ", SHAP" if explain_model else "")
    latest(study, final=True)
    if plan.target is not None:
        summary = build_target_report(config, study, state.objective, plan.data_root, plan.campaign,
                                      state.stopped_because)
    else:
        summary = build_report(config, study, state.objective, plan.surrogate, state.prior, plan.data_root,
                               plan.campaign, plan.seed, explain_model=explain_model)
    summary["stopped_because"] = state.stopped_because
    if state.reconciled and (state.reconciled.failed or state.reconciled.completed):
        summary["resumed"] = {"told_complete": state.reconciled.completed, "marked_failed": state.reconciled.failed,
                              "rerun": state.reconciled.rerun}
    summary.update(_repairs(state, plan.campaign))
    if plan.target is not None:
        log.info("campaign %s: %s; %d on target; best desirability %.3f", plan.campaign, state.stopped_because,
                 summary.get("on_target", 0), summary.get("best", {}).get("desirability", float("nan")))
    else:
        log.info("campaign %s: %s; best %s = %.5g", plan.campaign, state.stopped_because,
                 state.objective.expression, summary.get("best_value", float("nan")))
    return summary


def _repairs(state: CampaignState, campaign: str) -> dict:
    """What the start of the campaign found and mended, for the summary (empty when nothing)."""
    out: dict[str, Any] = {}
    if state.rebuilt:
        out["ledger_rebuilt_from"] = len(state.rebuilt)
    if state.set_aside:
        out["set_aside"] = [{"file": str(src), "moved_to": str(dst), "why": why} for src, dst, why in state.set_aside]
    if state.policy_before:
        out["policy_changed"] = {"before": state.policy_before, "now": state.plan.policy}
    if state.reconciled and state.reconciled.missing:
        out["missing_records"] = [ledger.experiment_id_for(campaign, n) for n in state.reconciled.missing]
    return out


@settings_flow(OptimizeSettings)
def optimize(settings: OptimizeSettings) -> dict[str, Any]:
    """Maximise an objective (a feature such as PL_I, or a formula of features) within a budget
    of experiments: Latin-hypercube points first, then the policy. Running it again with the same
    campaign name resumes it. More than one reactor runs that many copies of a virtual or
    emulated platform at once, one experiment each (a batch of distinct proposals); remote
    reactors are other machines' run-experiment deployments (same space, shared data root)."""
    return _campaign_flow(settings, settings.explain)


@settings_flow(ExploreSettings)
def explore(settings: ExploreSettings) -> dict[str, Any]:
    """Build a digital twin: Latin-hypercube points, then an exploration policy (integrated
    variance reduction by default, or maximum variance with policy mv), until the
    surrogate's cross-validated R^2 reaches the target (checked every few experiments) or the budget
    ends. The trained model is saved under the campaign folder for use as a prior."""
    return _campaign_flow(settings, settings.explain)


@settings_flow(SeekTargetSettings)
def seek_target(settings: SeekTargetSettings) -> dict[str, Any]:
    """Reach a target emission peak (in nm or eV) within a tolerance with the highest quality
    (by default the platform's relative PLQY) and the narrowest FWHM at once. The Optuna study is
    multi-objective (peak error, quality, FWHM); a desirability (0-1) ranks the experiments.
    Stops at the budget, or once an experiment is on target and `patience` experiments after the
    best on-target one did not beat it. Returns the best condition by desirability and the Pareto
    front, published as a table and a figure. Running it again with the same campaign name
    resumes it."""
    return _campaign_flow(settings, False)
