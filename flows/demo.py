"""The demo: the residence-time study, then a closed-loop optimization on the virtual lab
(what `make demo` runs)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.campaign import optimize
from flows.characterize import residence_time_study
from hardware.platform import DEFAULT_PLATFORM
from tasks.records import now_utc


@flow(name="demo")
def demo(platform: str = DEFAULT_PLATFORM, budget: int = 30, campaign: str | None = None,
         data_root: str | None = None, seed: int | None = None) -> dict[str, Any]:
    """The residence-time study, then an EI optimization of PL_I (9 LHS points + EI)."""
    study = residence_time_study(platform=platform, data_root=data_root, seed=seed)
    name = campaign or f"demo-{now_utc():%Y%m%d-%H%M%S}"
    summary = optimize(campaign=name, platform=platform, budget=budget, seed=seed or 0, data_root=data_root)
    return {"study": study, "campaign": summary}
