"""Where a person must act: forms in the Prefect UI that pause a run (a refill, an alarm), and
the refill itself as the rig sees it.

A form needs a Prefect server someone can open (PREFECT_API_URL set); with Prefect's temporary
local API nobody could answer, so callers stop cleanly instead of pausing.
"""

from __future__ import annotations

from prefect.input import RunInput
from pydantic import Field

DECISION_POLL_S = 2
"""How often a paused run checks whether its form was answered (seconds)."""


class RefillConfirmation(RunInput):
    """The operator's form when syringes need refilling (the pumps are stopped)."""

    refilled: bool = Field(description="true: the listed syringes are full again; false: stop")
    note: str = ""


def someone_can_answer() -> bool:
    """True when runs report to a Prefect server whose UI a person can open."""
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)


def pause_for(model: type[RunInput], description: str, timeout_min: float, key: str, **initial):
    """Pause the flow run until the form is submitted; None when nobody answers in time."""
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    try:
        return pause_flow_run(wait_for_input=model.with_initial_data(description=description, **initial),
                              timeout=int(timeout_min * 60), poll_interval=DECISION_POLL_S, key=key)
    except FlowPauseTimeout:
        return None


def perform_refill(rig, pumps: tuple[str, ...] | list[str]) -> dict[str, float]:
    """Refill syringes (pumps stopped). Virtual and emulated rigs refill the simulated syringe, as
    the operator would; a driver is told its syringe is full again. Returns uL added per pump."""
    before = rig.remaining_ul()
    for name in pumps:
        if rig.lab is not None:
            rig.lab.pumps[name].refill()
        driver = rig.pumps[name]
        if hasattr(driver, "set_fill"):
            driver.set_fill()
    after = rig.remaining_ul()
    return {name: after[name] - before[name] for name in pumps}
