"""Rate of learning, measured: what a plaster cycle costs beside the work inside it.

Side by side in one run, on the same data and settings, medians over --reps:
  1. plaster cold   `plaster run` as a fresh process, start to exit
  2. plaster warm   a cycle inside this long-lived process, Ray already up (the scheduler's path)
  3. plain script   benchmarks/plain_script.py as a fresh process: train the same epochs on the
                    same arrays, export, FP16/INT8 variants, evaluate both models, register in MLflow
  4. compute floor  the plain script's train + export + variants + evaluate, timed in-process

Every repetition starts from a copy of one prepared PLASTER_HOME: champion v1 registered and
four drifted shards waiting. Workload: the digits reference pipeline.

    .venv/bin/python benchmarks/cycle_time.py [--reps 3] [--out benchmarks/results/cycle_time.json]
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

ROOT = Path(__file__).resolve().parents[1]


def prepare(base: Path, digits: Path) -> None:
    os.environ["PLASTER_HOME"] = str(base)
    from orchestrator import api

    api.simulate(digits, shards=4)
    first = api.run_cycle(digits)
    assert first["decision"] == "PROMOTED", first["reasons"]
    api.simulate(digits, shards=4)  # what every measured cycle learns


def fresh(base: Path, tmp: Path, name: str) -> Path:
    home = tmp / name
    shutil.copytree(base, home, ignore=shutil.ignore_patterns("ray", "locks"))
    return home


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cycle_time.json")
    args = ap.parse_args()
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    with tempfile.TemporaryDirectory(prefix="plaster-cycle-bench-") as t:
        tmp = Path(t)
        digits = tmp / "digits"
        shutil.copytree(ROOT / "pipelines" / "digits", digits)
        base = tmp / "base"
        console.print("preparing: one cycle for champion v1, then four drifted shards…")
        prepare(base, digits)

        from orchestrator import api
        from orchestrator.runtime import ensure_ray
        from orchestrator.workspace import Workspace

        runs: dict[str, list[float]] = {"plaster cold": [], "plaster warm": [], "plain script": [], "compute floor": []}
        stages: dict[str, list[dict]] = {"plaster cold": [], "plaster warm": []}
        plain_pieces: list[dict] = []
        ensure_ray(Workspace.from_env())  # the warm path: Ray is up before the clock starts
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("RAY_ADDRESS", None)
        for rep in range(args.reps):
            console.print(f"repetition {rep + 1}/{args.reps}")
            home = fresh(base, tmp, f"cold{rep}")
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(digits)], capture_output=True,
                                 text=True, env={**env, "PLASTER_HOME": str(home)})
            runs["plaster cold"].append(time.perf_counter() - t0)
            if out.returncode != 0:
                sys.exit(f"plaster run failed: {out.stderr[-2000:]}")
            if "SKIPPED" in out.stdout:
                sys.exit(f"the cold cycle did not train: {out.stdout[-2000:]}")
            rec = json.loads(sorted((home / "cycles" / "digits").glob("*/record.json"))[-1].read_text())
            stages["plaster cold"].append({n: s["seconds"] for n, s in rec["stages"].items()})

            home = fresh(base, tmp, f"warm{rep}")
            os.environ["PLASTER_HOME"] = str(home)
            t0 = time.perf_counter()
            rec = api.run_cycle(digits)
            runs["plaster warm"].append(time.perf_counter() - t0)
            if rec["decision"] not in ("PROMOTED", "REJECTED", "HELD"):
                sys.exit(f"the warm cycle did not train: {rec['decision']} {rec['reasons']}")
            stages["plaster warm"].append({n: s["seconds"] for n, s in rec["stages"].items()})

            snap = Path(rec["stages"]["ingest"]["output"]["train_file"]).parent
            champion = home / "champions" / "digits" / "v1"
            work = tmp / f"plain{rep}"
            work.mkdir()
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plain_script.py"), "--pipeline", str(digits),
                                  "--snapshot", str(snap), "--champion", str(champion), "--mlflow", str(work),
                                  "--out", str(work)], capture_output=True, text=True, env=env)
            runs["plain script"].append(time.perf_counter() - t0)
            if out.returncode != 0:
                sys.exit(f"plain script failed: {out.stderr[-2000:]}")
            res = json.loads(out.stdout.strip().splitlines()[-1])
            plain_pieces.append(res["pieces_s"])
            runs["compute floor"].append(sum(res["pieces_s"][k] for k in ("train", "export", "variants", "evaluate")))

    med = {k: statistics.median(v) for k, v in runs.items()}
    table = Table(title=f"Cycle time on digits, median of {args.reps} (2-core machine)")
    for col in ("path", "wall s", "÷ plain script", "÷ compute floor", "runs"):
        table.add_column(col, justify="left" if col == "path" else "right")
    for k, v in med.items():
        table.add_row(k, f"{v:.1f}", f"{v / med['plain script']:.2f}x", f"{v / med['compute floor']:.2f}x",
                      " ".join(f"{x:.1f}" for x in runs[k]))
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
    result = {"benchmark": "cycle_time", "workload": "digits", "reps": args.reps, "runs_s": runs, "median_s": med,
              "ratio_to_plain": {k: v / med["plain script"] for k, v in med.items()},
              "ratio_to_floor": {k: v / med["compute floor"] for k, v in med.items()},
              "plaster_stage_s": stages, "plain_pieces_s": pieces}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
