"""Shared fixtures. Prefect runs for real: one test harness (own SQLite API) per session."""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# One BLAS/OpenMP thread in every test process and in every process the tests start: `make test`
# runs three test processes on two cores, where a second thread only spin-waits for a core
# (measured on seven numeric modules: 26 % less CPU and 26 % less wall time with one thread).
# Set before numpy loads. The product's own limits are tested with the limit raised
# (test_proposal.py's one-thread test).
for _threads in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_threads, "1")

import pytest  # noqa: E402

from hardware import rig as rig_module  # noqa: E402
from hardware.platform import load_platform  # noqa: E402


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """A real Prefect API for the whole session (started once: ~15 s on a quiet machine), no flow heartbeats."""
    from prefect.settings import (
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_LOCAL_STORAGE_PATH,
        temporary_settings,
    )
    from prefect.testing import utilities
    from prefect_template import seeded_folder

    storage = tmp_path_factory.mktemp("prefect-results")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(utilities, "mkdtemp", seeded_folder)  # its database starts migrated
        with utilities.prefect_test_harness(server_startup_timeout=300):  # a loaded 2-core machine can take minutes
            with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None, PREFECT_LOCAL_STORAGE_PATH: storage}):
                yield


@pytest.fixture(scope="session")
def postgres():
    """A throw-away PostgreSQL cluster for the session (deployments/postgres.py: Debian's server
    programs, a temporary folder, a free loopback port), with databases `prefect` and `optuna`.
    Skipped, saying why, where PostgreSQL is not installed (`make test` installs it as root)."""
    import importlib.util
    import sys
    import tempfile
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("sdfl_postgres", Path(REPO_DIR) / "deployments" / "postgres.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    try:
        module.bindir()
    except module.PostgresMissing as exc:
        pytest.skip(str(exc))
    folder = Path(tempfile.mkdtemp(prefix="sdfl-postgres-"))  # not under pytest's private folder:
    folder.chmod(0o755)  # run as root, the cluster belongs to the system user postgres
    cluster = module.create(folder / "cluster")
    try:
        yield cluster
    finally:
        cluster.stop("immediate")
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def private_reactor_locks(tmp_path_factory):
    """Reactor locks of this test session only, never the machine-wide ones of a user's runs
    (subprocesses and workers inherit the setting)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SDFL_LOCK_DIR", str(tmp_path_factory.mktemp("reactor-locks")))
        yield


@pytest.fixture(autouse=True)
def fresh_rigs():
    """Every test starts with no open rig (virtual rigs are per process and keep state)."""
    rig_module._RIGS.clear()
    yield
    rig_module._RIGS.clear()


UI_LAB_MODULES = ("tests/test_deployments.py", "tests/test_ui_browser.py")
"""The modules with tests on the shared Prefect server (`ui_lab`)."""


def _on_ui_lab(item) -> bool:
    return "ui_lab" in getattr(item, "fixturenames", ())


@pytest.hookimpl(trylast=True)  # after pytest's own grouping by fixture
def pytest_collection_modifyitems(config, items):
    """In one process the tests on the shared Prefect server run last, so its server and workers,
    which poll all the time, are up only while they run. In `make test`'s several processes they
    start first: the longest unit of work then runs beside all the others."""
    strays = sorted({item.nodeid.split("::")[0] for item in items if _on_ui_lab(item)} - set(UI_LAB_MODULES))
    if strays:
        raise pytest.UsageError(f"tests on the shared Prefect server in {strays}: add the module to UI_LAB_MODULES")
    in_several = hasattr(config, "workerinput")
    items.sort(key=lambda item: _on_ui_lab(item) != in_several)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` for `make test`: each module runs whole in one process (its module fixtures
    are set up once), and the modules on the shared Prefect server form one unit, so one process
    starts that server."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ModulesAndSharedServer(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "ui_lab" if module in UI_LAB_MODULES else module

    return ModulesAndSharedServer(config, log)


_ui_labs: list = []
"""The running shared lab (its generator), stopped after the last test on it."""


@pytest.fixture(scope="session")
def ui_lab(tmp_path_factory):
    """A Prefect server, the deployments and a worker, as `make server deploy worker` makes them
    (tests/prefect_lab.py): started on first use and shared; stopped after the last test on it
    (`pytest_runtest_teardown`), as its server and worker poll all the time, or at the session's end."""
    from prefect_lab import running_lab

    lab = running_lab(tmp_path_factory)
    _ui_labs.append(lab)
    try:
        yield next(lab)
    finally:
        lab.close()  # stops it, unless that was done already


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """The tests on the shared lab run one after the other (`pytest_collection_modifyitems`): after
    the last of them, stop it, so it does not take CPU from the tests that run after it."""
    if _ui_labs and _on_ui_lab(item) and (nextitem is None or not _on_ui_lab(nextitem)):
        _ui_labs.pop().close()


@pytest.fixture(scope="session")
def platform():
    return load_platform()


@pytest.fixture
def schema(platform):
    """The experiments table's schema of the default platform."""
    from tasks.features import FeatureSettings, feature_columns
    from tasks.storage import experiment_schema

    return experiment_schema(platform, feature_columns(FeatureSettings.from_config(platform.features)))


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


REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def sdfl(prefect_harness, tmp_path):
    """Run the real `sdfl` command in a subprocess, as a user types it; returns the finished process.

    It reports to this session's Prefect test server (no temporary server to start per call) and
    has a PREFECT_HOME of its own. `sdfl("data", "--campaign", "c", env={...}, timeout=...)`.
    """
    import subprocess
    import sys

    from prefect.settings import get_current_settings
    from prefect_template import seed_home

    api = get_current_settings().api.url

    def run(*args: str, env: dict | None = None, timeout: float = 300, server: bool = True
            ) -> subprocess.CompletedProcess:
        """`server=False`: no Prefect server, as a user without one (Prefect starts its temporary API)."""
        environment = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"),
                       "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONPATH": os.path.join(REPO_DIR, "tests"),
                       **(env or {})}
        environment.pop("PREFECT_API_URL", None)
        if server:
            environment["PREFECT_API_URL"] = api
        else:
            seed_home(environment["PREFECT_HOME"])  # the temporary server's database starts migrated
        return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO_DIR, env=environment,
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    return run


def no_traceback(process) -> str:
    """The process's combined output, after checking that it shows no Python traceback."""
    out = process.stdout + process.stderr
    assert "Traceback (most recent call last)" not in out, out[-4000:]
    return out


def paused_run_id(timeout_s: float = 120.0):
    """The id of the flow run that pauses for an operator's form (waits for it to pause)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(flow_run_filter=paused)
            if runs:
                return runs[0].id
            time.sleep(0.5)
    raise AssertionError("the flow run never paused")


def sdfl_environment(home, server: bool = True, **extra: str) -> dict[str, str]:
    """The environment the `sdfl` fixture gives its process, for a test that starts `sdfl` itself
    (to kill it, or once for a whole module): PREFECT_HOME `home`; with `server`, this session's
    Prefect test server (call it where `prefect_harness` is up), else none (Prefect starts its
    temporary API). `extra`: more variables."""
    from prefect.settings import get_current_settings

    environment = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                   "PYTHONPATH": os.path.join(REPO_DIR, "tests"), **extra}
    environment.pop("PREFECT_API_URL", None)
    if server:
        environment["PREFECT_API_URL"] = get_current_settings().api.url
    return environment
