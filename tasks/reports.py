"""Reports: plots saved under the data root, and Prefect artifacts (tables, markdown, images)."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd


def artifact_key(text: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")[:100]


def publish_table(key: str, frame: pd.DataFrame, description: str) -> None:
    from prefect.artifacts import create_table_artifact

    records = frame.round(4).astype(object).where(frame.notna(), None).to_dict(orient="records")
    create_table_artifact(key=artifact_key(key), table=records, description=description)


def publish_markdown(key: str, markdown: str, description: str) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(key=artifact_key(key), markdown=markdown, description=description)


def publish_image(key: str, path: Path, description: str) -> None:
    from prefect.artifacts import create_image_artifact

    create_image_artifact(image_url=path.resolve().as_uri(), key=artifact_key(key), description=description)


def plot_transients(series: pd.DataFrame, switches: list[dict], features: list[str], path: Path) -> Path:
    """Each feature against time in units of the current tau, one panel per feature.

    `switches` holds {t_s, tau_s, label, settle_s} per step; a dashed line marks 1.2 tau after
    each switch and a dotted one the measured settling time.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(features), 1, figsize=(8, 2.4 * len(features)), sharex=True)
    axes = [axes] if len(features) == 1 else axes
    for ax, feature in zip(axes, features):
        time_column = "t_abs_s" if feature.startswith("Abs") else "t_pl_s"
        ax.plot(series[time_column], series[feature], ".", ms=2, color="tab:blue")
        for step in switches:
            ax.axvline(step["t_s"], color="0.5", lw=0.8)
            ax.axvline(step["t_s"] + 1.2 * step["tau_s"], color="tab:red", ls="--", lw=0.8)
            settle = step.get("settle", {}).get(feature)
            if settle is not None:
                ax.axvline(step["t_s"] + settle, color="tab:green", ls=":", lw=1.0)
        ax.set_ylabel(feature)
    for step in switches:
        axes[0].annotate(step["label"], (step["t_s"], 1.0), xycoords=("data", "axes fraction"),
                         fontsize=8, va="bottom")
    axes[-1].set_xlabel("platform time (s); grey: switch, red dashed: 1.2 tau, green dotted: within 1 %")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
