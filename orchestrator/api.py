"""What the CLI does, callable from Python: run a cycle, read status, simulate data.

Each function loads the pipeline, wires the real parts (workspace, lock, MLflow registry)
and calls the library; the CLI only parses arguments and prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from orchestrator import record as records
from orchestrator.config import load_pipeline
from orchestrator.errors import ConfigError
from orchestrator.workspace import Workspace


def registry_for(ws: Workspace):
    from orchestrator.registry import MlflowRegistry

    return MlflowRegistry(ws.tracking_uri, ws.mlflow_artifacts)


def run_cycle(folder: str | Path, resume: bool = False, wait: bool = False, trigger: str = "manual",
              say: Callable[[str], None] = lambda m: None, registry=None) -> dict[str, Any]:
    """Run (or resume) one cycle of the pipeline in `folder`; return its record.

    Raises:
        CycleLockedError: another cycle of this pipeline is running (and `wait` is False).
        PlasterError: the cycle could not reach a decision; resume it after fixing the cause.
    """
    from orchestrator.cycle import Cycle

    ws = Workspace.from_env()
    pipeline = load_pipeline(folder)
    with records.PipelineLock(ws, pipeline.name) as lock:
        lock.acquire(wait=wait, holder=f"plaster run {folder}")
        registry = registry or registry_for(ws)
        if resume:
            cycle = Cycle.resume(ws, pipeline, registry, say=say)
        else:
            cycle = Cycle.start(ws, pipeline, registry, trigger=trigger, say=say)
        return cycle.run()


def status(folder: str | Path, last: int = 10, registry=None) -> dict[str, Any]:
    ws = Workspace.from_env()
    pipeline = load_pipeline(folder)
    registry = registry or registry_for(ws)
    aliases = {a: registry.alias(pipeline.name, a) for a in ("champion", "challenger", "previous")}
    cycles = []
    for r in records.load_all(ws, pipeline.name)[-last:]:
        cycles.append({
            "id": r["id"], "state": r["state"], "trigger": r.get("trigger"), "decision": r["decision"],
            "reasons": r["reasons"], "version": r["version"], "champion_before": r["champion_before"],
            "stage_seconds": {n: s["seconds"] for n, s in r["stages"].items()},
            "cycle_time_s": r["cycle_time_s"], "data_to_live_s": r["data_to_live_s"],
            "quarantined": [{"name": q["name"], "reason": q["reason"], "moved_to": q["moved_to"]} for q in r["quarantined"]],
            "error": r["error"], "run_id": r["run_id"],
        })
    return {"pipeline": pipeline.name, "tracking_uri": registry.tracking_uri, "registered_model": pipeline.name,
            "champion": {"name": pipeline.name, "version": aliases["champion"]}, "aliases": aliases,
            "plaster_home": str(ws.home), "cycles": cycles}


def simulate(folder: str | Path, shards: int, shuffle_labels: bool = False) -> list[Path]:
    Workspace.from_env()
    pipeline = load_pipeline(folder)
    sim = pipeline.folder / "simulate.py"
    if not sim.is_file():
        raise ConfigError(f"{pipeline.folder} has no simulate.py: only reference pipelines ship a data simulator; "
                          f"drop your own Parquet shards into {pipeline.source}")
    return pipeline.module("simulate.py").simulate(pipeline.source, pipeline.golden, shards, shuffle_labels=shuffle_labels)
