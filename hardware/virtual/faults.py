"""Fault switches of the virtual lab, seeded so a failing run fails the same way every time.

Faults come from the platform config (`[virtual.faults]`) or are switched on at run time
(`lab.faults.plan.timeouts_next = 2`). Transient faults hit single commands as a wire would: a
lost command (timeout) is not executed; a garbled reply comes from an instrument that did what it
was told but whose answer is unreadable. The others change the physics (a stalled pump stops, a
clog stops the pumps that push into it, an empty syringe runs dry, a spectrometer disconnects, a
heater overshoots). Two process faults change the product itself, for statistical process
control: a slow loss of PL efficiency and a step in a stock's concentration; both act on the
droplets formed after their start time.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hardware.errors import GarbledReply, InstrumentTimeout


class FaultPlan(BaseModel):
    """Which faults are on. Everything is off by default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    timeout_probability: float = Field(default=0.0, ge=0, le=1, description="per command")
    garbled_probability: float = Field(default=0.0, ge=0, le=1, description="per command")
    timeouts_next: int = Field(default=0, ge=0, description="the next N commands time out")
    garbled_next: int = Field(default=0, ge=0, description="the next N commands are done but answered with noise")
    stall_pump: str | None = None
    stall_at_s: float | None = Field(default=None, ge=0)
    clog_at_s: float | None = Field(
        default=None, ge=0, description="the line is blocked from this platform time until set back to None")
    empty_pump: str | None = Field(
        default=None, description="the pump whose syringe was loaded short (cleared when it is refilled)")
    empty_fill_ul: float | None = Field(
        default=None, ge=0, description="liquid really in this syringe, while the pump believes it is full")
    disconnect_spectrometer: Literal["pl", "abs"] | None = None
    disconnect_after_reads: int | None = Field(default=None, ge=0)
    heater_overshoot: bool = False
    """An under-damped controller: ~16 % overshoot of each set-point step."""
    light_leak_at_s: float | None = Field(
        default=None, ge=0, description="from this platform time, room light floods the PL cell (saturates it)")
    # --- process faults (product changes, for SPC); times are droplet formation times ---
    plqy_drift_per_hour: float = Field(
        default=0.0, ge=0, lt=1, description="relative loss of PL efficiency per hour (ligand degradation)")
    plqy_drift_from_s: float | None = Field(default=None, ge=0, description="the PL efficiency drift starts here")
    stock_step_species: list[str] = Field(
        default_factory=list, description="species whose stock concentration steps (e.g. ['Cu', 'I']: a new CuI bottle)")
    stock_step_change: float = Field(default=0.0, gt=-1, le=1, description="relative step, e.g. -0.08")
    stock_step_at_s: float | None = Field(default=None, ge=0, description="the step happens here")


class FaultInjector:
    """Draws the transient faults from a seeded generator; holds the plan for the others."""

    def __init__(self, plan: FaultPlan, seed: int):
        self.plan = plan
        self._rng = np.random.default_rng([seed, 7919])
        self._local = threading.local()
        self.reads: dict[str, int] = {}

    @contextmanager
    def command(self, instrument: str) -> Iterator[None]:
        """Wrap one command to `instrument`: `with lab.faults.command(name): <do it>`.

        A lost command raises InstrumentTimeout before the body runs (nothing was done). A garbled
        reply raises GarbledReply after the body ran (the command took effect; only the answer is
        lost). Calls made inside the body draw no second fault. An error of the body itself wins.
        """
        if self._depth() > 0:
            yield
            return
        garbled = self._draw(instrument)
        with self.fault_free():
            yield
        if garbled:
            raise GarbledReply(instrument, "reply b'\\x8f?r\\xfe' does not parse (injected fault)")

    @contextmanager
    def fault_free(self) -> Iterator[None]:
        """Calls inside draw no transient fault (in this thread): an emulator that drew the fault
        of a whole wire command itself, or a plain wire such as a relay contact switching a lamp."""
        self._local.depth = self._depth() + 1
        try:
            yield
        finally:
            self._local.depth -= 1

    def _depth(self) -> int:
        return getattr(self._local, "depth", 0)

    def _draw(self, instrument: str) -> bool:
        """Raise InstrumentTimeout for a lost command; True when the reply will be garbled."""
        plan = self.plan
        if plan.timeouts_next > 0:
            plan.timeouts_next -= 1
            raise InstrumentTimeout(instrument, "no reply within 1.0 s (injected fault)")
        if plan.timeout_probability and self._rng.random() < plan.timeout_probability:
            raise InstrumentTimeout(instrument, "no reply within 1.0 s (injected fault)")
        if plan.garbled_next > 0:
            plan.garbled_next -= 1
            return True
        return bool(plan.garbled_probability and self._rng.random() < plan.garbled_probability)

    def light_leak(self, role: str, now: float) -> bool:
        """True when room light leaks into the PL cell."""
        at = self.plan.light_leak_at_s
        return role == "pl" and at is not None and now >= at

    def count_read(self, role: str) -> bool:
        """Count a spectrometer read; True when this spectrometer should now be gone."""
        self.reads[role] = self.reads.get(role, 0) + 1
        plan = self.plan
        return (
            plan.disconnect_spectrometer == role
            and plan.disconnect_after_reads is not None
            and self.reads[role] > plan.disconnect_after_reads
        )

    # --- process faults -----------------------------------------------------------------
    def stock_factor(self, species: str, formed_s: np.ndarray) -> np.ndarray | float:
        """Multiplier of a species' concentration in droplets formed at `formed_s` (1 when off)."""
        plan = self.plan
        if plan.stock_step_at_s is None or species not in plan.stock_step_species:
            return 1.0
        return np.where(np.asarray(formed_s) >= plan.stock_step_at_s, 1.0 + plan.stock_step_change, 1.0)

    def plqy_factor(self, formed_s: np.ndarray) -> np.ndarray | float:
        """Multiplier of the PL efficiency of droplets formed at `formed_s` (1 when off)."""
        plan = self.plan
        if plan.plqy_drift_from_s is None or plan.plqy_drift_per_hour == 0:
            return 1.0
        hours = np.maximum(np.asarray(formed_s) - plan.plqy_drift_from_s, 0.0) / 3600.0
        return np.clip(1.0 - plan.plqy_drift_per_hour * hours, 0.0, 1.0)

    def apply_plqy_drift(self, outcome, formed_s: np.ndarray):
        """The optical outcome with every emission band scaled by `plqy_factor` (unchanged when off)."""
        factor = self.plqy_factor(formed_s)
        if np.isscalar(factor) and factor == 1.0:
            return outcome
        emission = [replace(band, height=np.asarray(band.height) * factor) for band in outcome.emission]
        return replace(outcome, emission=emission)
