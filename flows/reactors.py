"""What a campaign needs of a reactor, and nothing more: one protocol for a rig on this machine
(`LocalReactor`) and a reactor on another machine reached through its deployment
(`flows.remote.DeploymentReactor`).

A reactor conducts an experiment and returns its recorded row, or raises an error whose kind
(`hardware.errors.failure_kind`) tells the campaign what to do: a refused condition is recorded
and the campaign goes on; a lab that is not ready spends no budget; an instrument fault or a
crash takes that reactor out of service. `make_safe` puts it in its safe state, `release` lets
go of what the campaign held of it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from flows.experiment import Steps, conduct_experiment
from hardware.platform import PlatformConfig
from hardware.rig import Rig


@runtime_checkable
class Reactor(Protocol):
    name: str
    platform: PlatformConfig

    def conduct(self, *, condition: dict[str, float], campaign: str, experiment_id: str, data_root: str | None,
                seed: int | None, log: logging.Logger | logging.LoggerAdapter) -> dict:
        """Run one experiment and return its recorded row (its failures raise, see the module)."""

    def make_safe(self) -> list[str]:
        """Put the reactor in its safe state; returns what was done."""

    def release(self) -> None:
        """Let go of the reactor at the end of the campaign."""

    def now(self) -> float:
        """The reactor's platform clock, in seconds (for records written on its behalf)."""


@dataclass
class LocalReactor:
    """A rig wired to this machine, driven by this process (its lock is taken by the caller)."""

    rig: Rig
    steps: Steps

    @property
    def name(self) -> str:
        return self.rig.name

    @property
    def platform(self) -> PlatformConfig:
        return self.rig.platform

    def conduct(self, *, condition, campaign, experiment_id, data_root, seed, log) -> dict:
        # "hold": the flows stay on for the next experiment, which starts from a steady reactor
        return conduct_experiment(self.rig, condition=condition, campaign=campaign, experiment_id=experiment_id,
                                  finish="hold", data_root=data_root, seed=seed, steps=self.steps, log=log)

    def make_safe(self) -> list[str]:
        return self.rig.safe_state()

    def release(self) -> None:
        """Nothing to let go: the caller holds the rig's lock and closes it."""

    def now(self) -> float:
        return self.rig.clock.now()


def as_reactor(item: Rig | Reactor, steps: Steps) -> Reactor:
    """A rig as a `LocalReactor`; a reactor as it is."""
    return LocalReactor(item, steps) if isinstance(item, Rig) else item
