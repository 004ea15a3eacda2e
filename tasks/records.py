"""Records: the experiment row written to the dataset, and where sdfl came from (provenance)."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import secrets
import socket
import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from hardware.platform import PlatformConfig
from tasks.formulation import Formulation
from tasks.storage import SPREAD_FEATURES


@lru_cache(maxsize=1)
def provenance() -> dict:
    """sdfl version, git commit of the source tree (when it is a checkout) and host name."""
    try:
        version = importlib.metadata.version("sdfl")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"sdfl_version": version, "git_commit": commit, "host": socket.gethostname()}


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_experiment_id() -> str:
    """Sortable by creation time: exp-YYYYmmddTHHMMSSffffff-<random>."""
    return f"exp-{now_utc():%Y%m%dT%H%M%S%f}-{secrets.token_hex(3)}"


def summarize_features(features: pd.DataFrame) -> dict:
    """Replicates -> one row: the mean of each feature, the spread of the key ones, flags if any."""
    out: dict = {}
    for name in features.columns:
        column = features[name]
        if name.startswith("flag_"):
            out[name] = bool(column.any())
        else:
            values = column.to_numpy(dtype=float)
            out[name] = float(np.nanmean(values)) if np.isfinite(values).any() else None
            if name in SPREAD_FEATURES:
                out[f"{name}_sd"] = float(np.nanstd(values, ddof=1)) if np.isfinite(values).sum() > 1 else None
    return out


def experiment_row(
    *,
    experiment_id: str,
    status: str,
    platform: PlatformConfig,
    started_at: dt.datetime,
    t_platform_start_s: float,
    t_platform_end_s: float,
    condition: dict | None = None,
    formulation: Formulation | None = None,
    equilibration: dict | None = None,
    acquisition_info: dict | None = None,
    features: dict | None = None,
    failure_reason: str | None = None,
    flow_run_id: str | None = None,
    seed: int | None = None,
) -> dict:
    """Flatten everything about one experiment into one row of the experiments table."""
    row = {
        "experiment_id": experiment_id,
        "status": status,
        "failure_reason": failure_reason,
        "platform": platform.platform.name,
        "platform_sha256": platform.sha256,
        **provenance(),
        "flow_run_id": flow_run_id,
        "seed": seed,
        "started_at": started_at,
        "finished_at": now_utc(),
        "t_platform_start_s": t_platform_start_s,
        "t_platform_end_s": t_platform_end_s,
    }
    if formulation is not None:
        row.update(formulation.condition)
        row.update({f"q_{name}_ul_min": rate for name, rate in formulation.flows_ul_min.items()})
        row.update(
            precursor_flow_ul_min=formulation.precursor_flow_ul_min,
            carrier_flow_ul_min=formulation.carrier_flow_ul_min,
            t_R_s=formulation.reaction_time_s,
            tau_s=formulation.tau_s,
            t_E_s=formulation.t_E_s,
            rtd_tanks=formulation.rtd_tanks if np.isfinite(formulation.rtd_tanks) else None,
        )
        for zone, value in formulation.temperatures_c.items():
            row[f"zone_{zone}_temperature_c"] = value
        for zone, value in formulation.zone_times_s.items():
            row[f"zone_{zone}_time_s"] = value
        if formulation.regime:
            row.update({f"regime_{k}": v for k, v in formulation.regime["numbers"].items()})
            row["regime_warnings"] = "; ".join(formulation.regime["warnings"]) or None
    elif condition:
        known = set(platform.parameter_names)
        row.update({k: float(v) for k, v in condition.items() if k in known and _is_number(v)})
    if equilibration:
        row.update(
            t_pumps_on_s=equilibration["t_pumps_on_s"],
            temperature_measured_c=equilibration["temperature_c"],
            heater_wait_s=equilibration["heater_wait_s"],
            steady=equilibration["steady"],
            steady_extra_wait_s=equilibration["steady_extra_wait_s"],
        )
    if acquisition_info:
        row.update(acquisition_info)
    if features:
        row.update(features)
    return row


def _is_number(value) -> bool:
    try:
        return np.isfinite(float(value))
    except (TypeError, ValueError):
        return False
