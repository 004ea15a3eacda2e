"""Explain: which inputs drive the surrogate (SHAP), and its response over the top two.

Shapley values of the surrogate's mean (kernel SHAP over every coalition: exact), a
ranking by mean |SHAP|, beeswarm and bar plots, and a contour of the predicted objective over
the two most important inputs with the others held at the best observed condition.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from tasks import reports  # noqa: E402

BACKGROUND = 20
ALL_COALITIONS_UP_TO = 12
"""Inputs up to which every coalition is evaluated (exact Shapley values); above, a sample."""


def shap_values(model, U: np.ndarray, names: list[str], seed: int = 0):
    """SHAP explanation (shap.Explanation) of the surrogate mean at unit-cube points U.

    Kernel SHAP over every coalition of inputs gives the exact Shapley values (the same as shap's
    exact explainer to 1e-12) in well under a second, without the exact explainer's numba
    compilation, which costs 5 to 15 s in every new process (a campaign's report)."""
    import shap

    background = shap.sample(U, min(BACKGROUND, len(U)), random_state=seed)
    explainer = shap.KernelExplainer(lambda X: model.predict(X)[0], background, feature_names=names)
    d = len(names)
    coalitions = 2**d if d <= ALL_COALITIONS_UP_TO else "auto"
    values = explainer.shap_values(U, nsamples=coalitions, silent=True)
    return shap.Explanation(values=np.asarray(values), base_values=np.full(len(U), explainer.expected_value),
                            data=np.asarray(U), feature_names=names)


def shap_ranking(explanation, names: list[str]) -> pd.DataFrame:
    """Inputs ranked by mean |SHAP|, with the sign of their effect (correlation of value and SHAP)."""
    values = np.asarray(explanation.values)
    data = np.asarray(explanation.data)
    rows = []
    for i, name in enumerate(names):
        spread = np.std(data[:, i]) * np.std(values[:, i])
        direction = float(np.corrcoef(data[:, i], values[:, i])[0, 1]) if spread > 0 else 0.0
        rows.append({"input": name, "mean_abs_shap": float(np.mean(np.abs(values[:, i]))),
                     "direction": "+" if direction > 0.2 else "-" if direction < -0.2 else "mixed"})
    frame = pd.DataFrame(rows).sort_values("mean_abs_shap", ascending=False).reset_index(drop=True)
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    return frame


def plot_shap(explanation, folder: Path) -> list[Path]:
    import shap

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, plot in (("shap_beeswarm.png", shap.plots.beeswarm), ("shap_bar.png", shap.plots.bar)):
        plot(explanation, show=False)
        plt.gcf().set_size_inches(7, 4.5)
        plt.tight_layout()
        plt.savefig(folder / name, dpi=110)
        plt.close("all")
        paths.append(folder / name)
    return paths


def plot_response_surface(model, platform, best_unit: np.ndarray, top_two: list[str], objective: str,
                          observed: np.ndarray, path: Path, grid: int = 40) -> Path:
    """Contour of the predicted objective over the top two inputs (others at the best condition)."""
    names = platform.parameter_names
    i, j = names.index(top_two[0]), names.index(top_two[1])
    axis = np.linspace(0.0, 1.0, grid)
    a, b = np.meshgrid(axis, axis)
    U = np.repeat(best_unit[None, :], grid * grid, axis=0)
    U[:, i], U[:, j] = a.ravel(), b.ravel()
    mean = model.predict(U)[0].reshape(grid, grid)
    p_i, p_j = platform.parameters[i], platform.parameters[j]
    xs, ys = p_i.low + axis * (p_i.high - p_i.low), p_j.low + axis * (p_j.high - p_j.low)
    fig, ax = plt.subplots(figsize=(6, 4.8))
    contour = ax.contourf(xs, ys, mean, levels=20, cmap="viridis")
    fig.colorbar(contour, label=f"predicted {objective}")
    ax.scatter(p_i.low + observed[:, i] * (p_i.high - p_i.low), p_j.low + observed[:, j] * (p_j.high - p_j.low),
               s=12, c="white", edgecolors="black", linewidths=0.5, label="experiments")
    ax.scatter([p_i.low + best_unit[i] * (p_i.high - p_i.low)], [p_j.low + best_unit[j] * (p_j.high - p_j.low)],
               marker="*", s=160, c="red", label="best")
    ax.set_xlabel(top_two[0])
    ax.set_ylabel(top_two[1])
    ax.legend(loc="best", fontsize=8)
    return reports.save_figure(fig, path)


def plot_best_so_far(values: np.ndarray, objective: str, path: Path, optimum: float | None = None) -> Path:
    """Objective per experiment and the best so far (failed experiments are gaps)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    index = np.arange(1, len(values) + 1)
    ax.plot(index, values, "o", ms=4, color="0.6", label="experiment")
    ax.plot(index, np.fmax.accumulate(np.where(np.isfinite(values), values, -np.inf)), "-", color="tab:blue",
            label="best so far")
    if optimum is not None:
        ax.axhline(optimum, color="tab:red", ls="--", lw=1, label="true optimum (twin)")
        ax.axhline(0.95 * optimum, color="tab:red", ls=":", lw=1, label="95 % of optimum")
    ax.set_xlabel("experiment")
    ax.set_ylabel(objective)
    ax.legend(fontsize=8)
    return reports.save_figure(fig, path)
