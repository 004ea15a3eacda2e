"""Target campaigns: reach a peak emission with the highest quality and the narrowest FWHM at once."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState, create_trial

from hardware.errors import SdflInputError
from hardware.platform import load_platform
from tasks.proposal import latin_hypercube, propose_by_desirability
from tasks.targets import (
    Desirability,
    MeasuredDesirability,
    Target,
    check_target,
    constraint_values,
    desirability_for,
    errors_from_peaks,
    experiments_since_best,
    make_target,
    meets_target,
    non_dominated_sort,
    objective_vectors,
    pareto_front,
)

PLATFORM = load_platform()  # virtual-cs3cu2i5: PL window 400-540 nm, peak near 449 nm
GREEN = Target(516.0, tolerance_nm=2.0, max_fwhm_nm=18.0)  # the PeQLED green (P4: 515-517 nm, FWHM 16-18 nm)
RANGES = Desirability(tolerance=2.0, peak_zero=8.0, quality_zero=0.0, quality_one=100.0, fwhm_one=16.0,
                      fwhm_zero=18.0)


# --- the target -------------------------------------------------------------------------------------
def test_a_target_can_be_given_as_an_energy():
    target = Target.at_energy(2.40, tolerance_mev=10.0)
    assert target.peak_nm == pytest.approx(1239.84198 / 2.40)
    assert target.peak_ev == pytest.approx(2.40)
    assert target.tolerance_nm == pytest.approx(target.peak_nm ** 2 / 1239.84198 * 0.010)  # ~2.2 nm at 517 nm
    assert make_target(peak_ev=2.40).peak_nm == pytest.approx(target.peak_nm)


@pytest.mark.parametrize("target, field", [
    (Target(600.0), "target_peak_nm"),  # beyond the 400-540 nm PL window
    (Target(450.0, tolerance_nm=-1.0), "tolerance_nm"),
    (Target(450.0, tolerance_nm=0.0), "tolerance_nm"),
    (Target(450.0, max_fwhm_nm=-5.0), "max_fwhm_nm"),
    (Target(450.0, quality="PLQY_percent"), "quality"),
    (Target(450.0, fwhm="width"), "fwhm"),
    (Target(450.0, peak_range_nm=1.0), "peak_range_nm"),
    (Target(450.0, quality_range=(5.0, 1.0)), "quality_range"),
    (Target(450.0, weights=(1.0, 0.0, 1.0)), "weights"),
])
def test_a_bad_target_is_refused_naming_the_field(target, field):
    with pytest.raises(SdflInputError, match=field):
        check_target(target, PLATFORM)


def test_the_peak_is_given_once_as_nm_or_ev():
    with pytest.raises(SdflInputError, match="exactly one"):
        make_target(peak_nm=450.0, peak_ev=2.75)
    with pytest.raises(SdflInputError, match="exactly one"):
        make_target()
    with pytest.raises(SdflInputError, match="target_peak_ev"):
        make_target(peak_ev=-2.0)


def test_the_default_quality_is_a_relative_plqy_the_features_can_compute():
    objective = check_target(Target(450.0), PLATFORM)
    row = {"PL_peak_nm": 448.5, "PL_A": 1000.0, "Abs_300": 0.1, "FWHM_nm": 60.0}
    error, quality, fwhm = objective(row)
    assert error == pytest.approx(1.5) and fwhm == 60.0
    assert quality == pytest.approx(1000.0 / (1 - 10 ** -0.1))  # per share of the excitation absorbed
    assert np.isnan(objective({"PL_peak_nm": None, "PL_A": 1.0, "Abs_300": 0.1, "FWHM_nm": 60.0})[0])
    vectors = objective_vectors([row, {**row, "PL_peak_nm": 452.0}], objective)  # a table of rows at once
    assert vectors.shape == (2, 3) and list(vectors[:, 0]) == [1.5, 2.0]


# --- desirability -------------------------------------------------------------------------------------
def test_desirability_is_one_on_target_and_falls_off_target():
    assert RANGES([0.0, 100.0, 16.0]) == pytest.approx(1.0)
    assert RANGES([2.0, 100.0, 16.0]) == pytest.approx(1.0)  # within tolerance counts as on target
    assert RANGES.parts([5.0, 100.0, 16.0])[0] == pytest.approx(0.5)  # halfway from tolerance to zero
    assert RANGES([8.0, 100.0, 16.0]) == 0.0 and RANGES([20.0, 100.0, 16.0]) == 0.0
    # a weighted geometric mean: one poor objective pulls the whole down, one at 0 makes it 0
    assert RANGES([0.0, 25.0, 16.0]) == pytest.approx(0.25 ** (1 / 3))
    assert RANGES([0.0, 100.0, 17.0]) == pytest.approx(0.5 ** (1 / 3))
    assert RANGES([0.0, 100.0, 18.5]) == 0.0  # beyond the FWHM limit: unacceptable
    assert RANGES([0.0, 150.0, 10.0]) == pytest.approx(1.0)  # better than the range is still 1
    assert RANGES([np.nan, 100.0, 16.0]) == 0.0


def test_shortfall_says_how_far_outside_the_ranges():
    assert RANGES.shortfall([5.0, 50.0, 17.0]) == 0.0
    assert RANGES.shortfall([14.0, 50.0, 17.0]) == pytest.approx(1.0)  # one span (6 nm) past the zero point
    assert RANGES.shortfall([14.0, 50.0, 19.0]) > RANGES.shortfall([14.0, 50.0, 17.0])


def test_undeclared_ranges_come_from_the_data_and_declared_ones_win():
    observed = np.array([[1.0, 50.0, 20.0], [3.0, 80.0, 17.0], [np.nan, np.nan, np.nan]])
    ranges = desirability_for(GREEN, observed)
    assert (ranges.quality_zero, ranges.quality_one) == (0.0, pytest.approx(1.2 * 80.0))
    assert (ranges.fwhm_one, ranges.fwhm_zero) == (pytest.approx(0.8 * 17.0), pytest.approx(2 * 17.0))
    assert ranges.peak_zero == pytest.approx(4 * 2.0)
    assert ranges.fwhm_limit == 18.0  # the hard limit is a cliff on top of the ramp
    assert ranges([1.0, 80.0, 17.9]) > 0.5 and ranges([1.0, 80.0, 18.1]) == 0.0
    assert ranges.shortfall([1.0, 80.0, 18.1]) > 0
    declared = Target(516.0, quality_range=(10.0, 60.0), fwhm_range_nm=(15.0, 25.0))
    ranges = desirability_for(declared, observed)
    assert (ranges.quality_zero, ranges.quality_one, ranges.fwhm_one, ranges.fwhm_zero) == (10.0, 60.0, 15.0, 25.0)


def test_on_target_means_the_peak_within_tolerance_and_every_limit():
    vectors = np.array([[1.0, 50.0, 17.0], [2.5, 90.0, 16.0], [0.5, 90.0, 19.0], [np.nan, 1.0, 1.0]])
    assert list(meets_target(vectors, GREEN)) == [True, False, False, False]
    assert constraint_values(vectors[0], GREEN) == {"peak_within_tolerance": -1.0, "fwhm_within_limit": -1.0}
    assert constraint_values(vectors[2], GREEN)["fwhm_within_limit"] == pytest.approx(1.0)


# --- Pareto -------------------------------------------------------------------------------------------
def test_non_dominated_sorting_of_a_hand_made_set():
    # (peak error: min, quality: max, FWHM: min)
    vectors = np.array([
        [0.5, 90.0, 17.0],  # A: front
        [0.2, 60.0, 16.0],  # B: front (closer and narrower, less bright)
        [0.5, 80.0, 17.0],  # C: dominated by A only
        [1.0, 50.0, 18.0],  # D: dominated by A, B and C
        [0.1, 40.0, 19.0],  # E: front (closest to the target)
        [np.nan, 99.0, 1.0],  # a failed run: not ranked
    ])
    assert list(non_dominated_sort(vectors)) == [0, 0, 1, 2, 0, -1]
    assert list(pareto_front(vectors)) == [True, True, False, False, True, False]


def test_our_pareto_front_is_optunas():
    rng = np.random.default_rng(3)
    vectors = np.column_stack([rng.random(40) * 5, rng.random(40) * 100, 15 + rng.random(40) * 10])
    study = optuna.create_study(directions=["minimize", "maximize", "minimize"])
    for v in vectors:
        study.add_trial(create_trial(values=list(v), state=TrialState.COMPLETE))
    ours = set(np.flatnonzero(pareto_front(vectors)))
    assert ours == {t.number for t in study.best_trials}


def test_patience_counts_experiments_after_the_best_on_target_one():
    off = [5.0, 90.0, 17.0]
    assert experiments_since_best(np.array([off, off]), GREEN) is None
    runs = np.array([off, [1.0, 50.0, 17.0], [1.0, 70.0, 17.0], [np.nan] * 3, [1.5, 60.0, 17.5]])
    assert experiments_since_best(runs, GREEN) == 2  # the best is the third; a failure counts as an experiment


# --- the policy ---------------------------------------------------------------------------------------
def analytic_lab(U: np.ndarray) -> np.ndarray:
    """A cheap two-input 'lab': the peak red-shifts along x0 (500-530 nm), quality peaks at
    x1 = 0.7, FWHM is narrowest at x1 = 0.4 and widens with x0. Returns (peak nm, quality, FWHM)."""
    U = np.atleast_2d(U)
    peak = 500.0 + 30.0 * U[:, 0]
    quality = 100.0 - 80.0 * (U[:, 1] - 0.7) ** 2
    fwhm = 16.0 + 4.0 * U[:, 0] + 20.0 * (U[:, 1] - 0.4) ** 2
    return np.column_stack([peak, quality, fwhm])


def measured_desirability(target: Target, Y: np.ndarray) -> MeasuredDesirability:
    return MeasuredDesirability(desirability_for(target, errors_from_peaks(Y, target)), target)


def test_desirability_ei_moves_towards_the_target():
    target = Target(516.0, tolerance_nm=1.0)  # x0 = 0.533
    X = latin_hypercube(6, 2, seed=2) * np.array([0.3, 1.0])  # every start is blue of 509 nm
    Y = analytic_lab(X)
    start = np.min(np.abs(Y[:, 0] - target.peak_nm))
    for step in range(6):
        point, models = propose_by_desirability(X, Y, measured_desirability(target, Y), seed=step)
        X, Y = np.vstack([X, point]), np.vstack([Y, analytic_lab(point)])
    errors = np.abs(Y[6:, 0] - target.peak_nm)
    assert start > 7.0 and errors.min() < 1.0  # it found the colour
    assert len(models) == 3  # one surrogate per modelled quantity
    final = measured_desirability(target, Y)(Y)
    assert final.max() > 0.5 and final[:6].max() == 0.0  # nothing desirable at the start


def test_desirability_ei_keeps_batches_apart_and_within_the_rules():
    target = Target(516.0, tolerance_nm=1.0)
    X = latin_hypercube(8, 2, seed=4)
    Y = analytic_lab(X)

    def left_half(u):
        return bool(u[0] <= 0.5)

    points, _ = propose_by_desirability(X, Y, measured_desirability(target, Y), q=3, feasible=left_half)
    assert points.shape == (3, 2) and all(left_half(u) for u in points)
    gaps = [np.linalg.norm(points[i] - points[j]) for i in range(3) for j in range(i + 1, 3)]
    assert min(gaps) > 0.01


def test_desirability_ei_needs_two_observations():
    with pytest.raises(ValueError, match="initial design"):
        propose_by_desirability(np.zeros((1, 2)), np.zeros((1, 3)), RANGES)


# --- a target campaign, end to end ----------------------------------------------------------------------
@pytest.mark.usefixtures("prefect_harness")
def test_seek_target_reaches_the_peak_and_publishes_the_pareto_front(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.campaign import seek_target
    from tasks.ledger import storage_url

    root = str(tmp_path / "data")
    summary = seek_target(campaign="blue", target_peak_nm=450.0, tolerance_nm=2.0, budget=8, initial=4,
                          patience=None, seed=2, data_root=root)

    assert summary["experiments"] == 8 and summary["completed"] == 8
    study = optuna.load_study(study_name="blue", storage=storage_url(root))
    assert [d.name for d in study.directions] == ["MINIMIZE", "MAXIMIZE", "MINIMIZE"]
    assert study.best_trials and {t.number for t in study.best_trials} == set(summary["optuna_pareto_trials"])
    best = summary["best"]
    assert best["on_target"] and best["peak_error_nm"] <= 2.0 and 0 < best["desirability"] <= 1
    assert summary["best_true"]["on_target"]  # the twin agrees: that condition really emits at 450 +/- 2 nm
    front = {row["experiment_id"] for row in summary["pareto_front"]}
    assert best["experiment_id"] in front
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["blue-pareto", "blue-summary", "blue-pareto-front"])))}
        shown = {a.key: a.data for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["blue-pareto-front", "blue-best-spectra"])))}
    assert keys == {"blue-pareto", "blue-summary", "blue-pareto-front"}
    for key, markdown in shown.items():  # the plot travels in the artifact: any browser shows it
        assert "](data:image/png;base64," in markdown and "](file:" not in markdown, key
    assert (tmp_path / "data" / "campaigns" / "blue" / "pareto_front.png").exists()


@pytest.mark.usefixtures("prefect_harness")
def test_seek_target_refuses_a_target_the_platform_cannot_measure(tmp_path):
    from flows.campaign import seek_target
    from tasks.ledger import storage_url

    root = str(tmp_path / "data")
    with pytest.raises(SdflInputError, match="target_peak_nm"):
        seek_target(campaign="uv", target_peak_nm=350.0, data_root=root)
    with pytest.raises(SdflInputError, match="tolerance_nm"):
        seek_target(campaign="uv", target_peak_nm=450.0, tolerance_nm=-1.0, data_root=root)
    with pytest.raises(SdflInputError, match="exactly one"):
        seek_target(campaign="uv", target_peak_nm=450.0, target_peak_ev=2.75, data_root=root)
    assert "uv" not in {s.study_name for s in optuna.get_all_study_summaries(storage_url(root))}


def test_a_target_campaign_resumes_after_a_crash(tmp_path):
    """Plain steps (no Prefect): one experiment finished but its tell was lost, one was in flight."""
    from flows.campaign import CampaignPlan, run_campaign
    from flows.experiment import PLAIN_STEPS, conduct_experiment
    from hardware.rig import open_rig
    from tasks import liveness
    from tasks.ledger import distributions, experiment_id_for, storage_url
    from tasks.storage import read_experiments

    root = str(tmp_path / "data")
    rig = open_rig(PLATFORM, 7)
    plan = CampaignPlan(campaign="crash", policy="random", budget=2, initial=0, seed=7, data_root=root,
                        target=Target(450.0, max_fwhm_nm=100.0))
    run_campaign(rig, plan, PLAIN_STEPS)
    study = optuna.load_study(study_name="crash", storage=storage_url(root))
    finished_untold, in_flight = study.ask(distributions(PLATFORM)), study.ask(distributions(PLATFORM))
    with liveness.Heartbeat(study) as run:  # a campaign run that claims both and then stops
        for trial in (finished_untold, in_flight):
            trial.set_user_attr("experiment_id", experiment_id_for("crash", trial.number))
            run.claim(trial)
    row = conduct_experiment(rig, condition=dict(finished_untold.params), campaign="crash",
                             experiment_id=experiment_id_for("crash", finished_untold.number), finish="hold",
                             data_root=root, seed=7, steps=PLAIN_STEPS)

    plan.budget = 5
    state = run_campaign(rig, plan, PLAIN_STEPS)  # the same campaign again

    assert state.reconciled.completed == [finished_untold.number] and state.reconciled.failed == [in_flight.number]
    trials = optuna.load_study(study_name="crash", storage=storage_url(root)).trials
    told = trials[finished_untold.number]
    objective = check_target(plan.target, PLATFORM)
    assert told.values == pytest.approx(list(objective(row)))
    assert told.user_attrs["peak_nm"] == pytest.approx(row["PL_peak_nm"])
    assert set(told.constraints) == {"peak_within_tolerance", "fwhm_within_limit"}
    assert trials[in_flight.number].state == TrialState.FAIL
    assert len(trials) == 5 and len(state.values) == 5
    rows = read_experiments(root, "crash")
    assert rows["experiment_id"].is_unique and set(rows["status"]) == {"completed", "crashed"}
