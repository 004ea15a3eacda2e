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
from pathlib import Path

from flows.cli_console import terminal_run
from flows.cli_options import add_settings, settings_from
from flows.settings import (
    DemoSettings,
    ExperimentSettings,
    ExploreSettings,
    ManufactureSettings,
    OptimizeSettings,
    ProcedureSettings,
    ResidenceTimeSettings,
    SeekTargetSettings,
)
from hardware.errors import SdflError, SdflInputError

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

FEATURE_SUMMARY = ["tau_s", "t_E_s", "regime_Re", "PL_peak_nm", "PL_I", "PL_I_sd", "PL_A", "FWHM_nm", "Abs_300", "SNR"]
"""The features a summary of experiments shows, after each platform's own parameters."""


def summary_columns(platform) -> list[str]:
    """The summary of an experiment on `platform`: its own parameters, then the usual features."""
    return ["experiment_id", "status", *platform.parameter_names, *FEATURE_SUMMARY]


def recorded_parameters(frame) -> list[str]:
    """The parameters of the platforms that recorded `frame` (each row names its platform)."""
    from hardware.platform import load_platform

    names: list[str] = []
    for platform in frame["platform"].dropna().unique() if "platform" in frame else []:
        try:
            names += [n for n in load_platform(platform).parameter_names if n not in names]
        except SdflError:  # a platform file that has gone: show what the rows hold
            pass
    return names


STUDY_NOTE = ("settle_tau: when the slowest feature is within 1 % of its final value, in residence times tau; "
              "resolved_features = 0: the step moved no feature by more than twice its noise (nothing to wait for)")


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
    width = max(len(p.range_text) for p in cfg.parameters)
    for p in cfg.parameters:
        print(f"  {p.name:<18} {p.range_text:<{width}}  {p.description}")
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


def _ready(args, model, **extra):
    """The settings of a flow command, checked against the platform before Prefect starts."""
    settings = settings_from(args, model, **extra)
    platform = load_checked_platform(settings.platform)
    settings.check(platform)
    return settings, platform


def load_checked_platform(name: str):
    """The platform, or SdflInputError naming the shipped ones (with a did-you-mean)."""
    from hardware.errors import did_you_mean
    from hardware.platform import load_platform, shipped_platforms

    shipped = shipped_platforms()
    if name not in shipped and not name.endswith(".toml") and "/" not in name:
        raise SdflInputError(f"--platform {name!r} is not a shipped platform{did_you_mean(name, shipped)}; "
                             f"choose one of {', '.join(shipped)}, or give the path to a platform .toml file")
    return load_platform(name)


def cmd_experiment(args) -> int:
    import pandas as pd

    settings, cfg = _ready(args, ExperimentSettings)
    if settings.flowrates_ul_min is None:
        defaulted = [n for n in cfg.parameter_names if n not in (settings.condition or {})]
        if defaulted:
            print(f"(centre of the space for: {', '.join(defaulted)})")
    from flows.experiment import run_experiment

    with terminal_run(args):
        row = run_experiment(**settings.values())
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
    settings, _ = _ready(args, SeekTargetSettings)
    from flows.campaign import seek_target

    with terminal_run(args):
        summary = seek_target(**settings.values())
    _print_target(summary)
    return 0


def cmd_procedure(args) -> int:
    word = {"procedure": args.procedure_word} if args.procedure_word else {}
    settings, _ = _ready(args, ProcedureSettings, **word)
    from flows.procedures import rig_procedure

    with terminal_run(args):
        steps = rig_procedure(**settings.values())
    for step in steps:
        print(f"{step['step']:<6} {step['t_start_s'] / 60:7.1f} -> {step['t_end_s'] / 60:7.1f} min  {step['detail']}")
    return 0


def cmd_study(args) -> int:
    import pandas as pd

    settings, _ = _ready(args, ResidenceTimeSettings)
    from flows.characterize import residence_time_study

    with terminal_run(args):
        result = residence_time_study(**settings.values())
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
    from flows.campaign_report import model_lines

    for line in model_lines(summary):
        print(line)
    if "resumed" in summary:
        print(f"resumed: {summary['resumed']}")
    _print_repairs(summary)
    print(f"files: {summary.get('folder', '')}")


def _print_repairs(summary: dict) -> None:
    """What the start of a campaign found and mended (a rebuilt ledger, files set aside)."""
    if "ledger_rebuilt_from" in summary:
        print(f"ledger: the Optuna study was missing and was rebuilt from {summary['ledger_rebuilt_from']} "
              "recorded experiments")
    if "policy_changed" in summary:
        change = summary["policy_changed"]
        print(f"policy: this run used {change['now']}; the campaign ran with {change['before']} before")
    for item in summary.get("set_aside", []):
        print(f"set aside: {item['file']} ({item['why']}) -> {item['moved_to']}")
    if summary.get("missing_records"):
        print(f"missing records: {', '.join(summary['missing_records'])} finished in the ledger but have no file in "
              "the dataset; restore them from a backup")


def cmd_optimize(args) -> int:
    settings, _ = _ready(args, OptimizeSettings)
    from flows.campaign import optimize

    with terminal_run(args):
        summary = optimize(**settings.values())
    _print_campaign(summary)
    return 0


def cmd_explore(args) -> int:
    settings, _ = _ready(args, ExploreSettings)
    from flows.campaign import explore

    with terminal_run(args):
        summary = explore(**settings.values())
    _print_campaign(summary)
    return 0


def cmd_manufacture(args) -> int:
    settings, _ = _ready(args, ManufactureSettings)
    from flows.manufacture import manufacture

    with terminal_run(args):
        summary = manufacture(**settings.values())
    print(f"\nlot {summary['lot']}: {summary['status']} ({summary.get('reason') or ''})")
    print(f"produced {summary['produced_h']:.2f} h of {summary['duration_h']:g} h; QC samples {summary['samples']}, "
          f"alarms {summary['alarms']} {summary['signals_by_rule'] or ''}, refills {summary['refills']}")
    if summary.get("yield_g_h") is not None:
        print(f"yield {1e3 * summary['yield_g_h']:.2f} mg/h of {summary['product']} "
              f"({summary['conversion_source']}); {summary['product_g']:.3f} g this lot")
    print(f"files: {summary['folder']}")
    return 0


def cmd_data(args) -> int:
    from tasks.storage import campaigns, data_root, read_experiments

    if args.campaign is not None:
        _known_campaign(args.campaign, campaigns(data_root(args.data_root)), data_root(args.data_root))
    frame = read_experiments(args.data_root, args.campaign)
    print(f"data root: {data_root(args.data_root)}  ({len(frame)} experiments)")
    columns = ["campaign", "experiment_id", "status", *recorded_parameters(frame), *FEATURE_SUMMARY, "failure_reason"]
    _print_frame(frame, columns if not args.all else None)
    skipped = frame.attrs.get("skipped_files", [])
    if skipped:  # each is named in a warning above
        print(f"\n{len(skipped)} file(s) could not be read and are not shown; running the campaign again sets "
              f"them aside under {data_root(args.data_root) / 'quarantine'}")
    return 0


def cmd_compact(args) -> int:
    from tasks.storage import campaigns, compact_campaign, data_root

    root = data_root(args.data_root)
    names = campaigns(root)
    if args.campaign is not None:
        _known_campaign(args.campaign, names, root)
        names = [args.campaign]
    print(f"data root: {root}  ({len(names)} campaign(s))")
    for name in names:
        before = _size(root, name)
        done = compact_campaign(root, name)
        folded = {table: d.loose_folded for table, d in done.items()}
        merged = sum(d.parts_merged for d in done.values())
        skipped = [p for d in done.values() for p, _ in d.skipped]
        print(f"{name}: {folded.get('experiments', 0)} experiment and {folded.get('spectra', 0)} spectra file(s) "
              f"folded into parts{f', {merged} small parts merged' if merged else ''}; "
              f"{before / 2**20:.1f} MB -> {_size(root, name) / 2**20:.1f} MB")
        for path in skipped:
            print(f"  left in place (cannot be read): {path}")
    return 0


def _size(root: Path, campaign: str) -> int:
    return sum(p.stat().st_size for table in ("experiments", "spectra")
               for p in (root / table / f"campaign={campaign}").glob("*.parquet"))


def _known_campaign(campaign: str, known: list[str], root: Path) -> None:
    from hardware.errors import did_you_mean

    if campaign not in known:
        raise SdflInputError(f"--campaign {campaign!r}: no such campaign under {root}{did_you_mean(campaign, known)}; "
                             f"the campaigns there: {', '.join(known) or '(none yet)'}")


def cmd_demo(args) -> int:
    import pandas as pd

    settings, _ = _ready(args, DemoSettings)
    from flows.demo import demo

    with terminal_run(args):
        result = demo(**settings.values())
    print("\n== residence-time study: settling time per step (slowest of Abs_300, PL_I, PL_A) ==")
    _print_frame(pd.DataFrame(result["study"]["steps"]))
    print(STUDY_NOTE)
    print(f"study files: {result['study']['folder']}")
    print("\n== closed-loop optimization of PL_I (9 Latin-hypercube points, then expected improvement) ==")
    _print_campaign(result["campaign"])
    print(f"\nexperiments: sdfl data --campaign {result['campaign']['campaign']}   (Parquet under the data root)")
    return 0


FLOW_COMMANDS = {
    "experiment": (ExperimentSettings, "run one condition end to end and record it", cmd_experiment),
    "optimize": (OptimizeSettings, "closed-loop optimization of an objective", cmd_optimize),
    "explore": (ExploreSettings, "build a digital twin (Latin hypercube, then exploration) to a target R^2",
                cmd_explore),
    "seek-target": (SeekTargetSettings, "reach a target PL peak with the highest quality and the narrowest FWHM",
                    cmd_seek_target),
    "manufacture": (ManufactureSettings, "hold a recipe for hours: QC, control charts, refills, yield",
                    cmd_manufacture),
    "procedure": (ProcedureSettings, "a platform's start-up (purge, fill) or shut-down (flush) steps",
                  cmd_procedure),
    "demo": (DemoSettings, "the residence-time study, then a closed-loop optimization on the virtual lab",
             cmd_demo),
}
"""The commands that run a flow: their settings model, what they do, and their handler."""


def build_parser() -> argparse.ArgumentParser:
    from hardware.platform import DEFAULT_PLATFORM

    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("-v", "--verbose", action="store_true", help="show every task run's log lines")
    output.add_argument("--debug", action="store_true", help="show Python tracebacks of failures")
    parser = _Parser(prog="sdfl", parents=[output], description="Self-driving fluidic lab: flows "
                                     "over real instruments and a physics-based virtual lab.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def command(name: str, text: str, func, model=None, parent=sub, **options):
        p = parent.add_parser(name, help=text, description=text, parents=[output],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter if model is None
                              else argparse.HelpFormatter, **options)
        if model is not None:
            add_settings(p, model)
        p.set_defaults(func=func)
        return p

    p = command("platform", "show a platform's parameter space and pumps", cmd_platform)
    p.add_argument("platform", nargs="?", default=DEFAULT_PLATFORM)
    p.add_argument("--list", action="store_true", help="list the shipped platforms")

    p = command("doctor", "ask every instrument of a platform who it is (moves nothing)", cmd_doctor)
    p.add_argument("--platform", default=DEFAULT_PLATFORM, help="shipped platform name or path to a .toml")
    p.add_argument("--seed", type=int, default=None, help="virtual lab seed (none: the platform's)")

    for name, (model, text, func) in FLOW_COMMANDS.items():
        p = command(name, text, func, model)
        if name == "experiment":
            p.add_argument("--json", action="store_true", help="print the whole record as JSON")
        if name == "procedure":  # `sdfl procedure startup` reads better than --procedure startup
            p.add_argument("procedure_word", nargs="?", metavar="PROCEDURE", help="startup or shutdown (or --procedure)")

    p = sub.add_parser("study", help="characterization studies")
    study = p.add_subparsers(dest="study", required=True, parser_class=_Parser)
    command("residence-time", "step between reaction times and time the transients", cmd_study,
            ResidenceTimeSettings, parent=study)

    p = command("twin-table", "turn recorded experiments into a chemistry table for a data-driven twin",
                cmd_twin_table)
    p.add_argument("--platform", default=DEFAULT_PLATFORM, help="shipped platform name or path to a .toml")
    p.add_argument("--data-root", default=None, help="dataset root (none: $SDFL_DATA_ROOT or ./data)")
    p.add_argument("--campaign", default="default", help="campaign whose experiments make the table")
    p.add_argument("--out", required=True, help="table to write (.csv or .parquet)")
    p.add_argument("--reference-qy", type=float, default=1.0,
                   help="QY given to the brightest row (the table's QY is relative to it)")

    p = command("data", "show the recorded experiments", cmd_data)
    p.add_argument("--campaign", default=None, help="one campaign (none: all)")
    p.add_argument("--data-root", default=None, help="dataset root (none: $SDFL_DATA_ROOT or ./data)")
    p.add_argument("--all", action="store_true", help="every column")

    p = command("compact", "fold a campaign's per-experiment files into a few part files (safe at any time)",
                cmd_compact)
    p.add_argument("--campaign", default=None, help="one campaign (none: all)")
    p.add_argument("--data-root", default=None, help="dataset root (none: $SDFL_DATA_ROOT or ./data)")
    return parser


def _terminate(signum, frame):
    """SIGTERM (a process manager, `kill`) ends the run like Ctrl-C: the flow is marked crashed,
    its hook puts the rig in the safe state and records the experiment."""
    raise KeyboardInterrupt(f"terminated by signal {signum}")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (and a pointer to --help) instead of the whole usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _unknown_options(parser: argparse.ArgumentParser, args, extras: list[str]) -> str:
    """What is wrong with options the command does not have, with a did-you-mean."""
    from hardware.errors import did_you_mean

    sub = _subparser(parser, args)
    known = list(sub._option_string_actions) if sub is not None else []
    words = []
    for token in extras:
        name = token.split("=", 1)[0]
        if name.startswith("-"):
            words.append(f"{name} is not an option of sdfl {args.command}{did_you_mean(name, known)}")
        else:
            words.append(f"{token!r} belongs to no option (values of an option follow it: --name VALUE)")
    return "; ".join(words)


def _subparser(parser, args):
    for action in parser._subparsers._group_actions:
        sub = action.choices.get(args.command)
        if sub is not None and getattr(args, "study", None) and sub._subparsers is not None:
            return sub._subparsers._group_actions[0].choices.get(args.study)
        return sub
    return None


def main(argv: list[str] | None = None) -> int:
    from hardware.errors import LabNotReady, TemporaryServerDidNotStart

    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    command = f"sdfl {args.command}"
    if extras:
        print(f"{command}: {_unknown_options(parser, args, extras)} (see {command} --help)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.func(args)
    except SdflInputError as exc:  # a wrong setting, found before anything ran or by the run's own checks
        print(f"{command}: {exc}", file=sys.stderr)
        return 2
    except (LabNotReady, TemporaryServerDidNotStart) as exc:  # a person must act (refill, start a server)
        print(f"{command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"{command}: stopped ({str(exc) or 'interrupted'}); the rig was put in its safe state", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a run failure: one line here, the traceback in the log file
        if args.debug:
            raise
        what = f"{type(exc).__name__}: {exc}"
        where = getattr(args, "log_path", None)
        if where:  # the traceback, for whoever looks into the failure
            import traceback

            with open(where, "a", encoding="utf-8") as log:
                log.write("\nThe run failed:\n" + "".join(traceback.format_exception(exc)))
        print(f"{command}: the run failed: {what}" + (f"\nfull log: {where}" if where else "")
              + " (run again with --debug to see the Python traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
