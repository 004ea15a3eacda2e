"""The demo: the residence-time study, then a few experiments from a Latin-hypercube design,
all on the virtual lab (what `make demo` runs)."""

from __future__ import annotations

from typing import Any

import numpy as np
from prefect import flow
from scipy.stats import qmc

from flows.characterize import residence_time_study
from flows.experiment import run_experiment
from hardware.platform import DEFAULT_PLATFORM, PlatformConfig, load_platform


def latin_hypercube(platform: PlatformConfig, n: int, seed: int) -> list[dict[str, float]]:
    """`n` conditions spread over the parameter space (scipy's LatinHypercube)."""
    lows = np.array([p.low for p in platform.parameters])
    highs = np.array([p.high for p in platform.parameters])
    unit = qmc.LatinHypercube(d=len(lows), seed=seed).random(n)
    points = qmc.scale(unit, lows, highs)
    return [{p.name: float(v) for p, v in zip(platform.parameters, row)} for row in points]


@flow(name="demo")
def demo(platform: str = DEFAULT_PLATFORM, experiments: int = 4, campaign: str = "demo",
         data_root: str | None = None, seed: int | None = None) -> dict[str, Any]:
    config = load_platform(platform)
    study = residence_time_study(platform=platform, data_root=data_root, seed=seed)
    rows = []
    for i, condition in enumerate(latin_hypercube(config, experiments, seed=seed or 0)):
        rows.append(run_experiment(condition=condition, platform=platform, campaign=campaign,
                                   finish="hold" if i < experiments - 1 else "stop",
                                   data_root=data_root, seed=seed))
    return {"study": study, "experiments": rows}
