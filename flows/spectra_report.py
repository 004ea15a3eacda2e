"""The spectra of one experiment as a plot in the Prefect UI: what a scientist looks at first.

A plot opens only the files that hold that experiment (its own file, or the part a compaction
put it in), never the campaign's whole dataset. A campaign shows its latest experiment as it goes (refreshed at most
every LATEST_EVERY_S seconds of wall time, so a virtual campaign of quick experiments does not
spend its time drawing) and its best one at the end.
"""

from __future__ import annotations

import time
from pathlib import Path

from tasks import reports, storage

LATEST_EVERY_S = 15.0
"""Shortest wall time between two refreshes of a campaign's latest-spectra plot."""


def spectra_plot(root, campaign: str, experiment_id: str, title: str, path: Path) -> Path | None:
    """Draw the experiment's PL and absorbance spectra into `path`; None when it has none on disk."""
    row = storage.read_experiment(root, campaign, experiment_id)
    if row is None:
        return None
    spectra = storage.read_spectra(root, campaign, experiment_id)
    if spectra.empty or not spectra["kind"].isin(["pl_cps", "absorbance"]).any():
        return None
    return reports.plot_spectra(spectra, row, path, title)


def caption(row_title: str) -> str:
    return (f"{row_title}. Left: photoluminescence in counts per second (dark subtracted), one line per "
            "replicate, with the peak and its FWHM. Right: absorbance against the solvent reference, with "
            "Abs_300 marked.")


def publish_spectra(key: str, root, campaign: str, experiment_id: str, title: str, path: Path) -> Path | None:
    """Plot and publish one experiment's spectra; returns the PNG path (None without spectra)."""
    plot = spectra_plot(root, campaign, experiment_id, title, path)
    if plot is not None:
        reports.publish_plot(key, plot, title, caption(f"Experiment `{experiment_id}`"))
    return plot


class LatestSpectra:
    """Publishes the latest completed experiment of a campaign, at most every LATEST_EVERY_S."""

    def __init__(self, root, campaign: str, log, every_s: float = LATEST_EVERY_S):
        self.root, self.campaign, self.log, self.every_s = root, campaign, log, every_s
        self.shown: str | None = None
        self.last = -float("inf")

    def __call__(self, study, final: bool = False) -> None:
        if not final and time.monotonic() - self.last < self.every_s:
            return
        from optuna.trial import TrialState

        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        latest = max(done, key=lambda t: t.number, default=None)
        experiment_id = latest.user_attrs.get("experiment_id") if latest else None
        if not experiment_id or experiment_id == self.shown:
            return
        folder = storage.data_root(self.root) / "campaigns" / storage.check_name("campaign", self.campaign)
        try:
            shown = publish_spectra(f"{self.campaign}-latest-spectra", self.root, self.campaign, experiment_id,
                                    f"Latest experiment of {self.campaign}", folder / "spectra_latest.png")
        except Exception as exc:  # noqa: BLE001 - a plot never stops a campaign
            self.log.warning("the spectra of %s could not be plotted: %s", experiment_id, exc)
            shown = None
        if shown is not None:
            self.shown, self.last = experiment_id, time.monotonic()
