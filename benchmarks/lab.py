"""A lab of several rigs: one campaign's throughput with the Prefect server and the study on
SQLite or on PostgreSQL, driven by one worker or by three, measured in one run.

Each configuration starts what a lab runs: a Prefect server (its database on SQLite, or on a
PostgreSQL cluster made for the run), one worker per reactor, and each reactor's deployments
(`deployments/local.py`). The reactors are virtual and paced (PACE simulated seconds per wall
second), so an experiment keeps its rig for seconds of wall time as a real one keeps it for
minutes. The campaign (budget BUDGET, a 3-point design, then EI) is started on every reactor's
`optimize` deployment at once, all drawing from one study (SQLite under the data root, or the
PostgreSQL database `optuna`). Throughput is the budget over the wall time from the first
trigger until every run has finished; the baseline is SQLite with one worker, in the same run.

    .venv/bin/python -m benchmarks.lab [--budget 15] [--pace 120]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deployments"))
import local  # noqa: E402
import postgres  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "lab.md"
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
CONFIGS = [("SQLite", 1), ("SQLite", 3), ("PostgreSQL", 1), ("PostgreSQL", 3)]
DEPLOY = "import sys, local\nprint('\\n'.join(local.deploy_reactors({platforms!r})))\n"


def run_config(database: str, workers: int, budget: int, pace: float, scratch: Path,
               cluster: postgres.Cluster | None) -> dict:
    """One configuration from nothing to the finished campaign; everything it started is stopped."""
    home, data = scratch / "prefect", scratch / "data"
    names = [f"bench-{k}" for k in range(workers)]
    platforms = {}
    for name in names:
        (scratch / f"{name}.toml").write_text(f'[platform]\nname = "{name}"\nbase = "virtual-cs3cu2i5"\n\n'
                                              f'[virtual]\npace = {pace}\n')
        platforms[name] = str(scratch / f"{name}.toml")
    port = postgres.free_port()
    api = f"http://127.0.0.1:{port}/api"
    server_db = cluster.url("prefect", "asyncpg") if cluster else None
    storage = cluster.url("optuna") if cluster else None
    try:
        local.start_server(home, "127.0.0.1", port, database=server_db,
                           PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS="1",
                           PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS="1")
        subprocess.run([sys.executable, "-c", DEPLOY.format(platforms=platforms)], cwd=ROOT / "deployments",
                       env={**local.environment(home, api), "PYTHONPATH": str(ROOT / "deployments")},
                       check=True, capture_output=True, timeout=600)
        for name in names:
            local.start_worker(home, api, name, PREFECT_WORKER_QUERY_SECONDS="1")
        http = httpx.Client(base_url=api, timeout=30)
        flows = {f["id"]: f["name"] for f in http.post("/flows/filter", json={}).json()}
        deployments = {d["name"]: d["id"] for d in http.post("/deployments/filter", json={}).json()
                       if flows[d["flow_id"]] == "optimize"}
        parameters = {"campaign": "lab", "budget": budget, "initial": 3, "seed": 1, "data_root": str(data),
                      "explain": False, **({"storage": storage} if storage else {})}
        t0 = time.monotonic()
        runs = [http.post(f"/deployments/{deployments[name]}/create_flow_run", json={"parameters": parameters})
                .raise_for_status().json()["id"] for name in names]
        states = {}
        while len(states) < len(runs):
            for run in runs:
                state = http.get(f"/flow_runs/{run}").json()["state"]["type"]
                if state in FINAL:
                    states[run] = state
            if time.monotonic() - t0 > 1800:
                raise TimeoutError("the campaign did not finish within 30 min")
            time.sleep(0.5)
        wall = time.monotonic() - t0
        sys.path.insert(0, str(ROOT))
        from tasks.storage import read_experiments

        rows = read_experiments(data, "lab")
        return {"wall": wall, "rows": len(rows), "completed": int((rows["status"] == "completed").sum()),
                "unique": bool(rows["experiment_id"].is_unique), "states": sorted(states.values())}
    finally:
        local.stop(home, grace_s=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=15)
    parser.add_argument("--pace", type=float, default=120.0)
    parser.add_argument("--configs", nargs="+", default=[f"{d}:{w}" for d, w in CONFIGS],
                        help="DATABASE:WORKERS pairs, e.g. SQLite:1 PostgreSQL:3 (default: all four; SQLite:1 "
                             "is the baseline and always runs)")
    args = parser.parse_args(argv)
    chosen = {("SQLite", 1), *((c.split(":")[0], int(c.split(":")[1])) for c in args.configs)}
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    results = []
    for database, workers in [c for c in CONFIGS if c in chosen]:
        scratch = Path(tempfile.mkdtemp(prefix="sdfl-lab-bench-"))
        scratch.chmod(0o755)  # the PostgreSQL cluster's folder must be open to its system user
        cluster = postgres.create(scratch / "postgres") if database == "PostgreSQL" else None
        try:
            found = run_config(database, workers, args.budget, args.pace, scratch, cluster)
        finally:
            if cluster is not None:
                cluster.remove()
            shutil.rmtree(scratch, ignore_errors=True)
        results.append((database, workers, found))
        print(f"{database}, {workers} worker(s): {found}", flush=True)
    report = table(results, args)
    print(report)
    with open(RESULTS, "a") as out:  # one section per run: runs at other paces stay beside it
        out.write(report + "\n")
    return 0


def table(results, args) -> str:
    base = next(r["completed"] / r["wall"] for d, w, r in results if (d, w) == ("SQLite", 1))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"## Pace {args.pace:g}, budget {args.budget}", "",
        f"`.venv/bin/python -m benchmarks.lab --budget {args.budget} --pace {args.pace:g} --configs "
        f"{' '.join(args.configs)}` on "
        f"{dt.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} CPUs, load average at the end {load}. One campaign "
        f"of {args.budget} experiments (3-point design, then EI) started on every worker's reactor at once; virtual "
        f"reactors paced at {args.pace:g} simulated s per wall s. Wall time from the first trigger until every run "
        "has finished, server start and deployment not included.", "",
        "| Prefect server and study on | workers | experiments completed | rows (unique ids) | runs ended | wall | "
        "experiments per minute | vs SQLite, 1 worker |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for database, workers, r in results:
        rate = 60 * r["completed"] / r["wall"]
        lines.append(f"| {database} | {workers} | {r['completed']} | {r['rows']} ({'yes' if r['unique'] else 'NO'}) "
                     f"| {', '.join(r['states'])} | {r['wall']:.0f} s | {rate:.1f} | {rate / 60 / base:.2f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
