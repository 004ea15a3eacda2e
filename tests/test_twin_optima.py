"""The twin optima shipped beside the platform files are still right for today's platforms and
chemistry (recompute them with `python -m tasks.twin` when a test here fails)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hardware.platform import load_platform, shipped_platforms
from tasks.twin import SHIPPED_OPTIMA, DigitalTwin, as_objective, cached_true_optimum, shipped_objectives

TWINS = [name for name in shipped_platforms() if load_platform(name).platform.kind != "real"]
SHIPPED = json.loads(SHIPPED_OPTIMA.read_text())
FIX = "the platform or its chemistry changed: run `python -m tasks.twin` and commit hardware/platforms/twin-optima.json"


@pytest.mark.parametrize("name", TWINS)
def test_every_shipped_twin_has_its_optima_for_todays_platform_file(name):
    platform = load_platform(name)
    assert name in SHIPPED, FIX
    assert SHIPPED[name]["sha256"] == platform.sha256, FIX
    assert set(SHIPPED[name]["objectives"]) == set(shipped_objectives(platform)), FIX


@pytest.mark.parametrize("name", TWINS)
def test_a_shipped_optimum_is_the_twins_value_there_and_beats_its_neighbours_and_random_conditions(name):
    platform = load_platform(name)
    twin = DigitalTwin(platform)
    low, high = np.array(twin._bounds).T
    rng = np.random.default_rng(11)
    for expression, shipped in SHIPPED[name]["objectives"].items():
        objective = as_objective(expression, platform)
        x = np.array([shipped["condition"][n] for n in platform.parameter_names])
        assert twin.objective(x, objective)[0] == pytest.approx(shipped["value"], rel=1e-6), FIX
        steps = np.diag(0.01 * (high - low))  # one percent of each range, both ways
        neighbours = np.clip(np.vstack([x + steps, x - steps]), low, high)
        assert twin.objective(neighbours, objective).max() <= shipped["value"] * (1 + 1e-3), FIX
        random = low + rng.random((400, low.size)) * (high - low)
        assert twin.objective(random, objective).max() <= shipped["value"], FIX


def test_campaign_reports_use_the_shipped_optimum_and_bound_the_search_elsewhere(tmp_path, caplog):
    import logging

    platform = load_platform()
    shipped = cached_true_optimum(platform, "PL_I", tmp_path)
    assert shipped.exhaustive and shipped.value == SHIPPED[platform.platform.name]["objectives"]["PL_I"]["value"]
    assert not (tmp_path / "twin").exists()  # nothing searched, nothing cached
    copy = tmp_path / "rig-a.toml"  # the same twin under another name, paced as a rig: the shipped optimum
    copy.write_text(f'[platform]\nname = "rig-a"\nbase = "{platform.source}"\n\n[virtual]\npace = 120.0\n')
    assert cached_true_optimum(load_platform(copy), "PL_I", tmp_path) == shipped
    assert not (tmp_path / "twin").exists()
    edited = tmp_path / "edited.toml"  # a user's own platform: same chemistry, noisier process
    edited.write_text(f'[platform]\nname = "edited"\nbase = "{platform.source}"\n\n[virtual]\nprocess_noise = 0.02\n')
    with caplog.at_level(logging.INFO, logger="tasks.twin"):
        estimate = cached_true_optimum(load_platform(edited), "PL_I", tmp_path)
    assert not estimate.exhaustive and 0.9 * shipped.value < estimate.value <= 1.001 * shipped.value
    assert "bounded search" in caplog.text and "generation 40 of at most 40" in caplog.text
    again = cached_true_optimum(load_platform(edited), "PL_I", tmp_path)  # cached under the data root now
    assert again.value == estimate.value and not again.exhaustive
