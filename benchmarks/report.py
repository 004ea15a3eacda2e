"""How long the end-of-campaign report takes (final model, its R^2 against the twin, SHAP and
plots), against the code before this change measured in the same run.

One campaign is run once on the virtual lab, without Prefect; each version then builds the
report of a copy of it in a fresh Python process (the cost a campaign pays: imports, numba
compilation, the twin's Monte Carlo R^2), alternately, and the median wall and CPU seconds of the
repeats are reported, with the SHAP values of both versions compared.

    .venv/bin/python -m benchmarks.report [--baseline 6bbf900] [--budget 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.no_server import snapshot

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "report.md"
CAMPAIGN = "bench-report"

RUN_CAMPAIGN = """
from flows.campaign_loop import CampaignPlan, run_campaign
from flows.experiment import PLAIN_STEPS
from hardware.platform import load_platform
from hardware.rig import open_rig
plan = CampaignPlan(campaign={campaign!r}, policy="ei", budget={budget}, seed=3, data_root={root!r})
run_campaign(open_rig(load_platform(), 3), plan, PLAIN_STEPS)
"""

BUILD_REPORT = """
import json, time
t0 = time.perf_counter()
from flows.campaign_report import build_report
from hardware.platform import load_platform
from tasks import ledger
from tasks.features import FeatureSettings, feature_columns
from tasks.objective import parse_objective
platform = load_platform()
objective = parse_objective("PL_I", feature_columns(FeatureSettings.from_config(platform.features)))
study = ledger.open_study({campaign!r}, platform, "PL_I", ledger.storage_url({root!r}), None)[0]
summary = build_report(platform, study, objective, "gp", None, {root!r}, {campaign!r}, 3, publish=False)
print(json.dumps({{"seconds": time.perf_counter() - t0, "mc_r2": summary.get("mc_r2"),
                  "shap_top": summary.get("shap_top")}}))
"""


def run(code: Path, script: str, env: dict) -> tuple[float, float, str]:
    """(wall s, CPU s of the process, its last line of output)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script], cwd=code, env=env, capture_output=True, text=True,
                          timeout=1800)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"failed in {code}:\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, (done.stdout.strip().splitlines() or [""])[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="6bbf900", help="the commit to compare with")
    parser.add_argument("--code", default="HEAD", help="the commit measured")
    parser.add_argument("--budget", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    now, now_commit = snapshot(args.code)
    old, old_commit = snapshot(args.baseline)
    data = Path(tempfile.mkdtemp(prefix="sdfl-bench-report-"))
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "OMP_NUM_THREADS": "1"}
    env.pop("PREFECT_API_URL", None)
    try:
        campaign = data / "campaign"
        run(now, RUN_CAMPAIGN.format(campaign=CAMPAIGN, budget=args.budget, root=str(campaign)), env)
        times: dict[str, list] = {"now": [], "before": []}
        for repeat in range(args.repeats):
            for label, code in (("now", now), ("before", old)):
                root = data / f"{label}-{repeat}"
                shutil.copytree(campaign, root)
                wall, cpu, line = run(code, BUILD_REPORT.format(campaign=CAMPAIGN, root=str(root)), env)
                times[label].append((wall, cpu, json.loads(line)))
                print(label, f"{wall:.1f} s wall, {cpu:.1f} s CPU", line, flush=True)
    finally:
        shutil.rmtree(now, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)
    med = {k: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v)) for k, v in times.items()}
    same_top = times["now"][0][2]["shap_top"] == times["before"][0][2]["shap_top"]
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    text = (f"# The end-of-campaign report\n\n`.venv/bin/python -m benchmarks.report --baseline {args.baseline} "
            f"--budget {args.budget} --repeats {args.repeats}` on {dt.datetime.now():%Y-%m-%d %H:%M}: code "
            f"{now_commit} against {old_commit}, alternately, each report in a fresh process on a copy of one "
            f"{args.budget}-experiment campaign, median of {args.repeats}. {os.cpu_count()} CPUs, load average at "
            f"the end {load}.\n\n"
            "| code | wall s | CPU s | R^2 against the twin | SHAP top two |\n|---|---:|---:|---:|---|\n"
            + "\n".join(f"| {label} ({commit}) | {med[label][0]:.1f} | {med[label][1]:.1f} | "
                        f"{times[label][0][2]['mc_r2']:.3f} | {', '.join(times[label][0][2]['shap_top'])} |"
                        for label, commit in (("now", now_commit), ("before", old_commit)))
            + f"\n\nSpeed-up (wall): {med['before'][0] / med['now'][0]:.1f}x. Same two most important inputs: "
            f"{'yes' if same_top else 'no'}.\n")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
