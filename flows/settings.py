"""Every setting a user gives a flow, declared once: one pydantic model per flow family.

A field holds the setting's default, bounds, choices, unit and description. From the models come
the flows' signatures and so the Prefect UI form (`settings_flow`), the `sdfl` command's options
(`flows/cli_options.py`) and the checks of the deployment file (a test). Rules between fields
that need no platform are model validators; rules that need the platform are each family's
`check(platform)`, run by the flow and, before Prefect starts, by the `sdfl` command.

This module imports nothing heavy (no Prefect, pandas or Optuna), so a bad setting on the
command line is refused at once.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from hardware.errors import SdflInputError, did_you_mean
from hardware.platform import DEFAULT_PLATFORM
from tasks import choices
from tasks.names import SAFE_NAME_PATTERN


class Cli:
    """Other names the `sdfl` command accepts for a setting (`--hours` for `duration_h`)."""

    def __init__(self, *flags: str):
        self.flags = flags


class PerParameter:
    """Mark of a setting that gives a value to each parameter of the platform's space: a
    deployment's run form shows it as one number field per parameter (`flows/forms.py`)."""


def setting(description: str, *, unit: str = "", **bounds: Any) -> Any:
    """One setting's description, unit and bounds (ge, gt, le, lt, pattern, min_length).

    The description also goes into the schema keywords: Prefect builds its form field from the
    signature with a description of its own (from the docstring), which would hide this one.
    """
    text = f"{description} ({unit})" if unit else description
    extra: dict[str, Any] = {"description": text}
    if unit:
        extra["unit"] = unit
    return Field(description=text, json_schema_extra=extra, **bounds)


# --- settings shared by several flows --------------------------------------------------------
PlatformName = Annotated[str, setting(
    "platform: a shipped one (`sdfl platform --list`) or the path to a platform TOML file on the worker's "
    "machine; the platform names the reactor, which one run at a time drives")]
CampaignName = Annotated[str, setting(
    "campaign name (letters, digits, '_', '-', '.'); the same name again resumes the campaign",
    pattern=SAFE_NAME_PATTERN)]
DataRoot = Annotated[str | None, setting(
    "dataset root on the worker's machine (Parquet); empty: $SDFL_DATA_ROOT, else data/ in the working directory")]
RigSeed = Annotated[int | None, setting("seed of the virtual lab's noise; empty: the platform's; ignored on "
                                        "real rigs", ge=0)]
Condition = Annotated[dict[str, float] | None, setting(
    "one value per parameter of the platform's space (names, units and ranges: `sdfl platform`); "
    "a parameter left out takes the centre of its range"), Cli("--set"), PerParameter()]
Objective = Annotated[str, setting(
    "what to maximise: a feature (PL_I, PL_A, FWHM_nm, Abs_300, ...) or a formula of features, e.g. PL_I / FWHM_nm")]
Seed = Annotated[int, setting("random seed: initial design, policy and the virtual lab's noise", ge=0)]
Budget = Annotated[int, setting("experiments in total, failed ones included", ge=1, le=10_000)]
Initial = Annotated[int, setting("Latin-hypercube experiments before the policy takes over (at most the budget)",
                                 ge=0, le=10_000)]
Surrogate = Annotated[choices.SurrogateKind, setting(choices.SURROGATE_HELP)]
InFlight = Annotated[choices.InFlight, setting(choices.IN_FLIGHT_HELP)]
OptunaStorage = Annotated[str | None, setting("Optuna storage URL; empty: SQLite, optuna.db under the data root")]
Explain = Annotated[bool, setting("SHAP plots and the response surface at the end (adds a few seconds)")]
Reactors = Annotated[int, setting("copies of a virtual or emulated platform run at once, one experiment each",
                                  ge=1, le=16)]
RemoteReactors = Annotated[list[str] | None, setting(
    "other reactors by their run-experiment deployment (run-experiment/REACTOR): same parameter space, and "
    "they must write to this campaign's data root")]


class FlowSettings(BaseModel):
    """Settings of one flow. Build with `from_values`: a wrong value raises SdflInputError."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)
    flow_name: ClassVar[str] = ""
    lead: ClassVar[tuple[str, ...]] = ()
    """Settings shown first (in forms and --help), before the rest in declaration order."""

    @classmethod
    def ordered_fields(cls) -> dict[str, Any]:
        first = [name for name in cls.lead if name in cls.model_fields]
        return {name: cls.model_fields[name] for name in [*first, *(n for n in cls.model_fields if n not in first)]}

    @classmethod
    def from_values(cls, values: dict[str, Any], flag=None) -> FlowSettings:
        """The settings from plain values; SdflInputError naming each wrong one. `flag(name)` says
        how a setting is called where the user typed it (`--budget` on the command line)."""
        flag = flag or (lambda name: name)
        for name, value in values.items():  # pydantic reads True as 1; a scientist did not mean that
            field = cls.model_fields.get(name)
            if isinstance(value, bool) and field is not None and not _takes_bool(field.annotation):
                raise SdflInputError(f"{flag(name)} must be a number, got {value!r} ({field.description})")
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise SdflInputError(explain_errors(cls, exc, flag)) from None

    def check(self, platform) -> None:
        """Rules that need the platform (names of parameters, features, pumps). None by default."""

    def values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in type(self).model_fields}


# --- reading pydantic's complaints as a scientist would -----------------------------------------
_PLAIN = {
    "missing": "is required",
    "extra_forbidden": "is not a setting of this flow",
    "int_parsing": "must be a whole number", "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number", "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "bool_parsing": "must be true or false", "bool_type": "must be true or false",
    "string_type": "must be text", "dict_type": "must map names to values", "list_type": "must be a list",
    "string_pattern_mismatch": "must use letters, digits, '_', '-' or '.', starting with a letter or digit",
    "too_short": "must not be empty",
}


def explain_errors(model: type[FlowSettings], exc: ValidationError, flag=None) -> str:
    """One line per wrong setting: its name, what is allowed, what was given."""
    flag = flag or (lambda name: name)
    lines = []
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error["loc"]]
        name = loc[0] if loc else ""
        field = model.model_fields.get(name)
        kind, ctx = error["type"], error.get("ctx") or {}
        if kind == "value_error":  # a rule between settings: its message names them
            lines.append(str(ctx.get("error", error["msg"])))
            continue
        if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
            words = {"greater_than_equal": "at least", "greater_than": "more than",
                     "less_than_equal": "at most", "less_than": "less than"}[kind]
            bound = next(iter(ctx.values()))
            what = f"must be {words} {bound:g}" if isinstance(bound, (int, float)) else f"must be {words} {bound}"
        elif kind == "literal_error":
            allowed = choices_of(field) if field else []
            what = f"must be one of {', '.join(map(str, allowed))}" + did_you_mean(error["input"], allowed)
        elif kind == "extra_forbidden":
            what = _PLAIN[kind] + _hint(name, model, flag)
        else:
            what = _PLAIN.get(kind, error["msg"][0].lower() + error["msg"][1:])
        where = flag(name) + "".join(f"[{part}]" for part in loc[1:])
        given = "" if kind in ("missing",) else f", got {error['input']!r}"
        about = f" ({field.description})" if field is not None and field.description and \
            kind not in ("extra_forbidden", "literal_error") else ""
        lines.append(f"{where} {what}{given}{about}")
    return "; ".join(lines) if len(lines) == 1 else "\n  " + "\n  ".join(lines)


def _takes_bool(annotation) -> bool:
    from typing import get_args

    return annotation is bool or any(_takes_bool(arg) for arg in get_args(annotation))


def _hint(name: str, model: type[FlowSettings], flag) -> str:
    names = {flag(n): n for n in model.model_fields}
    hint = did_you_mean(flag(name), list(names))
    return hint or f" (the settings are: {', '.join(names)})"


def choices_of(field) -> list:
    """The allowed values of a setting with a fixed list of choices, else []."""
    from typing import get_args, get_origin

    def walk(annotation) -> list:
        if get_origin(annotation) is Literal:
            return list(get_args(annotation))
        if get_origin(annotation) is Annotated:
            return walk(get_args(annotation)[0])
        out = []
        for arg in get_args(annotation):
            out += walk(arg)
        return out

    return walk(field.annotation)


def cli_flags(field) -> tuple[str, ...]:
    """Extra command-line names of a setting, from its `Cli(...)` mark."""
    return tuple(flag for mark in field.metadata if isinstance(mark, Cli) for flag in mark.flags)


def bounds_of(field) -> dict[str, Any]:
    """A setting's bounds as JSON-schema words: minimum, exclusiveMinimum, maximum, exclusiveMaximum."""
    words = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}
    out = {}
    for mark in field.metadata:
        for attr, word in words.items():
            value = getattr(mark, attr, None)
            if value is not None:
                out[word] = value
    return out


def item_bounds(field) -> dict[str, Any]:
    """The bounds of each item of a list setting (`list[Annotated[float, Field(gt=0)]]`), else {}."""
    from typing import get_args, get_origin

    if get_origin(field.annotation) is not list:
        return {}
    (item,) = get_args(field.annotation)
    return bounds_of(FieldInfo.from_annotation(item))


def bounds_text(bounds: dict[str, Any]) -> str:
    """Bounds given as JSON-schema words in plain words: "at least 1 and at most 10000", or ""."""
    words = {"minimum": "at least", "exclusiveMinimum": "more than", "maximum": "at most",
             "exclusiveMaximum": "less than"}
    return " and ".join(f"{words[k]} {v:g}" for k, v in bounds.items())


def range_text(field) -> str:
    """A setting's bounds in words: "at least 1 and at most 10000", "each more than 0" (a list), or ""."""
    if item_bounds(field):
        return "each " + bounds_text(item_bounds(field))
    return bounds_text(bounds_of(field))


# --- the flows' signatures ------------------------------------------------------------------
def signature_of(model: type[FlowSettings], returns: Any = dict[str, Any]) -> inspect.Signature:
    """The flow signature a model implies: one keyword per setting, with its default, type, bounds
    and description (the Prefect form is built from this)."""
    parameters = []
    for name, field in model.ordered_fields().items():
        shown = field.description + (f"; {range_text(field)}" if range_text(field) else "")  # forms hide bounds
        extra = {**(field.json_schema_extra or {}), "description": shown}
        annotation = Annotated[(field.annotation, *field.metadata, Field(description=shown, json_schema_extra=extra))]
        default = inspect.Parameter.empty if field.is_required() else field.get_default(call_default_factory=True)
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=annotation))
    return inspect.Signature(parameters, return_annotation=returns)


def settings_flow(model: type[FlowSettings], **flow_options: Any):
    """Make `body(settings)` a Prefect flow whose parameters are the model's settings.

    Python callers call the flow with plain keywords; the model checks them (a wrong one raises
    SdflInputError naming it) before the body runs. Prefect's own parameter check is off: it
    would check the same bounds again with messages of its own. The body runs with the flow run's
    own heartbeat (flows/beat.py) and one BLAS/OpenMP thread (tasks/threads.py).
    """

    def decorate(body):
        def run(**values: Any):
            from flows.beat import beating
            from tasks.threads import one_thread

            settings = model.from_values(values)
            with beating(), one_thread():
                return body(settings)

        for attr in ("__name__", "__qualname__", "__module__", "__doc__"):
            setattr(run, attr, getattr(body, attr))
        run.__signature__ = signature_of(model, inspect.signature(body).return_annotation)
        from prefect import flow

        return flow(name=model.flow_name, validate_parameters=False, **flow_options)(run)

    return decorate


def _exactly_one(first: str, a: Any, second: str, b: Any, what: str) -> None:
    if (a is None) == (b is None):
        raise ValueError(f"{what}: give {first} or {second}, exactly one of them")


def _not_both(first: str, a: Any, second: str, b: Any) -> None:
    if a is not None and b is not None:
        raise ValueError(f"{first} and {second}: give one of them, not both")


# --- one model per flow family -----------------------------------------------------------------
class ExperimentSettings(FlowSettings):
    """One condition on a reactor, recorded as one experiment."""

    flow_name: ClassVar[str] = "run-experiment"
    condition: Condition = None
    platform: PlatformName = DEFAULT_PLATFORM
    campaign: CampaignName = "default"
    flowrates_ul_min: Annotated[dict[str, float] | None, setting(
        "instead of a condition: each pump's flowrate, with temperature_c", unit="uL/min"), Cli("--flow")] = None
    temperature_c: Annotated[float | None, setting("reactor temperature, with flowrates_ul_min", unit="degC",
                                                   ge=-20, le=400), Cli("--temperature")] = None
    replicates: Annotated[int | None, setting("replicate acquisitions; empty: the platform's", ge=1, le=100)] = None
    steady_check: Annotated[bool | None, setting(
        "also wait for steady PL readings after t_E; empty: the platform's setting")] = None
    finish: Annotated[choices.Finish, setting(choices.FINISH_HELP)] = "stop"
    experiment_id: Annotated[str | None, setting("experiment id; empty: a new one", pattern=SAFE_NAME_PATTERN)] = None
    data_root: DataRoot = None
    seed: RigSeed = None

    @model_validator(mode="after")
    def _condition_or_flowrates(self):
        _not_both("condition", self.condition, "flowrates_ul_min", self.flowrates_ul_min)
        return self

    def check(self, platform) -> None:
        condition = self.condition
        if condition is None and self.flowrates_ul_min is None:
            condition = {}
        check_request(platform, condition=centred(platform, condition) if condition is not None else None,
                      flowrates_ul_min=self.flowrates_ul_min, temperature_c=self.temperature_c,
                      campaign=self.campaign, experiment_id=self.experiment_id, replicates=self.replicates,
                      finish=self.finish)

    def condition_on(self, platform) -> dict[str, float] | None:
        """The condition to run: the given values, the centre of the space for the rest."""
        if self.flowrates_ul_min is not None:
            return None
        return centred(platform, self.condition or {})


def check_request(
    platform,
    *,
    condition: dict[str, float] | None = None,
    flowrates_ul_min: dict[str, float] | None = None,
    temperature_c: float | None = None,
    campaign: str = "default",
    experiment_id: str | None = None,
    replicates: int | None = None,
    finish: str = "stop",
):
    """Check an experiment request without touching the rig or the disk; raise SdflInputError
    naming what is wrong. Returns the formulation (syringe levels not yet checked)."""
    from tasks import formulation
    from tasks.names import check_name

    check_name("campaign", campaign)
    if experiment_id is not None:
        check_name("experiment id", experiment_id)
    if finish not in ("stop", "hold"):
        raise SdflInputError(f"finish must be 'stop' or 'hold', got {finish!r}")
    if replicates is not None and (isinstance(replicates, bool) or not isinstance(replicates, int) or replicates < 1):
        raise SdflInputError(f"replicates must be a whole number of at least 1 (empty: the platform's "
                             f"{platform.acquisition.replicates}), got {replicates!r}")
    if (condition is None) == (flowrates_ul_min is None):
        raise SdflInputError("give either a condition (parameter space) or flowrates_ul_min + temperature_c")
    if condition is not None:
        return formulation.formulate(condition, platform)
    if temperature_c is None and any(p.kind == "temperature" for p in platform.parameters):
        raise SdflInputError("flowrates_ul_min needs temperature_c too")
    return formulation.formulate_from_flowrates(flowrates_ul_min, temperature_c, platform)


def centred(platform, values: dict[str, float]) -> dict[str, float]:
    """`values` with the centre of its range for every parameter left out; an unknown name is an error."""
    from hardware.errors import InvalidCondition

    names = platform.parameter_names
    unknown = [name for name in values if name not in names]
    if unknown:
        raise InvalidCondition(f"unknown parameter {unknown[0]!r}{did_you_mean(unknown[0], names)}; the space is: "
                               f"{platform.describe_space()}")
    centre = {p.name: (p.low + p.high) / 2.0 for p in platform.parameters}
    return {**centre, **values}


class CampaignSettings(FlowSettings):
    """What every closed-loop campaign shares."""

    family: ClassVar[str] = ""
    lead: ClassVar[tuple[str, ...]] = ("campaign", "platform", "objective", "target_peak_nm", "target_peak_ev",
                                       "tolerance_nm", "max_fwhm_nm", "quality", "policy", "budget", "initial")
    campaign: CampaignName
    platform: PlatformName = DEFAULT_PLATFORM
    budget: Budget = 30
    initial: Initial = 9
    surrogate: Surrogate = "gp"
    in_flight: InFlight = "fail"
    seed: Seed = 0
    data_root: DataRoot = None
    storage: OptunaStorage = None
    reactors: Reactors = 1

    @model_validator(mode="after")
    def _initial_within_budget(self):
        if self.initial > self.budget:
            raise ValueError(f"initial ({self.initial}) must be at most the budget ({self.budget}): the "
                             "Latin-hypercube experiments are part of the budget")
        return self

    def check(self, platform) -> None:
        from flows.campaign_plan import check_campaign

        check_campaign(self, platform)


def _policy(family: str):
    return Annotated[choices.policy_literal(family), setting(choices.policy_help(family))]


class OptimizeSettings(CampaignSettings):
    """Closed-loop optimization: maximise an objective within a budget of experiments."""

    flow_name: ClassVar[str] = "optimize"
    family: ClassVar[str] = "optimize"
    objective: Objective = "PL_I"
    policy: _policy("optimize") = choices.default_policy("optimize")
    prior_campaign: Annotated[str | None, setting(
        "an earlier campaign (same parameter space) whose data inform the surrogate",
        pattern=SAFE_NAME_PATTERN)] = None
    prior_model: Annotated[str | None, setting(
        "a saved digital twin (model.pkl of an explore campaign) as prior")] = None
    kappa: Annotated[float, setting("UCB exploration weight, in standard deviations", gt=0, le=100)] = 2.0
    explain: Explain = True
    remote_reactors: RemoteReactors = None


class ExploreSettings(CampaignSettings):
    """Build a digital twin: explore until the surrogate predicts well enough."""

    flow_name: ClassVar[str] = "explore"
    family: ClassVar[str] = "explore"
    objective: Objective = "PL_I"
    budget: Budget = 60
    policy: _policy("explore") = choices.default_policy("explore")
    target_r2: Annotated[float, setting("stop when the surrogate's cross-validated R^2 reaches this", gt=0,
                                        lt=1)] = 0.8
    check_every: Annotated[int, setting("check the cross-validated R^2 every this many experiments", ge=1,
                                        le=10_000)] = 5
    explain: Explain = True


class SeekTargetSettings(CampaignSettings):
    """Reach a target emission peak with the highest quality and the narrowest FWHM."""

    flow_name: ClassVar[str] = "seek-target"
    family: ClassVar[str] = "target"
    target_peak_nm: Annotated[float | None, setting(
        "target PL peak wavelength, inside the platform's PL window; or give target_peak_ev", unit="nm",
        gt=0), Cli("--target-nm")] = None
    target_peak_ev: Annotated[float | None, setting(
        "target PL peak energy, instead of target_peak_nm (1239.84 / nm)", unit="eV", gt=0),
        Cli("--target-ev")] = None
    tolerance_nm: Annotated[float, setting("on target when the measured peak is within this of the target",
                                           unit="nm", gt=0)] = 2.0
    max_fwhm_nm: Annotated[float | None, setting(
        "hard limit on the FWHM: a wider emission is not on target; empty: no limit", unit="nm", gt=0)] = None
    quality: Annotated[str | None, setting(
        "what counts as quality, to maximise: a feature or a formula of features; empty: the platform's relative "
        "PLQY (PL area per share of the excitation absorbed)")] = None
    policy: _policy("target") = choices.default_policy("target")
    budget: Budget = 30
    initial: Initial = 6
    patience: Annotated[int | None, setting(
        "stop once on target and this many experiments after the best on-target one did not beat it; "
        "empty (none), or as many as the budget: run the whole budget", ge=0, le=10_000)] = 5
    remote_reactors: RemoteReactors = None

    @model_validator(mode="after")
    def _one_target(self):
        _exactly_one("target_peak_nm", self.target_peak_nm, "target_peak_ev", self.target_peak_ev, "the target peak")
        return self


class ManufactureSettings(FlowSettings):
    """Continuous manufacturing: hold a recipe for hours with QC and control charts."""

    flow_name: ClassVar[str] = "manufacture"
    lot: Annotated[str, setting(
        "lot name (letters, digits, '_', '-', '.'); {date} and {time} are filled in (UTC), so a schedule makes one "
        "lot per run; data under the data root, in lots/LOT/")] = "lot-{date}-{time}"
    recipe: Annotated[dict[str, float] | None, setting(
        "the recipe: a value for each parameter of the platform's space (`sdfl platform`); a parameter left out "
        "takes the centre of its range"), Cli("--set")] = None
    from_campaign: Annotated[str | None, setting("or: the best completed experiment of this campaign",
                                                 pattern=SAFE_NAME_PATTERN)] = None
    objective: Annotated[str, setting("what 'best' means with from_campaign: a feature or a formula")] = "PL_I"
    platform: PlatformName = DEFAULT_PLATFORM
    duration_h: Annotated[float, setting("production time; simulated on the virtual lab", unit="h", gt=0,
                                         le=24 * 31), Cli("--hours")] = 8.0
    qc_every_min: Annotated[float, setting("time between QC samples", unit="min", ge=0.5, le=24 * 60),
                            Cli("--qc-every")] = 10.0
    qualification_min: Annotated[float, setting("QC time that sets the control limits", unit="min", gt=0),
                                 Cli("--qualification")] = 60.0
    qualification_points: Annotated[int, setting("QC samples in the qualification window", ge=10, le=500)] = 60
    spc_features: Annotated[list[str], setting("features on control charts", min_length=1)] = \
        ["PL_I", "PL_peak_nm", "FWHM_nm"]
    on_alarm: Annotated[choices.OnAlarm, setting(choices.ON_ALARM_HELP)] = "pause"
    decision_timeout_min: Annotated[float, setting("time to wait for a decision or a refill; then stop safely",
                                                   unit="min", gt=0), Cli("--decision-timeout")] = 60.0
    auto_refill: Annotated[bool, setting("virtual and emulated rigs: refill syringes without asking")] = False
    segment_min: Annotated[float, setting("the pumps are programmed this far ahead (x 1.25), never continuously",
                                          unit="min", gt=0)] = 30.0
    conversion: Annotated[float | None, setting(
        "share of the limiting precursor converted, for the yield; empty: the virtual lab's truth", gt=0,
        le=1)] = None
    seed: RigSeed = None
    data_root: DataRoot = None

    @model_validator(mode="after")
    def _one_recipe(self):
        _not_both("recipe", self.recipe, "from_campaign", self.from_campaign)
        return self

    def check(self, platform) -> None:
        from flows.manufacture import check_lot

        check_lot(self, platform)


class ResidenceTimeSettings(FlowSettings):
    """Step between reaction times and time how long each feature takes to settle."""

    flow_name: ClassVar[str] = "residence-time-study"
    platform: PlatformName = DEFAULT_PLATFORM
    reaction_times_s: Annotated[list[Annotated[float, Field(gt=0)]], setting(
        "reaction times to step through, in order", unit="s", min_length=1), Cli("--reaction-times")] = \
        [25.0, 31.0, 42.0]
    base_condition: Annotated[dict[str, float] | None, setting(
        "the other inputs during the study; a parameter left out takes the centre of its range"), Cli("--set")] = None
    follow_tau: Annotated[float, setting("how long to follow each step, in residence times tau", ge=2,
                                         le=50)] = 3.0
    interval_s: Annotated[float, setting("time between readings", unit="s", gt=0, le=30), Cli("--interval")] = 1.0
    tolerance: Annotated[float, setting("settled when within this share of the final value", gt=0, lt=1)] = 0.01
    start_from: Annotated[choices.StartFrom, setting(choices.START_FROM_HELP)] = "previous"
    data_root: DataRoot = None
    seed: RigSeed = None

    def check(self, platform) -> None:
        from flows.characterize import check_study

        check_study(self, platform)


class ProcedureSettings(FlowSettings):
    """A platform's start-up or shut-down steps."""

    flow_name: ClassVar[str] = "rig-procedure"
    procedure: Annotated[choices.Procedure, setting(choices.PROCEDURE_HELP)] = "startup"
    platform: PlatformName = DEFAULT_PLATFORM
    seed: RigSeed = None


class DemoSettings(FlowSettings):
    """The residence-time study, then a closed-loop optimization on the virtual lab."""

    flow_name: ClassVar[str] = "demo"
    platform: PlatformName = DEFAULT_PLATFORM
    budget: Budget = 30
    campaign: Annotated[str | None, setting("campaign name; empty: demo-DATE-TIME",
                                            pattern=SAFE_NAME_PATTERN)] = None
    data_root: DataRoot = None
    seed: RigSeed = None


FAMILIES: dict[str, type[FlowSettings]] = {model.flow_name: model for model in (
    ExperimentSettings, OptimizeSettings, ExploreSettings, SeekTargetSettings, ManufactureSettings,
    ResidenceTimeSettings, ProcedureSettings, DemoSettings)}
"""Every flow a user starts, by its Prefect name."""
