"""Reports: plots saved under the data root, and Prefect artifacts (tables and markdown).

A plot reaches the Prefect UI embedded in a markdown artifact as a PNG data URI. The artifact
then lives in the Prefect database with the rest of the run, so any browser that opens the UI
sees it, whichever machine ran the flow; a `file://` link (an image artifact pointing at the
data root) shows only a broken image in an http page. The PNG stays on disk beside the data.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def artifact_key(text: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")[:100]


def cell_text(value):
    """A table cell as the UI shows it: the UI renders text cells as markdown, where a leading
    '+', '-', '*', '#' or '>' would become a bullet or a heading, so it is escaped."""
    if isinstance(value, str) and value[:1] in "+-*#>":
        return "\\" + value
    return value


def publish_table(key: str, frame: pd.DataFrame, description: str) -> None:
    from prefect.artifacts import create_table_artifact

    records = frame.round(4).astype(object).where(frame.notna(), None).map(cell_text).to_dict(orient="records")
    create_table_artifact(key=artifact_key(key), table=records, description=description)


def publish_markdown(key: str, markdown: str, description: str) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(key=artifact_key(key), markdown=markdown, description=description)


def png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def embedded(path: Path, title: str) -> str:
    """Markdown that shows the PNG at `path` in any browser (the image travels inside the text)."""
    return f"![{title}]({png_data_uri(path)})"


def plot_markdown(path: Path, title: str, caption: str = "") -> str:
    """A plot as a markdown section: title, what to read in it, the image, and its file."""
    lines = [f"## {title}", ""]
    if caption:
        lines += [caption, ""]
    return "\n".join(lines + [embedded(path, title), "", f"file: `{Path(path).resolve()}`"])


def publish_plot(key: str, path: Path, title: str, caption: str = "") -> None:
    """One plot as its own artifact (its key keeps the history of the plot across runs)."""
    publish_markdown(key, plot_markdown(path, title, caption), title)


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Lay out, write and close a figure; its folder is made if missing."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_transients(series: pd.DataFrame, switches: list[dict], features: list[str], path: Path) -> Path:
    """Each feature against time in units of the current tau, one panel per feature.

    `switches` holds {t_s, tau_s, label, settle_s} per step; a dashed line marks 1.2 tau after
    each switch and a dotted one the measured settling time.
    """
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
    return save_figure(fig, path)


def plot_spectra(spectra: pd.DataFrame, row: dict, path: Path, title: str) -> Path:
    """The PL (counts per second) and absorbance spectra of one experiment, every replicate, with
    the features read from them marked: PL peak and FWHM, and Abs_300."""
    fig, (pl, ab) = plt.subplots(1, 2, figsize=(10, 3.6))
    for kind, ax in (("pl_cps", pl), ("absorbance", ab)):
        for spectrum in spectra[spectra["kind"] == kind].itertuples():
            ax.plot(spectrum.wavelength_nm, spectrum.value, lw=0.9, alpha=0.8,
                    label=f"replicate {spectrum.replicate + 1}")
    peak, fwhm = row.get("PL_peak_nm"), row.get("FWHM_nm")
    grid = np.asarray(spectra["wavelength_nm"].iloc[0], dtype=float)
    if _finite(peak) and _finite(fwhm):  # the emission band, and absorbance up to its red edge
        pl.set_xlim(max(peak - 5 * fwhm, grid.min()), min(peak + 5 * fwhm, grid.max()))
        ab.set_xlim(grid.min(), min(max(peak + 3 * fwhm, 500.0), grid.max()))
    if _finite(peak):
        pl.axvline(peak, color="tab:red", lw=0.8, ls="--")
        text = f"peak {peak:.1f} nm" + (f"\nFWHM {fwhm:.1f} nm" if _finite(fwhm) else "")
        pl.annotate(text, (peak, 0.95), xycoords=("data", "axes fraction"), xytext=(6, 0),
                    textcoords="offset points", va="top", fontsize=8)
    pl.set_xlabel("wavelength (nm)")
    pl.set_ylabel("PL (counts per second)")
    pl.set_title(f"photoluminescence: PL_I {row.get('PL_I', float('nan')):.4g} cps", fontsize=9)
    absorbance_300 = row.get("Abs_300")
    if _finite(absorbance_300):
        ab.axvline(300, color="tab:red", lw=0.8, ls="--")
        ab.plot([300], [absorbance_300], "o", color="tab:red", ms=4)
    ab.set_xlabel("wavelength (nm)")
    ab.set_ylabel("absorbance")
    ab.set_title(f"absorbance: Abs_300 {absorbance_300 if _finite(absorbance_300) else float('nan'):.4g}",
                 fontsize=9)
    for ax in (pl, ab):
        if ax.lines:
            ax.legend(fontsize=7, loc="upper right" if ax is ab else "upper left")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=100)


def _finite(value) -> bool:
    return isinstance(value, int | float) and value == value and abs(value) != float("inf")
