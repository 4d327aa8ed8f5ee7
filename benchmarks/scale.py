"""Data at scale, measured (issue 13): what a cycle costs, in time and memory, as the data grows,
and as the history a champion has learned grows.

A. Growing new data. The tabular reference pipeline's own stream (pipelines/tabular/simulate.py,
   24 numeric columns and a label), written as shards of --shard-rows rows (default 1M) in
   Parquet row groups of --row-group rows (default 131,072), at each of --sizes rows (default
   100k, 1M, 10M: 1x, 10x, 100x). For each size, in a fresh PLASTER_HOME, one first cycle (no
   champion) runs as `plaster run` in its own process, so each size has its own driver. Per
   size: seconds per stage from the cycle record, rows per second of ingest (new rows) and of
   training (training rows x epochs), whether the snapshot streamed (a train_manifest: new
   data above ingest.stream_above_rows / stream_above_bytes, 1M rows / 256 MiB by default) and
   the peak RSS of the driver and of its whole process tree (its local Ray: GCS, raylet,
   dashboard, Ray Data workers), sampled every 0.1 s (benchmarks/rss.py; the tree's RSS counts
   shared pages, the object store included, once per process that maps them: an upper bound),
   and the tree's peak PSS (shared pages divided among their processes: what the tree holds
   together), sampled every 1 s.
B. Growing history. A champion that has learned --histories shards (default 10 and 100) of
   --history-rows rows (2,000) each, in one cycle each; then the same --new-shards (2) new
   shards arrive, and one more cycle is timed, --reps times each from a copy of the prepared
   PLASTER_HOME, the two histories interleaved: ingest, train and total cycle seconds, replay
   rows; and the ingest stage alone, in this process, --ingest-reps times each (a cycle's
   seconds carry a whole process's noise; the stage alone shows what grows with the history).
   Replay reads only what it draws and shard hashes are cached, so the cycle after 100 learned
   shards should cost what the one after 10 costs.
C. Growing history, other sources: the ingest stage alone, in this process, --ingest-reps
   times each (median, min-max), interleaved, on a champion that has learned all but the last
   --c-new (10) files or versions, after one real first cycle (`plaster run`) on the rest:
   C1 a partitioned Parquet dataset as a daily Spark job writes it (pipelines/tabular's stream,
   `day=YYYY-MM-DD/part-00000-<uuid>.snappy.parquet` of --dataset-rows (200) rows and a
   `_SUCCESS` per day folder) of --dataset-files (1,000) files vs --c-baseline (100), the
   same 10 new day folders in both; the hash cache (PLASTER_HOME/cache) is put back before
   each repetition, so each one hashes the 10 new files as the real next cycle would;
   C2 a Delta table (pipelines/lake: one append of simulate.day_rows(k) per version,
   partitioned by day; deltalake's default checkpoint every 100 commits, kept) of
   --delta-versions (1,000) versions vs --c-baseline (100), champion at version N-11
   (it learned N-10 appends), the same 10 new appends in both.
   Per case: ingest seconds, files listed and footers opened (C1) or commit files read (C2), new
   and replay rows, and where one profiled extra run spent its time (cProfile, callees of
   ingest.run and of the source's finding): the ratio big/baseline is near 1 if ingest's
   cost follows the new data.

Settings for both (data cost, not accuracy): train.epochs 1, train.warm_start_epochs 1,
train.batch_size --batch-size (default 4096: at the pipeline's 64, a tiny MLP's per-step cost
hides the data path), validate.rounds 6, and a gate that promotes anything (accuracy_min and
metric_min empty, no latency bounds), so the history's cycles always give a champion. The
figures are for this machine: see cpus and RAM in the JSON. --quick: sizes 20k, 200k, 2M, one
repetition, and for C 300 files / versions vs 100 and 3 ingest repetitions.

    .venv/bin/python benchmarks/scale.py [--sizes 100000,1000000,10000000] [--histories 10,100]
        [--reps 3] [--ingest-reps 7] [--dataset-files 1000] [--dataset-rows 200] [--delta-versions 1000]
        [--c-baseline 100] [--c-new 10] [--quick] [--parts A,B,C] [--set KEY=VALUE] [--keep] [--tmp /tmp]
        [--out benchmarks/results/scale.json]
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import importlib.util
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# workloads first: it puts this checkout's orchestrator on sys.path
import workloads
from rss import MIB, PeakRSS, psutil, tree
from workloads import ROOT, copy_pipeline

workloads.WORKLOADS.setdefault("tabular", ROOT / "pipelines" / "tabular")
workloads.WORKLOADS.setdefault("lake", ROOT / "pipelines" / "lake")
NAME = "tabular"
STAGES = ("ingest", "train", "export", "build", "validate", "promote")
SETTINGS = ("train.epochs=1", "train.warm_start_epochs=1", "validate.rounds=6", "gate.accuracy_min={}",
            "gate.metric_min={}", "gate.latency_p99_ms_max=null", "gate.latency_ratio_max=null")


def simulator(folder: Path):
    """The pipeline copy's simulate.py as a module (its ROWS_PER_SHARD is set per shard below)."""
    spec = importlib.util.spec_from_file_location("tabular_simulate", folder / "simulate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write_shards(sim, home: Path, rows: int, shard_rows: int, row_group: int) -> tuple[int, int]:
    """`rows` rows of the tabular stream into home's data source, as shards of `shard_rows` rows
    rewritten in row groups of `row_group` rows. Returns (shards, bytes)."""
    import pyarrow.parquet as pq

    source, golden = home / "data" / NAME / "shards", home / "data" / NAME / "golden.parquet"
    left, n, size = rows, 0, 0
    while left > 0:
        sim.ROWS_PER_SHARD = min(shard_rows, left)
        (path,) = sim.simulate(source, golden, 1)
        table = pq.read_table(path)
        tmp = path.with_suffix(".tmp")
        pq.write_table(table, tmp, row_group_size=row_group)
        del table
        tmp.rename(path)
        left -= sim.ROWS_PER_SHARD
        n, size = n + 1, size + path.stat().st_size
    return n, size


class PeakPSS(PeakRSS):
    """Peak PSS summed over the tree, sampled every `interval` s: each shared page (libraries, Ray's
    object store in /dev/shm) divided among the processes that map it, so the sum is what the tree
    holds together. Reading smaps costs ~1 ms a process, hence a slower sampler than RSS's. Keeps
    a timeline (wall time, driver RSS, driver USS: its private pages, tree PSS) to tell which stage
    a peak falls in and whether the driver's is its own memory or shared pages (the object store)."""

    def __init__(self, pid: int, interval: float = 1.0):
        super().__init__(pid, interval)
        self.timeline: list[tuple[float, int, int, int]] = []

    def _take(self) -> None:
        total, rss, uss = 0, 0, 0
        for i, p in enumerate(tree(self.pid)):
            try:
                m = p.memory_full_info()
            except (psutil.Error, AttributeError):  # exited, or no PSS on this OS
                continue
            total += m.pss
            if i == 0:
                rss, uss = m.rss, m.uss
        self.peak_tree = max(self.peak_tree, total)
        self.timeline.append((time.time(), rss, uss, total))
        self.samples += 1


def peaks_by_stage(rec: dict, timeline: list[tuple[float, int, int, int]]) -> dict[str, dict[str, float]]:
    """{stage: {driver_rss_mib, driver_uss_mib, tree_pss_mib}}: the highest 1 s samples within each stage's span."""
    out = {}
    for name, st in rec["stages"].items():
        t0 = st.get("started_at")
        if t0 is None:
            continue
        inside = [row[1:] for row in timeline if t0 <= row[0] <= t0 + float(st.get("seconds") or 0.0)]
        if inside:
            out[name] = {k: max(row[i] for row in inside) / MIB
                         for i, k in enumerate(("driver_rss_mib", "driver_uss_mib", "tree_pss_mib"))}
    return out


def run_cycle(folder: Path, home: Path, timeout: float, name: str = NAME) -> dict:
    """`plaster run` in its own process on PLASTER_HOME=home: its record, with the process's wall
    seconds, the peak RSS of it (the driver) and of its process tree, and the tree's peak PSS."""
    env = {**os.environ, "PLASTER_HOME": str(home), "MLFLOW_DISABLE_TELEMETRY": "true", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    before = set((home / "cycles" / name).glob("*/record.json"))
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", str(folder)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    with PeakRSS(proc.pid) as mem, PeakPSS(proc.pid) as pss:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in reversed(tree(proc.pid)):  # the driver and the local Ray it started, nothing else
                try:
                    p.kill()
                except psutil.Error:
                    pass
            out, err = proc.communicate()
            sys.exit(f"`plaster run` took over {timeout:.0f} s (--cycle-timeout): {err[-2000:]}")
    wall = time.perf_counter() - t0
    new = sorted(set((home / "cycles" / name).glob("*/record.json")) - before)
    if not new:
        sys.exit(f"`plaster run` left no cycle record (exit {proc.returncode}):\n{out[-2000:]}\n{err[-3000:]}")
    rec = json.loads(new[-1].read_text())
    if rec.get("decision") not in ("PROMOTED", "REJECTED", "HELD"):
        sys.exit(f"the cycle did not reach a decision: {rec.get('decision')} {rec.get('reasons')}\n{err[-3000:]}")
    return {"record": rec, "wall_s": wall, "peak_driver_mib": mem.peak_self_mib, "peak_tree_mib": mem.peak_mib,
            "peak_tree_pss_mib": pss.peak_tree / MIB, "max_procs": mem.max_procs,
            "peak_by_stage": peaks_by_stage(rec, pss.timeline)}


def stage_seconds(rec: dict) -> dict[str, float]:
    return {n: float(s.get("seconds") or 0.0) for n, s in rec["stages"].items()}


def summary(run: dict) -> dict:
    """The figures of one cycle that the tables and the JSON keep (not the whole record)."""
    rec = run["record"]
    snap = rec["stages"]["ingest"]["output"]
    ckpt = rec["stages"]["train"].get("output") or {}
    sec = stage_seconds(rec)
    new_rows = sum(s["rows"] for s in snap["new_shards"])
    epochs = int(ckpt.get("epochs") or 1)
    return {"decision": rec["decision"], "new_rows": new_rows, "new_shards": len(snap["new_shards"]),
            "train_rows": snap["train_rows"], "replay_rows": snap["replay_rows"],
            "replay_from": len(snap.get("replay_from") or ()),
            "streamed": snap.get("train_manifest") is not None, "epochs": epochs,
            "placement": ckpt.get("placement"), "stage_s": sec, "cycle_s": sum(sec.values()), "wall_s": run["wall_s"],
            "ingest_rows_per_s": new_rows / sec["ingest"] if sec.get("ingest") else None,
            "train_rows_per_s": snap["train_rows"] * epochs / sec["train"] if sec.get("train") else None,
            "peak_driver_mib": run["peak_driver_mib"], "peak_tree_mib": run["peak_tree_mib"],
            "peak_tree_pss_mib": run["peak_tree_pss_mib"], "max_procs": run["max_procs"],
            "peak_by_stage": run["peak_by_stage"]}


def part_a(args, tmp: Path, folder: Path, console) -> list[dict]:
    sim = simulator(folder)
    out = []
    for rows in args.sizes:
        home = tmp / f"a-{rows}"
        t0 = time.perf_counter()
        shards, size = write_shards(sim, home, rows, args.shard_rows, args.row_group)
        gen = time.perf_counter() - t0
        console.print(f"A {rows:,} rows: {shards} shard(s), {size / 2**20:,.0f} MiB of Parquet written in {gen:.0f} s; "
                      "running the first cycle…")
        s = summary(run_cycle(folder, home, args.cycle_timeout))
        s.update(rows=rows, shards=shards, parquet_mib=size / 2**20, generate_s=gen)
        out.append(s)
        console.print(f"  {s['decision']} in {s['wall_s']:.0f} s; streamed {s['streamed']}; "
                      f"ingest {s['stage_s']['ingest']:.1f} s, train {s['stage_s']['train']:.1f} s; "
                      f"peak driver {s['peak_driver_mib']:,.0f} MiB, tree RSS {s['peak_tree_mib']:,.0f} MiB, "
                      f"PSS {s['peak_tree_pss_mib']:,.0f} MiB")
        console.print("  peaks by stage (driver RSS / driver USS / tree PSS, MiB, 1 s samples): " + ", ".join(
            f"{n} {v['driver_rss_mib']:,.0f}/{v['driver_uss_mib']:,.0f}/{v['tree_pss_mib']:,.0f}"
            for n, v in s["peak_by_stage"].items()))
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    return out


def ingest_alone(folder: Path, home: Path, out: Path, new_shards: int) -> float:
    """Seconds of plaster's ingest stage alone, in this process, as the next cycle on `home` would
    run it (writes its snapshot under `out`, moves no alias): the stage B is about, without a
    whole process's noise around it."""
    dt, snap = ingest_timed(folder, home, out)
    if len(snap.new_shards) != new_shards or snap.skip_reason:
        sys.exit(f"ingest alone on {home}: {len(snap.new_shards)} new shard(s), {snap.skip_reason}")
    return dt


def ingest_timed(folder: Path, home: Path, out: Path, prof: cProfile.Profile | None = None):
    """(seconds, snapshot) of one ingest.run on `home`, in this process, profiled by `prof` if given."""
    os.environ["PLASTER_HOME"] = str(home)
    from orchestrator import api
    from orchestrator.config import load_pipeline
    from orchestrator.context import StageContext
    from orchestrator.stages import ingest
    from orchestrator.workspace import Workspace

    ws = Workspace.from_env()
    ctx = StageContext(ws, load_pipeline(folder), "scale-bench", out, api.registry_for(ws), run_id="")
    if prof is not None:
        prof.enable()
    t0 = time.perf_counter()
    snap = ingest.run(ctx)
    dt = time.perf_counter() - t0
    if prof is not None:
        prof.disable()
    return dt, snap


def part_b(args, tmp: Path, folder: Path, console) -> dict:
    sim = simulator(folder)
    stage = tmp / "b-stream"
    sim.ROWS_PER_SHARD = args.history_rows
    top = max(args.histories)
    # One stream for every history: shards 0..top-1 the history, the next --new-shards the same new data for all.
    shards = sim.simulate(stage / "shards", stage / "golden.parquet", top + args.new_shards)
    history, new = shards[:top], shards[top:]
    bases = {}
    for n in args.histories:
        base = tmp / f"b-{n}"
        src = base / "data" / NAME / "shards"
        src.mkdir(parents=True)
        shutil.copy2(stage / "golden.parquet", src.parent / "golden.parquet")
        for p in history[:n]:
            shutil.copy2(p, src / p.name)
        console.print(f"B history {n}: one cycle learning {n} shard(s) of {args.history_rows:,} rows…")
        first = summary(run_cycle(folder, base, args.cycle_timeout))
        if first["decision"] != "PROMOTED" or first["new_shards"] != n:
            sys.exit(f"history {n}: the first cycle was {first['decision']} on {first['new_shards']} shard(s); "
                     "a champion that learned them all is needed")
        for p in new:
            shutil.copy2(p, src / p.name)
        bases[n] = base
    runs: dict[int, list[dict]] = {n: [] for n in args.histories}
    for rep in range(args.reps):
        for n in args.histories:
            home = tmp / f"b-{n}-rep{rep}"
            shutil.copytree(bases[n], home, ignore=shutil.ignore_patterns("ray", "locks"))
            s = summary(run_cycle(folder, home, args.cycle_timeout))
            if s["new_shards"] != args.new_shards:
                sys.exit(f"history {n}: the measured cycle learned {s['new_shards']} shard(s), not {args.new_shards}")
            runs[n].append(s)
            console.print(f"  rep {rep + 1}/{args.reps} after {n}: {s['decision']}, cycle {s['cycle_s']:.1f} s "
                          f"(ingest {s['stage_s']['ingest']:.2f}, train {s['stage_s']['train']:.2f}), "
                          f"replay {s['replay_rows']:,} rows")
            shutil.rmtree(home, ignore_errors=True)
    # Ingest alone, in this process, interleaved (a first, unmeasured call per history pays the imports).
    alone: dict[int, list[float]] = {n: [] for n in args.histories}
    for rep in range(args.ingest_reps + 1):
        for n in args.histories:
            out = tmp / f"b-{n}-ingest{rep}"
            dt = ingest_alone(folder, bases[n], out, args.new_shards)
            if rep:
                alone[n].append(dt)
            shutil.rmtree(out, ignore_errors=True)
    console.print("  ingest alone (median of %d): %s" % (args.ingest_reps, ", ".join(
        f"after {n} {statistics.median(v) * 1e3:.0f} ms" for n, v in alone.items())))
    med = {}
    for n, rs in runs.items():
        med[n] = {k: statistics.median(r[k] for r in rs) for k in ("cycle_s", "wall_s", "replay_rows", "train_rows",
                                                                   "peak_driver_mib", "peak_tree_mib",
                                                                   "peak_tree_pss_mib")}
        med[n]["stage_s"] = {st: statistics.median(r["stage_s"].get(st, 0.0) for r in rs) for st in rs[0]["stage_s"]}
        med[n]["ingest_alone_s"] = statistics.median(alone[n])
    lo, hi = min(args.histories), max(args.histories)
    ratio = {k: (med[hi]["stage_s"][k] / med[lo]["stage_s"][k] if med[lo]["stage_s"][k] else None)
             for k in ("ingest", "train")}
    ratio["cycle"] = med[hi]["cycle_s"] / med[lo]["cycle_s"]
    ratio["ingest_alone"] = med[hi]["ingest_alone_s"] / med[lo]["ingest_alone_s"]
    return {"runs": {str(n): rs for n, rs in runs.items()}, "median": {str(n): m for n, m in med.items()},
            "ingest_alone_s": {str(n): v for n, v in alone.items()},
            f"ratio_{hi}_to_{lo}": ratio}


def spark_days(sim, stage: Path, days: int, rows: int) -> list[Path]:
    """`days` day folders of the tabular stream as a daily Spark job leaves them:
    `day=YYYY-MM-DD/part-00000-<uuid>.snappy.parquet` (day k: `rows` rows of the stream's shard k)
    and a `_SUCCESS` marker. Returns the folders, oldest first."""
    import random
    import uuid

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rnd, first = random.Random(13), datetime.date(2026, 12, 1)
    out = []
    for k in range(days):
        folder = stage / f"day={(first + datetime.timedelta(days=k)).isoformat()}"
        folder.mkdir(parents=True)
        name = f"part-00000-{uuid.UUID(int=rnd.getrandbits(128), version=4)}.snappy.parquet"
        pq.write_table(pa.table(sim._rows(k, rows, np.random.default_rng(k), False)), folder / name,
                       compression="snappy")
        (folder / "_SUCCESS").touch()
        out.append(folder)
    return out


# Whose callees the profile breakdown lists: the stage, the sources' finding, replay's draw.
PARENTS = ("ingest.run", "ingest.find", "folder_source.find", "folder_source.<lambda>", "folder_source._draw_replay",
           "table_source.find", "table_source.<lambda>", "table_source._draw", "lake_delta.changes")
COUNTED = {"core.__init__": "parquet_files_opened", "listing._check": "data_files_checked"}


def _label(fn: tuple) -> str:
    file, _, name = fn
    return name if file == "~" else f"{Path(file).stem}.{name}"


def breakdown(prof: cProfile.Profile, floor: float = 0.002) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    """From one profiled ingest: {parent: {callee: cumulative s}} for the PARENTS (callees of at
    least `floor` s, largest first), and the call counts of COUNTED (what grows with the history)."""
    stats = pstats.Stats(prof).stats
    tree_: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    for fn, (_, ncalls, _, _, callers) in stats.items():
        label = _label(fn)
        if label in COUNTED and (label != "core.__init__" or "parquet" in fn[0]):
            counts[COUNTED[label]] = counts.get(COUNTED[label], 0) + ncalls
        for caller, (*_, ct) in callers.items():
            if _label(caller) in PARENTS:
                kids = tree_.setdefault(_label(caller), {})
                kids[label] = kids.get(label, 0.0) + ct
    return ({p: dict(sorted(((k, v) for k, v in kids.items() if v >= floor), key=lambda kv: -kv[1]))
             for p, kids in tree_.items()}, counts)


def spread(v: list[float]) -> dict:
    return {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "runs_s": v}


class _count_calls:
    """Count the calls of cls.name until undo() (instrumentation only: the method still runs)."""

    def __init__(self, cls, name: str):
        import threading

        self.cls, self.name, self.orig, self.n, lock = cls, name, getattr(cls, name), 0, threading.Lock()

        def counted(*a, **kw):
            with lock:
                self.n += 1
            return self.orig(*a, **kw)

        setattr(cls, name, counted)

    def undo(self) -> None:
        setattr(self.cls, self.name, self.orig)


def _time_ingests(args, folder: Path, homes: dict[int, Path], tmp: Path, tag: str, reset, check) -> dict[int, dict]:
    """--ingest-reps timings of ingest alone per home, interleaved after one unmeasured call each
    (imports, the champion's download), `reset(home)` before each; then one profiled run each."""
    from orchestrator import lake_delta

    times: dict[int, list[float]] = {n: [] for n in homes}
    snaps = {}
    for rep in range(args.ingest_reps + 1):
        for n, home in homes.items():
            reset(home)
            out = tmp / f"{tag}-{n}-ingest{rep}"
            dt_, snap = ingest_timed(folder, home, out)
            check(n, snap)
            if rep:
                times[n].append(dt_)
            snaps[n] = snap
            shutil.rmtree(out, ignore_errors=True)
    res = {}
    for n, home in homes.items():
        reset(home)
        prof = cProfile.Profile()
        out = tmp / f"{tag}-{n}-profiled"
        # Delta commit files are fetched on a thread pool, which cProfile does not see: count them here.
        commits = _count_calls(lake_delta.DeltaSource, "_commit")
        try:
            prof_s, _ = ingest_timed(folder, home, out, prof)
        finally:
            commits.undo()
        shutil.rmtree(out, ignore_errors=True)
        where, counts = breakdown(prof)
        if commits.n:
            counts["commit_files_read"] = commits.n
        snap = snaps[n]
        res[n] = {**spread(times[n]), "new_files": len(snap.new_shards), "new_rows": sum(s.rows for s in snap.new_shards),
                  "replay_rows": snap.replay_rows, "replay_files": len({r.split("#")[0] for r in snap.replay_from}),
                  "train_rows": snap.train_rows, "skipped_entries": len(snap.skipped), "counts": counts,
                  "profiled_s": prof_s, "profile": where}
        reset(home)
    return res


def _say_profile(console, label: str, r: dict) -> None:
    console.print(f"  {label}: profiled run {r['profiled_s'] * 1e3:.0f} ms; counts {r['counts']}")
    for parent, kids in r["profile"].items():
        console.print(f"    {parent} -> " + ", ".join(f"{k} {v * 1e3:.0f}" for k, v in list(kids.items())[:7]) + " (ms)")


def _first_cycle(args, folder: Path, home: Path, label: str, learns: int, console, name: str = NAME) -> dict:
    """The one cycle that makes the champion part C needs, learning `learns` files: its seconds."""
    s = summary(run_cycle(folder, home, args.cycle_timeout, name))
    if s["decision"] != "PROMOTED" or s["new_shards"] != learns:
        sys.exit(f"{label}: the first cycle was {s['decision']} on {s['new_shards']} file(s); "
                 "a champion that learned them all is needed")
    console.print(f"  {s['decision']} in {s['wall_s']:.0f} s (ingest {s['stage_s']['ingest']:.1f} s)")
    return {"wall_s": s["wall_s"], "ingest_s": s["stage_s"]["ingest"], "cycle_s": s["cycle_s"]}


def _say_ingests(console, res: dict[int, dict], label) -> None:
    """Part C's ingest timings per case, `label(n)` naming the case."""
    for n, r in res.items():
        console.print(f"  {label(n)}: ingest {r['median_s'] * 1e3:.0f} ms ({r['min_s'] * 1e3:.0f}-{r['max_s'] * 1e3:.0f})")
        _say_profile(console, label(n), r)


def part_c1(args, tmp: Path, folder: Path, console) -> dict:
    """A partitioned Parquet dataset of `big` vs `small` day files, the champion knowing all but the last `new`."""
    from orchestrator import folder_source
    from orchestrator.config import load_pipeline

    sim = simulator(folder)
    small, big, new = args.c_baseline, args.dataset_files, args.c_new
    t0 = time.perf_counter()
    days = spark_days(sim, tmp / "c1-stage", big, args.dataset_rows)
    console.print(f"C1 {big:,} day folders of {args.dataset_rows} rows written in {time.perf_counter() - t0:.0f} s")
    homes, first = {}, {}
    for n in (small, big):
        home = tmp / f"c1-{n}"
        src = home / "data" / NAME / "shards"
        sim.simulate(src, home / "data" / NAME / "golden.parquet", 0)  # the golden holdout only
        for d in days[big - n: big - new]:
            shutil.copytree(d, src / d.name)
        console.print(f"C1 {n:,} files: one first cycle learning {n - new:,}…")
        first[n] = _first_cycle(args, folder, home, f"C1 {n}", n - new, console)
        for d in days[big - new:]:
            shutil.copytree(d, src / d.name)
        cache = home / "cache" / f"sha256-{NAME}.json"
        shutil.copy2(cache, home / "cache-prepared.json")
        homes[n] = home

    def reset(home: Path) -> None:
        # Ingest rewrites the hash cache with the new files' hashes: put the prepared one back.
        shutil.copy2(home / "cache-prepared.json", home / "cache" / f"sha256-{NAME}.json")

    def check(n: int, snap) -> None:
        if len(snap.new_shards) != new or snap.skip_reason or snap.quarantined:
            sys.exit(f"C1 {n}: ingest found {len(snap.new_shards)} new file(s), quarantined "
                     f"{len(snap.quarantined)}, {snap.skip_reason}")

    res = _time_ingests(args, folder, homes, tmp, "c1", reset, check)
    for n, home in homes.items():
        os.environ["PLASTER_HOME"] = str(home)  # data.source names ${PLASTER_HOME}
        scan = folder_source.scan(load_pipeline(folder))
        res[n].update(files=n, learned=n - new, data_files_listed=len(scan.files), debris_listed=len(scan.skipped),
                      first_cycle=first[n])
    _say_ingests(console, res, lambda n: f"C1 {n:,} files")
    return {"files": [small, big], "rows_per_file": args.dataset_rows, "new_files": new,
            "layout": "day=YYYY-MM-DD/part-00000-<uuid>.snappy.parquet + _SUCCESS per day folder, one file a day",
            "sizes": {str(n): r for n, r in res.items()},
            f"ratio_{big}_to_{small}": res[big]["median_s"] / res[small]["median_s"]}


def part_c2(args, tmp: Path, console) -> dict:
    """A Delta table of `big` vs `small` versions, the champion at version N-11 (all but the last `new` appends)."""
    from deltalake import DeltaTable, write_deltalake

    from orchestrator.config import load_module

    lake = load_module(ROOT / "pipelines" / "lake" / "simulate.py")
    folder = copy_pipeline("lake", tmp, [*SETTINGS, f"train.batch_size={args.batch_size}", *args.overrides])
    small, big, new = args.c_baseline, args.delta_versions, args.c_new
    homes, first, info = {}, {}, {}
    for n in (small, big):
        home = tmp / f"c2-{n}"
        table = home / "data" / "lake" / "events"
        table.mkdir(parents=True)
        lake.write_golden(home / "data" / "lake" / "golden.parquet")
        t0 = time.perf_counter()
        for k in range(big - n, big - new):  # the same days as C1's history: day k of the stream
            write_deltalake(str(table), lake.day_rows(k), mode="append", partition_by=["day"])
        console.print(f"C2 {n:,} versions: {n - new:,} appends in {time.perf_counter() - t0:.0f} s; "
                      f"one first cycle learning them…")
        first[n] = _first_cycle(args, folder, home, f"C2 {n}", n - new, console, "lake")
        for k in range(big - new, big):
            write_deltalake(str(table), lake.day_rows(k), mode="append", partition_by=["day"])
        log = table / "_delta_log"
        info[n] = {"versions": n, "current_version": DeltaTable(str(table)).version(), "champion_version": n - new - 1,
                   "checkpoints": sorted(int(p.name.split(".")[0]) for p in log.glob("*.checkpoint*.parquet")),
                   "commit_files": len(list(log.glob("*.json"))), "first_cycle": first[n]}
        homes[n] = home

    def check(n: int, snap) -> None:
        t = snap.table or {}
        if len(snap.new_shards) != new or snap.skip_reason or t.get("since") != n - new - 1:
            sys.exit(f"C2 {n}: ingest found {len(snap.new_shards)} new file(s) since version {t.get('since')}, "
                     f"{snap.skip_reason}")

    res = _time_ingests(args, folder, homes, tmp, "c2", lambda home: None, check)
    for n in homes:
        res[n].update(info[n])
    _say_ingests(console, res, lambda n: f"C2 {n:,} versions (checkpoints at {info[n]['checkpoints']})")
    return {"versions": [small, big], "rows_per_version": lake.ROWS_PER_DAY, "new_versions": new,
            "checkpoints": "deltalake's default (delta.checkpointInterval unset: a checkpoint every 100 commits)",
            "sizes": {str(n): r for n, r in res.items()},
            f"ratio_{big}_to_{small}": res[big]["median_s"] / res[small]["median_s"]}


def mib(v: float) -> str:
    return f"{v:,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=None, help="part A: rows of new data, comma-separated "
                                                  "(default 100000,1000000,10000000; --quick 20000,200000,2000000)")
    ap.add_argument("--shard-rows", type=int, default=1_000_000, help="part A: rows per shard")
    ap.add_argument("--row-group", type=int, default=131_072, help="part A: Parquet rows per row group")
    ap.add_argument("--batch-size", type=int, default=4096, help="train.batch_size for every cycle")
    ap.add_argument("--histories", default="10,100", help="part B: learned shards before the measured cycle")
    ap.add_argument("--history-rows", type=int, default=2000, help="part B: rows per learned shard")
    ap.add_argument("--new-shards", type=int, default=2, help="part B: new shards the measured cycle learns")
    ap.add_argument("--reps", type=int, default=None, help="part B: measured cycles per history (default 3; --quick 1)")
    ap.add_argument("--ingest-reps", type=int, default=None,
                    help="parts B and C: timings of the ingest stage alone per case (default 7; --quick 3)")
    ap.add_argument("--dataset-files", type=int, default=None,
                    help="part C1: day files of the partitioned Parquet dataset (default 1000; --quick 300)")
    ap.add_argument("--dataset-rows", type=int, default=200, help="part C1: rows per day file")
    ap.add_argument("--delta-versions", type=int, default=None,
                    help="part C2: versions of the Delta table, one append each (default 1000; --quick 300)")
    ap.add_argument("--c-baseline", type=int, default=100, help="part C: files / versions of the smaller case")
    ap.add_argument("--c-new", type=int, default=10, help="part C: files / versions the champion has not learned")
    ap.add_argument("--parts", default="A,B,C", help="any of A, B, C, comma-separated")
    ap.add_argument("--quick", action="store_true",
                    help="sizes 20k, 200k, 2M, one repetition; C with 300 files / versions")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a pipeline.yaml key in the benchmark's copy, after the benchmark's own settings")
    ap.add_argument("--cycle-timeout", type=float, default=1500, help="seconds one `plaster run` may take")
    ap.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()), help="where the PLASTER_HOMEs and data go")
    ap.add_argument("--keep", action="store_true", help="keep the generated data and homes (the path is printed)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json")
    args = ap.parse_args()
    for key, full, quick in (("sizes", "100000,1000000,10000000", "20000,200000,2000000"), ("reps", 3, 1),
                             ("ingest_reps", 7, 3), ("dataset_files", 1000, 300), ("delta_versions", 1000, 300)):
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    args.sizes = [int(float(s)) for s in args.sizes.split(",") if s]
    args.histories = sorted(int(s) for s in args.histories.split(",") if s)
    parts = {p.strip().upper() for p in args.parts.split(",") if p.strip()}
    if "C" in parts and not args.c_new < args.c_baseline <= min(args.dataset_files, args.delta_versions):
        ap.error("part C needs --c-new < --c-baseline <= --dataset-files and --delta-versions")
    from rich.console import Console
    from rich.table import Table

    console = Console(width=180)
    overrides = [*SETTINGS, f"train.batch_size={args.batch_size}", *args.overrides]
    console.print(f"pipelines/tabular with {overrides}")
    tmp = Path(tempfile.mkdtemp(prefix="plaster-scale-", dir=args.tmp))
    result: dict = {"benchmark": "scale", "cpus": os.cpu_count(),
                    "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                    "pipeline": "pipelines/tabular", "overrides": overrides, "quick": args.quick,
                    "cycle_process": "each cycle is `plaster run` in its own process (its own driver and local Ray)",
                    "peak_rss_method": "RSS of the `plaster run` process (driver) and summed over its process tree "
                                       "(local Ray included), sampled every 0.1 s (benchmarks/rss.py)"}
    t_all = time.perf_counter()
    try:
        folder = copy_pipeline(NAME, tmp, overrides)
        if "A" in parts:
            result["a"] = {"sizes": args.sizes, "shard_rows": args.shard_rows, "row_group": args.row_group,
                           "runs": part_a(args, tmp, folder, console)}
        if "B" in parts:
            result["b"] = {"histories": args.histories, "history_rows": args.history_rows,
                           "new_shards": args.new_shards, "reps": args.reps, **part_b(args, tmp, folder, console)}
        if "C" in parts:
            result["c"] = {"ingest_reps": args.ingest_reps, "loadavg_at_start": os.getloadavg(),
                           "c1": part_c1(args, tmp, folder, console), "c2": part_c2(args, tmp, console)}
    finally:
        if args.keep:
            console.print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    result["total_s"] = time.perf_counter() - t_all

    if "a" in result:
        runs = result["a"]["runs"]
        t = Table(title=f"A. One first cycle per size of new data ({os.cpu_count()} cores, {result['ram_gib']} GiB; "
                        f"1 epoch, batch {args.batch_size})")
        for col in ("rows", "shards", "MiB", "streamed", "ingest s", "train s", "cycle s", "ingest rows/s",
                    "train rows/s", "train rows", "peak driver MiB", "peak tree RSS MiB", "peak tree PSS MiB", "procs"):
            t.add_column(col, justify="right")
        for r in runs:
            t.add_row(f"{r['rows']:,}", str(r["shards"]), mib(r["parquet_mib"]), "yes" if r["streamed"] else "no",
                      f"{r['stage_s']['ingest']:.1f}", f"{r['stage_s']['train']:.1f}", f"{r['cycle_s']:.1f}",
                      f"{r['ingest_rows_per_s']:,.0f}", f"{r['train_rows_per_s']:,.0f}", f"{r['train_rows']:,}",
                      mib(r["peak_driver_mib"]), mib(r["peak_tree_mib"]), mib(r["peak_tree_pss_mib"]),
                      str(r["max_procs"]))
        console.print(t)
        st = Table(title="A. Seconds per stage (from the cycle record)")
        st.add_column("rows", justify="right")
        for n in STAGES:
            st.add_column(n, justify="right")
        st.add_column("process wall", justify="right")
        for r in runs:
            st.add_row(f"{r['rows']:,}", *(f"{r['stage_s'].get(n, 0.0):.1f}" for n in STAGES), f"{r['wall_s']:.1f}")
        console.print(st)
    if "b" in result:
        b = result["b"]
        t = Table(title=f"B. The cycle that learns {args.new_shards} new shard(s) of {args.history_rows:,} rows, "
                        f"after N learned shards (median of {args.reps})")
        for col in ("learned N", "ingest alone ms", "ingest s", "train s", *(f"{n} s" for n in STAGES[2:]), "cycle s",
                    "process wall s",                    "replay rows", "train rows", "peak tree PSS MiB"):
            t.add_column(col, justify="right")
        for n in args.histories:
            m = b["median"][str(n)]
            t.add_row(str(n), f"{m['ingest_alone_s'] * 1e3:.0f}", f"{m['stage_s']['ingest']:.2f}", f"{m['stage_s']['train']:.2f}",
                      *(f"{m['stage_s'].get(s, 0.0):.2f}" for s in STAGES[2:]), f"{m['cycle_s']:.1f}",
                      f"{m['wall_s']:.1f}", f"{m['replay_rows']:,.0f}", f"{m['train_rows']:,.0f}",
                      mib(m["peak_tree_pss_mib"]))
        console.print(t)
        lo, hi = min(args.histories), max(args.histories)
        ratio = b[f"ratio_{hi}_to_{lo}"]
        console.print(f"after {hi} / after {lo}: cycle {ratio['cycle']:.2f}x, ingest alone {ratio['ingest_alone']:.2f}x, "
                      "ingest in the cycle "
                      + (f"{ratio['ingest']:.2f}x" if ratio["ingest"] else "-") + ", train "
                      + (f"{ratio['train']:.2f}x" if ratio["train"] else "-"))
    if "c" in result:
        c = result["c"]
        t = Table(title=f"C. Ingest alone when the champion has learned all but the last {args.c_new} "
                        f"(median of {args.ingest_reps}, min-max)")
        for col in ("case", "history", "new", "listed / read", "new rows", "replay rows", "ingest ms", "min-max ms",
                    "big / baseline"):
            t.add_column(col, justify="right")
        for key, what in (("c1", "files"), ("c2", "versions")):
            sizes, (lo, hi) = c[key]["sizes"], c[key][what]
            for n in (lo, hi):
                r = sizes[str(n)]
                if key == "c1":
                    listed = (f"{r['data_files_listed']:,} files + {r['debris_listed']:,} debris, "
                              f"{r['counts'].get('parquet_files_opened', 0):,} footers")
                else:
                    ck = r["checkpoints"]
                    listed = (f"{r['counts'].get('commit_files_read', 0):,} commit files read, {len(ck)} checkpoint(s)"
                              + (f" (last at {ck[-1]})" if ck else ""))
                t.add_row(f"{key.upper()} {'Parquet dataset' if key == 'c1' else 'Delta table'}",
                          f"{n:,} {what}", f"{r['new_files']}", listed, f"{r['new_rows']:,}", f"{r['replay_rows']:,}",
                          f"{r['median_s'] * 1e3:.0f}", f"{r['min_s'] * 1e3:.0f}-{r['max_s'] * 1e3:.0f}",
                          f"{c[key][f'ratio_{hi}_to_{lo}']:.2f}x" if n == hi else "")
        console.print(t)
    # One file for all parts: a run of some parts keeps the others' figures from the last run that made them.
    try:
        earlier = json.loads(args.out.read_text()) if args.out.exists() else {}
    except ValueError:
        earlier = {}
    kept = sorted(k for k in ("a", "b", "c") if k in earlier and k not in result)
    if kept:
        result.update({k: earlier[k] for k in kept})
        result["kept_from_earlier_run"] = {"parts": kept, "note": "quick, overrides and total_s are this run's; "
                                                                  "these parts' are in the earlier run's record"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    console.print(f"wrote {args.out} ({result['total_s'] / 60:.1f} min in all)")


if __name__ == "__main__":
    main()
