"""The dynamic residence-time study: steady state must come out of the transport model by ~1.2 tau."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flows.characterize import residence_time_study
from tasks.transients import settling_time, tanks_response


def test_settling_time_of_a_known_step_with_noise():
    """A tanks-in-series step with 1 % noise: the fit finds when it is within 1 % of the end."""
    rng = np.random.default_rng(0)
    tau, delay, tanks = 40.0, 38.0, 300.0
    t = np.arange(0.0, 120.0, 1.0)
    clean = tanks_response(t, 0.0, 100.0, delay, tanks)
    noisy = clean * (1 + 0.01 * rng.standard_normal(t.size))
    result = settling_time(t, noisy, 0.0, tau, "PL_I")
    truth = t[np.argmax(clean >= 99.0)]
    assert result.resolved and abs(result.settle_s - truth) < 2.0
    assert result.settle_tau == pytest.approx(result.settle_s / tau)


def test_a_step_smaller_than_the_noise_settles_at_once_and_says_so():
    rng = np.random.default_rng(1)
    t = np.arange(0.0, 150.0, 1.0)
    values = 100.0 + 0.3 * (t > 50) + rng.standard_normal(t.size)
    result = settling_time(t, values, 0.0, 50.0, "Abs_300", y_before=100.0)
    assert result.settle_s == 0.0 and not result.resolved


@pytest.mark.usefixtures("prefect_harness")
def test_every_reaction_time_is_steady_by_1_25_tau_from_solvent(data_root):
    """The shortest and the longest reaction time of the space (25 and 42 s; every other one lies
    between them), each from a cell full of solvent: a full transition each time."""
    result = residence_time_study(reaction_times_s=[25.0, 42.0], start_from="solvent",
                                  data_root=str(data_root), seed=41)
    steps = pd.DataFrame(result["steps"])
    assert list(steps["reaction_time_s"].round()) == [25, 42]
    assert (steps["resolved_features"] == 3).all()
    # Not instantaneous (the liquid has to travel) and no later than 1.25 tau.
    assert steps["settle_tau"].between(0.9, 1.25).all(), steps
    folder = data_root.resolve() / "studies" / "residence-time" / result["study_id"]
    assert {p.name for p in folder.iterdir()} == {"series.parquet", "settling.parquet", "transients.png"}
    series = pd.read_parquet(folder / "series.parquet")
    assert {"t_pl_s", "t_abs_s", "Abs_300", "PL_I", "PL_A", "step"} <= set(series.columns)


@pytest.mark.usefixtures("prefect_harness")
def test_direct_steps_as_in_the_paper_are_steady_by_1_25_tau(data_root):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    result = residence_time_study(data_root=str(data_root), seed=42)
    steps = pd.DataFrame(result["steps"])
    assert (steps["settle_tau"] <= 1.25).all(), steps
    assert steps.loc[0, "settle_tau"] > 0.9  # the first step starts from solvent
    assert result["max_settle_tau"] == pytest.approx(steps["settle_tau"].max())
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[
                "residence-time-settling", "residence-time-features", "residence-time-plot"])))}
    assert keys == {"residence-time-settling", "residence-time-features", "residence-time-plot"}


@pytest.mark.usefixtures("prefect_harness")
def test_bad_study_parameters_are_refused(data_root):
    with pytest.raises(ValueError, match="follow_tau"):
        residence_time_study(follow_tau=1.0, data_root=str(data_root))
    with pytest.raises(ValueError, match="interval_s"):
        residence_time_study(interval_s=0, data_root=str(data_root))
