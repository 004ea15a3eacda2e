"""Typed flow parameters: what the Prefect UI shows as a form (descriptions, units, bounds).

Bounds go into the parameter schema only (`form(..., minimum=1)`): the server checks them when a
run is created from a deployment (HTTP 409 naming the field), and the UI form shows them. Python
callers get the flows' own checks, which raise `SdflInputError`/`ValueError` naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from hardware.platform import shipped_platforms
from tasks.storage import _SAFE_NAME


def form(description: str, **schema: Any) -> Any:
    """A parameter's description and JSON-schema keywords (minimum, maximum, exclusiveMinimum, ...).

    The description goes into the schema keywords too: prefect 3.8.8 drops a `Field(description=)`
    given in `Annotated` (it takes descriptions from the docstring's Args section only).
    """
    return Field(description=description, json_schema_extra={"description": description, **schema})


PlatformName = Annotated[str, form(
    f"platform: a shipped one ({', '.join(shipped_platforms())}) or the path to a platform TOML file "
    "on the worker's machine. The platform names the reactor: one run at a time drives it.")]
CampaignName = Annotated[str, form(
    "campaign name (letters, digits, '_', '-', '.'); the same name again resumes the campaign",
    pattern=_SAFE_NAME.pattern)]
DataRoot = Annotated[str | None, form(
    "dataset root on the worker's machine (Parquet); empty: $SDFL_DATA_ROOT, else data/ in the working directory (the repo)")]
Seed = Annotated[int, form("random seed: initial design, policy and the virtual lab's noise", minimum=0)]
Budget = Annotated[int, form("experiments in total, failed ones included", minimum=1)]
Initial = Annotated[int, form("Latin-hypercube experiments before the policy takes over (at most the budget)",
                              minimum=0)]
Objective = Annotated[str, form(
    "what to maximise: a feature (PL_I, PL_A, FWHM_nm, Abs_300, ...) or a formula of features, "
    "e.g. PL_I / FWHM_nm")]
Kappa = Annotated[float, form("UCB exploration weight (standard deviations)", exclusiveMinimum=0)]
TargetR2 = Annotated[float, form("stop when the surrogate's held-out R^2 reaches this", exclusiveMinimum=0,
                                 exclusiveMaximum=1)]
CheckEvery = Annotated[int, form("check the held-out R^2 every this many experiments", minimum=1)]
PriorCampaign = Annotated[str | None, form("an earlier campaign (same space) whose data inform the surrogate")]
PriorModel = Annotated[str | None, form("a saved digital twin (model.pkl of an explore campaign) as prior")]
OptunaStorage = Annotated[str | None, form("Optuna storage URL; empty: sqlite <data root>/optuna.db")]
Explain = Annotated[bool, form("SHAP plots and response surface at the end (adds a few seconds)")]
OptimizePolicy = Annotated[Literal["ei", "ucb", "eplt", "mv", "ivr", "random", "tpe", "gp"], form(
    "ei: expected improvement; ucb: mean + kappa sd; eplt: pure exploitation; mv: maximum variance; "
    "ivr: integrated variance reduction; random; tpe and gp: Optuna's samplers (gp needs torch)")]
ExplorePolicy = Annotated[Literal["ivr", "mv", "random"], form(
    "ivr: integrated variance reduction; mv: maximum variance (the paper's); random")]
Surrogate = Annotated[Literal["gp", "ensemble"], form(
    "gp: Gaussian process (Matern 5/2); ensemble: bootstrap ensemble of 10 MLPs (the paper's)")]
InFlightPolicy = Annotated[Literal["fail", "rerun"], form(
    "on resume, an experiment that was running when the campaign stopped: recorded as failed, or run again")]
RigSeed = Annotated[int | None, form("seed of the virtual lab's noise; ignored on real rigs", minimum=0)]

Reactors = Annotated[int, form("copies of a virtual or emulated platform run at once, one experiment each",
                               minimum=1, maximum=16)]
RemoteReactors = Annotated[list[str] | None, form(
    "other reactors by their run-experiment deployment ('run-experiment/<reactor>'): same parameter space, "
    "and they must write to this campaign's data root")]

TargetPeakNm = Annotated[float | None, form(
    "target PL peak wavelength (nm), inside the platform's PL window; or give target_peak_ev", exclusiveMinimum=0)]
TargetPeakEv = Annotated[float | None, form(
    "target PL peak energy (eV), instead of target_peak_nm (1239.84 / nm)", exclusiveMinimum=0)]
ToleranceNm = Annotated[float, form("on target when the measured peak is within this many nm of the target",
                                    exclusiveMinimum=0)]
MaxFwhmNm = Annotated[float | None, form(
    "hard limit on the FWHM (nm): a wider emission is not on target; empty: no limit", exclusiveMinimum=0)]
Quality = Annotated[str, form(
    "what counts as quality, to maximise: a feature or a formula of features; default a relative PLQY, "
    "PL area per share of the excitation absorbed (Abs_300 is the absorbance at the platform's abs_wavelength)")]
TargetPolicy = Annotated[Literal["desirability-ei", "tpe", "random"], form(
    "desirability-ei: a GP per objective, expected improvement of the desirability (Monte Carlo); "
    "tpe: Optuna's multi-objective TPE; random")]
Patience = Annotated[int | None, form(
    "stop once on target and this many experiments after the best on-target one did not beat it; "
    "empty: run the whole budget", minimum=0)]
