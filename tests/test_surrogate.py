"""Surrogates: fit a known function on the unit cube, read mean and spread, save and reload a model."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import r2_score

from hardware.platform import load_platform
from tasks.surrogate import (
    EnsembleMLP,
    GaussianProcess,
    cross_validated_r2,
    data_key,
    from_unit,
    load_model,
    make_surrogate,
    save_model,
    to_unit,
)

PLATFORM = load_platform()
D = len(PLATFORM.parameters)  # 7 in the default space


def smooth(U: np.ndarray) -> np.ndarray:
    """A smooth test function of the unit cube: a sum of sines plus one interaction."""
    return np.sin(2 * U).sum(axis=1) + U[:, 0] * U[:, 1]


def relevant_x0(U: np.ndarray) -> np.ndarray:
    """Depends strongly on x0, barely on x6, not at all on the rest."""
    return np.sin(4 * U[:, 0]) + 0.05 * U[:, 6]


@pytest.fixture(scope="module")
def cube():
    """80 training points and 300 fresh points, uniform in the 7-D unit cube."""
    rng = np.random.default_rng(0)
    return rng.random((80, D)), rng.random((300, D))


@pytest.fixture(scope="module")
def half_cube():
    """Training points with x0 in [0, 0.5] and fresh points with x0 in [0.75, 1] (far from all of them)."""
    rng = np.random.default_rng(1)
    train = rng.random((80, D))
    train[:, 0] *= 0.5
    far = rng.random((300, D))
    far[:, 0] = 0.75 + 0.25 * far[:, 0]
    return train, far


@pytest.fixture(scope="module")
def fitted(cube):
    """Both surrogates with their default settings, trained once on the 80 points."""
    X, _ = cube
    return {kind: make_surrogate(kind, seed=0).fit(X, smooth(X)) for kind in ("gp", "ensemble")}


# --- fit quality and uncertainty --------------------------------------------------------------


@pytest.mark.parametrize(("kind", "min_r2"), [("gp", 0.9), ("ensemble", 0.8)])
def test_surrogate_predicts_fresh_points_of_a_smooth_function(fitted, cube, kind, min_r2):
    _, fresh = cube
    mean, sd = fitted[kind].predict(fresh)
    assert mean.shape == sd.shape == (len(fresh),)
    assert np.all(sd >= 0)
    assert r2_score(smooth(fresh), mean) > min_r2


@pytest.mark.parametrize("kind", ["gp", "ensemble"])
def test_surrogate_is_less_sure_far_from_its_data(half_cube, kind):
    train, far = half_cube
    model = make_surrogate(kind, seed=0).fit(train, smooth(train))
    _, sd_at_data = model.predict(train)
    _, sd_far = model.predict(far)
    assert sd_far.mean() > 1.5 * sd_at_data.mean()


def test_a_single_point_prediction_takes_a_1d_row(fitted):
    mean, sd = fitted["gp"].predict(np.full(D, 0.5))
    assert mean.shape == sd.shape == (1,)


# --- Gaussian process: warm start and relevance -----------------------------------------------


def test_gp_refit_starts_afresh_so_early_hyperparameters_do_not_stick(cube):
    """A retrain in a closed loop searches the kernel again (restarts included), so length scales
    learned from a few points are not carried into a model of many."""
    X, fresh = cube
    gp = GaussianProcess(seed=0, restarts=2)
    gp.fit(X[:8], smooth(X[:8]))
    gp.fit(X, smooth(X))  # many more observations, as later in a closed loop

    assert gp.model.n_restarts_optimizer == (2 if len(X) < gp.restarts_below else 0)
    assert np.allclose(gp.model.kernel.theta, gp._kernel(X.shape[1]).theta)  # started from the default
    assert r2_score(smooth(fresh), gp.predict(fresh)[0]) > 0.9


def test_gp_refit_on_another_number_of_inputs_works(cube):
    X, _ = cube
    gp = GaussianProcess(seed=0).fit(X, smooth(X))
    gp.fit(X[:, :3], np.sin(2 * X[:, :3]).sum(axis=1))
    assert gp.length_scales().shape == (3,)


def test_gp_length_scales_are_shortest_for_the_input_that_matters(cube):
    X, _ = cube
    gp = GaussianProcess(seed=0).fit(X, relevant_x0(X))
    scales = gp.length_scales()
    assert scales.shape == (D,)
    assert scales[0] == scales.min()
    assert scales[0] < scales[6] / 10


# --- cross-validated R^2 ---------------------------------------------------------------------


def test_the_gp_leave_one_out_misses_are_those_of_refits_without_each_point(cube):
    """The closed form equals n refits, each without one point (same hyperparameters)."""
    from sklearn.gaussian_process import GaussianProcessRegressor

    X, _ = cube
    X, y = X[:25], smooth(X[:25])
    gp = GaussianProcess(seed=0).fit(X, y)
    mean, scale = y.mean(), y.std()
    for i in range(len(y)):
        alone = GaussianProcessRegressor(gp.model.kernel_, optimizer=None).fit(np.delete(X, i, axis=0),
                                                                             (np.delete(y, i) - mean) / scale)
        assert gp.loo_residuals()[i] == pytest.approx(y[i] - (mean + scale * alone.predict(X[i:i + 1])[0]),
                                                      abs=1e-8)


@pytest.mark.parametrize("kind", ["gp", "ensemble"])
def test_cross_validated_r2_is_high_for_a_learnable_function(cube, kind):
    X, _ = cube
    assert cross_validated_r2(kind, X[:40], smooth(X[:40]), seed=3) > 0.8


def test_cross_validated_r2_is_low_for_noise(cube):
    X, _ = cube
    for seed in range(3):
        noise = np.random.default_rng(seed).standard_normal(40)
        assert cross_validated_r2("gp", X[:40], noise) < 0.5


def test_the_ensemble_scores_each_point_by_the_members_that_did_not_see_it(cube):
    X, _ = cube
    X, y = X[:30], smooth(X[:30])
    ensemble = EnsembleMLP(members=4, seed=2).fit(X, y)
    rng, unseen = np.random.default_rng(2), [[] for _ in y]
    for member in ensemble.models:  # the same bootstrap draws as the fit
        rows = rng.integers(0, len(X), len(X))
        for i in np.setdiff1d(np.arange(len(X)), rows):
            unseen[i].append(member.predict(X[i:i + 1])[0])
    mean, scale = ensemble._y
    for i, predictions in enumerate(unseen):
        if predictions:
            assert ensemble.out_of_bag_residuals[i] == pytest.approx(y[i] - mean - scale * np.mean(predictions))
        else:
            assert np.isnan(ensemble.out_of_bag_residuals[i])


def test_cross_validated_r2_is_nan_below_ten_points_or_without_spread(cube):
    X, _ = cube
    assert np.isnan(cross_validated_r2("gp", X[:9], smooth(X[:9])))
    assert np.isfinite(cross_validated_r2("gp", X[:10], smooth(X[:10])))
    assert np.isnan(cross_validated_r2("gp", X[:20], np.ones(20)))


# --- unit cube <-> parameter units ------------------------------------------------------------


def test_unit_cube_round_trip_on_the_default_platform():
    low = np.array([p.low for p in PLATFORM.parameters])
    high = np.array([p.high for p in PLATFORM.parameters])
    conditions = np.vstack([low, high, (low + high) / 2, low + 0.3 * (high - low)])

    unit = to_unit(PLATFORM, conditions)

    assert np.allclose(unit[0], 0) and np.allclose(unit[1], 1) and np.allclose(unit[2], 0.5)
    assert np.allclose(unit[3], 0.3)
    assert np.allclose(from_unit(PLATFORM, unit), conditions)
    temperature = PLATFORM.parameter_names.index("temperature_c")
    assert from_unit(PLATFORM, np.full(D, 0.5))[temperature] == pytest.approx(135.0)  # 120-150 C


def test_from_unit_clips_points_outside_the_cube_to_the_bounds():
    low = np.array([p.low for p in PLATFORM.parameters])
    high = np.array([p.high for p in PLATFORM.parameters])
    outside = np.array([np.full(D, -0.5), np.full(D, 1.5)])
    assert np.allclose(from_unit(PLATFORM, outside), [low, high])


# --- saving, loading and naming models --------------------------------------------------------


@pytest.mark.parametrize("kind", ["gp", "ensemble"])
def test_saved_model_predicts_the_same_after_loading(fitted, cube, tmp_path, kind):
    X, fresh = cube
    meta = {"parameters": PLATFORM.parameter_names, "objective": "PL_I", "kind": kind,
            "data_key": data_key(X, smooth(X), kind)}
    path = save_model(fitted[kind], tmp_path / "models" / f"{kind}.pkl", meta)

    saved = load_model(path)

    assert path.exists() and not path.with_suffix(".tmp").exists()
    assert {k: v for k, v in saved.items() if k != "model"} == meta
    before, after = fitted[kind].predict(fresh), saved["model"].predict(fresh)
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])


def test_data_key_names_the_training_data_and_the_kind(cube):
    X, _ = cube
    y = smooth(X)
    key = data_key(X, y, "gp")
    assert len(key) == 16 and int(key, 16) >= 0
    assert data_key(X.copy(), y.copy(), "gp") == key
    assert data_key(X, y, "ensemble") != key
    y_changed = y.copy()
    y_changed[5] += 1e-9
    assert data_key(X, y_changed, "gp") != key
    assert data_key(X[:-1], y[:-1], "gp") != key


def test_unknown_surrogate_kind_names_the_choices():
    with pytest.raises(ValueError, match="'gp' or 'ensemble'"):
        make_surrogate("forest")


def test_ensemble_members_differ_so_their_spread_is_an_uncertainty(cube):
    X, _ = cube
    model = EnsembleMLP(members=3, hidden=(8,), seed=0).fit(X[:30], smooth(X[:30]))
    assert len(model.models) == 3
    _, sd = model.predict(np.full((1, D), 0.99))
    assert sd[0] > 0


# --- hyperparameter priors ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["moderate", "wide"])
def test_the_prior_gradient_matches_its_value(kind):
    from scipy.optimize import check_grad

    from tasks.surrogate import HyperPrior

    prior = HyperPrior(6, kind)
    for theta in np.random.default_rng(3).normal(size=(5, 8)):
        assert check_grad(lambda t: prior.negative_log_prior(t)[0], lambda t: prior.negative_log_prior(t)[1],
                          theta) < 1e-5


def test_with_nine_points_the_moderate_prior_keeps_every_length_scale_near_the_box():
    """Nine points in six inputs, two of which matter: by the likelihood alone the other four get
    length scales at the upper bound (a response believed flat along them for ever); under the
    default moderate prior they stay within a few widths of the box, and the two that matter are
    the shortest."""
    rng = np.random.default_rng(0)
    X = rng.random((9, 6))
    y = np.sin(3 * X[:, 0]) + X[:, 1] ** 2
    alone = GaussianProcess(seed=0, prior=None).fit(X, y).length_scales()
    moderate = GaussianProcess(seed=0).fit(X, y).length_scales()
    assert alone[2:].max() > 50
    assert moderate.max() < 5 and set(np.argsort(moderate)[:2]) == {0, 1}


def test_an_unknown_prior_is_named():
    from tasks.surrogate import HyperPrior

    with pytest.raises(ValueError, match="unknown prior 'flat'"):
        HyperPrior(3, "flat")
