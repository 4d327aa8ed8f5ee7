"""Every reference pipeline, two real cycles each, as a user runs them: `plaster simulate` 4 shards,
`plaster run`, 4 more, `plaster run`. Prints per pipeline and cycle the decision, the seconds of
each stage, the cycle time, and the task's primary metric of candidate and champion on the new
slice with their confidence intervals and the paired difference; writes
benchmarks/results/pipelines.json and .md.

    .venv/bin/python benchmarks/pipelines.py [--pipelines tabular text regression weighted digits]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"


def _fig(metric: str, f: dict | None) -> str:
    if not f:
        return "—"
    lo, hi = f.get("ci") or (None, None)
    ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None else ""
    return f"{f['value']:.3f}{ci}"


def row(name: str, n: int, rec: dict) -> dict:
    sc = rec["stages"].get("validate", {}).get("output") or {}
    chosen, champ = sc.get("chosen") or {}, sc.get("champion") or {}
    metric = chosen.get("metric", "accuracy")
    diff = next((d for d in (sc.get("comparison") or {}).get("accuracy", [])
                 if d["slice"] == "new" and d.get("metric", "accuracy") == metric), None)
    return {
        "pipeline": name, "cycle": n, "decision": rec["decision"], "version": rec["version"],
        "stages_s": {k: round(v["seconds"], 1) for k, v in rec["stages"].items()},
        "cycle_time_s": rec["cycle_time_s"], "metric": metric,
        "served": f"{chosen.get('backend')}:{chosen.get('precision')}",
        "candidate_new": (chosen.get("accuracy") or {}).get("new"),
        "champion_new": (champ.get("accuracy") or {}).get("new") if champ else None,
        "diff_new": {"diff": diff["diff"], "ci": diff["ci"]} if diff else None,
    }


def markdown(rows: list[dict]) -> str:
    lines = ["| pipeline | cycle | decision | stages (s) | cycle time (s) | metric (new) | candidate [CI] | "
             "champion [CI] | candidate − champion [CI] |", "|---" * 9 + "|"]
    for r in rows:
        stages = " ".join(f"{k[:3]} {v}" for k, v in r["stages_s"].items())
        d = r["diff_new"]
        lines.append(f"| {r['pipeline']} | {r['cycle']} | {r['decision']} v{r['version']} | {stages} | "
                     f"{r['cycle_time_s']:.1f} | {r['metric']} | {_fig(r['metric'], r['candidate_new'])} | "
                     f"{_fig(r['metric'], r['champion_new'])} | "
                     + (f"{d['diff']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]" if d else "—") + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pipelines", nargs="+", default=["tabular", "text", "regression", "weighted"])
    args = ap.parse_args()
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="plaster-pipelines-"))
    os.environ["PLASTER_HOME"] = str(tmp / "home")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from orchestrator import api

    try:
        for name in args.pipelines:
            folder = tmp / "pipelines" / name
            shutil.copytree(ROOT / "pipelines" / name, folder)
            for n in (1, 2):
                api.simulate(folder, shards=4)
                rec = api.run_cycle(folder)
                rows.append(row(name, n, rec))
                print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "pipelines.json").write_text(json.dumps(rows, indent=2))
    (OUT / "pipelines.md").write_text(markdown(rows) + "\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
