"""The reactor's slot on a real Prefect server (SQLite, loopback): its lease survives a restart of
the server, and a lease the server no longer knows stops the run that thought it held it."""

from __future__ import annotations

import contextvars
import os
import threading
import time
import uuid

import pytest
from prefect_lab import free_port, local
from prefect_template import seed_home

from flows import lease

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A Prefect server of this module's own, with the limit `reactor-x` (1 slot)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    from flows.reactor import ensure_reactor_limit

    home, port = seed_home(tmp_path_factory.mktemp("lease") / "prefect"), free_port()
    api = f"http://127.0.0.1:{port}/api"
    settings = dict(home=home, host="127.0.0.1", port=port)
    local.start_server(**settings)
    try:
        with temporary_settings({PREFECT_API_URL: api, PREFECT_HOME: home}):
            ensure_reactor_limit("x")
            yield settings
    finally:
        local.stop(home, grace_s=10)


def active_slots() -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name("reactor-x").active_slots


def test_a_lease_outlives_a_server_restart_and_a_second_run_waits(server, monkeypatch):
    monkeypatch.setattr(lease, "RENEW_EVERY_S", 2.0)
    monkeypatch.setattr(lease, "RETRY_S", 0.5)
    lost = threading.Event()
    lease_id = lease.take_slot("reactor-x")
    with lease.LeaseKeeper(lease_id, "reactor x", on_lost=lost.set) as keeper:
        assert active_slots() == 1
        pid = local.running("server", server["home"])
        local._end([pid], groups={pid}, grace_s=20)  # the server goes away for several renewals
        time.sleep(6)
        local.start_server(**server)
        time.sleep(3 * lease.RENEW_EVERY_S)
        assert not lost.is_set() and not keeper.lost
        assert active_slots() == 1  # still ours: a second run must wait
        second: dict = {}
        waiting = threading.Thread(target=contextvars.copy_context().run, daemon=True,
                                   args=(lambda: second.setdefault("lease", lease.take_slot("reactor-x")),))
        waiting.start()
        waiting.join(3)
        assert waiting.is_alive()
    lease.release_slot(lease_id)
    waiting.join(30)
    assert "lease" in second and active_slots() == 1
    lease.release_slot(second["lease"])
    assert active_slots() == 0


def test_a_lease_the_server_does_not_know_stops_the_run(server, monkeypatch):
    monkeypatch.setattr(lease, "RENEW_EVERY_S", 0.5)
    lost = threading.Event()
    with lease.LeaseKeeper(uuid.uuid4(), "reactor x", on_lost=lost.set) as keeper:
        assert lost.wait(20)
    assert keeper.lost


def test_a_missing_limit_is_said_so(server):
    with pytest.raises(lease.LimitMissing):
        lease.take_slot(f"reactor-none-{os.getpid()}")
