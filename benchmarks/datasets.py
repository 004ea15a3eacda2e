"""Datasets at scale: the compacted layout against the layout before it, timed in one run.

Campaigns of 1,000, 10,000 and 100,000 experiments are built from real ones: a short campaign on
the virtual lab, whose rows and 16 spectra per experiment are copied with new ids and varied
values (features and spectra scaled by a few percent per experiment). The layout before (one file
per experiment, the wavelengths on every spectrum row) is written as that release wrote it and
read by that release's code (the baseline commit, in a fresh process); today's layout is that same
campaign compacted by today's code. At 100,000 experiments the old layout is not built (about
17 GB in 200,000 files; reading it would take most of an hour at the rate measured at 10,000);
today's is written as parts directly, and its compaction time is that of folding 256 new
experiments into it (what a long campaign pays from time to time).

Timed in the process that reads, after its imports, median of the repeats (the files are in the
page cache, as they are while a campaign runs):
- read the experiments table (`read_experiments`);
- read every `pl_cps` spectrum of replicate 0 (the baseline's reader with the same filter);
- one experiment's spectra by id (`read_spectra(..., experiment_id=...)`), also the first lookup
  of a process (which parses the footer of the part that holds it) on its own;
- what a campaign start reads to reconcile its ledger (before: the whole table; now: the ids on
  disk and the row of the trial left running).

    .venv/bin/python -m benchmarks.datasets [--sizes 1000 10000 100000] [--baseline 2f2a23a]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks.no_server import snapshot

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "datasets.md"
CAMPAIGN = "bench"
NEW_DISK = "new disk"
TEMPLATE_RUNS = 8
TARGETS = {"read experiments": (100_000, 2.0), "spectra by id": (100_000, 0.050), "all pl_cps, replicate 0": (10_000, 3.0)}
"""Operation: (at this size, in under this many seconds)."""

RUN_TEMPLATE = """
from flows.campaign_loop import CampaignPlan, run_campaign
from flows.experiment import PLAIN_STEPS
from hardware.platform import load_platform
from hardware.rig import open_rig
plan = CampaignPlan(campaign="template", policy="random", budget={budget}, initial={budget}, seed=11,
                    data_root={root!r})
run_campaign(open_rig(load_platform(), 11), plan, PLAIN_STEPS)
"""

TIME_READS = """
import json, statistics, time
from tasks import storage
root, campaign, probe, repeats, new = {root!r}, {campaign!r}, {probe!r}, {repeats}, {new}

def timed(call):
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = call()
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds), len(out)

def pl_cps():
    if new:
        return storage.read_spectra(root, campaign, kind="pl_cps", replicate=0)
    return storage._read(storage.data_root(root), "spectra", campaign,
                         filters=[("kind", "=", "pl_cps"), ("replicate", "=", 0)])

def reconcile_reads():
    if new:
        ids = storage.experiment_ids(root, campaign)
        return [storage.read_experiment(root, campaign, probe), *ids]
    return storage.read_experiments(root, campaign)

t0 = time.perf_counter()
first = storage.read_spectra(root, campaign, probe)  # before anything else: parts' footers not yet parsed
first = (time.perf_counter() - t0, len(first))
out = {{"spectra by id, first lookup of the process": first,
        "read experiments": timed(lambda: storage.read_experiments(root, campaign)),
        "all pl_cps, replicate 0": timed(pl_cps),
        "spectra by id": timed(lambda: storage.read_spectra(root, campaign, probe)),
        "campaign start (reconcile)": timed(reconcile_reads)}}
print(json.dumps(out))
"""

COMPACT = """
import json, time
from tasks import storage
t0 = time.perf_counter()
storage.compact_campaign({root!r}, {campaign!r})
print(json.dumps(time.perf_counter() - t0))
"""


def python(code: Path, script: str, env: dict) -> str:
    done = subprocess.run([sys.executable, "-c", script], cwd=code, env=env, capture_output=True, text=True,
                          timeout=6 * 3600)
    if done.returncode:
        raise SystemExit(f"failed in {code}:\n{done.stderr[-3000:]}")
    return (done.stdout.strip().splitlines() or [""])[-1]


# --- the campaigns --------------------------------------------------------------------------------


class Templates:
    """The rows and spectra of a real campaign, to copy from."""

    def __init__(self, root: Path):
        from tasks import dataset
        from tasks.storage import read_spectra, table_folder

        self.rows = dataset.read_table(table_folder(root, "template"), "experiment_id").table

        spectra = read_spectra(root, "template")
        self.spectra = {eid: group.sort_values(["kind", "replicate"]) for eid, group in spectra.groupby("experiment_id")}
        self.ids = self.rows["experiment_id"].to_pylist()
        self.floats = [f.name for f in self.rows.schema if pa.types.is_floating(f.type)
                       and not f.name.startswith(("t_", "q_")) and f.name not in ("tau_s", "t_E_s")]

    def rows_for(self, first: int, count: int, rng: np.random.Generator) -> pa.Table:
        pick = np.arange(first, first + count) % len(self.ids)
        table = self.rows.take(pa.array(pick))
        columns = {}
        for name in self.floats:
            scale = rng.lognormal(0.0, 0.05, count)
            columns[name] = pc.multiply(table[name], pa.array(scale))
        for name, values in columns.items():
            table = table.set_column(table.schema.get_field_index(name), name, values)
        ids = pa.array([f"{CAMPAIGN}-{i:06d}" for i in range(first, first + count)])
        return table.set_column(table.schema.get_field_index("experiment_id"), "experiment_id", ids)

    def spectra_for(self, first: int, count: int, rng: np.random.Generator, with_wavelengths: bool) -> pa.Table:
        """The spectra of experiments first..first+count, as the old layout (wavelengths on every
        row) or today's (a grid id) holds them."""
        from tasks.spectra_table import grid_id

        frames = []
        for i in range(first, first + count):
            template = self.spectra[self.ids[i % len(self.ids)]]
            scale = np.float32(rng.lognormal(0.0, 0.05))
            frames.append((f"{CAMPAIGN}-{i:06d}", template, scale))
        rows = [(eid, r, scale) for eid, t, scale in frames for r in t.itertuples(index=False)]
        values = [np.asarray(r.value, np.float32) * scale for _, r, scale in rows]
        table = {"experiment_id": [eid for eid, _, _ in rows]}
        for name in ("kind", "replicate", "quantity", "spectrometer", "t_platform_s", "integration_ms", "scans"):
            table[name] = [getattr(r, name) for _, r, _ in rows]
        types = {"replicate": pa.int16(), "scans": pa.int32()}
        arrays = {k: pa.array(v, type=types.get(k)) for k, v in table.items()}
        if with_wavelengths:
            arrays["wavelength_nm"] = _lists([np.asarray(r.wavelength_nm, np.float32) for _, r, _ in rows])
        else:
            grids = {}
            arrays["grid"] = pa.array([grids.setdefault(id(r.wavelength_nm), grid_id(r.wavelength_nm))
                                       for _, r, _ in rows])
        arrays["value"] = _lists(values)
        return pa.table(arrays)


def _lists(arrays: list[np.ndarray]) -> pa.ListArray:
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrays])]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(arrays), pa.float32()))


def write_old_layout(templates: Templates, root: Path, n: int, seed: int) -> None:
    """One file per experiment and per experiment's spectra, as the release before wrote them."""
    rng = np.random.default_rng(seed)
    for table in ("experiments", "spectra"):
        (root / table / f"campaign={CAMPAIGN}").mkdir(parents=True, exist_ok=True)
    chunk = 500
    for first in range(0, n, chunk):
        count = min(chunk, n - first)
        rows = templates.rows_for(first, count, rng)
        spectra = templates.spectra_for(first, count, rng, with_wavelengths=True)
        for i in range(count):
            eid = rows["experiment_id"][i].as_py()
            pq.write_table(rows.slice(i, 1), root / "experiments" / f"campaign={CAMPAIGN}" / f"{eid}.parquet",
                           compression="zstd")
            mine = spectra.filter(pc.equal(spectra["experiment_id"], eid))
            pq.write_table(mine, root / "spectra" / f"campaign={CAMPAIGN}" / f"{eid}.parquet", compression="zstd")


def write_new_layout(templates: Templates, root: Path, n: int, seed: int) -> None:
    """Today's layout written directly as parts (what compaction leaves), with its grids."""
    from tasks import compaction, storage
    from tasks.spectra_table import to_grids

    rng = np.random.default_rng(seed)
    chunk = compaction.PART_KEYS
    for generation, first in enumerate(range(0, n, chunk), start=1):
        count = min(chunk, n - first)
        rows = templates.rows_for(first, count, rng)
        spectra = to_grids(templates.spectra_for(first, count, rng, with_wavelengths=True),
                           storage.table_folder(root, CAMPAIGN, "grids"))
        for name, table, layout in (("experiments", rows, storage.EXPERIMENT_PARTS),
                                    ("spectra", spectra, storage.SPECTRA_PARTS)):
            folder = storage.table_folder(root, CAMPAIGN, name)
            entries = compaction._write_batch(table, "experiment_id", folder, generation, [], [], layout)
            compaction.refresh_index(folder, "experiment_id", entries)


def add_loose(templates: Templates, root: Path, first: int, count: int, seed: int) -> None:
    """`count` new experiments recorded the way a campaign records them (one file each)."""
    from tasks import storage

    rng = np.random.default_rng(seed)
    rows = templates.rows_for(first, count, rng).to_pylist()
    spectra = templates.spectra_for(first, count, rng, with_wavelengths=True).to_pylist()
    schema = templates.rows.schema
    for row in rows:
        mine = [s for s in spectra if s["experiment_id"] == row["experiment_id"]]
        storage.write_experiment(row, mine, schema, CAMPAIGN, root)


def disk(root: Path) -> dict[str, int]:
    """Bytes of Parquet per table (experiments; spectra with their grids)."""
    sizes = {"experiments": 0, "spectra": 0}
    for path in root.rglob("*.parquet"):
        sizes["experiments" if path.relative_to(root).parts[0] == "experiments" else "spectra"] += path.stat().st_size
    return sizes


# --- the run --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--baseline", default="2f2a23a", help="the commit of the layout before")
    parser.add_argument("--old-up-to", type=int, default=10_000, help="largest size the old layout is built at")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the data (printed path)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    old_code, old_commit = snapshot(args.baseline)
    now_commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=ROOT).stdout.strip() + ("+changes" if _dirty() else "")
    work = Path(tempfile.mkdtemp(prefix="sdfl-bench-datasets-"))
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "OMP_NUM_THREADS": "1"}
    env.pop("PREFECT_API_URL", None)
    rows = []
    try:
        python(ROOT, RUN_TEMPLATE.format(budget=TEMPLATE_RUNS, root=str(work / "template")), env)
        templates = Templates(work / "template")
        for n in args.sizes:
            probe = f"{CAMPAIGN}-{n // 2:06d}"
            result = {"n": n}
            if n <= args.old_up_to:
                old = work / f"old-{n}"
                t0 = time.perf_counter()
                write_old_layout(templates, old, n, seed=n)
                print(f"{n}: old layout written in {time.perf_counter() - t0:.0f} s", flush=True)
                result["old disk"] = disk(old)
                repeats = 1 if n >= 10_000 else args.repeats
                result["old"] = json.loads(python(old_code, TIME_READS.format(
                    root=str(old), campaign=CAMPAIGN, probe=probe, repeats=repeats, new=False), env))
                print(f"{n}: old reads {result['old']}", flush=True)
                new = work / f"new-{n}"
                shutil.copytree(old, new)
                result["compaction"] = json.loads(python(ROOT, COMPACT.format(root=str(new), campaign=CAMPAIGN), env))
                result["compaction what"] = f"all {n} (from the old layout)"
                shutil.rmtree(old)
            else:
                new = work / f"new-{n}"
                write_new_layout(templates, new, n, seed=n)
                add_loose(templates, new, n, 256, seed=n + 1)
                result["compaction"] = json.loads(python(ROOT, COMPACT.format(root=str(new), campaign=CAMPAIGN), env))
                result["compaction what"] = "256 new into the campaign"
            result["new disk"] = disk(new)
            result["new"] = json.loads(python(ROOT, TIME_READS.format(
                root=str(new), campaign=CAMPAIGN, probe=probe, repeats=args.repeats, new=True), env))
            print(f"{n}: new reads {result['new']}, compaction {result['compaction']:.1f} s", flush=True)
            if not args.keep:
                shutil.rmtree(new)
            rows.append(result)
    finally:
        shutil.rmtree(old_code, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"data kept under {work}")
    text = report(rows, args, old_commit, now_commit)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)


def _dirty() -> bool:
    return bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=ROOT).stdout.strip())


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def report(rows: list[dict], args, old_commit: str, now_commit: str) -> str:
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        "# Datasets at scale\n",
        f"`.venv/bin/python -m benchmarks.datasets --sizes {' '.join(map(str, args.sizes))} --baseline "
        f"{args.baseline}` on {dt.datetime.now():%Y-%m-%d %H:%M}: today's layout ({now_commit}) against the layout "
        f"before ({old_commit}, read by its own code), {os.cpu_count()} CPUs, load average at the end {load}. "
        f"Campaigns copied from {TEMPLATE_RUNS} real virtual-lab experiments (16 spectra each); times are "
        f"medians of {args.repeats} in the reading process (1 for the old layout at 10,000 and more).\n",
        "| experiments | operation | before | now | speed-up | target |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for row in rows:
        n = row["n"]
        for op, (now_s, count) in row["new"].items():
            before = row.get("old", {}).get(op)
            target = TARGETS.get(op)
            goal = (f"< {_seconds(target[1])}: {'met' if now_s < target[1] else 'MISSED'}"
                    if target and target[0] == n else "")
            lines.append(f"| {n:,} | {op} ({count:,} rows) | {_seconds(before[0]) if before else 'not built'} | "
                         f"{_seconds(now_s)} | {f'{before[0] / now_s:.0f}x' if before else ''} | {goal} |")
        old_disk = row.get("old disk") or {}
        for what, tables in (("disk, all tables", ("experiments", "spectra")), ("disk, experiments table", ("experiments",)),
                             ("disk, spectra and grids", ("spectra",))):
            now_b, old_b = sum(row[NEW_DISK][t] for t in tables), sum(old_disk.get(t, 0) for t in tables)
            goal = ("<= 1/10: " + ("met" if now_b <= old_b / 10 else "MISSED")) if old_b and len(tables) == 2 else ""
            lines.append(f"| {n:,} | {what} | {f'{old_b / 2**20:,.1f} MB' if old_b else 'not built'} | "
                         f"{now_b / 2**20:,.1f} MB | {f'{old_b / now_b:.1f}x less' if old_b else ''} | {goal} |")
        lines.append(f"| {n:,} | compaction: {row['compaction what']} | | {_seconds(row['compaction'])} | | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
