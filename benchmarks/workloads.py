"""The benchmark workloads and their common preparation (used by cycle_time, warm_start, soak).

  digits  pipelines/digits: the reference pipeline, tiny compute (orchestration dominates)
  heavy   benchmarks/heavy: 16x16 digits and a wide CNN (training compute dominates)

Both folders ship a simulate.py, so `api.simulate` (`plaster simulate DIR`) generates their
drifting shards and golden holdout in the project, with no download.
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# FP16 conversion of a trained model warns once per tiny weight it rounds: noise in a benchmark's output.
warnings.filterwarnings("ignore", message="the float32 number", category=UserWarning)
# Measure this checkout's orchestrator, here and in the subprocesses (cold runs, the plain
# script, Ray's workers), whatever checkout the venv's editable install points at.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
WORKLOADS = {"digits": ROOT / "pipelines" / "digits", "heavy": ROOT / "benchmarks" / "heavy"}


def copy_pipeline(workload: str, tmp: Path, overrides: list[str] | tuple[str, ...] = ()) -> Path:
    """A private copy of the workload's pipeline folder (nothing the benchmark does touches the
    repo), with `overrides` ("train.epochs=2", values in YAML) applied to its pipeline.yaml."""
    folder = tmp / workload
    shutil.copytree(WORKLOADS[workload], folder, ignore=shutil.ignore_patterns("__pycache__"))
    if overrides:
        import yaml

        raw = yaml.safe_load((folder / "pipeline.yaml").read_text())
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise SystemExit(f"--set {item!r}: write KEY=VALUE, e.g. train.epochs=2")
            *parents, leaf = key.split(".")
            node = raw
            for k in parents:
                node = node.setdefault(k, {})
            node[leaf] = yaml.safe_load(value)
        (folder / "pipeline.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return folder


def parse(ap, name: str):
    """The options every workload benchmark shares (--workload, --set, --out), parsed; returns
    (args, the JSON file to write, a console that has said whether the figures are smoke)."""
    from rich.console import Console

    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="digits")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a pipeline.yaml key in the benchmark's copy (smoke runs, e.g. train.epochs=2); "
                         "the figures that count are for the pipeline as shipped")
    ap.add_argument("--out", type=Path, default=None, help=f"default: benchmarks/results/{name}_<workload>.json")
    args = ap.parse_args()
    out_file = args.out or ROOT / "benchmarks" / "results" / f"{name}_{args.workload}.json"
    console = Console(width=140)
    if args.overrides:
        console.print(f"[bold]pipeline.yaml overridden: {args.overrides}: smoke figures, not the benchmark's[/]")
    return args, out_file, console


def prepare(base: Path, folder: Path, shards: int = 4, then: int | None = None) -> dict:
    """In PLASTER_HOME=base: `shards` shards, one cycle that must promote champion v1, then
    `then` (default: `shards`) more drifted shards waiting (what a measured cycle learns).
    Returns cycle 1's record."""
    os.environ["PLASTER_HOME"] = str(base)
    from orchestrator import api

    api.simulate(folder, shards=shards)
    first = api.run_cycle(folder)
    assert first["decision"] == "PROMOTED", (first["decision"], first["reasons"])
    api.simulate(folder, shards=then or shards)
    return first


def placement(record: dict) -> tuple[str, str]:
    """Where a cycle trained and why: the train output's `placement` and `workers_reason`."""
    out = (record.get("stages", {}).get("train") or {}).get("output") or {}
    return out.get("placement", "?"), out.get("workers_reason", "?")
