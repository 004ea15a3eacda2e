"""Proposals: where each policy sends the next experiment, on known functions of the unit cube."""

from __future__ import annotations

import importlib.util

import numpy as np
import optuna
import pytest

from hardware.errors import SdflInputError
from hardware.platform import load_platform
from tasks.ledger import distributions
from tasks.proposal import POLICIES, PolicySettings, acquisition, latin_hypercube, propose
from tasks.samplers import SAMPLERS, PolicySampler, make_sampler
from tasks.surrogate import to_unit

PLATFORM = load_platform()
D = len(PLATFORM.parameters)  # 7
OPTIMUM = 0.7


def bowl(U: np.ndarray) -> np.ndarray:
    """Highest (0) at U = 0.7 on every axis: an interior maximum."""
    return -((np.atleast_2d(U) - OPTIMUM) ** 2).sum(axis=1)


def waves(U: np.ndarray) -> np.ndarray:
    return np.sin(3 * np.atleast_2d(U)).sum(axis=1)


def _two_points():
    """The smallest data a surrogate can be trained on."""
    X = np.array([[0.2] * D, [0.8] * D])
    return X, bowl(X)


@pytest.fixture(scope="module")
def bowl_design():
    """60 Latin-hypercube observations of the bowl: enough for the GP to find its top."""
    X = latin_hypercube(60, D, seed=1)
    return X, bowl(X)


@pytest.fixture(scope="module")
def corner_cluster():
    """20 observations crowded into the corner [0, 0.2]^7."""
    X = 0.2 * np.random.default_rng(0).random((20, D))
    return X, waves(X)


@pytest.fixture(scope="module")
def design():
    """A typical early campaign: 30 Latin-hypercube observations of a wavy function."""
    X = latin_hypercube(30, D, seed=3)
    return X, waves(X)


@pytest.fixture(scope="module")
def early_bowl():
    """12 observations of the bowl, as after the initial design."""
    X = latin_hypercube(12, D, seed=4)
    return X, bowl(X)


# --- initial design ----------------------------------------------------------------------------


def test_latin_hypercube_puts_one_point_in_each_slice_of_every_axis():
    n = 12
    U = latin_hypercube(n, D, seed=5)
    assert U.shape == (n, D)
    assert np.all((U >= 0) & (U < 1))
    for axis in range(D):
        assert sorted(np.floor(U[:, axis] * n).astype(int)) == list(range(n))


def test_latin_hypercube_is_the_same_for_the_same_seed():
    assert np.array_equal(latin_hypercube(8, D, seed=2), latin_hypercube(8, D, seed=2))
    assert not np.array_equal(latin_hypercube(8, D, seed=2), latin_hypercube(8, D, seed=3))


# --- where each policy goes --------------------------------------------------------------------


def test_mv_explores_where_the_surrogate_is_least_sure(corner_cluster):
    X, y = corner_cluster
    centre = X.mean(axis=0)

    points, model = propose("mv", X, y)

    assert points.shape == (1, D)
    assert np.linalg.norm(points[0] - centre) > np.linalg.norm(X - centre, axis=1).max()
    _, sd_here = model.predict(points)
    _, sd_anywhere = model.predict(np.random.default_rng(1).random((2000, D)))
    assert sd_here[0] >= sd_anywhere.max()


def test_ivr_fills_the_unknown_space_where_mv_runs_to_a_corner():
    """Half the cube is known: MV picks the emptiest corner, IVR a point that informs the most
    of the empty half, well inside it."""
    X = latin_hypercube(30, D, seed=6)
    X[:, 0] *= 0.5  # every observation has x0 < 0.5
    y = bowl(X)
    mv, _ = propose("mv", X, y, seed=1)
    ivr, model = propose("ivr", X, y, seed=1)
    assert ivr[0, 0] > 0.5  # into the unknown half
    corner_distance = lambda u: np.abs(u - np.round(u)).sum()  # noqa: E731  (L1 distance to the nearest corner)
    assert corner_distance(ivr[0]) > corner_distance(mv[0]) + 0.5
    # and it is the measurement that would cut the mean variance most among random alternatives
    from tasks.proposal import variance_reduction

    reference = np.random.default_rng(2).random((256, D))
    others = np.random.default_rng(3).random((200, D))
    cuts = variance_reduction(model, np.vstack([ivr, others]), reference)
    assert cuts[0] >= np.quantile(cuts[1:], 0.99)


def test_eplt_goes_to_the_highest_predicted_mean(bowl_design):
    X, y = bowl_design
    points, _ = propose("eplt", X, y)
    assert np.abs(points[0] - OPTIMUM).max() < 0.1
    assert bowl(points)[0] > y.max()  # better than anything observed


def test_ucb_without_exploration_is_eplt(bowl_design):
    X, y = bowl_design
    ucb, _ = propose("ucb", X, y, settings=PolicySettings(kappa=0.0))
    eplt, _ = propose("eplt", X, y)
    assert np.allclose(ucb, eplt)


def test_ucb_with_a_large_kappa_is_mv(corner_cluster):
    X, y = corner_cluster
    ucb, _ = propose("ucb", X, y, settings=PolicySettings(kappa=1e6))
    mv, _ = propose("mv", X, y)
    assert np.allclose(ucb, mv, atol=1e-3)


def test_ei_goes_where_improvement_is_plausible(design):
    X, y = design
    points, model = propose("ei", X, y)
    mean, sd = model.predict(points)
    assert mean[0] + sd[0] > y.max()


def test_random_needs_no_observations_and_no_model():
    points, model = propose("random", np.empty((0, D)), np.empty(0), q=4, seed=1)
    assert points.shape == (4, D) and model is None
    assert np.all((points >= 0) & (points <= 1))


# --- acquisition values ------------------------------------------------------------------------


def test_acquisition_scores_of_each_policy():
    mean, sd = np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.1, 0.0])
    settings = PolicySettings(kappa=2.0)
    assert np.array_equal(acquisition("mv", mean, sd, 0.0, 1.0), np.maximum(sd, 1e-12))
    assert np.array_equal(acquisition("eplt", mean, sd, 0.0, 1.0), mean)
    assert np.allclose(acquisition("ucb", mean, sd, 0.0, 1.0, settings), mean + 2.0 * sd)


def test_expected_improvement_is_never_negative_and_rewards_mean_and_spread():
    grid_mean, grid_sd = np.meshgrid(np.linspace(-3, 3, 25), np.linspace(0, 2, 25))
    mean, sd = grid_mean.ravel(), grid_sd.ravel()
    ei = acquisition("ei", mean, sd, best=0.0, y_scale=1.0)
    assert np.all(ei >= 0)

    wider = acquisition("ei", np.zeros(4), np.array([0.1, 0.3, 1.0, 3.0]), best=0.5, y_scale=1.0)
    assert np.all(np.diff(wider) > 0)
    higher = acquisition("ei", np.array([-1.0, 0.0, 1.0, 2.0]), np.full(4, 0.5), best=0.5, y_scale=1.0)
    assert np.all(np.diff(higher) > 0)

    certain = acquisition("ei", np.array([2.0, -2.0]), np.zeros(2), best=1.0, y_scale=1.0,
                          settings=PolicySettings(xi=0.0))
    assert np.allclose(certain, [1.0, 0.0])  # no spread: the sure gain, or nothing


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="unknown policy 'greedy'"):
        acquisition("greedy", np.zeros(2), np.ones(2), 0.0, 1.0)
    with pytest.raises(ValueError, match="unknown policy"):
        propose("greedy", *_two_points())


# --- formulation rules: only feasible points come back -----------------------------------------


def left_half(u: np.ndarray) -> bool:
    return bool(u[0] <= 0.5)


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_returns_only_feasible_points(early_bowl, policy):
    X, y = early_bowl  # the bowl's top (x0 = 0.7) is on the infeasible side
    points, _ = propose(policy, X, y, q=2, feasible=left_half)
    assert points.shape == (2, D)
    assert all(left_half(u) for u in points)


@pytest.mark.parametrize("policy", ["mv", "ei", "ucb", "eplt"])
def test_no_feasible_point_is_an_error_that_says_so(early_bowl, policy):
    X, y = early_bowl
    with pytest.raises(RuntimeError, match="no feasible candidate"):
        propose(policy, X, y, feasible=lambda u: False)


class _GaveUp(Exception):
    """Raised by the test's rule checker when propose keeps asking long after it should have stopped."""


def test_random_with_no_feasible_point_is_an_error_too():
    asked = []

    def nothing_is_feasible(u):
        asked.append(1)
        if len(asked) > 200_000:
            raise _GaveUp("still drawing after 200000 infeasible points")
        return False

    with pytest.raises(RuntimeError, match="feasible"):
        propose("random", np.empty((0, D)), np.empty(0), feasible=nothing_is_feasible)


# --- batches, pending experiments, prior data --------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_a_batch_holds_distinct_points_inside_the_cube(design, policy):
    X, y = design
    points, _ = propose(policy, X, y, q=3)
    assert points.shape == (3, D)
    assert np.all((points >= 0) & (points <= 1))
    gaps = [np.linalg.norm(points[i] - points[j]) for i in range(3) for j in range(i + 1, 3)]
    assert min(gaps) > 1e-3


@pytest.mark.parametrize("policy", [
    "mv",
    "ucb",
    "ei",
    "eplt",
])
def test_a_batch_near_the_optimum_does_not_repeat_a_condition(bowl_design, policy):
    X, y = bowl_design
    points, _ = propose(policy, X, y, q=3)
    gaps = [np.linalg.norm(points[i] - points[j]) for i in range(3) for j in range(i + 1, 3)]
    assert min(gaps) > 0.01  # 1 % of the cube: anything closer is the same experiment run twice


@pytest.mark.parametrize("policy", ["ei", "eplt", "ucb"])
def test_no_policy_proposes_a_condition_already_measured(policy):
    """The observed optimum sits on the best point: a flat acquisition there must not repeat it."""
    X = np.array([[0.5, 0.5], [0.1, 0.9], [0.9, 0.1], [0.1, 0.1], [0.9, 0.9]])
    y = -np.sum((X - 0.5) ** 2, axis=1)
    points, _ = propose(policy, X, y, q=2)
    for point in points:
        assert min(np.linalg.norm(point - x) for x in X) > 0.01


def test_mv_does_not_propose_an_experiment_that_is_already_running(corner_cluster):
    X, y = corner_cluster
    alone, _ = propose("mv", X, y)
    points, _ = propose("mv", X, y, pending=alone)
    assert np.linalg.norm(points[0] - alone[0]) > 0.1


def test_prior_data_alone_guides_the_first_proposal(bowl_design):
    prior = bowl_design  # e.g. an earlier campaign, or the digital twin
    points, _ = propose("eplt", np.empty((0, D)), np.empty(0), prior=prior)
    assert np.abs(points[0] - OPTIMUM).max() < 0.1


def test_a_model_needs_two_observations_or_prior_data():
    X, y = _two_points()
    with pytest.raises(ValueError, match="initial design"):
        propose("ei", X[:1], y[:1])
    with pytest.raises(ValueError, match="initial design"):
        propose("mv", np.empty((0, D)), np.empty(0))
    points, _ = propose("ei", X[:1], y[:1], prior=(X[1:], y[1:]))  # one own + one prior point is enough
    assert points.shape == (1, D)


def test_observations_must_be_a_table_with_one_value_per_row():
    X, y = _two_points()
    with pytest.raises(ValueError, match="one y per row"):
        propose("ei", X, y[:1])
    with pytest.raises(ValueError, match="one y per row"):
        propose("ei", X[0], y)


# --- the policies as an Optuna sampler ---------------------------------------------------------


def unit_objective(params: dict[str, float]) -> float:
    """A cheap synthetic experiment: the bowl, in the unit cube of the platform's parameters."""
    u = to_unit(PLATFORM, [params[name] for name in PLATFORM.parameter_names])
    return float(bowl(u)[0])


def test_policy_sampler_runs_a_study_of_twelve_trials():
    sampler = PolicySampler(PLATFORM, "ei", surrogate="gp", seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    space = distributions(PLATFORM)
    centre = {p.name: (p.low + p.high) / 2 for p in PLATFORM.parameters}
    study.enqueue_trial(centre)  # the initial design is enqueued and left alone

    from_policy = []
    for _ in range(12):
        trial = study.ask(space)
        from_policy.append(sampler.last_model is not None)
        study.tell(trial, unit_objective(trial.params))

    assert study.trials[0].params == centre
    assert from_policy == [False, False] + [True] * 10  # random until two trials are complete
    for trial in study.trials:
        for p in PLATFORM.parameters:
            assert p.low <= trial.params[p.name] <= p.high
    # the policy's best beats the random point it started from (the centre is a strong start in
    # 7 dimensions: EI explores for more than 10 trials before it beats it)
    assert max(t.value for t in study.trials[2:]) > study.trials[1].value


def test_policy_sampler_draws_its_first_points_within_the_rules():
    """Before a model can be trained the sampler draws at random, but only feasible points."""
    asked = []

    def only_the_lower_half_of_temperature(u):
        asked.append(u)
        return u[0] < 0.5

    sampler = PolicySampler(PLATFORM, "ei", seed=0, feasible=only_the_lower_half_of_temperature)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for _ in range(2):
        trial = study.ask(distributions(PLATFORM))
        study.tell(trial, unit_objective(trial.params))
    temperature = PLATFORM.parameters[0]
    assert asked, "the rules were not consulted"
    for trial in study.trials:
        assert trial.params[temperature.name] < (temperature.low + temperature.high) / 2


def test_policy_sampler_treats_running_trials_as_pending():
    sampler = PolicySampler(PLATFORM, "mv", seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    space = distributions(PLATFORM)
    for _ in range(3):
        trial = study.ask(space)
        study.tell(trial, unit_objective(trial.params))

    running = study.ask(space)  # not told yet: an experiment in flight
    following = study.ask(space)

    a = to_unit(PLATFORM, [running.params[n] for n in PLATFORM.parameter_names])
    b = to_unit(PLATFORM, [following.params[n] for n in PLATFORM.parameter_names])
    assert np.linalg.norm(a - b) > 0.1


def test_policy_sampler_keeps_to_the_formulation_rules():
    name = PLATFORM.parameter_names[0]

    def low_half(u):
        return bool(u[0] <= 0.5)

    sampler = make_sampler("eplt", PLATFORM, "gp", seed=0, feasible=low_half)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    space = distributions(PLATFORM)
    for _ in range(6):
        trial = study.ask(space)
        study.tell(trial, unit_objective(trial.params))
    middle = (PLATFORM.parameters[0].low + PLATFORM.parameters[0].high) / 2
    assert all(t.params[name] <= middle + 1e-9 for t in study.trials[2:])  # the policy's trials


def test_unknown_sampler_lists_the_choices():
    with pytest.raises(SdflInputError, match="policy 'nope'") as error:
        make_sampler("nope", PLATFORM, "gp", seed=0)
    for choice in SAMPLERS:
        assert choice in str(error.value)
    with pytest.raises(SdflInputError, match="unknown policy"):
        PolicySampler(PLATFORM, "tpe")  # Optuna's own samplers come from make_sampler


def test_tpe_is_a_peer_of_the_policies():
    assert isinstance(make_sampler("tpe", PLATFORM, "gp", seed=0), optuna.samplers.TPESampler)
    assert isinstance(make_sampler("ucb", PLATFORM, "ensemble", seed=0), PolicySampler)


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed")
def test_optuna_gp_sampler_without_torch_says_what_to_install():
    with pytest.raises(SdflInputError, match="torch"):
        make_sampler("gp", PLATFORM, "gp", seed=0)


def test_campaign_seeds_give_independent_streams_per_trial():
    """seed + trial would make seed 2's trial n repeat seed 1's trial n + 1."""
    from tasks.samplers import trial_seed

    streams = {(seed, n): trial_seed(seed, n) for seed in range(1, 11) for n in range(30)}
    assert len(set(streams.values())) == len(streams)
    assert trial_seed(2, 5) != trial_seed(1, 6) and trial_seed(3, 0) == trial_seed(3, 0)


def test_proposals_fit_and_score_on_one_blas_thread():
    """A proposal's numerics run on one BLAS/OpenMP thread (a second one only spin-waits for a
    core on a busy machine), and the process's own limits come back afterwards. The tests run on
    one thread (conftest.py): the limit is raised to two here, as a library's default would be."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from tasks.surrogate import GaussianProcess

    def blas_threads() -> set[int]:
        return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}

    seen: list[set[int]] = []

    class Watched(GaussianProcess):
        def fit(self, X, y):
            seen.append(blas_threads())
            return super().fit(X, y)

    with threadpool_limits(limits=2, user_api="blas"):
        assert blas_threads() == {2}
        X, y = _two_points()
        propose("ei", X, y, model=Watched(seed=0))
        assert seen and all(threads == {1} for threads in seen), seen
        assert blas_threads() == {2}


def test_face_candidates_lie_on_the_boundary_of_the_box():
    from tasks.proposal import face_candidates

    rng = np.random.default_rng(0)
    top = rng.uniform(0.2, 0.8, (5, 7))
    points = face_candidates(top, 300, rng)
    assert points.shape == (300, 7)
    assert ((points >= 0) & (points <= 1)).all()
    on_bound = (points == 0) | (points == 1)
    assert on_bound.any(axis=1).all()  # every candidate has at least one input at a bound
    moved = points[: 300 - 100]
    assert all(np.isclose(top, np.where(row_bound, top, row)).all(axis=1).any()  # the rest is a top point
               for row, row_bound in zip(moved, on_bound[: 300 - 100]))

