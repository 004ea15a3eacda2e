"""A lot's QC report: the summary (status, yield, uptime, alarms, refills, events), control-chart
and syringe-level plots saved under <data root>/lots/<lot>/, and the same as Prefect artifacts.

`lot_summary` and the plots need no Prefect, so benchmarks and scripts get the same report.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from tasks import lots, reports, spc

MAX_EVENTS_SHOWN = 80
EVENT_KINDS_SHOWN = ("start", "equilibrated", "qualified", "alarm", "decision", "refill", "restart", "fault", "end")


def _clean(value):
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def lot_summary(root, lot: str) -> dict[str, Any]:
    """Everything a QC report states about one lot, as plain values (no Prefect)."""
    tables = lots.read_lot(root, lot)
    if tables["lot"].empty:
        raise FileNotFoundError(f"no lot {lot!r} under {lots.lot_folder(root, lot)}")
    record = {k: _clean(v) for k, v in tables["lot"].iloc[0].to_dict().items()}
    samples, events, limits = tables["samples"], tables["events"], tables["limits"]
    alarms = events[events["kind"] == "alarm"] if not events.empty else events
    t0, t1 = record.get("t_start_s"), record.get("t_end_s")
    elapsed_h = (t1 - t0) / 3600.0 if t0 is not None and t1 is not None else None
    produced_h = record.get("produced_h") or 0.0
    g_h = record.get("yield_g_h")
    summary: dict[str, Any] = {
        "lot": lot, "status": record["status"], "reason": record.get("reason"), "platform": record.get("platform"),
        "recipe_from": record.get("recipe_from"), "duration_h": record.get("duration_h"), "elapsed_h": elapsed_h,
        "produced_h": produced_h, "uptime": produced_h / elapsed_h if elapsed_h else None,
        "samples": int(len(samples)),
        "production_samples": int((samples["phase"] == "production").sum()) if not samples.empty else 0,
        "alarms": int(record.get("alarms") or 0),
        "signals_by_rule": dict(Counter(alarms["rule"])) if not alarms.empty else {},
        "signals_by_feature": dict(Counter(alarms["feature"])) if not alarms.empty else {},
        "refills": int(record.get("refills") or 0),
        "product": record.get("product"), "limiting_species": record.get("limiting_species"),
        "yield_theoretical_g_h": record.get("yield_theoretical_g_h"), "conversion": record.get("conversion"),
        "conversion_source": record.get("conversion_source"), "yield_g_h": g_h,
        "product_g": record.get("product_g"), "g_per_24h": g_h * 24.0 if g_h is not None else None,
        "folder": str(lots.lot_folder(root, lot)),
    }
    summary["alarm_samples"] = [
        {"sample": int(r.sample), "t_h": float(r.t_h), "t_platform_s": float(r.t_platform_s), "feature": r.feature,
         "rule": r.rule} for r in alarms.itertuples()] if not alarms.empty else []
    summary["decisions"] = [
        {"sample": _clean(r.sample), "t_h": float(r.t_h), "action": r.action, "by": r.by, "note": r.detail}
        for r in events[events["kind"] == "decision"].itertuples()] if not events.empty else []
    summary["limits"] = limits.to_dict(orient="records") if not limits.empty else []
    return summary


def plot_control_charts(samples: pd.DataFrame, limits: pd.DataFrame, features: list[str], path: Path,
                        settings: spc.SpcSettings = spc.SpcSettings()) -> Path:
    """One panel per feature: QC values against time, the centre, 2 and 3 sigma limits, the EWMA
    with its limits, and the samples that raised alarms (red)."""
    fig, axes = plt.subplots(len(features), 1, figsize=(9, 2.6 * len(features)), sharex=True, squeeze=False)
    lam, L = settings.ewma_lambda, settings.ewma_L
    for ax, feature in zip(axes[:, 0], features):
        qual = samples["phase"] == "qualification"
        ax.plot(samples.loc[qual, "t_h"], samples.loc[qual, feature], ".", color="0.6", ms=3, label="qualification")
        ax.plot(samples.loc[~qual, "t_h"], samples.loc[~qual, feature], ".", color="tab:blue", ms=3, label="QC")
        hit = samples["alarms"].fillna("").str.contains(f":{feature}(?:;|$)", regex=True)
        ax.plot(samples.loc[hit, "t_h"], samples.loc[hit, feature], "o", mfc="none", color="tab:red", ms=6,
                label="alarm")
        for row in limits[limits["feature"] == feature].itertuples():
            later = limits[(limits["qualification"] > row.qualification)]
            t_stop = later["t_from_h"].min() if not later.empty else samples["t_h"].max()
            span = [row.t_from_h, t_stop]
            ax.plot(span, [row.center] * 2, color="k", lw=0.8)
            for k, style in ((settings.zone_k, ":"), (settings.shewhart_k, "-")):
                for sign in (-1, 1):
                    ax.plot(span, [row.center + sign * k * row.sigma] * 2, style, color="tab:orange", lw=0.8)
            lim = spc.Limits(feature, row.center, row.sigma, int(row.n), row.sigma_mr, row.sigma_sd)
            mine = samples[(samples["qualification"] == row.qualification) & ~qual]
            if len(mine):
                ax.plot(mine["t_h"], spc.ewma_path(mine[feature].to_numpy(dtype=float), lim, settings), "-",
                        color="tab:green", lw=1.0, label="EWMA" if row.qualification == 0 else None)
                half = L * row.sigma * math.sqrt(lam / (2 - lam))
                for sign in (-1, 1):
                    ax.plot([row.t_to_h, t_stop], [row.center + sign * half] * 2, "--", color="tab:green", lw=0.7)
        ax.set_ylabel(feature)
    axes[0, 0].legend(loc="lower left", bbox_to_anchor=(0, 1.0), fontsize=7, ncol=4, frameon=False)
    axes[-1, 0].set_xlabel("time since the lot started (h); orange: 2 and 3 sigma, green dashed: EWMA limits")
    return reports.save_figure(fig, path, dpi=100)


def plot_inventory(samples: pd.DataFrame, path: Path) -> Path:
    """Liquid left in each syringe at each QC sample (refills show as jumps)."""
    columns = [c for c in samples.columns if c.startswith("remaining_") and c.endswith("_ul")]
    fig, ax = plt.subplots(figsize=(9, 3))
    for column in columns:
        ax.plot(samples["t_h"], samples[column] / 1000.0, "-", lw=1, label=column[len("remaining_"):-3])
    ax.set_xlabel("time since the lot started (h)")
    ax.set_ylabel("syringe (mL)")
    ax.legend(fontsize=7, ncol=4)
    return reports.save_figure(fig, path, dpi=100)


def report_markdown(summary: dict, events: pd.DataFrame) -> str:
    s = summary
    lines = [f"# Lot `{s['lot']}`: {s['status']}", "", f"{s.get('reason') or ''}", "",
             f"- recipe from: {s.get('recipe_from')}",
             f"- produced {s['produced_h']:.2f} h of {s['duration_h']:g} h planned"
             + (f" (uptime {100 * s['uptime']:.1f} % of {s['elapsed_h']:.2f} h)" if s.get("uptime") else ""),
             f"- QC samples: {s['samples']} ({s['production_samples']} charted), alarms: {s['alarms']} "
             f"{s['signals_by_rule'] or ''}, refills: {s['refills']}"]
    if s.get("yield_theoretical_g_h") is not None:
        lines.append(f"- yield: {s['product']} limited by {s['limiting_species']}: "
                     f"{1e3 * s['yield_theoretical_g_h']:.2f} mg/h at full conversion")
    if s.get("yield_g_h") is not None:
        lines.append(f"- estimated {1e3 * s['yield_g_h']:.2f} mg/h (conversion {s['conversion']:.3f}, "
                     f"{s['conversion_source']}; scaled by Abs_300), {s['product_g']:.3f} g this lot, "
                     f"{s['g_per_24h']:.3f} g per 24 h")
    if s["limits"]:
        lines += ["", "| qualification | feature | centre | sigma | LCL | UCL |", "|---:|---|---:|---:|---:|---:|"]
        lines += [f"| {r['qualification']} | {r['feature']} | {r['center']:.6g} | {r['sigma']:.3g} | {r['lcl']:.6g} | "
                  f"{r['ucl']:.6g} |" for r in s["limits"]]
    if not events.empty:
        shown = events[events["kind"].isin(EVENT_KINDS_SHOWN)]
        lines += ["", "| t (h) | event | detail |", "|---:|---|---|"]
        def line(r) -> str:
            return (f"| {r.t_h:.2f} | {r.kind}{' ' + r.action if isinstance(r.action, str) else ''} | "
                    f"{str(r.detail).replace('|', '/')[:200]} |")

        if len(shown) <= MAX_EVENTS_SHOWN:
            lines += [line(r) for r in shown.itertuples()]
        else:  # the first and the last ones
            lines += [line(r) for r in shown.head(MAX_EVENTS_SHOWN - 20).itertuples()]
            lines.append(f"| | ... | {len(shown) - MAX_EVENTS_SHOWN} more (all in `events/`) |")
            lines += [line(r) for r in shown.tail(20).itertuples()]
    lines += ["", f"files: `{s['folder']}`"]
    return "\n".join(lines)


LOT_PLOTS = {  # file stem: (title, what to read in it)
    "control_charts": ("Control charts", "Each QC feature against time: grey points qualify the lot, blue ones are "
                       "QC samples; the centre line, 2 and 3 sigma limits, the EWMA with its limits, and red "
                       "circles on the samples that raised an alarm."),
    "syringes": ("Syringes", "Liquid left in each syringe at each QC sample; a refill shows as a jump."),
}


def build_report(root, lot: str, settings: spc.SpcSettings = spc.SpcSettings(), publish: bool = False) -> dict:
    """Summary + plots (+ Prefect artifacts when `publish`). Returns the summary with the plot paths."""
    summary = lot_summary(root, lot)
    tables = lots.read_lot(root, lot)
    folder = Path(summary["folder"])
    plots = []
    samples, limits = tables["samples"], tables["limits"]
    if not samples.empty and not limits.empty:
        plots.append(plot_control_charts(samples, limits, list(dict.fromkeys(limits["feature"])),
                                         folder / "control_charts.png", settings))
    if not samples.empty:
        plots.append(plot_inventory(samples, folder / "syringes.png"))
    markdown = report_markdown(summary, tables["events"])
    (folder / "report.md").write_text(markdown + "\n")
    summary["plots"] = [str(p) for p in plots]
    if publish:
        key = reports.artifact_key(f"lot-{lot}")
        shown = "".join("\n\n" + reports.plot_markdown(path, *LOT_PLOTS[path.stem]) for path in plots)
        reports.publish_markdown(f"{key}-report", markdown + shown, f"QC report of lot {lot}")
        if not samples.empty:
            columns = ["sample", "t_h", "phase", "in_control", "alarms", "PL_I", "PL_peak_nm", "FWHM_nm",
                       "Abs_300", "yield_g_h"]
            reports.publish_table(f"{key}-samples", samples[[c for c in columns if c in samples]],
                                  "QC samples: features and alarms")
        if not tables["events"].empty:
            reports.publish_table(f"{key}-events", tables["events"][["event", "t_h", "kind", "feature", "rule",
                                                                    "action", "by", "detail"]], "lot events")
        for path in plots:
            reports.publish_plot(f"{key}-{path.stem.replace('_', '-')}", path, *LOT_PLOTS[path.stem])
    return summary
