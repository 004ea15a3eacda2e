"""What a campaign leaves behind: the trained surrogate, its R^2, best-so-far, SHAP and a
response surface, saved under <data root>/campaigns/<campaign>/ and published as artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from optuna.trial import TrialState
from sklearn.metrics import r2_score

from hardware.platform import PlatformConfig
from tasks import explain, ledger, reports, storage
from tasks.surrogate import data_key, from_unit, holdout_r2, make_surrogate, save_model, to_unit


def campaign_folder(root, campaign: str) -> Path:
    return storage.data_root(root) / "campaigns" / storage.check_name("campaign", campaign)


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
    r2 = holdout_r2(surrogate, train_X, train_y, seed=seed)
    if np.isfinite(r2):
        summary["holdout_r2"] = r2
    model = make_surrogate(surrogate, seed).fit(train_X, train_y) if len(train_y) >= 2 else None
    if model is not None:
        save_model(model, folder / "model.pkl", {
            "parameters": platform.parameter_names, "space": ledger.space_signature(platform),
            "objective": objective.expression, "kind": surrogate, "X": from_unit(platform, train_X),
            "y": train_y, "data_key": data_key(train_X, train_y, surrogate)})
        summary["model"] = str(folder / "model.pkl")
    if platform.platform.kind != "real":  # virtual or emulated: a noiseless twin exists
        summary.update(_against_twin(platform, objective, model, X, y, root))
    table.to_csv(folder / "trials.csv", index=False)
    plots = [explain.plot_best_so_far(table["value"].to_numpy(dtype=float), objective.expression,
                                      folder / "best_so_far.png", summary.get("true_optimum"))]
    ranking = None
    if explain_model and model is not None and len(y) >= 5:
        explanation = explain.shap_values(model, to_unit(platform, X), platform.parameter_names, seed)
        ranking = explain.shap_ranking(explanation, platform.parameter_names)
        ranking.to_csv(folder / "shap_ranking.csv", index=False)
        plots += explain.plot_shap(explanation, folder)
        top_two = list(ranking["input"][:2])
        plots.append(explain.plot_response_surface(model, platform, to_unit(platform, X[best]), top_two,
                                                   objective.expression, to_unit(platform, X),
                                                   folder / "response_surface.png"))
        summary["shap_top"] = top_two
    summary["folder"] = str(folder)
    if publish:
        _publish(campaign, table, ranking, summary, plots)
    return summary


def _against_twin(platform, objective, model, X, y, root) -> dict[str, Any]:
    """Virtual platforms only: the true optimum, the true value of the best condition, MC R^2."""
    from tasks.twin import DigitalTwin, cached_true_optimum

    optimum = cached_true_optimum(platform, objective, root)
    twin = DigitalTwin(platform)
    best_true = float(twin.objective(X[int(np.argmax(y))], objective)[0])
    out = {"true_optimum": optimum.value, "true_optimum_condition": optimum.condition,
           "best_true_value": best_true, "best_vs_optimum": best_true / optimum.value}
    if model is not None:
        mc = twin.monte_carlo(1000, seed=0)
        truth = twin.objective(mc, objective)
        out["mc_r2"] = float(r2_score(truth, model.predict(to_unit(platform, mc))[0]))
    return out


def _publish(campaign, table, ranking, summary, plots) -> None:
    key = reports.artifact_key(campaign)
    reports.publish_table(f"{key}-best-so-far", table[["trial", "experiment_id", "state", "value", "best_so_far"]],
                          "objective per experiment and the best so far")
    if ranking is not None:
        reports.publish_table(f"{key}-shap", ranking, "inputs ranked by mean |SHAP| of the surrogate")
    lines = [f"# Campaign `{campaign}`", "", f"objective: `{summary['objective']}`",
             f"experiments: {summary['experiments']} ({summary['completed']} completed)"]
    for name in ("best_value", "best_true_value", "true_optimum", "best_vs_optimum", "holdout_r2", "mc_r2"):
        if name in summary:
            lines.append(f"- {name}: {summary[name]:.4g}")
    if "best_condition" in summary:
        lines.append("\nbest condition: " + ", ".join(f"{k} = {v:.4g}" for k, v in summary["best_condition"].items()))
    lines.append(f"\nfiles: `{summary['folder']}`")
    lines += [f"- `{p.name}`" for p in plots]
    reports.publish_markdown(f"{key}-summary", "\n".join(lines), "campaign summary")
    for path in plots:
        reports.publish_image(f"{key}-{path.stem}", path, path.stem.replace("_", " "))
