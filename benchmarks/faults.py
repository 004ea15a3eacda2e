"""Fault benchmark: when instruments misbehave, how many virtual experiments complete, how many
fail and are recorded, how many are lost, and is the rig left safe?

Each job is a short campaign (random proposals, the loop's plain step functions) on a fresh
virtual rig with one fault scenario switched on: lost or garbled replies at a rate per command,
or one fatal fault at a random moment (a stalled pump, a clogged line, a spectrometer that
disconnects, a syringe loaded short that runs dry). The campaigns hold the rig between
experiments, as real ones do. Two retry policies run on the same seeds in the same run:

- step retries: every instrument command is tried once; a step (levels, reference, equilibrate,
  acquire) is repeated up to 3 more times after a lost or garbled reply (the Prefect task
  retries; what sdfl did before command retries);
- command retries: each command that is safe to repeat is tried up to 3 times, plus the same
  step retries.

Counts (experiments):
- attempted: handed to the rig and past the checks that refuse a request before anything moves;
- completed: recorded as completed and told COMPLETE to the ledger;
- failed, recorded: recorded as failed and told FAIL;
- lost: attempted, but no record in the dataset;
- duplicated: a record written by two different experiments (an overwrite), or a trial told
  twice;
- ledger mismatch: a trial told FAIL with no experiment recorded (and not a set-aside trial), or
  left RUNNING;
- unsafe: times the rig was found running (a pump on, a heater set, a light on) right after a
  failed experiment or at the end of a campaign.

    .venv/bin/python benchmarks/faults.py [--quick] [--workers 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks._campaigns import one_blas_thread_per_worker  # noqa: E402

PLATFORM = "virtual-cs3cu2i5"
STEP_RETRIES = 3
"""Extra tries of a step after a transient error (the Prefect tasks' `retries`)."""
TRANSIENT_RATES = (0.005, 0.01, 0.02)
FATAL = ("stall", "clog", "disconnect", "run dry")
POLICIES = ("step retries", "command retries")


@dataclasses.dataclass(frozen=True)
class Job:
    scenario: str
    rate: float
    policy: str
    seed: int
    budget: int


def jobs(quick: bool) -> list[Job]:
    seeds_transient, budget_transient = (2, 12) if quick else (8, 25)
    seeds_fatal, budget_fatal = (4, 5) if quick else (20, 6)
    out = []
    for policy in POLICIES:
        for rate in TRANSIENT_RATES:
            out += [Job("lost or garbled replies", rate, policy, s, budget_transient) for s in range(seeds_transient)]
        for scenario in FATAL:
            out += [Job(scenario, 0.0, policy, 1000 + s, budget_fatal) for s in range(seeds_fatal)]
    return out


def switch_on(job: Job, lab, rng: np.random.Generator) -> None:
    """The job's fault, at a random moment of the campaign (each experiment takes ~10 simulated min)."""
    plan = lab.faults.plan
    horizon_s = job.budget * 600.0
    if job.scenario == "lost or garbled replies":
        plan.timeout_probability = plan.garbled_probability = job.rate / 2
    elif job.scenario == "stall":
        plan.stall_pump = str(rng.choice(["cui", "cs_oleate", "pfo", "ode_cs"]))
        plan.stall_at_s = float(rng.uniform(0.1, 0.9) * horizon_s)
    elif job.scenario == "clog":
        plan.clog_at_s = float(rng.uniform(0.1, 0.9) * horizon_s)
    elif job.scenario == "disconnect":
        plan.disconnect_spectrometer = str(rng.choice(["pl", "abs"]))
        plan.disconnect_after_reads = int(rng.integers(5, 20 * job.budget))
    elif job.scenario == "run dry":
        plan.empty_pump = str(rng.choice(["cui", "oa_cu", "cs_oleate", "pfo"]))
        plan.empty_fill_ul = float(rng.uniform(1000.0, 8000.0))


def with_step_retries(step):
    """A step repeated after a lost or garbled reply, as the Prefect task retry condition does."""
    from hardware.errors import TransientInstrumentError

    def retried(*args, **kwargs):
        for attempt in range(STEP_RETRIES + 1):
            try:
                return step(*args, **kwargs)
            except TransientInstrumentError:
                if attempt == STEP_RETRIES:
                    raise
        raise AssertionError("unreachable")

    return retried


def unsafe_parts(lab) -> list[str]:
    """What is still running on the virtual rig (empty when it is safe)."""
    lab.sync()
    out = [f"pump {n}" for n, p in lab.pumps.items() if p._set_rate > 0 and p.alarm is None]
    out += [f"heater {z}" for z, h in lab.heaters.items() if h.setpoint() is not None]
    out += [f"light {r}" for r, s in lab.light_sources.items() if s.is_on()]
    return out


def run_job(job: Job) -> dict:
    """One campaign; returns its counts."""
    logging.disable(logging.CRITICAL)
    import optuna

    import hardware.retry as retry_module
    from flows.campaign_loop import CampaignPlan, run_campaign
    from flows.experiment import PLAIN_STEPS
    from flows.operator import perform_refill
    from flows.reactors import LocalReactor
    from hardware.errors import LabNotReady, SdflError, SdflInputError
    from hardware.platform import load_platform
    from hardware.rig import close_rig, open_rig
    from tasks import ledger, storage

    retry_module.COMMAND_ATTEMPTS = 1 if job.policy == "step retries" else 3
    root = tempfile.mkdtemp(prefix="sdfl-faults-")
    writes: dict[str, set] = {}
    counts = Counter()
    original_write = storage.write_experiment

    def write(row, spectra, schema, campaign, data_root=None):
        writes.setdefault(row["experiment_id"], set()).add(row["started_at"])
        return original_write(row, spectra, schema, campaign, data_root)

    def refill(reactor, need) -> bool:
        """The operator refills what the campaign asks for."""
        perform_refill(reactor.rig, need.pumps)
        return True

    class Counting(LocalReactor):
        """The rig as the campaign sees it, counting what it is handed and how it ends."""

        def conduct(self, **kwargs):
            counts["handed"] += 1
            try:
                return super().conduct(**kwargs)
            except (SdflInputError, LabNotReady) as exc:
                if not storage.existing_record(kwargs["data_root"], kwargs["campaign"], kwargs["experiment_id"]):
                    counts["refused"] += 1  # stopped before anything moved: not an experiment
                    counts["refused as bad input" if isinstance(exc, SdflInputError) else "refill"] += 1
                raise
            except BaseException:
                counts["unsafe"] += bool(unsafe_parts(self.rig.lab))
                raise

    steps = dataclasses.replace(
        PLAIN_STEPS, record=write, levels=with_step_retries(PLAIN_STEPS.levels),
        reference=with_step_retries(PLAIN_STEPS.reference), equilibrate=with_step_retries(PLAIN_STEPS.equilibrate),
        acquire=with_step_retries(PLAIN_STEPS.acquire))
    storage.write_experiment = write
    platform = load_platform(PLATFORM)
    close_rig(PLATFORM, job.seed)
    rig = open_rig(platform, job.seed)
    switch_on(job, rig.lab, np.random.default_rng([job.seed, 99]))
    plan = CampaignPlan(campaign="faults", policy="random", budget=job.budget, initial=0, seed=job.seed,
                        data_root=root)
    t0 = time.perf_counter()
    stopped_by = ""
    try:
        run_campaign(Counting(rig, steps), plan, steps, confirm_refill=refill)
    except SdflError as exc:
        stopped_by = type(exc).__name__
    finally:
        storage.write_experiment = original_write
    wall = time.perf_counter() - t0
    counts["unsafe"] += bool(unsafe_parts(rig.lab))
    rows = storage.read_experiments(root, "faults")
    recorded = {r["experiment_id"]: r["status"] for r in rows.to_dict(orient="records")} if len(rows) else {}
    study = optuna.load_study(study_name="faults", storage=ledger.storage_url(root))
    attempted = counts["handed"] - counts["refused"]
    told = Counter()
    for t in study.trials:
        eid = t.user_attrs.get("experiment_id")
        if t.state == optuna.trial.TrialState.RUNNING:
            told["running"] += 1
        elif t.user_attrs.get("not_run"):
            continue
        elif t.state == optuna.trial.TrialState.COMPLETE and recorded.get(eid) == "completed":
            told["completed"] += 1
        elif t.state == optuna.trial.TrialState.FAIL and recorded.get(eid) in ("failed", "crashed", "cancelled"):
            told["failed"] += 1
        elif t.state == optuna.trial.TrialState.FAIL and eid not in recorded:
            told["fail without record"] += 1
    result = {
        "scenario": job.scenario if not job.rate else f"{100 * job.rate:g} % lost or garbled",
        "policy": job.policy, "attempted": attempted, "completed": told["completed"],
        "failed_recorded": told["failed"], "lost": max(attempted - len(recorded), 0),
        "duplicated": sum(len(v) > 1 for v in writes.values()),
        "ledger_mismatch": told["running"] + max(told["fail without record"] - counts["refused as bad input"], 0),
        "unsafe": counts["unsafe"], "retries": rig.retries.total, "refills": counts["refill"],
        "stopped_by": stopped_by, "wall_s": wall,
    }
    close_rig(PLATFORM, job.seed)
    shutil.rmtree(root, ignore_errors=True)
    return result


def table(results: list[dict]) -> str:
    keys = ("attempted", "completed", "failed_recorded", "lost", "duplicated", "ledger_mismatch", "unsafe",
            "retries")
    groups: dict[tuple, Counter] = {}
    for r in results:
        group = groups.setdefault((r["scenario"], r["policy"]), Counter())
        group.update({k: r[k] for k in keys})
        group["campaigns"] += 1
    lines = ["| scenario | retry policy | campaigns | attempted | completed | failed, recorded | lost | duplicated "
             "| ledger mismatch | rig left unsafe | commands retried |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    totals: dict[str, Counter] = {p: Counter() for p in POLICIES}
    for (scenario, policy), c in groups.items():
        share = f" ({100 * c['completed'] / c['attempted']:.1f} %)" if c["attempted"] else ""
        lines.append(f"| {scenario} | {policy} | {c['campaigns']} | {c['attempted']} | {c['completed']}{share} | "
                     f"{c['failed_recorded']} | {c['lost']} | {c['duplicated']} | {c['ledger_mismatch']} | "
                     f"{c['unsafe']} | {c['retries']} |")
        totals[policy].update(c)
    for policy, c in totals.items():
        lines.append(f"| **all** | {policy} | {c['campaigns']} | {c['attempted']} | {c['completed']} | "
                     f"{c['failed_recorded']} | {c['lost']} | {c['duplicated']} | {c['ledger_mismatch']} | "
                     f"{c['unsafe']} | {c['retries']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer and shorter campaigns (a smoke run)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = parser.parse_args()
    todo = jobs(args.quick)
    t0 = time.perf_counter()
    with one_blas_thread_per_worker(), ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(run_job, todo))
    text = table(results)
    wall = time.perf_counter() - t0
    header = (f"Fault benchmark on {PLATFORM}: {len(todo)} campaigns, "
              f"{sum(r['attempted'] for r in results)} experiments attempted, {wall / 60:.1f} min wall "
              f"({args.workers} workers).")
    print(header + "\n\n" + text)
    if args.out:
        Path(args.out).write_text(f"{header}\n\n{text}\n")


if __name__ == "__main__":
    main()
