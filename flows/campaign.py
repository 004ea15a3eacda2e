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

from flows import parameters as P
from flows.campaign_loop import (  # noqa: F401 - the campaign API, importable from here
    CampaignPlan,
    CampaignState,
    directions,
    run_campaign,
    target_vectors,
    validate,
)
from flows.operator import RefillConfirmation, pause_for, perform_refill, someone_can_answer
from hardware.errors import RefillNeeded, SdflInputError
from tasks import ledger, storage, targets

REFILL_WAIT_MIN = 60.0
"""How long a campaign waits for an operator to confirm a refill before it stops (it resumes
when started again)."""


def ask_for_refill(campaign: str, reactors: int):
    """The campaign's refill step: a form in the Prefect UI (one reactor, with a server)."""

    def confirm(rig, need: RefillNeeded) -> bool:
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
        perform_refill(rig, need.pumps)
        return True

    return confirm


def _campaign_flow(plan: CampaignPlan, platform_name: str, seed_rig: int | None, explain_model: bool,
                   reactors: int = 1, remote_reactors: list[str] | None = None) -> dict:
    from prefect import get_run_logger
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    from flows.campaign_report import build_report, build_target_report
    from flows.experiment import prefect_steps
    from flows.reactor import reactor_lock
    from flows.remote import DeploymentReactor
    from hardware.platform import load_platform
    from hardware.rig import open_rig

    log = get_run_logger()
    config = load_platform(platform_name)
    validate(plan, config)  # bad settings stop here, before the lock, the rig or the study is touched
    if not isinstance(reactors, int) or isinstance(reactors, bool) or reactors < 1:
        raise SdflInputError(f"reactors must be a whole number of at least 1, got {reactors!r}")
    if reactors > 1 and config.platform.kind == "real":
        raise SdflInputError("reactors > 1 runs copies of a virtual or emulated platform; real reactors are "
                             "separate platforms, each with its own deployment")
    remote = [DeploymentReactor(name, config).checked() for name in remote_reactors or []]
    storage.check_data_root(plan.data_root, plan.campaign)
    progress = create_progress_artifact(progress=0.0, description=f"campaign {plan.campaign}: experiments done")

    def on_progress(done: int, budget: int, study) -> None:
        update_progress_artifact(progress, progress=100.0 * done / budget)

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
    if state.reconciled and state.reconciled.missing:
        out["missing_records"] = [ledger.experiment_id_for(campaign, n) for n in state.reconciled.missing]
    return out


def _flow(name: str):
    from prefect import flow

    return flow(name=name)


@_flow("optimize")
def optimize(
    campaign: P.CampaignName,
    platform: P.PlatformName = "virtual-cs3cu2i5",
    objective: P.Objective = "PL_I",
    policy: P.OptimizePolicy = "ei",
    budget: P.Budget = 30,
    initial: P.Initial = 9,
    surrogate: P.Surrogate = "gp",
    prior_campaign: P.PriorCampaign = None,
    prior_model: P.PriorModel = None,
    in_flight: P.InFlightPolicy = "fail",
    kappa: P.Kappa = 2.0,
    seed: P.Seed = 0,
    data_root: P.DataRoot = None,
    storage: P.OptunaStorage = None,
    explain: P.Explain = True,
    reactors: P.Reactors = 1,
    remote_reactors: P.RemoteReactors = None,
) -> dict[str, Any]:
    """Maximise `objective` (a feature such as PL_I, or a formula of features) within `budget`
    experiments: `initial` Latin-hypercube points, then `policy`. Running it again with the same
    campaign name resumes it. `reactors` > 1 runs that many copies of a virtual or emulated
    platform at once, one experiment each (a batch of distinct proposals); `remote_reactors`
    adds reactors on other machines by their run-experiment deployments (same space, shared data
    root)."""
    plan = CampaignPlan(campaign=campaign, objective=objective, policy=policy, budget=budget, initial=initial,
                        surrogate=surrogate, seed=seed, prior_campaign=prior_campaign, prior_model=prior_model,
                        in_flight=in_flight, kappa=kappa, storage=storage, data_root=data_root)
    return _campaign_flow(plan, platform, seed, explain, reactors, remote_reactors)


@_flow("explore")
def explore(
    campaign: P.CampaignName,
    platform: P.PlatformName = "virtual-cs3cu2i5",
    objective: P.Objective = "PL_I",
    target_r2: P.TargetR2 = 0.8,
    budget: P.Budget = 60,
    initial: P.Initial = 9,
    policy: P.ExplorePolicy = "ivr",
    surrogate: P.Surrogate = "gp",
    check_every: P.CheckEvery = 5,
    in_flight: P.InFlightPolicy = "fail",
    seed: P.Seed = 0,
    data_root: P.DataRoot = None,
    storage: P.OptunaStorage = None,
    explain: P.Explain = True,
    reactors: P.Reactors = 1,
) -> dict[str, Any]:
    """Build a digital twin: Latin-hypercube points, then an exploration policy (integrated
    variance reduction by default; the paper's maximum variance with policy="mv"), until the
    surrogate's held-out R^2 reaches `target_r2` (checked every `check_every` experiments) or the
    budget ends.
    The trained model is saved under the campaign folder for use as a prior (`prior_model`)."""
    plan = CampaignPlan(campaign=campaign, objective=objective, policy=policy, budget=budget, initial=initial,
                        surrogate=surrogate, seed=seed, in_flight=in_flight, target_r2=target_r2,
                        check_every=check_every, storage=storage, data_root=data_root)
    return _campaign_flow(plan, platform, seed, explain, reactors)


@_flow("seek-target")
def seek_target(
    campaign: P.CampaignName,
    platform: P.PlatformName = "virtual-cs3cu2i5",
    target_peak_nm: P.TargetPeakNm = None,
    target_peak_ev: P.TargetPeakEv = None,
    tolerance_nm: P.ToleranceNm = 2.0,
    max_fwhm_nm: P.MaxFwhmNm = None,
    quality: P.Quality = targets.DEFAULT_QUALITY,
    policy: P.TargetPolicy = "desirability-ei",
    budget: P.Budget = 30,
    initial: P.Initial = 6,
    patience: P.Patience = 5,
    surrogate: P.Surrogate = "gp",
    in_flight: P.InFlightPolicy = "fail",
    seed: P.Seed = 0,
    data_root: P.DataRoot = None,
    storage: P.OptunaStorage = None,
    reactors: P.Reactors = 1,
    remote_reactors: P.RemoteReactors = None,
) -> dict[str, Any]:
    """Reach a target emission peak (`target_peak_nm`, or `target_peak_ev`) within `tolerance_nm`
    with the highest `quality` (by default the platform's relative PLQY, `[features] plqy_proxy`)
    and the narrowest FWHM at once, as the Artificial Chemist did. The Optuna study is multi-objective (peak error, quality, FWHM);
    a desirability (0-1) ranks the experiments. Stops at the budget, or once an experiment is on
    target (peak within tolerance, FWHM <= `max_fwhm_nm` if given) and `patience` experiments
    after the best on-target one did not beat it. Returns the best condition by desirability
    and the Pareto front; publishes the front as a table and a figure. Running it again with the
    same campaign name resumes it."""
    target = targets.make_target(target_peak_nm, target_peak_ev, tolerance_nm=tolerance_nm,
                                 max_fwhm_nm=max_fwhm_nm, quality=quality)
    plan = CampaignPlan(campaign=campaign, policy=policy, budget=budget, initial=initial, surrogate=surrogate,
                        seed=seed, in_flight=in_flight, storage=storage, data_root=data_root, target=target,
                        patience=patience)
    return _campaign_flow(plan, platform, seed, False, reactors, remote_reactors)
