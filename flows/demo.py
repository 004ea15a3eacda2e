"""The demo: the residence-time study, then a closed-loop optimization on the virtual lab
(what `make demo` runs)."""

from __future__ import annotations

from typing import Any

from flows.campaign import optimize
from flows.characterize import residence_time_study
from flows.settings import DemoSettings, settings_flow
from tasks.records import now_utc


@settings_flow(DemoSettings)
def demo(settings: DemoSettings) -> dict[str, Any]:
    """The residence-time study, then an optimization of PL_I (Latin-hypercube points, then
    expected improvement)."""
    s = settings
    study = residence_time_study(platform=s.platform, data_root=s.data_root, seed=s.seed)
    name = s.campaign or f"demo-{now_utc():%Y%m%d-%H%M%S}"
    summary = optimize(campaign=name, platform=s.platform, budget=s.budget, seed=s.seed or 0, data_root=s.data_root)
    return {"study": study, "campaign": summary}
