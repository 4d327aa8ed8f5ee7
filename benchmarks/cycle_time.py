"""Rate of learning, measured: what a plaster cycle costs beside the work inside it.

Side by side in one run, on the same data and settings, medians over --reps:
  1. plaster cold   `plaster run` as a fresh process, start to exit
  2. plaster warm   a cycle inside this long-lived process, Ray already up (the scheduler's path)
  3. plain script   benchmarks/plain_script.py as a fresh process: train the same epochs on the
                    same arrays, export, FP16/INT8 variants, evaluate both models, register in MLflow
  4. compute floor  the plain script's train + export + variants + evaluate, timed in-process

Every repetition starts from a copy of one prepared PLASTER_HOME: champion v1 registered and
four drifted shards waiting. Workloads (--workload): digits, the reference pipeline (tiny
compute: orchestration dominates), or heavy, benchmarks/heavy (16x16 digits, a wide CNN:
training compute dominates). With `train.workers: auto` the training's estimated compute
decides whether it runs in the driver or on Ray Train; the output says which, and why.

Peak memory per path: a sampler thread sums RSS over the measured process tree every 0.1 s
and keeps the max (benchmarks/rss.py): the subprocess and its descendants for cold and
plain (a cold run's local Ray is among them), this process and its descendants for warm
(the local Ray it started, workers included).

    .venv/bin/python benchmarks/cycle_time.py [--workload digits|heavy] [--reps 3]
        [--out benchmarks/results/cycle_time_<workload>.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rss import PeakRSS  # noqa: I001

# workloads first: it puts this checkout's orchestrator on sys.path
from workloads import ROOT, copy_pipeline, parse, placement, prepare


def fresh(base: Path, tmp: Path, name: str) -> Path:
    home = tmp / name
    shutil.copytree(base, home, ignore=shutil.ignore_patterns("ray", "locks"))
    return home


def measured_subprocess(cmd: list[str], env: dict[str, str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run `cmd` to exit: (wall seconds, peak RSS of its process tree in MiB, the result)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    with PeakRSS(proc.pid) as mem:
        stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    return wall, mem.peak_mib, subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    args, out_file, console = parse(ap, "cycle_time")
    from rich.table import Table

    paths = ("plaster cold", "plaster warm", "plain script", "compute floor")
    runs: dict[str, list[float]] = {k: [] for k in paths}
    peaks: dict[str, list[float]] = {k: [] for k in paths[:3]}
    stages: dict[str, list[dict]] = {"plaster cold": [], "plaster warm": []}
    where: dict[str, list[dict]] = {"plaster cold": [], "plaster warm": []}
    plain_pieces: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="plaster-cycle-bench-") as t:
        tmp = Path(t)
        folder = copy_pipeline(args.workload, tmp, args.overrides)
        base = tmp / "base"
        console.print(f"preparing {args.workload}: one cycle for champion v1, then four drifted shards…")
        first = prepare(base, folder)
        console.print("  champion v1 trained: placement %s (%s)" % placement(first))

        from orchestrator import api
        from orchestrator.config import load_pipeline
        from orchestrator.runtime import ensure_ray
        from orchestrator.workspace import Workspace

        name = load_pipeline(folder).name
        ensure_ray(Workspace.from_env())  # the warm path: Ray is up before the clock starts
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("RAY_ADDRESS", None)
        for rep in range(args.reps):
            console.print(f"repetition {rep + 1}/{args.reps}")
            home = fresh(base, tmp, f"cold{rep}")
            wall, peak, out = measured_subprocess([sys.executable, "-m", "orchestrator.cli", "run", str(folder)],
                                                  {**env, "PLASTER_HOME": str(home)})
            if out.returncode != 0:
                sys.exit(f"plaster run failed: {out.stderr[-2000:]}")
            if "SKIPPED" in out.stdout:
                sys.exit(f"the cold cycle did not train: {out.stdout[-2000:]}")
            runs["plaster cold"].append(wall)
            peaks["plaster cold"].append(peak)
            rec = json.loads(sorted((home / "cycles" / name).glob("*/record.json"))[-1].read_text())
            stages["plaster cold"].append({n: s["seconds"] for n, s in rec["stages"].items()})
            where["plaster cold"].append(dict(zip(("placement", "workers_reason"), placement(rec))))
            console.print(f"  cold {wall:.1f} s, peak {peak:.0f} MiB, {rec['decision']}")

            home = fresh(base, tmp, f"warm{rep}")
            os.environ["PLASTER_HOME"] = str(home)
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                rec = api.run_cycle(folder)
                wall = time.perf_counter() - t0
            if rec["decision"] not in ("PROMOTED", "REJECTED", "HELD"):
                sys.exit(f"the warm cycle did not train: {rec['decision']} {rec['reasons']}")
            runs["plaster warm"].append(wall)
            peaks["plaster warm"].append(mem.peak_mib)
            stages["plaster warm"].append({n: s["seconds"] for n, s in rec["stages"].items()})
            where["plaster warm"].append(dict(zip(("placement", "workers_reason"), placement(rec))))
            console.print(f"  warm {wall:.1f} s, peak {mem.peak_mib:.0f} MiB ({mem.max_procs} processes), "
                          f"{rec['decision']}")

            snap = Path(rec["stages"]["ingest"]["output"]["train_file"]).parent
            champion = home / "champions" / name / "v1"
            work = tmp / f"plain{rep}"
            work.mkdir()
            wall, peak, out = measured_subprocess(
                [sys.executable, str(ROOT / "benchmarks" / "plain_script.py"), "--pipeline", str(folder),
                 "--snapshot", str(snap), "--champion", str(champion), "--mlflow", str(work), "--out", str(work)], env)
            if out.returncode != 0:
                sys.exit(f"plain script failed: {out.stderr[-2000:]}")
            runs["plain script"].append(wall)
            peaks["plain script"].append(peak)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            plain_pieces.append(res["pieces_s"])
            runs["compute floor"].append(sum(res["pieces_s"][k] for k in ("train", "export", "variants", "evaluate")))
            console.print(f"  plain {wall:.1f} s, peak {peak:.0f} MiB")

    med = {k: statistics.median(v) for k, v in runs.items()}
    med_peak = {k: statistics.median(v) for k, v in peaks.items()}
    table = Table(title=f"Cycle time on {args.workload}, median of {args.reps} ({os.cpu_count()}-core machine)")
    for col in ("path", "wall s", "÷ plain script", "÷ compute floor", "peak RSS MiB", "runs"):
        table.add_column(col, justify="left" if col == "path" else "right")
    for k, v in med.items():
        table.add_row(k, f"{v:.1f}", f"{v / med['plain script']:.2f}x", f"{v / med['compute floor']:.2f}x",
                      f"{med_peak[k]:.0f}" if k in med_peak else "-", " ".join(f"{x:.1f}" for x in runs[k]))
    console.print(table)
    st = Table(title="Where the time goes (median seconds)")
    st.add_column("path")
    names = list(stages["plaster warm"][0])
    for n in names:
        st.add_column(n, justify="right")
    for k, rows in stages.items():
        st.add_row(k, *(f"{statistics.median(r[n] for r in rows):.1f}" for n in names))
    console.print(st)
    pieces = {n: statistics.median(p[n] for p in plain_pieces) for n in plain_pieces[0]}
    console.print("plain script pieces: " + ", ".join(f"{n} {v:.1f}s" for n, v in pieces.items()))
    for k, rows in where.items():
        for i, w in enumerate(rows):
            console.print(f"{k} rep {i + 1} trained: {w['placement']} ({w['workers_reason']})")
    result = {"benchmark": "cycle_time", "workload": args.workload, "overrides": args.overrides, "reps": args.reps,
              "cpus": os.cpu_count(),
              "runs_s": runs, "median_s": med,
              "ratio_to_plain": {k: v / med["plain script"] for k, v in med.items()},
              "ratio_to_floor": {k: v / med["compute floor"] for k, v in med.items()},
              "peak_rss_mib": peaks, "median_peak_rss_mib": med_peak,
              "peak_rss_method": "sum of RSS over the measured process tree, sampled every 0.1 s (benchmarks/rss.py)",
              "train_placement": where,
              "champion_v1_placement": dict(zip(("placement", "workers_reason"), placement(first))),
              "plaster_stage_s": stages, "plain_pieces_s": pieces}
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {out_file}")


if __name__ == "__main__":
    main()
