"""The ledger: Optuna studies record every trial of a campaign (ask/tell, persistent storage).

One study per campaign, in an SQLite file under the data root by default or any SQLAlchemy URL.
The policies that propose conditions are Optuna samplers (tasks/samplers.py). A target
campaign's study is multi-objective (peak error, quality, FWHM: see `tasks/targets.py`). The
Parquet dataset and the study together are the campaign's state: `reconcile` settles the trials
a crash left running, `rebuild_from_dataset` rebuilds a lost study from the recorded
experiments, and `ensure_design` completes an initial design a crash cut short, so a campaign
resumes where it stopped and never reuses an experiment id. `record_policy` notes the policy of
each run, so a resume with another policy can say so.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import FloatDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from hardware.errors import LedgerUnusable, SdflInputError
from hardware.platform import PlatformConfig
from hardware.units import with_unit
from tasks import liveness
from tasks.storage import data_root, experiment_ids, read_experiment, read_experiments

optuna.logging.set_verbosity(optuna.logging.WARNING)


def storage_url(root: str | os.PathLike | None = None, url: str | None = None) -> str:
    """The Optuna storage: `url` if given, else an SQLite file under the data root."""
    if url:
        return url
    path = data_root(root) / "optuna.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def study_storage(url: str) -> str | optuna.storages.RDBStorage:
    """What Optuna opens the studies of `url` with: an SQLite file as the URL (opened afresh each
    time: a file moved aside is never written through an old connection), a database server
    through one storage per process whose connections are checked before use, so a campaign goes
    on after PostgreSQL restarted under it."""
    return url if url.startswith("sqlite") else _server_storage(url)


@functools.lru_cache(maxsize=8)
def _server_storage(url: str) -> optuna.storages.RDBStorage:
    # The first process to open a new database creates Optuna's tables; campaign processes that
    # start at the same moment would race to create them (PostgreSQL refuses the second), so
    # they take turns.
    with liveness.database_lock(url, "sdfl: optuna tables"):
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})


UNREACHABLE_WAIT_S = 300.0
"""How long a campaign waits for its ledger's database server to come back (a restart) before it stops."""


def patiently(call, log, doing: str, wait_s: float = UNREACHABLE_WAIT_S):
    """`call()`, tried again while the ledger's database server cannot be reached (a restart, a
    network blip), for up to `wait_s`; then its error is raised (the campaign stops and resumes
    when started again)."""
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import InterfaceError, OperationalError, PendingRollbackError

    # PendingRollbackError: a query on the connection the restart cut, after Optuna caught the
    # first error of that connection and went on in the same transaction (it does so when
    # reading trials); Optuna rolls the session back, so the next try opens a new connection.
    unreachable = (OperationalError, InterfaceError, PendingRollbackError)
    deadline, delay = time.monotonic() + wait_s, 1.0
    while True:
        try:
            return call()
        except (*unreachable, StorageInternalError) as exc:
            # Optuna wraps what the database driver raised; only a lost connection is waited for
            lost = exc if isinstance(exc, unreachable) else exc.__cause__
            if not isinstance(lost, unreachable) or time.monotonic() + delay > deadline:
                raise
            exc = lost
            log.warning("the campaign ledger cannot be reached while %s (%s); trying again in %.0f s", doing,
                        str(getattr(exc, "orig", None) or exc).splitlines()[0], delay)
            time.sleep(delay)
            delay = min(2 * delay, 15.0)


def distributions(platform: PlatformConfig) -> dict[str, FloatDistribution]:
    return {p.name: FloatDistribution(p.low, p.high) for p in platform.parameters}


def space_signature(platform: PlatformConfig) -> list[list]:
    return [[p.name, p.low, p.high] for p in platform.parameters]


def experiment_id_for(campaign: str, trial_number: int) -> str:
    return f"{campaign}-t{trial_number:04d}"


def check_storage(url: str) -> None:
    """Open the Optuna storage once; raise SdflInputError (a bad URL) or LedgerUnusable (a damaged
    or unreachable database) with the fix. Nothing else has started yet."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise SdflInputError(f"storage {url!r} is not a database URL ({exc}); give e.g. "
                             "sqlite:////absolute/path/optuna.db or postgresql+psycopg://user:password@host/db, "
                             "or leave it empty for an SQLite file under the data root") from None
    all_summaries(url)


def all_summaries(url: str) -> list:
    """The studies in the storage; its failures as LedgerUnusable (or SdflInputError for a URL
    whose database driver is not installed)."""
    from sqlalchemy.exc import NoSuchModuleError, SQLAlchemyError

    try:
        return optuna.get_all_study_summaries(study_storage(url))
    except (NoSuchModuleError, ModuleNotFoundError, ImportError) as exc:
        raise SdflInputError(f"storage {url!r}: its database driver is not installed ({exc}); install it "
                             "(for PostgreSQL: pip install 'sdfl[postgres]') or use an sqlite:/// URL") from None
    except (SQLAlchemyError, OSError) as exc:
        raise LedgerUnusable(_ledger_fix(url, exc)) from None


def _ledger_fix(url: str, exc: BaseException) -> str:
    detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        return (f"the campaign ledger {path} cannot be read ({detail}). The recorded experiments are safe in the "
                f"data root. Fix: move the file aside (mv {path} {path}.damaged) and start the campaign again: "
                "its ledger is rebuilt from the recorded experiments; or pass --storage with a working database")
    return (f"the campaign ledger at {url} cannot be opened ({detail}). Fix: check that the database server is "
            "running and reachable, and the URL, user and password")


def open_study(campaign: str, platform: PlatformConfig, objective: str, storage: str,
               sampler: BaseSampler | None, directions: Sequence[str] | None = None,
               initial_design: int = 0) -> tuple[optuna.Study, bool]:
    """Create the campaign's study or load it (checking it is the same space and objective).

    `directions`: one per objective for a multi-objective study (a target campaign); default a
    single objective to maximise. `initial_design`: how many design points a new study plans
    (see `ensure_design`). Returns (study, created). A study whose set-up a crash cut short
    (created, but its attributes never written) is set up again rather than refused.
    """
    directions = list(directions or ["maximize"])
    existing = {s.study_name for s in all_summaries(storage)}
    if campaign in existing:
        study = optuna.load_study(study_name=campaign, storage=study_storage(storage), sampler=sampler)
        if "space" in study.user_attrs or study.get_trials(deepcopy=False):
            _check_same(study, campaign, platform, objective, directions)
            return study, False
    else:
        study = optuna.create_study(study_name=campaign, storage=study_storage(storage), sampler=sampler,
                                    directions=directions, load_if_exists=True)
    study.set_user_attr("platform", platform.platform.name)
    study.set_user_attr("objective", objective)
    study.set_user_attr("initial_design", int(initial_design))
    _name_metrics(study, objective)
    study.set_user_attr("space", space_signature(platform))  # last: the mark of a finished set-up
    return study, True


def _name_metrics(study: optuna.Study, objective: str) -> None:
    """Name the values, so the Optuna dashboard labels its axes PL_I, not "Objective 0"."""
    import warnings

    from tasks.targets import OBJECTIVES

    names = [objective] if len(study.directions) == 1 else list(OBJECTIVES[:len(study.directions)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(names)


def _check_same(study: optuna.Study, campaign: str, platform: PlatformConfig, objective: str,
                directions: list[str]) -> None:
    """Refuse to resume a study set up with another objective, kind of campaign or parameter
    space; the error names each setting that differs, with its stored and its new value."""
    attrs = study.user_attrs
    stored_directions = [d.name.lower() for d in study.directions]
    refused = []  # (setting, how it differs, how to resume with the stored setting)
    if attrs.get("objective") != objective:
        refused.append(("objective", f"it ran with {attrs.get('objective')!r}, this run asks for {objective!r}",
                        f"objective {attrs.get('objective')!r}"))
    if stored_directions != directions:
        refused.append(("kind of campaign", f"it ran as {_kind(stored_directions)}, this run asks for "
                        f"{_kind(directions)}", _kind(stored_directions)))
    other_platform = attrs.get("platform") not in (None, platform.platform.name)
    if attrs.get("space") != space_signature(platform):
        refused.append(("parameter space", _space_difference(attrs.get("space"), platform),
                        "the parameter space it ran on" if other_platform else
                        f"the parameter space it ran on (platform {platform.platform.name!r} as it was then)"))
    if not refused:
        return
    settings = list(refused)
    if other_platform:
        settings.append(("platform", f"it ran on {attrs.get('platform')!r}, this run uses {platform.platform.name!r}",
                         f"platform {attrs.get('platform')!r}"))
    if len(settings) == 1:
        differs = f"another {settings[0][0]}: {settings[0][1]}"
    else:
        differs = "other settings: " + "; ".join(f"{what} ({how})" for what, how, _ in settings)
    resume = " and ".join(fix for *_, fix in settings)
    raise SdflInputError(f"campaign {campaign!r} already exists with {differs}. Choose a new campaign name for "
                         f"these settings, or resume it with {resume}")


def _kind(directions: Sequence[str]) -> str:
    """A study's directions in words: "a single objective to maximize", "a target campaign with
    objectives to minimize, maximize and minimize"."""
    if len(directions) == 1:
        return f"a single objective to {directions[0]}"
    return f"a target campaign with objectives to {', '.join(directions[:-1])} and {directions[-1]}"


def _space_difference(stored: list | None, platform: PlatformConfig) -> str:
    """How a stored space signature differs from this platform's space, in words."""
    if not stored:
        return f"none was recorded, this run asks for {platform.describe_space()}"
    old = {name: (low, high) for name, low, high in stored}
    new = {p.name: p for p in platform.parameters}
    gone, added = [n for n in old if n not in new], [n for n in new if n not in old]
    parts = []
    if gone and added:
        parts.append(f"it had {', '.join(gone)}, this platform has {', '.join(added)} instead")
    elif gone:
        parts.append(f"it had {', '.join(gone)}, which this platform lacks")
    elif added:
        parts.append(f"this platform adds {', '.join(added)}")
    for name in (n for n in old if n in new and tuple(old[n]) != (new[n].low, new[n].high)):
        low, high = old[name]
        parts.append(f"{name} was in {with_unit(f'[{low:g}, {high:g}]', new[name].unit)}, "
                     f"now in {new[name].range_text}")
    return ", ".join(parts) or f"the same parameters in another order (it had {', '.join(old)})"


def ensure_design(study: optuna.Study, conditions: Sequence[dict]) -> int:
    """Enqueue the initial-design points the study does not have yet; returns how many.

    Each design point carries its index, so a crash between creating the study and enqueuing
    the whole design cannot silently shrink it. Studies from before design indices were kept
    (no "initial_design" attribute) are left as they are.
    """
    planned = study.user_attrs.get("initial_design")
    if planned is None:
        return 0
    present = {t.user_attrs.get("design_index") for t in study.get_trials(deepcopy=False)}
    added = 0
    for index, condition in enumerate(list(conditions)[:planned]):
        if index not in present:
            study.enqueue_trial(dict(condition), user_attrs={"design_index": index})
            added += 1
    return added


def record_policy(study: optuna.Study, policy: str) -> str | None:
    """Store the policy that proposes this run's conditions in the study; return the policy it
    ran with before when that differs (None on first use, or when it is the same)."""
    if not isinstance(policy, str) or not policy:
        raise SdflInputError(f"a campaign's policy is a name such as 'ucb', got {policy!r}")
    before = study.user_attrs.get("policy")
    if before != policy:
        study.set_user_attr("policy", policy)
    return before if before is not None and before != policy else None


def trial_number_of(campaign: str, experiment_id: str) -> int | None:
    """The trial number in a campaign's experiment id (`<campaign>-t0012` -> 12), else None."""
    prefix = f"{campaign}-t"
    tail = str(experiment_id).removeprefix(prefix)
    return int(tail) if str(experiment_id).startswith(prefix) and tail.isdigit() else None


def rebuild_from_dataset(study: optuna.Study, campaign: str, root, platform: PlatformConfig,
                         objective_fn) -> list[int]:
    """Fill a new, empty study with the campaign's recorded experiments; returns their trial numbers.

    Used when the dataset holds a campaign whose study is missing (a lost or replaced ledger).
    Each recorded trial comes back under its own number: completed experiments with their
    objective, failed ones as FAIL, and numbers with no record (a proposal that never ran) as FAIL
    placeholders, so new trials get new numbers and never reuse an experiment id. Trials within
    the study's initial design keep their design index.
    """
    rows = read_experiments(root, campaign)
    recorded = {}
    for row in rows.to_dict(orient="records") if not rows.empty else []:
        number = trial_number_of(campaign, row["experiment_id"])
        if number is not None:
            recorded[number] = row
    if not recorded:
        return []
    space = distributions(platform)
    planned = study.user_attrs.get("initial_design") or 0
    single = len(study.directions) == 1
    for number in range(max(recorded) + 1):
        row = recorded.get(number)
        attrs = {"experiment_id": experiment_id_for(campaign, number), "rebuilt": True}
        if number < planned:
            attrs["design_index"] = number
        if row is not None and str(row.get("failure_reason") or "").startswith("RefillNeeded"):
            attrs["not_run"] = True  # stopped before the pumps ran its condition: no budget spent
        params = _params_of(row, space) if row is not None else None
        values = objective_fn(row) if row is not None and row.get("status") == "completed" else None
        if params is not None and values is not None and is_number(values):
            extra, constraints = getattr(objective_fn, "annotations", lambda r: ({}, {}))(row)
            trial = optuna.trial.create_trial(
                params=params, distributions=space, user_attrs=attrs | extra, constraints=constraints or None,
                **({"value": float(values)} if single else {"values": [float(v) for v in values]}))
        else:
            why = (row.get("failure_reason") or f"recorded as {row.get('status')}") if row is not None else \
                "no experiment was recorded for this trial (a proposal that never ran)"
            trial = optuna.trial.create_trial(state=TrialState.FAIL, params=params or {},
                                              distributions=space if params else {},
                                              user_attrs=attrs | {"failure_reason": str(why)[:2000]})
        study.add_trial(trial)
    return sorted(recorded)


def _params_of(row: dict, space: dict) -> dict[str, float] | None:
    """The row's condition if it lies in the space, else None."""
    try:
        params = {name: float(row[name]) for name in space}
    except (KeyError, TypeError, ValueError):
        return None
    inside = all(math.isfinite(v) and d.low - 1e-9 <= v <= d.high + 1e-9 for v, d in
                 ((params[n], d) for n, d in space.items()))
    return {n: min(max(v, space[n].low), space[n].high) for n, v in params.items()} if inside else None


def observations(study: optuna.Study, platform: PlatformConfig) -> tuple[np.ndarray, np.ndarray]:
    """Completed trials as (X in parameter units, y)."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    names = platform.parameter_names
    X = np.array([[t.params[n] for n in names] for t in done], dtype=float).reshape(-1, len(names))
    y = np.array([t.value for t in done], dtype=float)
    return X, y


def target_observations(study: optuna.Study, platform: PlatformConfig) -> tuple[np.ndarray, np.ndarray]:
    """Completed trials of a target study as (X in parameter units, Y = (peak nm, quality, FWHM))."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values is not None and len(t.values) == 3 and "peak_nm" in t.user_attrs]
    names = platform.parameter_names
    X = np.array([[t.params[n] for n in names] for t in done], dtype=float).reshape(-1, len(names))
    Y = np.array([[t.user_attrs["peak_nm"], t.values[1], t.values[2]] for t in done], dtype=float).reshape(-1, 3)
    return X, Y


def tell_completed(study: optuna.Study, trial, values, objective=None, row: dict | None = None) -> None:
    """Tell a finished experiment's value(s); a target objective first annotates the trial with
    its measured peak (user attribute) and its hard limits (Optuna constraints)."""
    annotate = getattr(objective, "annotations", None)
    if annotate is not None and row is not None:
        attrs, constraints = annotate(row)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        for key, value in constraints.items():
            trial.set_constraint(key, value)
    study.tell(trial, values)


def is_number(values) -> bool:
    """A value, or every value of a vector, is a finite number."""
    return all(math.isfinite(v) for v in np.atleast_1d(np.asarray(values, dtype=float)))


def finished(study: optuna.Study) -> list[FrozenTrial]:
    """Trials whose experiment ran (or was refused): what counts toward a campaign's budget.

    Trials marked `not_run` (the lab was not ready: syringes short, data root unusable) are left
    out; their conditions were queued again."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
            if not t.user_attrs.get("not_run")]


def set_aside(study: optuna.Study, trial, reason: str, requeue: bool = True) -> None:
    """A trial whose experiment never started because the lab was not ready: told FAIL, marked
    `not_run` (it spends no budget) and, with `requeue`, its condition queued again for when the
    lab is ready."""
    trial.set_user_attr("failure_reason", reason[:2000])
    trial.set_user_attr("not_run", True)
    params = dict(trial.params)
    study.tell(trial, state=TrialState.FAIL)
    if params and requeue:
        study.enqueue_trial(params, user_attrs={"rerun_of": trial.number})


@dataclass
class Reconciled:
    completed: list[int]
    failed: list[int]
    rerun: list[int]
    missing: list[int] = field(default_factory=list)
    """Finished trials whose experiment record is not in the dataset (deleted or set aside)."""
    unrun: list[int] = field(default_factory=list)
    """Trials no process had claimed (`liveness.unclaimed`) and with no record: set aside, their
    condition queued again; nothing is written to the dataset for them."""


def reconcile(study: optuna.Study, campaign: str, root, objective_fn, in_flight: str = "fail",
              record_failure=None, check_missing: bool = True) -> Reconciled:
    """Settle trials left RUNNING by a crash, from what the dataset says happened.

    Only abandoned trials are settled (`tasks.liveness`): a trial that another campaign process
    still runs is left to it. Two processes settling the same trial at once is harmless: the
    second one's tell is refused and skipped.

    - a completed experiment row: told COMPLETE with its objective, a single value or a target's
      vector (it finished; the tell was lost);
    - a failed row: told FAIL;
    - no row: the experiment was in flight; `record_failure(trial)` writes it as crashed, the
      trial is told FAIL, and with in_flight="rerun" its condition is queued again.

    Completed trials whose record is gone from the dataset are listed in `missing` (the caller
    reports them: restore the files from a backup; the study still holds their values), when
    `check_missing`.
    """
    if in_flight not in ("fail", "rerun"):
        raise SdflInputError(f"in_flight must be 'fail' or 'rerun', got {in_flight!r}")
    out = Reconciled([], [], [])
    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not liveness.abandoned(trial, now):
            continue
        try:
            _settle(study, trial, campaign, root, objective_fn, in_flight, record_failure, out)
        except (ValueError, UpdateFinishedTrialError):  # another process settled it first
            continue
    if check_missing:
        recorded = experiment_ids(root, campaign)  # names of files, no rows read
        out.missing = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                       if t.user_attrs.get("experiment_id", experiment_id_for(campaign, t.number)) not in recorded]
    return out


def _settle(study, trial, campaign, root, objective_fn, in_flight, record_failure, out: Reconciled) -> None:
    """Settle one abandoned trial (see `reconcile`)."""
    experiment_id = trial.user_attrs.get("experiment_id") or experiment_id_for(campaign, trial.number)
    row = read_experiment(root, campaign, experiment_id)  # opens that experiment's file only
    # A still-running trial can be reopened by id to annotate it before it is told.
    handle = optuna.trial.Trial(study, trial._trial_id)
    if row is not None and row["status"] == "completed":
        values = objective_fn(row)
        if is_number(values):
            tell_completed(study, handle, values, objective_fn, row)
            out.completed.append(trial.number)
            return
        handle.set_user_attr("failure_reason", "the recorded experiment gives no number for the objective")
    elif row is None and liveness.unclaimed(trial):
        # a design point is queued again whole; a proposal cut short may hold part of its condition only
        set_aside(study, handle, "not run: its proposal was cut short (the campaign process or its database went "
                  "away) before any experiment started", requeue="design_index" in trial.user_attrs)
        out.unrun.append(trial.number)
        return
    else:
        if row is None and record_failure is not None:
            record_failure(trial, experiment_id)
        handle.set_user_attr("failure_reason", "interrupted: the process stopped mid-experiment")
    study.tell(trial.number, state=TrialState.FAIL)
    out.failed.append(trial.number)
    if in_flight == "rerun" and trial.params and (row is None or row["status"] != "completed"):
        study.enqueue_trial(dict(trial.params), user_attrs={"rerun_of": trial.number})
        out.rerun.append(trial.number)


def prior_from_campaign(root, campaign: str, platform: PlatformConfig, objective_fn) -> tuple[np.ndarray, np.ndarray]:
    """Completed experiments of an earlier campaign as (X, y), checked against this space."""
    rows = read_experiments(root, campaign)
    if rows.empty:
        raise SdflInputError(f"prior campaign {campaign!r} has no experiments under {data_root(root)}")
    missing = [n for n in platform.parameter_names if n not in rows.columns]
    if missing:
        raise SdflInputError(f"prior campaign {campaign!r} comes from a different parameter space: it has no "
                             f"{missing}; the space is {platform.describe_space()}")
    rows = rows[rows["status"] == "completed"]
    X = rows[platform.parameter_names].to_numpy(dtype=float)
    low = np.array([p.low for p in platform.parameters])
    high = np.array([p.high for p in platform.parameters])
    if np.any(X < low - 1e-9) or np.any(X > high + 1e-9):
        raise SdflInputError(f"prior campaign {campaign!r} has conditions outside this space "
                             f"({platform.describe_space()}); it comes from a different parameter space")
    y = np.array([objective_fn(r) for r in rows.to_dict(orient="records")], dtype=float)
    keep = np.isfinite(y)
    return X[keep], y[keep]


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """The study as a table (number, state, value, params, experiment id)."""
    return study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs"))
