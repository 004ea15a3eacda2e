"""A reactor on another machine, as a campaign sees it: each experiment is a run of that
reactor's `run-experiment` deployment, and its row is read back from the shared dataset.

The campaign process keeps the Optuna study and the proposals; the reactor's worker drives its
rig (and takes that reactor's lock). Both must see the same data root (a shared filesystem or
the same machine), which is where the worker writes the experiment.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from flows.experiment import FAILURE_KIND_LABEL
from hardware.clock import WallClock
from hardware.errors import FailureKind, FatalInstrumentError, LabNotReady, SdflInputError
from hardware.platform import PlatformConfig
from tasks import storage


class RemoteExperimentFailed(FatalInstrumentError):
    """The reactor's flow run did not complete: its worker made the rig safe; look at its log.

    `kind` is what ended it (`hardware.errors.FailureKind`: instrument, fatal, crashed, error).
    """

    def __init__(self, instrument: str, message: str, kind: str = FailureKind.ERROR):
        super().__init__(instrument, message)
        self.kind = kind
        self._parts = (instrument, message, kind)


POLL_S = 1.0
"""How often the campaign asks the server whether the reactor's flow run has finished."""


@dataclass
class DeploymentReactor:
    """A reactor reached through its deployment, e.g. `run-experiment/reactor-2` (a `Reactor`)."""

    deployment: str
    platform: PlatformConfig
    """The campaign's platform: the reactor's own (the deployment's `platform` parameter) must
    have the same parameter space."""
    timeout_s: float | None = None
    clock: WallClock = field(default_factory=WallClock)
    lock: threading.RLock = field(default_factory=threading.RLock)
    """What the campaign flow holds while it runs (nothing to wait for: the reactor's own flow
    runs take its lock on its machine)."""

    @property
    def name(self) -> str:
        return self.deployment

    def checked(self) -> DeploymentReactor:
        """This reactor, once its deployment is known to the Prefect server; else SdflInputError."""
        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound

        if self.deployment.count("/") != 1:
            raise SdflInputError(f"remote reactor {self.deployment!r}: give a deployment as "
                                 "'<flow name>/<deployment name>', e.g. 'run-experiment/reactor-2'")
        with get_client(sync_client=True) as client:
            try:
                found = client.read_deployment_by_name(self.deployment)
            except ObjectNotFound:
                raise SdflInputError(f"remote reactor {self.deployment!r}: no such deployment on the Prefect "
                                     "server; deploy it on the reactor's machine (make deploy) or fix the name") from None
            flow = client.read_flow(found.flow_id).name
        if flow != "run-experiment":
            raise SdflInputError(f"remote reactor {self.deployment!r} is a deployment of {flow!r}; a reactor "
                                 "takes experiments through a run-experiment deployment")
        return self

    def make_safe(self) -> list[str]:
        """Nothing to do here: the reactor's worker and its flow hooks keep its rig safe."""
        return []

    def release(self) -> None:
        """Nothing held here: each experiment's flow run takes and frees the reactor on its machine."""

    def now(self) -> float:
        return self.clock.now()

    def conduct(self, *, condition: dict[str, float], campaign: str, experiment_id: str, data_root: str | None,
                seed: int | None, log=None) -> dict:
        """Run one experiment as a flow run of the deployment and return its recorded row.

        A failed run raises by the kind its flow run was labelled with: a refused condition as
        SdflInputError, a lab not ready as LabNotReady, anything else (and a run that died
        without a label: its worker was killed) as RemoteExperimentFailed.
        """
        from prefect.deployments import run_deployment

        root = storage.data_root(data_root).resolve()
        run = run_deployment(self.deployment, timeout=self.timeout_s, poll_interval=POLL_S, parameters={
            # the reactor's own platform is the deployment's default parameter
            "condition": condition, "campaign": campaign,
            "experiment_id": experiment_id, "data_root": str(root), "finish": "hold", "seed": seed,
        })
        mine = storage.read_experiment(root, campaign, experiment_id)  # opens this experiment's file only
        state = run.state
        if state is not None and state.is_completed() and mine is not None:
            return mine
        ended = state.type.value if state is not None else "without a state"
        kind = (run.labels or {}).get(FAILURE_KIND_LABEL) or (
            FailureKind.CRASHED if state is not None and (state.is_crashed() or state.is_cancelled())
            else FailureKind.ERROR)
        reason = _failure_reason(mine, run)
        if kind == FailureKind.REFUSED:
            raise SdflInputError(f"{self.deployment}: {reason}")
        if kind == FailureKind.NOT_READY:
            raise LabNotReady(f"{self.deployment}: {reason}")
        raise RemoteExperimentFailed(self.deployment, (
            f"flow run {run.id} ended {ended} ({kind}): {reason}. The worker has made its rig safe; see the "
            "run's log in the Prefect UI"), kind=kind)


def _failure_reason(row: dict | None, run) -> str:
    """Why the run failed: its experiment's recorded reason, when the row is this run's (a refused
    request may name an experiment another run recorded), else the run's final state message."""
    if row is not None and str(row.get("flow_run_id")) == str(run.id):
        reason = row.get("failure_reason")
        if isinstance(reason, str) and reason:
            return reason
    state = run.state
    return (state.message or state.type.value) if state is not None else "no state"
