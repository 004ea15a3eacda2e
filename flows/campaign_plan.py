"""What a campaign should do (`CampaignPlan`) and the checks it passes before anything starts.

Light on purpose: a wrong policy, objective or target is refused without importing Prefect,
Optuna or the surrogates; only the checks that need them (a prior campaign or model, the
Optuna storage) import them, and those run last.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from flows import settings
from flows.settings import ExploreSettings, OptimizeSettings
from hardware.errors import SdflInputError
from tasks import choices, targets
from tasks.choices import InFlight, SurrogateKind
from tasks.feature_names import FeatureSettings, feature_columns
from tasks.names import check_name
from tasks.objective import Objective, parse_objective


def _default(name: str, model=OptimizeSettings):
    """A setting's default, as the campaign flows declare it."""
    return model.model_fields[name].default


@dataclass
class CampaignPlan:
    """What a campaign should do, for Python callers and the flows alike. Checked by `validate`
    before anything starts. The defaults are the optimize flow's."""

    campaign: str
    objective: str = _default("objective")
    policy: str = _default("policy")
    budget: int = _default("budget")
    initial: int = _default("initial")
    surrogate: SurrogateKind = _default("surrogate")
    seed: int = _default("seed")
    prior_campaign: str | None = None
    prior_model: str | None = None
    in_flight: InFlight = _default("in_flight")
    target_r2: float | None = None
    check_every: int = _default("check_every", ExploreSettings)
    kappa: float = _default("kappa")
    xi: float = choices.EI_MARGIN
    storage: str | None = None
    data_root: str | None = None
    target: targets.Target | None = None
    """A target campaign: the study is multi-objective (peak error, quality, FWHM) and `objective`
    is not used; policies from `tasks.choices.policies("target")`."""
    patience: int | None = None
    """Target campaigns: stop once an experiment is on target and this many experiments after the
    best on-target one did not beat it (None: run the whole budget)."""


def family_of(plan: CampaignPlan) -> str:
    """The kind of campaign a plan describes: "target", or "optimize" (which offers every policy)."""
    return "target" if plan.target is not None else "optimize"


def plan_from(settings) -> CampaignPlan:
    """The plan of a campaign flow's settings (`flows.settings.CampaignSettings`)."""
    target = None
    if settings.family == "target":
        quality = settings.quality
        target = targets.make_target(settings.target_peak_nm, settings.target_peak_ev,
                                     tolerance_nm=settings.tolerance_nm, max_fwhm_nm=settings.max_fwhm_nm,
                                     **({} if quality is None else {"quality": quality}))
    return CampaignPlan(
        campaign=settings.campaign, objective=getattr(settings, "objective", "PL_I"), policy=settings.policy,
        budget=settings.budget, initial=settings.initial, surrogate=settings.surrogate, seed=settings.seed,
        prior_campaign=getattr(settings, "prior_campaign", None), prior_model=getattr(settings, "prior_model", None),
        in_flight=settings.in_flight, target_r2=getattr(settings, "target_r2", None),
        check_every=getattr(settings, "check_every", CampaignPlan.check_every),
        kappa=getattr(settings, "kappa", CampaignPlan.kappa), storage=settings.storage,
        data_root=settings.data_root, target=target, patience=getattr(settings, "patience", None))


def check_campaign(settings, platform) -> CampaignPlan:
    """Every check of a campaign flow's settings that needs the platform; returns its plan."""
    plan = plan_from(settings)
    validate(plan, platform)
    if settings.reactors > 1 and platform.platform.kind == "real":
        raise SdflInputError("reactors > 1 runs copies of a virtual or emulated platform; real reactors are "
                             "separate platforms, each with its own deployment")
    return plan


def validate(plan: CampaignPlan, platform) -> tuple[Objective | targets.TargetObjective,
                                                   tuple[np.ndarray, np.ndarray] | None]:
    """Check every setting; raise SdflInputError naming the bad one. Nothing has started yet.

    The bounds of each setting are those of the campaign flows (`flows.settings`); Python
    callers that build a plan by hand get the same checks here."""
    check_name("campaign", plan.campaign)
    choices.resolve_policy(plan.policy, family_of(plan))
    shared = {name: getattr(plan, name) for name in ("campaign", "budget", "initial", "surrogate", "in_flight",
                                                      "seed", "storage", "data_root")}
    settings.CampaignSettings.from_values(shared)
    if not _finite(plan.kappa) or plan.kappa <= 0:
        raise SdflInputError(f"kappa (UCB exploration weight) must be a number above 0, got {plan.kappa!r}")
    if not _finite(plan.xi) or plan.xi < 0:
        raise SdflInputError(f"xi (EI improvement margin) must be a number of 0 or more, got {plan.xi!r}")
    if plan.target_r2 is not None and not (_finite(plan.target_r2) and 0 < plan.target_r2 < 1):
        raise SdflInputError(f"target_r2 must be between 0 and 1, got {plan.target_r2}")
    if isinstance(plan.check_every, bool) or not isinstance(plan.check_every, int) or plan.check_every < 1:
        raise SdflInputError(f"check_every must be a whole number of at least 1, got {plan.check_every!r}")
    if plan.target is not None:
        if plan.patience is not None and (not isinstance(plan.patience, int) or plan.patience < 0):
            raise SdflInputError(f"patience must be a whole number of experiments (0 or more), got {plan.patience!r}")
        if plan.prior_campaign or plan.prior_model or plan.target_r2 is not None:
            raise SdflInputError("a target campaign takes no prior_campaign, prior_model or target_r2")
        objective = targets.check_target(plan.target, platform)
        _check_storage(plan)
        return objective, None
    columns = feature_columns(FeatureSettings.from_config(platform.features))
    objective = parse_objective(plan.objective, columns)
    prior = _prior(plan, platform, objective)
    _check_storage(plan)
    return objective, prior


def _check_storage(plan: CampaignPlan) -> None:
    """The campaign's Optuna storage opens (the last check: it imports Optuna)."""
    from tasks import ledger

    ledger.check_storage(ledger.storage_url(plan.data_root, plan.storage))


def _prior(plan: CampaignPlan, platform, objective: Objective) -> tuple[np.ndarray, np.ndarray] | None:
    """The prior data of an earlier campaign and/or a saved digital twin, checked against this
    campaign's space and objective; None without either."""
    from tasks import ledger

    prior = None
    if plan.prior_campaign:
        prior = ledger.prior_from_campaign(plan.data_root, plan.prior_campaign, platform, objective)
    if plan.prior_model:
        saved = _saved_model(plan.prior_model)
        if saved.get("parameters") != platform.parameter_names or saved.get("space") != ledger.space_signature(platform):
            raise SdflInputError(f"prior model {plan.prior_model} was trained on another parameter space "
                                 f"({saved.get('parameters')}); this platform's space is {platform.describe_space()}")
        if saved.get("objective") != objective.expression:
            raise SdflInputError(f"prior model {plan.prior_model} predicts {saved.get('objective')!r}, "
                                 f"not {objective.expression!r}")
        X, y = np.asarray(saved["X"]), np.asarray(saved["y"])
        prior = (X, y) if prior is None else (np.vstack([prior[0], X]), np.concatenate([prior[1], y]))
    return prior


def _finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _saved_model(path: str) -> dict:
    """A digital twin saved by an explore campaign, or SdflInputError saying what is wrong."""
    if not os.path.isfile(path):
        raise SdflInputError(f"prior model {path!r}: no such file; give the model.pkl an explore campaign saved "
                             "(its path is printed at the end of the campaign, under 'files')")
    try:
        from tasks.surrogate import load_model

        saved = load_model(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable pickle is the same mistake to the user
        raise SdflInputError(f"prior model {path!r} cannot be read ({type(exc).__name__}: {exc}); give the "
                             "model.pkl an explore campaign saved") from None
    if not isinstance(saved, dict) or not {"X", "y", "parameters"} <= set(saved):
        raise SdflInputError(f"prior model {path!r} is not a digital twin saved by an explore campaign")
    return saved
