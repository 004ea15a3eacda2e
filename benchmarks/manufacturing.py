"""Manufacturing benchmark: 24-hour lots on the virtual lab with an injected slow drift and a step
change (the delay from each fault to its alarm, and which rule caught it), false alarms on
undisturbed lots (several seeds), the yield, and the wall time.

    .venv/bin/python benchmarks/manufacturing.py            # ~2.5 min on 2 cores
    .venv/bin/python benchmarks/manufacturing.py --hours 6 --seeds 1 2   # a quick look

The lots run with plain step functions (no Prefect: a 24-hour lot is ~200 QC samples and ~700
task runs, and Prefect's overhead is measured in benchmarks/experiment.py), on_alarm="continue"
(every signal is counted, none stops the lot) and auto-refill. Each scenario is its own lot: a
persisting fault keeps signalling after its first alarm, so a second fault in the same lot
could not be timed. The platform's slow precursor ageing (1.2 %/h) and lamp drift are switched
off in these lots (they are drifts themselves; the last row shows the charts catching them).
Prints markdown tables and writes benchmarks/results/manufacturing.md.
"""

from __future__ import annotations

import argparse
import os
import platform as host
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

RECIPE = {"temperature_c": 148.7, "reaction_time_s": 25.0, "cui_fraction": 0.53, "oa_cu_fraction": 0.024,
          "oam_fraction": 0.02, "cs_fraction": 0.50, "oa_cs_fraction": 0.158}
"""The twin's PL_I optimum (README, "Truth"): what a campaign would hand to manufacturing."""
FAULT_AT_H = 4.0
DRIFT_PER_HOUR = 0.005
STEP_CHANGE = -0.05
RESULTS = Path(__file__).resolve().parent / "results" / "manufacturing.md"


def run_scenario(kind: str, seed: int, hours: float, root: str) -> dict:
    """One lot; returns what the tables need (runs in a worker process)."""
    import logging

    from flows.manufacture import LotPlan, run_lot
    from flows.manufacture_report import lot_summary
    from hardware.platform import load_platform
    from hardware.rig import virtual_rig

    logging.disable(logging.INFO)
    platform = load_platform()
    if kind != "ageing":  # an in-control process: no drift of its own
        quiet = platform.virtual.model_copy(update={"stock_decay_per_hour": 0.0, "lamp_drift_per_hour": 0.0})
        platform = platform.model_copy(update={"virtual": quiet})
    rig = virtual_rig(platform, seed=seed)
    plan = rig.lab.faults.plan
    fault_at_s = FAULT_AT_H * 3600.0
    if kind == "drift":
        plan.plqy_drift_per_hour, plan.plqy_drift_from_s = DRIFT_PER_HOUR, fault_at_s
    elif kind == "step":
        plan.stock_step_species, plan.stock_step_change, plan.stock_step_at_s = ["Cu", "I"], STEP_CHANGE, fault_at_s
    lot = f"{kind}-s{seed}"
    start = time.perf_counter()
    record = run_lot(rig, LotPlan(lot=lot, recipe=RECIPE, duration_h=hours, on_alarm="continue", auto_refill=True,
                                  save_spectra=False, data_root=root, seed=seed))
    wall = time.perf_counter() - start
    summary = lot_summary(root, lot)
    return {"kind": kind, "seed": seed, "wall_s": wall, "status": record["status"], "summary": summary,
            "fault_at_s": fault_at_s if kind in ("drift", "step") else 0.0}


def _first_alarm(result: dict) -> dict | None:
    after = [a for a in result["summary"]["alarm_samples"] if a["t_platform_s"] >= result["fault_at_s"]]
    if not after:
        return None
    first = min(a["t_platform_s"] for a in after)
    caught = sorted({f"{a['rule']} ({a['feature']})" for a in after if a["t_platform_s"] == first})
    return {"t_s": first, "caught_by": ", ".join(caught)}


def _alarm_samples(result: dict, before_s: float | None = None) -> int:
    times = {a["sample"] for a in result["summary"]["alarm_samples"]
             if before_s is None or a["t_platform_s"] < before_s}
    return len(times)


def fault_table(results: list[dict]) -> str:
    rows = ["| injected fault | from (h) | first alarm (h) | delay (simulated min) | caught by | false alarms before it |",
            "|---|---:|---:|---:|---|---:|"]
    names = {"drift": f"slow drift: PL efficiency -{100 * DRIFT_PER_HOUR:g} %/h",
             "step": f"step change: CuI stock {100 * STEP_CHANGE:+g} %",
             "ageing": "the platform's own precursor ageing 1.2 %/h and lamp drift 0.4 %/h (default config, "
                       "from t = 0; charts start after qualification, ~1.2 h)"}
    for r in results:
        if r["kind"] not in names:
            continue
        first = _first_alarm(r)
        at_h = r["fault_at_s"] / 3600.0
        if first is None:
            rows.append(f"| {names[r['kind']]} | {at_h:g} | none | - | - | {_alarm_samples(r, r['fault_at_s'])} |")
            continue
        delay = (first["t_s"] - r["fault_at_s"]) / 60.0
        rows.append(f"| {names[r['kind']]} | {at_h:g} | {first['t_s'] / 3600:.2f} | {delay:.0f} | "
                    f"{first['caught_by']} | {_alarm_samples(r, r['fault_at_s'])} |")
    return "\n".join(rows)


def false_alarm_table(results: list[dict], hours: float) -> tuple[str, list[float]]:
    rows = ["| seed | QC samples charted | alarms | per 24 h | signals by rule |", "|---:|---:|---:|---:|---|"]
    rates = []
    for r in (r for r in results if r["kind"] == "undisturbed"):
        s = r["summary"]
        n = _alarm_samples(r)
        rate = n * 24.0 / hours
        rates.append(rate)
        rows.append(f"| {r['seed']} | {s['production_samples']} | {n} | {rate:.1f} | {s['signals_by_rule'] or '-'} |")
    return "\n".join(rows), rates


def yield_table(results: list[dict], hours: float) -> str:
    r = next(r for r in results if r["kind"] == "undisturbed")
    s = r["summary"]
    return "\n".join([
        "| recipe | limiting | full conversion (mg/h) | conversion | estimate (mg/h) | g per 24 h at the estimate | "
        "g made in this lot | uptime | refills per 24 h |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| PL_I optimum (148.7 C, 25 s) | {s['limiting_species']} | {1e3 * s['yield_theoretical_g_h']:.2f} | "
        f"{s['conversion']:.3f} | {1e3 * s['yield_g_h']:.2f} | {s['g_per_24h']:.3f} | "
        f"{s['product_g'] * 24.0 / hours:.3f} | {100 * s['uptime']:.1f} % | {s['refills'] * 24.0 / hours:.0f} |",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=24.0, help="simulated hours per lot")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6, 7, 8], help="undisturbed lots")
    parser.add_argument("--processes", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--no-ageing", action="store_true", help="skip the default-ageing lot")
    parser.add_argument("--data-root", default=None, help="keep the lots here (default: a temporary folder)")
    args = parser.parse_args(argv)
    root = args.data_root or tempfile.mkdtemp(prefix="sdfl-manufacturing-")
    jobs = [("drift", 1), ("step", 1), *[("undisturbed", s) for s in args.seeds]]
    if not args.no_ageing:
        jobs.append(("ageing", 1))
    start = time.perf_counter()
    with ProcessPoolExecutor(args.processes) as pool:
        results = list(pool.map(run_scenario, *zip(*[(k, s, args.hours, root) for k, s in jobs])))
    total = time.perf_counter() - start
    if args.data_root is None:
        shutil.rmtree(root, ignore_errors=True)
    faults = fault_table(results)
    alarms, rates = false_alarm_table(results, args.hours)
    walls = [r["wall_s"] for r in results]
    command = "benchmarks/manufacturing.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    text = "\n".join([
        f"# Manufacturing benchmark: `.venv/bin/python {command}`", "",
        f"{args.hours:g}-hour lots on the virtual lab ({host.machine()}, {os.cpu_count()} cores, {args.processes} "
        f"processes), plain steps (no Prefect), QC every 10 min after a 60-min qualification window of 60 samples, "
        "rules Shewhart 3 sigma + EWMA (lambda 0.2, L 3) on PL_I, PL_peak_nm, FWHM_nm (sigma floors 0.05 / 0.1 nm), "
        "on_alarm=continue, auto-refill; faults injected at 4 h (seed 1).", "",
        "## Injected faults: delay to the first alarm", "", faults, "",
        f"## False alarms on undisturbed lots (alarms = QC samples with a signal; median {np.median(rates):.1f} "
        f"per 24 h, range {min(rates):.1f}-{max(rates):.1f})", "", alarms, "",
        f"## Yield (undisturbed lot, seed {next(r['seed'] for r in results if r['kind'] == 'undisturbed')})", "",
        yield_table(results, args.hours), "",
        f"## Wall time: {len(results)} lots in {total:.0f} s; per {args.hours:g}-hour lot median {np.median(walls):.0f} s "
        f"(range {min(walls):.0f}-{max(walls):.0f} s), {args.hours * 3600 / np.median(walls):,.0f}x faster than real time",
    ])
    print(text)
    if args.hours == 24.0:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
