"""Shared fixtures. Prefect runs for real: one test harness (own SQLite API) per session."""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import pytest  # noqa: E402

from hardware import rig as rig_module  # noqa: E402
from hardware.platform import load_platform  # noqa: E402


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """A real Prefect API for the whole session (started once: ~15 s), no flow heartbeats."""
    from prefect.settings import (
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_LOCAL_STORAGE_PATH,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    storage = tmp_path_factory.mktemp("prefect-results")
    with prefect_test_harness(server_startup_timeout=120):
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None, PREFECT_LOCAL_STORAGE_PATH: storage}):
            yield


@pytest.fixture(autouse=True)
def fresh_rigs():
    """Every test starts with no open rig (virtual rigs are per process and keep state)."""
    rig_module._RIGS.clear()
    yield
    rig_module._RIGS.clear()


@pytest.fixture(scope="session")
def platform():
    return load_platform()


@pytest.fixture
def data_root(tmp_path):
    return tmp_path / "data"


CENTRE = {
    "temperature_c": 140.0, "reaction_time_s": 30.0, "cui_fraction": 0.45, "oa_cu_fraction": 0.08,
    "oam_fraction": 0.04, "cs_fraction": 0.35, "oa_cs_fraction": 0.12,
}


@pytest.fixture
def condition():
    """A good condition inside the default space."""
    return dict(CENTRE)


def assert_rig_safe(rig):
    """Every instrument as the virtual lab behind the rig sees it: pumps still, heater in standby,
    lights off. (On an emulated rig the drivers' view is checked against the physics.)"""
    lab = rig.lab
    lab.sync()
    assert all(not p.status().running for p in lab.pumps.values()), "a pump is still running"
    assert lab.heater.setpoint() is None, "the heater is not in standby"
    assert not any(s.is_on() for s in lab.light_sources.values()), "a light source is on"

