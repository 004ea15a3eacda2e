"""What a campaign that maximises an objective leaves behind, saved under the data root's
campaigns/<campaign>/ and published as artifacts: the trained surrogate, its R^2 (with a caveat
while it is too small to trust), best-so-far, the best experiment's spectra, SHAP and a response
surface. Target campaigns: flows/target_report.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from optuna.trial import TrialState
from sklearn.metrics import r2_score

from hardware.platform import PlatformConfig
from tasks import explain, ledger, reports, storage
from tasks.surrogate import cross_validated_r2, data_key, from_unit, make_surrogate, save_model, to_unit
from tasks.threads import single_threaded


def campaign_folder(root, campaign: str) -> Path:
    return storage.data_root(root) / "campaigns" / storage.check_name("campaign", campaign)


MIN_TRUSTED = 20
"""Fewest experiments behind a surrogate whose R^2 and SHAP ranking are reported as results."""
PER_INPUT = 3
"""...and at least this many per input of the space."""
WEAK_R2 = 0.5
"""Below this cross-validated R^2 the model explains too little for its ranking to mean much."""


def trusted_size(n_inputs: int) -> int:
    """Experiments below which a surrogate's R^2 and input ranking are a first impression only."""
    return max(MIN_TRUSTED, PER_INPUT * n_inputs)


def model_caveat(n: int, n_inputs: int, r2: float | None) -> str | None:
    """Why the model's numbers should not be trusted yet, in words; None when they can be."""
    need = trusted_size(n_inputs)
    if n < need:
        return (f"only {n} experiments for {n_inputs} inputs: below about {need} the model's R² and its ranking "
                "of the inputs are not reliable yet (a first impression; run more experiments before acting on them)")
    if r2 is not None and r2 < WEAK_R2:
        return (f"the model explains little of the variation so far (cross-validated R² {r2:.2f}): read its "
                "ranking of the inputs with caution")
    return None


def model_lines(summary: dict[str, Any]) -> list[str]:
    """What the summary says about the surrogate, in words (markdown and terminal alike)."""
    numbers = []
    if "cv_r2" in summary:
        numbers.append(f"cross-validated R² {summary['cv_r2']:.2f}")
    if "mc_r2" in summary:
        numbers.append(f"R² against the noiseless twin {summary['mc_r2']:.2f}")
    top = f"most important inputs: {', '.join(summary['shap_top'])}" if "shap_top" in summary else ""
    if "model_caveat" in summary:
        return [f"model: not to be trusted yet: {summary['model_caveat']}."
                + (f" At this size: {', '.join(numbers)}" + (f"; {top}" if top else "") + "." if numbers else "")]
    return [f"model: {', '.join(numbers)}" + (f"; {top}" if top else "")] if numbers or top else []


def trials_table(study) -> pd.DataFrame:
    """Finished trials in order: value, best so far, experiment id, failure reason."""
    rows = []
    best = -np.inf
    for trial in sorted(ledger.finished(study), key=lambda t: t.number):
        value = trial.value if trial.state == TrialState.COMPLETE else np.nan
        if np.isfinite(value):
            best = max(best, value)
        rows.append({"trial": trial.number, "experiment_id": trial.user_attrs.get("experiment_id"),
                     "state": trial.state.name, "value": value, "best_so_far": best if np.isfinite(best) else np.nan,
                     "failure_reason": trial.user_attrs.get("failure_reason"), **trial.params})
    return pd.DataFrame(rows)


@single_threaded
def build_report(platform: PlatformConfig, study, objective, surrogate: str, prior, root, campaign: str,
                 seed: int = 0, explain_model: bool = True, publish: bool = True) -> dict[str, Any]:
    """Train the final surrogate, measure it, explain it, save and publish. Returns the summary."""
    folder = campaign_folder(root, campaign)
    folder.mkdir(parents=True, exist_ok=True)
    table = trials_table(study)
    X, y = ledger.observations(study, platform)
    summary: dict[str, Any] = {"campaign": campaign, "objective": objective.expression,
                               "experiments": len(table), "completed": int(np.isfinite(table["value"]).sum())
                               if len(table) else 0}
    if len(y) == 0:
        return summary
    best = int(np.argmax(y))
    summary.update(best_value=float(y[best]), best_condition=dict(zip(platform.parameter_names, map(float, X[best]))))
    train_X, train_y = to_unit(platform, X), y
    if prior is not None:
        train_X, train_y = np.vstack([to_unit(platform, prior[0]), train_X]), np.concatenate([prior[1], train_y])
    model = make_surrogate(surrogate, seed).fit(train_X, train_y) if len(train_y) >= 2 else None
    r2 = cross_validated_r2(surrogate, train_X, train_y, seed=seed, model=model)
    if np.isfinite(r2):
        summary["cv_r2"] = r2
    if model is not None:
        save_model(model, folder / "model.pkl", {
            "parameters": platform.parameter_names, "space": ledger.space_signature(platform),
            "objective": objective.expression, "kind": surrogate, "X": from_unit(platform, train_X),
            "y": train_y, "data_key": data_key(train_X, train_y, surrogate)})
        summary["model"] = str(folder / "model.pkl")
    if platform.platform.kind != "real":  # virtual or emulated: a noiseless twin exists
        summary.update(_against_twin(platform, objective, model, X, y, root))
    caveat = model_caveat(len(train_y), len(platform.parameter_names), summary.get("cv_r2"))
    if caveat:
        summary["model_caveat"] = caveat
    table.to_csv(folder / "trials.csv", index=False)
    plots = {"best_so_far": explain.plot_best_so_far(table["value"].to_numpy(dtype=float), objective.expression,
                                                     folder / "best_so_far.png", summary.get("true_optimum"))}
    best_id = _best_experiment(table)
    if best_id:
        summary["best_experiment_id"] = best_id
        from flows.spectra_report import spectra_plot

        plots["best_spectra"] = spectra_plot(root, campaign, best_id, f"Best experiment of {campaign}: {best_id}",
                                             folder / "spectra_best.png")
    ranking = None
    if explain_model and model is not None and len(y) >= 5:
        explanation = explain.shap_values(model, to_unit(platform, X), platform.parameter_names, seed)
        ranking = explain.shap_ranking(explanation, platform.parameter_names)
        ranking.to_csv(folder / "shap_ranking.csv", index=False)
        plots["shap_beeswarm"], plots["shap_bar"] = explain.plot_shap(explanation, folder)
        top_two = list(ranking["input"][:2])
        plots["response_surface"] = explain.plot_response_surface(
            model, platform, to_unit(platform, X[best]), top_two, objective.expression, to_unit(platform, X),
            folder / "response_surface.png")
        summary["shap_top"] = top_two
    summary["folder"] = str(folder)
    plots = {name: path for name, path in plots.items() if path is not None}
    summary["plots"] = {name: str(path) for name, path in plots.items()}
    if publish:
        _publish(campaign, table, ranking, summary, plots)
    return summary


def _best_experiment(table: pd.DataFrame) -> str | None:
    values = table["value"].to_numpy(dtype=float)
    if not np.isfinite(values).any():
        return None
    return table["experiment_id"].iloc[int(np.nanargmax(values))]


def _run_logger():
    """The flow run's logger inside a flow (its lines show in the UI and the terminal), else None."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return None


def _against_twin(platform, objective, model, X, y, root) -> dict[str, Any]:
    """Virtual platforms only: the true optimum, the true value of the best condition, MC R^2."""
    from tasks.twin import DigitalTwin, cached_true_optimum

    optimum = cached_true_optimum(platform, objective, root, log=_run_logger())
    twin = DigitalTwin(platform)
    best_true = float(twin.objective(X[int(np.argmax(y))], objective)[0])
    out = {"true_optimum": optimum.value, "true_optimum_condition": optimum.condition,
           "true_optimum_exhaustive": optimum.exhaustive,
           "best_true_value": best_true, "best_vs_optimum": best_true / optimum.value}
    if model is not None:
        mc = twin.monte_carlo(1000, seed=0)
        truth = twin.objective(mc, objective)
        out["mc_r2"] = float(r2_score(truth, model.predict(to_unit(platform, mc))[0]))
    return out


PLOTS = {  # name: (title, what to read in it)
    "best_so_far": ("Objective per experiment", "Grey: each experiment; blue: the best so far. On the virtual lab the "
                    "red lines mark the twin's true optimum and 95 % of it."),
    "best_spectra": ("Spectra of the best experiment", "Left: photoluminescence (counts per second, dark "
                     "subtracted), one line per replicate, with the peak and its FWHM. Right: absorbance against "
                     "the solvent reference, with Abs_300 marked."),
    "shap_bar": ("Which inputs matter (mean |SHAP|)", "How much each input moves the model's prediction, on "
                 "average over the experiments."),
    "shap_beeswarm": ("How each input acts (SHAP)", "One dot per experiment: red is a high value of the input, blue "
                      "a low one; right of zero it raises the prediction, left of zero it lowers it."),
    "response_surface": ("Model response over the two most important inputs", "The model's prediction over the "
                         "two inputs that matter most, the others held at the best condition; white dots are "
                         "experiments, the red star the best."),
    "pareto_front": ("Pareto front and desirability", "Left: quality against FWHM, coloured by the distance of "
                     "the peak from the target; circles are on target, red stars the non-dominated experiments. "
                     "Right: desirability per experiment and the best so far."),
}
DIRECTION_WORDS = {"+": "+ (a higher value raises it)", "-": "- (a higher value lowers it)", "mixed": "mixed"}


def summary_markdown(summary: dict[str, Any], plots: dict[str, Path]) -> str:
    """The campaign summary a scientist reads in the UI: numbers in words, then its plots."""
    lines = [f"# Campaign `{summary['campaign']}`", "",
             f"Objective: maximise `{summary['objective']}`. Experiments: {summary['experiments']} "
             f"({summary['completed']} completed)."]
    if "best_value" in summary:
        lines += ["", f"**Best measured: {summary['best_value']:.4g}**"
                  + (f" (experiment `{summary['best_experiment_id']}`)" if "best_experiment_id" in summary else "")
                  + " at " + ", ".join(f"{k} = {v:.4g}" for k, v in summary["best_condition"].items()) + "."]
    if "true_optimum" in summary:
        estimate = "" if summary.get("true_optimum_exhaustive", True) else " (an estimate from a bounded search)"
        lines += ["", f"On the twin, that condition gives {summary['best_true_value']:.4g}: "
                  f"{100 * summary['best_vs_optimum']:.1f} % of the true optimum {summary['true_optimum']:.4g}"
                  f"{estimate}."]
    lines += [""] + [("> " if "model_caveat" in summary else "") + line for line in model_lines(summary)]
    for name, path in plots.items():
        title, caption = PLOTS[name]
        lines += ["", reports.plot_markdown(path, title, caption)]
    lines += ["", f"Files: `{summary['folder']}` (trials.csv, model.pkl, the PNG plots)."]
    return "\n".join(lines)


def shap_markdown(summary: dict[str, Any], ranking: pd.DataFrame, plots: dict[str, Path]) -> str:
    """The SHAP ranking as a table with the direction of each input's effect, and its plots."""
    lines = [f"# Which inputs drive `{summary['objective']}` in `{summary['campaign']}`", ""]
    if "model_caveat" in summary:
        lines += [f"> Not to be trusted yet: {summary['model_caveat']}.", ""]
    shown = ranking.assign(direction=ranking["direction"].map(DIRECTION_WORDS))
    shown = shown.rename(columns={"mean_abs_shap": "mean absolute SHAP", "direction": "effect of a higher value"})
    lines.append(shown.to_markdown(index=False, floatfmt=".4g"))
    for name in ("shap_bar", "shap_beeswarm"):
        if name in plots:
            lines += ["", reports.plot_markdown(plots[name], *PLOTS[name])]
    return "\n".join(lines)


def _publish(campaign, table, ranking, summary, plots: dict[str, Path]) -> None:
    key = reports.artifact_key(campaign)
    reports.publish_markdown(f"{key}-summary", summary_markdown(summary, plots), "campaign summary with its plots")
    reports.publish_table(f"{key}-trials", table[["trial", "experiment_id", "state", "value", "best_so_far"]],
                          "objective per experiment and the best so far")
    if ranking is not None:
        reports.publish_markdown(f"{key}-shap", shap_markdown(summary, ranking, plots),
                                 "inputs ranked by mean |SHAP| of the surrogate")
    for name in ("best_so_far", "best_spectra", "response_surface"):
        if name in plots:
            reports.publish_plot(f"{key}-{name.replace('_', '-')}", plots[name], *PLOTS[name])
