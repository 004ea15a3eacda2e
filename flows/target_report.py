"""What a target campaign leaves behind, saved under the data root's campaigns/<campaign>/ and
published as artifacts: the Pareto front (table and figure), the best condition by desirability,
the twin's truth there (virtual platforms) and the best experiment's spectra."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from optuna.trial import TrialState

from flows.campaign_report import PLOTS, campaign_folder
from hardware.platform import PlatformConfig
from tasks import ledger, reports, targets


def target_table(study, objective: targets.TargetObjective) -> pd.DataFrame:
    """Finished trials of a target study in order, with desirability, on-target and Pareto marks.

    The Pareto front is taken over the on-target experiments, or over all completed ones while
    none is on target (as Optuna's `study.best_trials` does with constraints)."""
    target = objective.target
    rows = []
    for trial in sorted(ledger.finished(study), key=lambda t: t.number):
        done = trial.state == TrialState.COMPLETE
        values = trial.values if done else [np.nan] * 3
        rows.append({"trial": trial.number, "experiment_id": trial.user_attrs.get("experiment_id"),
                     "state": trial.state.name, "peak_nm": trial.user_attrs.get("peak_nm", np.nan) if done else np.nan,
                     "peak_error_nm": values[0], "quality": values[1], "fwhm_nm": values[2],
                     "failure_reason": trial.user_attrs.get("failure_reason"), **trial.params})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    vectors = table[["peak_error_nm", "quality", "fwhm_nm"]].to_numpy(dtype=float)
    finite = np.all(np.isfinite(vectors), axis=1)
    desirability = targets.desirability_for(target, vectors)
    table["desirability"] = np.where(finite, desirability(vectors), np.nan)
    table["on_target"] = targets.meets_target(vectors, target)
    pool = table["on_target"].to_numpy() if table["on_target"].any() else finite
    front = np.zeros(len(table), dtype=bool)
    front[np.flatnonzero(pool)] = targets.pareto_front(vectors[pool])
    table["pareto"] = front
    return table


def build_target_report(platform: PlatformConfig, study, objective: targets.TargetObjective, root, campaign: str,
                        stopped_because: str = "", publish: bool = True) -> dict[str, Any]:
    """Pareto front, best condition by desirability, the twin's truth there (virtual platforms);
    saved (trials.csv, pareto.csv, pareto.png) and published. Returns the summary."""
    target = objective.target
    folder = campaign_folder(root, campaign)
    folder.mkdir(parents=True, exist_ok=True)
    table = target_table(study, objective)
    summary: dict[str, Any] = {
        "campaign": campaign, "objective": objective.expression, "target": target.settings(),
        "directions": [d.name.lower() for d in study.directions], "experiments": len(table),
        "completed": int((table["state"] == "COMPLETE").sum()) if len(table) else 0,
        "on_target": int(table["on_target"].sum()) if len(table) else 0, "folder": str(folder)}
    summary["optuna_pareto_trials"] = [t.number for t in study.best_trials]
    if not summary["completed"]:
        if publish:
            _publish_target(campaign, table, summary, {}, platform.parameter_names)
        return summary
    names = platform.parameter_names
    vectors = table[["peak_error_nm", "quality", "fwhm_nm"]].to_numpy(dtype=float)
    ranges = targets.desirability_for(target, vectors)
    summary["desirability_ranges"] = {k: v for k, v in vars(ranges).items() if k != "weights"}
    best = table.iloc[targets.best_index(vectors, target, ranges)]
    summary["best"] = _target_row(best, names)
    summary["best_condition"] = summary["best"]["condition"]
    front = table[table["pareto"]].sort_values("desirability", ascending=False)
    summary["pareto_of"] = "on-target experiments" if summary["on_target"] else \
        "all completed experiments (none on target yet)"
    summary["pareto_front"] = [_target_row(row, names) for _, row in front.iterrows()]
    if platform.platform.kind != "real":  # a noiseless twin exists: the truth at the best condition
        summary["best_true"] = _twin_truth(platform, objective, summary["best_condition"])
    table.to_csv(folder / "trials.csv", index=False)
    front.to_csv(folder / "pareto.csv", index=False)
    plots = {"pareto_front": plot_pareto(table, target, folder / "pareto_front.png")}
    from flows.spectra_report import spectra_plot

    best_spectra = spectra_plot(root, campaign, best["experiment_id"],
                                f"Best experiment of {campaign}: {best['experiment_id']}", folder / "spectra_best.png")
    if best_spectra is not None:
        plots["best_spectra"] = best_spectra
    summary["plots"] = {name: str(path) for name, path in plots.items()}
    if publish:
        _publish_target(campaign, table, summary, plots, names)
    return summary


def _target_row(row, names: list[str]) -> dict[str, Any]:
    return {"experiment_id": row["experiment_id"], "trial": int(row["trial"]), "peak_nm": float(row["peak_nm"]),
            "peak_error_nm": float(row["peak_error_nm"]), "quality": float(row["quality"]),
            "fwhm_nm": float(row["fwhm_nm"]), "desirability": float(row["desirability"]),
            "on_target": bool(row["on_target"]), "condition": {n: float(row[n]) for n in names}}


def _twin_truth(platform, objective: targets.TargetObjective, condition: dict[str, float]) -> dict[str, float]:
    from tasks.twin import DigitalTwin

    row = DigitalTwin(platform).features([condition]).to_dict(orient="records")[0]
    error, quality, fwhm = objective(row)
    return {"peak_nm": objective.peak(row), "peak_error_nm": error, "quality": quality, "fwhm_nm": fwhm,
            "on_target": bool(targets.meets_target([[error, quality, fwhm]], objective.target)[0])}


def plot_pareto(table: pd.DataFrame, target: targets.Target, path: Path) -> Path:
    """Quality against FWHM coloured by peak error (the front marked), and desirability per experiment."""
    import matplotlib.pyplot as plt

    done = table[table["state"] == "COMPLETE"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.5))
    points = ax.scatter(done["fwhm_nm"], done["quality"], c=done["peak_error_nm"], cmap="viridis_r",
                        vmin=0, vmax=target.peak_range, s=28, edgecolors="none")
    fig.colorbar(points, ax=ax, label="|peak - target| (nm)")
    on = done[done["on_target"]]
    ax.scatter(on["fwhm_nm"], on["quality"], s=70, facecolors="none", edgecolors="black", linewidths=0.8,
               label=f"on target (within {target.tolerance_nm:g} nm and the limits)")
    front = done[done["pareto"]].sort_values("fwhm_nm")
    ax.plot(front["fwhm_nm"], front["quality"], "r*", ms=11, label="Pareto front (non-dominated)")
    if target.max_fwhm_nm is not None:
        ax.axvline(target.max_fwhm_nm, color="tab:red", ls="--", lw=0.8, label=f"FWHM limit {target.max_fwhm_nm:g}")
    ax.set_xlabel(f"{target.fwhm} (narrower is better)")
    ax.set_ylabel("quality (higher is better)")
    ax.set_title(f"target {target.peak_nm:.1f} nm ({target.peak_ev:.3f} eV)")
    ax.legend(fontsize=7, loc="best")
    d = table["desirability"].to_numpy(dtype=float)
    bx.plot(table["trial"], d, "o", ms=4, label="desirability")
    bx.plot(table["trial"], np.fmax.accumulate(np.nan_to_num(d, nan=0.0)), "-", label="best so far")
    bx.plot(table.loc[table["on_target"], "trial"], d[table["on_target"].to_numpy()], "ks", mfc="none", ms=8,
            label="on target")
    bx.set_xlabel("trial")
    bx.set_ylabel("desirability (0-1)")
    bx.set_ylim(-0.02, 1.02)
    bx.legend(fontsize=7)
    return reports.save_figure(fig, path)


PARETO_COLUMNS = ["experiment_id", "peak_nm", "peak_error_nm", "fwhm_nm", "quality", "desirability", "on_target"]


def pareto_markdown(table: pd.DataFrame, parameter_names: list[str]) -> str:
    """The non-dominated experiments as a markdown table, best desirability first."""
    front = table[table["pareto"]].sort_values("desirability", ascending=False)
    return front[PARETO_COLUMNS + parameter_names].to_markdown(index=False, floatfmt=".4g")


def _publish_target(campaign: str, table: pd.DataFrame, summary: dict, plots: dict[str, Path],
                    parameter_names: list[str]) -> None:
    key = reports.artifact_key(campaign)
    lines = [f"# Campaign `{campaign}`: target", "", summary["objective"], "",
             f"experiments: {summary['experiments']} ({summary['completed']} completed, "
             f"{summary['on_target']} on target)"]
    if "best" in summary:
        best = summary["best"]
        lines += ["", f"best by desirability: `{best['experiment_id']}`: peak {best['peak_nm']:.2f} nm "
                  f"(error {best['peak_error_nm']:.2f}), FWHM {best['fwhm_nm']:.2f}, quality {best['quality']:.4g}, "
                  f"desirability {best['desirability']:.3f}, {'on' if best['on_target'] else 'NOT on'} target",
                  "condition: " + ", ".join(f"{k} = {v:.4g}" for k, v in best["condition"].items())]
    if "best_true" in summary:
        true = summary["best_true"]
        lines.append(f"twin's truth there: peak {true['peak_nm']:.2f} nm, FWHM {true['fwhm_nm']:.2f}, "
                     f"quality {true['quality']:.4g}")
    for name, path in plots.items():
        lines += ["", reports.plot_markdown(path, *PLOTS[name])]
    lines.append(f"\nFiles: `{summary['folder']}`")
    reports.publish_markdown(f"{key}-summary", "\n".join(lines), "target campaign summary with its plots")
    if len(table) and table["pareto"].any():
        text = (f"# Pareto front of `{campaign}`\n\n{summary['objective']}\n\nNon-dominated "
                f"{summary['pareto_of']} (minimise peak error and FWHM, maximise quality), best desirability "
                f"first:\n\n" + pareto_markdown(table, parameter_names))
        if "pareto_front" in plots:
            text += "\n\n" + reports.plot_markdown(plots["pareto_front"], *PLOTS["pareto_front"])
        reports.publish_markdown(f"{key}-pareto", text, "Pareto front: non-dominated experiments")
        reports.publish_table(f"{key}-trials", table[["trial", "experiment_id", "state", "peak_nm", "fwhm_nm",
                                                      "quality", "desirability", "on_target", "pareto"]],
                              "every experiment: peak, FWHM, quality, desirability")
    for name, path in plots.items():
        reports.publish_plot(f"{key}-{name.replace('_', '-')}", path, *PLOTS[name])
