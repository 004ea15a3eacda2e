"""The `sdfl` command: run experiments and studies, inspect platforms and data.

    sdfl platform                       show the default platform's parameter space
    sdfl experiment --set temperature_c=145 --set reaction_time_s=28
    sdfl study residence-time --reaction-times 25 31 42
    sdfl manufacture --lot L1 --hours 8 hold a recipe with QC and control charts
    sdfl data --campaign demo           the recorded experiments
    sdfl demo                           the residence-time study and a few experiments
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

SUMMARY_COLUMNS = ["experiment_id", "status", "temperature_c", "reaction_time_s", "cui_fraction", "tau_s", "t_E_s",
                   "PL_peak_nm", "PL_I", "PL_I_sd", "PL_A", "FWHM_nm", "Abs_300", "SNR"]


def summary_columns(platform) -> list[str]:
    """The summary of an experiment on `platform`: its own parameters, then the usual features."""
    return ["experiment_id", "status", *platform.parameter_names, "tau_s", "t_E_s", "regime_Re",
            "PL_peak_nm", "PL_I", "PL_I_sd", "PL_A", "FWHM_nm", "Abs_300", "SNR"]


STUDY_NOTE = ("settle_tau: when the slowest feature is within 1 % of its final value, in residence times tau; "
              "resolved_features = 0: the step moved no feature by more than twice its noise (nothing to wait for)")


def _parse_pairs(pairs: list[str] | None, what: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"sdfl: {what} {pair!r} must look like name=value")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise SystemExit(f"sdfl: {what} {pair!r}: {value!r} is not a number") from None
    return out


@contextmanager
def _quick_prefect():
    """No flow-run heartbeats for short interactive runs (they add ~1 s per run)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def _print_frame(frame, columns=None) -> None:
    if frame is None or len(frame) == 0:
        print("(no rows)")
        return
    columns = [c for c in (columns or frame.columns) if c in frame.columns]
    print(frame[columns].to_markdown(index=False, floatfmt=".4g"))


def cmd_platform(args) -> int:
    from hardware.platform import load_platform, shipped_platforms

    if args.list:
        print("\n".join(shipped_platforms()))
        return 0
    cfg = load_platform(args.platform)
    print(f"{cfg.platform.name} ({cfg.platform.kind}): {cfg.platform.description}\nfile: {cfg.source}\n")
    print("parameter space:")
    for p in cfg.parameters:
        print(f"  {p.name:<18} [{p.low:g}, {p.high:g}] {p.unit if p.unit != '1' else '':<5} {p.description}")
    print("\npumps:")
    for p in cfg.pumps:
        print(f"  {p.name:<10} {p.role:<8} stock {p.stock:<10} syringe {p.syringe_volume / 1000:g} mL, "
              f"{p.min_rate:g}-{p.max_rate:g} uL/min")
    print("\npath (after the first junction):")
    joins = {s.joins_at: s.name for s in cfg.streams if s.joins_at}
    for seg in cfg.path:
        notes = [f"zone {seg.zone}" if seg.zone else "", "reactor" if seg.reactor else "",
                 f"{seg.detector} cell" if seg.detector else "", f"stream {joins[seg.name]} joins" if seg.name in joins else ""]
        print(f"  {seg.name:<10} {seg.volume:g} uL, {seg.dispersion_tanks:g} tank(s)  "
              f"{', '.join(n for n in notes if n)}".rstrip())
    heaters = ", ".join(f"{zone} ({h.name})" for zone, h in cfg.heaters.items()) or "none (room temperature)"
    eq = cfg.equilibration
    rule = (f"t_E = {eq.tau_multiple:g} tau" if eq.rule == "tau_multiple"
            else f"t_E when the step response reaches {eq.washout:.0%}")
    print(f"\nheaters: {heaters}\nequilibration: {rule}")
    if cfg.regime is not None:
        print(f"flow regime: {cfg.regime.fluid.name} in a {cfg.regime.channel_diameter:g} mm tube, "
              f"{cfg.regime.defaults} rules" + (f" + {len(cfg.regime.rules)} of its own" if cfg.regime.rules else ""))
    if cfg.chemistry is not None:
        from hardware.virtual.chemistry import load_chemistry

        load_chemistry(cfg.chemistry.model, cfg.chemistry.options, source=str(cfg.source))  # raises if it cannot
        print(f"twin chemistry: {cfg.chemistry.model} (imports and accepts its options)")
    return 0


def cmd_doctor(args) -> int:
    from hardware.doctor import check_platform
    from hardware.platform import load_platform
    from hardware.rig import close_all_rigs

    cfg = load_platform(args.platform)
    print(f"{cfg.platform.name} ({cfg.platform.kind}), {cfg.source}\n")
    try:
        checks = check_platform(cfg, seed=args.seed)
    finally:
        close_all_rigs()
    rows = [{"instrument": c.role, "name": c.name, "driver": c.driver, "ok": "yes" if c.ok else "NO",
             "answer": c.answer} for c in checks]
    import pandas as pd

    _print_frame(pd.DataFrame(rows))
    failed = [c for c in checks if not c.ok]
    print(f"\n{len(checks) - len(failed)} of {len(checks)} instruments answered")
    return 1 if failed else 0


def _condition_from_args(cfg, settings: dict[str, float]) -> dict[str, float]:
    from flows.characterize import centre_condition

    condition = centre_condition(cfg)
    unknown = sorted(set(settings) - set(condition))
    if unknown:
        raise SystemExit(f"sdfl: unknown parameter(s) {unknown}; the space is: {cfg.describe_space()}")
    defaulted = sorted(set(condition) - set(settings))
    if defaulted:
        print(f"(centre of the space for: {', '.join(defaulted)})")
    condition.update(settings)
    return condition


def cmd_experiment(args) -> int:
    import pandas as pd

    from flows.experiment import run_experiment
    from hardware.platform import load_platform

    cfg = load_platform(args.platform)
    flows = _parse_pairs(args.flow, "--flow")
    kwargs = dict(platform=args.platform, campaign=args.campaign, replicates=args.replicates,
                  steady_check=args.steady_check or None, data_root=args.data_root, seed=args.seed,
                  experiment_id=args.experiment_id)
    if flows:
        if args.temperature is None and any(p.kind == "temperature" for p in cfg.parameters):
            raise SystemExit("sdfl: --flow needs --temperature too")
        kwargs.update(flowrates_ul_min=flows, temperature_c=args.temperature)
    else:
        kwargs.update(condition=_condition_from_args(cfg, _parse_pairs(args.set, "--set")))
    with _quick_prefect():
        row = run_experiment(**kwargs)
    if args.json:
        print(json.dumps(row, default=str, indent=1))
    else:
        _print_frame(pd.DataFrame([row]), summary_columns(cfg))
    return 0


def cmd_twin_table(args) -> int:
    from hardware.platform import load_platform
    from tasks.storage import read_experiments
    from tasks.twin_table import table_from_records, table_inputs

    cfg = load_platform(args.platform)
    records = read_experiments(args.data_root, args.campaign)
    if records.empty:
        raise SystemExit(f"sdfl: campaign {args.campaign!r} has no experiments under {args.data_root or 'data'}")
    table = table_from_records(cfg, records, reference_qy=args.reference_qy)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out, index=False) if out.suffix in (".parquet", ".pq") else table.to_csv(out, index=False)
    columns = table_inputs(cfg)
    if len(table) < 2 * len(columns):
        print(f"note: {len(table)} rows for {len(columns)} inputs; a table twin needs at least {2 * len(columns)} "
              "rows (run more experiments, or keep fewer inputs in the options below)")
    inputs = ", ".join(f'{k} = "{v}"' for k, v in columns.items())
    print(f"{len(table)} of {len(records)} experiments written to {out}. In a platform file (base = "
          f'"{cfg.platform.name}"):\n\n[chemistry]\nmodel = "hardware.virtual.tabular:TableChemistry"\n'
          f'options = {{ table = "{out}", inputs = {{ {inputs} }} }}')
    return 0


def _print_target(summary: dict) -> None:
    print(f"\ncampaign {summary['campaign']}: {summary.get('stopped_because', '')}")
    print(summary["objective"])
    print(f"experiments: {summary['experiments']} ({summary['completed']} completed, {summary['on_target']} on target)")
    best = summary.get("best")
    if best:
        print(f"best by desirability: {best['experiment_id']}: peak {best['peak_nm']:.2f} nm, FWHM "
              f"{best['fwhm_nm']:.2f} nm, quality {best['quality']:.4g}, desirability {best['desirability']:.3f}"
              + ("" if best["on_target"] else " (NOT on target)"))
        print("best condition: " + ", ".join(f"{k}={v:.4g}" for k, v in best["condition"].items()))
    if "best_true" in summary:
        true = summary["best_true"]
        print(f"twin's truth there: peak {true['peak_nm']:.2f} nm, FWHM {true['fwhm_nm']:.2f} nm, "
              f"quality {true['quality']:.4g}")
    front = summary.get("pareto_front", [])
    print(f"Pareto front of the {summary.get('pareto_of', 'experiments')}: {len(front)}")
    for row in front:
        print(f"  {row['experiment_id']}: peak {row['peak_nm']:.2f} nm, FWHM {row['fwhm_nm']:.2f} nm, "
              f"quality {row['quality']:.4g}, desirability {row['desirability']:.3f}")
    _print_repairs(summary)
    print(f"files: {summary.get('folder', '')}")


def cmd_seek_target(args) -> int:
    from flows.campaign import seek_target

    with _quick_prefect():
        summary = seek_target(campaign=args.campaign, platform=args.platform, target_peak_nm=args.target_nm,
                              target_peak_ev=args.target_ev, tolerance_nm=args.tolerance_nm,
                              max_fwhm_nm=args.max_fwhm_nm, quality=args.quality, policy=args.policy,
                              budget=args.budget, initial=args.initial,
                              patience=None if args.full_budget else args.patience, surrogate=args.surrogate,
                              in_flight=args.in_flight, seed=args.seed or 0, data_root=args.data_root,
                              storage=args.storage, reactors=args.reactors)
    _print_target(summary)
    return 0


def cmd_procedure(args) -> int:
    from flows.procedures import rig_procedure

    with _quick_prefect():
        steps = rig_procedure(procedure=args.procedure, platform=args.platform, seed=args.seed)
    for step in steps:
        print(f"{step['step']:<6} {step['t_start_s'] / 60:7.1f} -> {step['t_end_s'] / 60:7.1f} min  {step['detail']}")
    return 0


def cmd_study(args) -> int:
    import pandas as pd

    from flows.characterize import residence_time_study

    base = _parse_pairs(args.set, "--set") or None
    if base is not None:
        from hardware.platform import load_platform

        base = _condition_from_args(load_platform(args.platform), base)
    with _quick_prefect():
        result = residence_time_study(platform=args.platform, reaction_times_s=args.reaction_times,
                                      base_condition=base, follow_tau=args.follow_tau, interval_s=args.interval,
                                      start_from=args.start_from, data_root=args.data_root, seed=args.seed)
    print("\nresidence-time study: settling time per step (slowest of Abs_300, PL_I, PL_A)")
    _print_frame(pd.DataFrame(result["steps"]))
    print(STUDY_NOTE)
    print(f"\nfiles: {result['folder']}")
    return 0


def _print_campaign(summary: dict) -> None:
    print(f"\ncampaign {summary['campaign']}: {summary.get('stopped_because', '')}")
    print(f"experiments: {summary['experiments']} ({summary['completed']} completed); objective {summary['objective']}")
    if "best_value" in summary:
        print(f"best measured: {summary['best_value']:.5g}")
        print("best condition: " + ", ".join(f"{k}={v:.4g}" for k, v in summary["best_condition"].items()))
    if "true_optimum" in summary:
        print(f"true value of that condition (twin): {summary['best_true_value']:.5g} = "
              f"{100 * summary['best_vs_optimum']:.1f} % of the true optimum {summary['true_optimum']:.5g}"
              + ("" if summary.get("true_optimum_exhaustive", True) else " (estimated by a bounded search)"))
        print("true optimum: " + ", ".join(f"{k}={v:.4g}" for k, v in summary["true_optimum_condition"].items()))
    for name in ("holdout_r2", "mc_r2"):
        if name in summary:
            print(f"{name}: {summary[name]:.3f}")
    if "shap_top" in summary:
        print(f"most important inputs (SHAP): {', '.join(summary['shap_top'])}")
    if "resumed" in summary:
        print(f"resumed: {summary['resumed']}")
    _print_repairs(summary)
    print(f"files: {summary.get('folder', '')}")


def _print_repairs(summary: dict) -> None:
    """What the start of a campaign found and mended (a rebuilt ledger, files set aside)."""
    if "ledger_rebuilt_from" in summary:
        print(f"ledger: the Optuna study was missing and was rebuilt from {summary['ledger_rebuilt_from']} "
              "recorded experiments")
    for item in summary.get("set_aside", []):
        print(f"set aside: {item['file']} ({item['why']}) -> {item['moved_to']}")
    if summary.get("missing_records"):
        print(f"missing records: {', '.join(summary['missing_records'])} finished in the ledger but have no file in "
              "the dataset; restore them from a backup")


def cmd_optimize(args) -> int:
    from flows.campaign import optimize

    with _quick_prefect():
        summary = optimize(campaign=args.campaign, platform=args.platform, objective=args.objective,
                           policy=args.policy, budget=args.budget, initial=args.initial, surrogate=args.surrogate,
                           prior_campaign=args.prior_campaign, prior_model=args.prior_model,
                           in_flight=args.in_flight, kappa=args.kappa, seed=args.seed or 0,
                           data_root=args.data_root, storage=args.storage, explain=not args.no_explain,
                           reactors=args.reactors)
    _print_campaign(summary)
    return 0


def cmd_explore(args) -> int:
    from flows.campaign import explore

    with _quick_prefect():
        summary = explore(campaign=args.campaign, platform=args.platform, objective=args.objective,
                          target_r2=args.target_r2, budget=args.budget, initial=args.initial, policy=args.policy,
                          surrogate=args.surrogate, in_flight=args.in_flight, seed=args.seed or 0,
                          data_root=args.data_root, storage=args.storage, explain=not args.no_explain,
                          reactors=args.reactors)
    _print_campaign(summary)
    return 0


def cmd_manufacture(args) -> int:
    from flows.manufacture import manufacture
    from hardware.platform import load_platform

    recipe = None
    if args.from_campaign is not None and args.set:
        raise SystemExit("sdfl: give the recipe with --set or --from-campaign, not both")
    if args.from_campaign is None:
        recipe = _condition_from_args(load_platform(args.platform), _parse_pairs(args.set, "--set"))
    with _quick_prefect():
        summary = manufacture(lot=args.lot, recipe=recipe, from_campaign=args.from_campaign, objective=args.objective,
                              platform=args.platform, duration_h=args.hours, qc_every_min=args.qc_every,
                              qualification_min=args.qualification, on_alarm=args.on_alarm,
                              decision_timeout_min=args.decision_timeout, auto_refill=args.auto_refill,
                              seed=args.seed, data_root=args.data_root)
    print(f"\nlot {summary['lot']}: {summary['status']} ({summary.get('reason') or ''})")
    print(f"produced {summary['produced_h']:.2f} h of {summary['duration_h']:g} h; QC samples {summary['samples']}, "
          f"alarms {summary['alarms']} {summary['signals_by_rule'] or ''}, refills {summary['refills']}")
    if summary.get("yield_g_h") is not None:
        print(f"yield {1e3 * summary['yield_g_h']:.2f} mg/h of {summary['product']} "
              f"({summary['conversion_source']}); {summary['product_g']:.3f} g this lot")
    print(f"files: {summary['folder']}")
    return 0


def cmd_data(args) -> int:
    from tasks.storage import data_root, read_experiments

    frame = read_experiments(args.data_root, args.campaign)
    print(f"data root: {data_root(args.data_root)}  ({len(frame)} experiments)")
    _print_frame(frame, ["campaign", *SUMMARY_COLUMNS, "failure_reason"] if not args.all else None)
    skipped = frame.attrs.get("skipped_files", [])
    if skipped:  # each is named in a warning above
        print(f"\n{len(skipped)} file(s) could not be read and are not shown; running the campaign again sets "
              f"them aside under {data_root(args.data_root) / 'quarantine'}")
    return 0


def cmd_demo(args) -> int:
    import pandas as pd

    from flows.demo import demo

    with _quick_prefect():
        result = demo(data_root=args.data_root, seed=args.seed, budget=args.budget)
    print("\n== residence-time study: settling time per step (slowest of Abs_300, PL_I, PL_A) ==")
    _print_frame(pd.DataFrame(result["study"]["steps"]))
    print(STUDY_NOTE)
    print(f"study files: {result['study']['folder']}")
    print("\n== closed-loop optimization of PL_I (9 Latin-hypercube points, then expected improvement) ==")
    _print_campaign(result["campaign"])
    print(f"\nexperiments: sdfl data --campaign {result['campaign']['campaign']}   (Parquet under the data root)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from hardware.platform import DEFAULT_PLATFORM

    parser = argparse.ArgumentParser(prog="sdfl", description="Self-driving fluidic lab: flows over real "
                                     "instruments and a physics-based virtual lab.")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, campaign=True):
        p.add_argument("--platform", default=DEFAULT_PLATFORM, help="shipped platform name or path to a .toml")
        p.add_argument("--data-root", default=None, help="dataset root (default $SDFL_DATA_ROOT or ./data)")
        p.add_argument("--seed", type=int, default=None, help="virtual lab seed (default: the platform's)")
        if campaign:
            p.add_argument("--campaign", default="default", help="campaign name (dataset partition)")

    p = sub.add_parser("platform", help="show a platform's parameter space and pumps")
    p.add_argument("platform", nargs="?", default=DEFAULT_PLATFORM)
    p.add_argument("--list", action="store_true", help="list the shipped platforms")
    p.set_defaults(func=cmd_platform)

    p = sub.add_parser("doctor", help="ask every instrument of a platform who it is (moves nothing)")
    p.add_argument("--platform", default="virtual-cs3cu2i5", help="shipped platform name or path to a .toml")
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("experiment", help="run one condition end to end and record it")
    common(p)
    p.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="a parameter of the space (others default to the centre of the space)")
    p.add_argument("--flow", action="append", metavar="PUMP=UL_MIN", help="explicit pump flowrates instead")
    p.add_argument("--temperature", type=float, help="reactor temperature (C), with --flow (if the platform has one)")
    p.add_argument("--replicates", type=int, default=None)
    p.add_argument("--steady-check", action="store_true", help="also confirm steady state from the spectra")
    p.add_argument("--experiment-id", default=None, help="id to record under (default: a new sortable id)")
    p.add_argument("--json", action="store_true", help="print the whole record as JSON")
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("study", help="characterization studies")
    study = p.add_subparsers(dest="study", required=True)
    q = study.add_parser("residence-time", help="step between reaction times and time the transients")
    common(q, campaign=False)
    q.add_argument("--reaction-times", type=float, nargs="+", default=[25.0, 31.0, 42.0])
    q.add_argument("--follow-tau", type=float, default=3.0, help="how long to follow each step, in tau")
    q.add_argument("--interval", type=float, default=1.0, help="seconds between spectra")
    q.add_argument("--start-from", choices=["previous", "solvent"], default="previous",
                   help="step directly between reaction times (as the paper) or from solvent each time")
    q.add_argument("--set", action="append", metavar="NAME=VALUE", help="base condition (default: centre)")
    q.set_defaults(func=cmd_study)

    def campaign_args(p, policies, default_policy, budget):
        common(p, campaign=False)
        p.add_argument("--campaign", required=True, help="campaign name; the same name resumes it")
        p.add_argument("--objective", default="PL_I", help="a feature or a formula of features, e.g. 'PL_I / FWHM_nm'")
        p.add_argument("--policy", choices=policies, default=default_policy)
        p.add_argument("--budget", type=int, default=budget, help="experiments in total (failed ones count)")
        p.add_argument("--initial", type=int, default=9, help="Latin-hypercube points before the policy")
        p.add_argument("--surrogate", choices=["gp", "ensemble"], default="gp")
        p.add_argument("--in-flight", choices=["fail", "rerun"], default="fail",
                       help="on resume, what to do with an experiment a crash interrupted")
        p.add_argument("--storage", default=None, help="Optuna storage URL (default: SQLite under the data root)")
        p.add_argument("--no-explain", action="store_true", help="skip SHAP and the response surface")
        p.add_argument("--reactors", type=int, default=1,
                       help="run on this many copies of a virtual/emulated platform at once")

    p = sub.add_parser("optimize", help="closed-loop optimization of an objective")
    campaign_args(p, ["ei", "ucb", "eplt", "mv", "ivr", "random", "tpe", "gp"], "ei", 30)
    p.add_argument("--prior-campaign", default=None, help="learn from an earlier campaign's data")
    p.add_argument("--prior-model", default=None, help="learn from a saved digital twin (model.pkl)")
    p.add_argument("--kappa", type=float, default=2.0, help="UCB exploration weight")
    p.set_defaults(func=cmd_optimize)

    p = sub.add_parser("explore", help="build a digital twin (LHS + integrated variance reduction) to a target R^2")
    campaign_args(p, ["ivr", "mv", "random"], "ivr", 60)
    p.add_argument("--target-r2", type=float, default=0.8)
    p.set_defaults(func=cmd_explore)

    p = sub.add_parser("seek-target", help="reach a target PL peak with the highest quality and the narrowest FWHM")
    common(p, campaign=False)
    p.add_argument("--campaign", required=True, help="campaign name; the same name resumes it")
    peak = p.add_mutually_exclusive_group(required=True)
    peak.add_argument("--target-nm", type=float, help="target PL peak wavelength (nm)")
    peak.add_argument("--target-ev", type=float, help="target PL peak energy (eV)")
    p.add_argument("--tolerance-nm", type=float, default=2.0, help="on target within this many nm (default 2)")
    p.add_argument("--max-fwhm-nm", type=float, default=None, help="hard FWHM limit in nm (default none)")
    p.add_argument("--quality", default="PL_A / (1 - 10 ** (-Abs_300))",
                   help="what to maximise (default: a relative PLQY, PL area per absorbed excitation)")
    p.add_argument("--policy", choices=["desirability-ei", "tpe", "random"], default="desirability-ei")
    p.add_argument("--budget", type=int, default=30, help="experiments in total (failed ones count)")
    p.add_argument("--initial", type=int, default=6, help="Latin-hypercube points before the policy")
    p.add_argument("--patience", type=int, default=5,
                   help="stop once on target and this many experiments after the best on-target one")
    p.add_argument("--full-budget", action="store_true", help="never stop early: run the whole budget")
    p.add_argument("--surrogate", choices=["gp", "ensemble"], default="gp")
    p.add_argument("--in-flight", choices=["fail", "rerun"], default="fail",
                   help="on resume, what to do with an experiment a crash interrupted")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: SQLite under the data root)")
    p.add_argument("--reactors", type=int, default=1,
                   help="run on this many copies of a virtual/emulated platform at once")
    p.set_defaults(func=cmd_seek_target)

    p = sub.add_parser("manufacture", help="hold a recipe for hours: QC, control charts, refills, yield")
    common(p, campaign=False)
    p.add_argument("--lot", required=True, help="lot name (data under <data root>/lots/<lot>/)")
    p.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="the recipe: parameters of the space (others default to the centre)")
    p.add_argument("--from-campaign", default=None, help="or: the best experiment of this campaign")
    p.add_argument("--objective", default="PL_I", help="what 'best' means with --from-campaign")
    p.add_argument("--hours", type=float, default=8.0, help="production time (simulated on the virtual lab)")
    p.add_argument("--qc-every", type=float, default=10.0, help="minutes between QC samples")
    p.add_argument("--qualification", type=float, default=60.0, help="minutes of QC that set the control limits")
    p.add_argument("--on-alarm", choices=["pause", "continue", "stop"], default="stop",
                   help="pause waits for a decision in the Prefect UI (needs a server: PREFECT_API_URL)")
    p.add_argument("--decision-timeout", type=float, default=60.0, help="minutes to wait for a decision")
    p.add_argument("--auto-refill", action="store_true", help="virtual rigs: refill syringes without asking")
    p.set_defaults(func=cmd_manufacture)

    p = sub.add_parser("procedure", help="a platform's start-up (purge, fill) or shut-down (flush) steps")
    p.add_argument("procedure", choices=["startup", "shutdown"])
    common(p, campaign=False)
    p.set_defaults(func=cmd_procedure)

    p = sub.add_parser("twin-table", help="turn recorded experiments into a chemistry table for a data-driven twin")
    common(p)
    p.add_argument("--out", required=True, help="table to write (.csv or .parquet)")
    p.add_argument("--reference-qy", type=float, default=1.0,
                   help="QY given to the brightest row (the table's QY is relative to it)")
    p.set_defaults(func=cmd_twin_table)

    p = sub.add_parser("data", help="show the recorded experiments")
    p.add_argument("--campaign", default=None)
    p.add_argument("--data-root", default=None)
    p.add_argument("--all", action="store_true", help="every column")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("demo", help="residence-time study + a closed-loop optimization on the virtual lab")
    p.add_argument("--data-root", default=None)
    p.add_argument("--budget", type=int, default=30)
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=cmd_demo)
    return parser


def _terminate(signum, frame):
    """SIGTERM (a process manager, `kill`) ends the run like Ctrl-C: the flow is marked crashed,
    its hook puts the rig in the safe state and records the experiment."""
    raise KeyboardInterrupt(f"terminated by signal {signum}")


def main(argv: list[str] | None = None) -> int:
    from hardware.errors import SdflError

    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        if args.command not in ("platform", "doctor", "data", "twin-table"):  # every other command runs flows
            from flows.prefect_server import use_sdfl_temporary_server

            use_sdfl_temporary_server()  # Prefect's temporary server, if needed, goes when sdfl goes
        return args.func(args)
    except SdflError as exc:
        print(f"sdfl: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"sdfl: stopped ({str(exc) or 'interrupted'}); the rig was put in its safe state", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
