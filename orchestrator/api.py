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


def gate(folder: str | Path, candidate: str | None = None, registry=None,
         say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Validate a registered version against the champion again, on this machine, and apply
    the pipeline's gate. Moves no alias; logs the scorecard to a new MLflow run and tags the
    version with the decision. `candidate` defaults to the challenger, else the newest version.

    Raises:
        GateError / RegistryError: nothing to judge, or the version cannot be fetched.
    """
    import dataclasses
    import json

    from orchestrator import scorecard
    from orchestrator.artifacts import Variant, sha256_file, to_dict
    from orchestrator.context import StageContext
    from orchestrator.dataset import load_arrays, read_shard
    from orchestrator.errors import GateError
    from orchestrator.stages import build, validate

    ws = Workspace.from_env()
    pipeline = load_pipeline(folder)
    registry = registry or registry_for(ws)
    name = pipeline.name
    champion_v = registry.alias(name, "champion")
    candidate_v = candidate or registry.alias(name, "challenger") or registry.latest_version(name)
    if candidate_v is None:
        raise GateError(f"'{name}' has no registered version to judge: run a cycle first (`plaster run {folder}`)")
    versions = ws.home / "versions" / name
    cand = registry.fetch(name, candidate_v, versions)
    champ = registry.fetch(name, champion_v, versions) if champion_v else None

    slices = {}
    holdout = Path(cand.folder) / "holdout" / "new.npz"
    if holdout.exists():  # the examples its cycle judged it on
        slices["new"] = load_arrays(holdout)
    for s, path in pipeline.slice_files.items():
        try:
            slices[s] = read_shard(path, pipeline.config.data)
        except (OSError, ValueError) as e:
            raise GateError(f"holdout slice '{s}' at {path} is unreadable ({e}): fix data.golden / data.slices "
                            f"or run `plaster simulate {folder}` for a reference pipeline") from None
    if not slices:
        raise GateError(f"nothing to judge v{candidate_v} on: its bundle has no holdout and the pipeline names no "
                        "data.golden or data.slices")
    variants = sorted((Path(cand.folder) / "variants").glob("*.onnx"))
    order = {p: i for i, p in enumerate(pipeline.config.build.precisions)}
    made = sorted((Variant(p.stem, str(p), sha256_file(p)) for p in variants), key=lambda v: order.get(v.precision, 99))

    gate_id = f"gate-v{candidate_v}-{records.new_id()}"
    run_id = registry.start_run(name, gate_id, {"plaster.gate_for": candidate_v, "plaster.champion": champion_v or ""})
    ctx = StageContext(ws, pipeline, gate_id, ws.home / "gates" / name / gate_id, registry, run_id, say=say)
    try:
        backends, _ = build.available_backends(pipeline.config.build.backends)
        cand_engines = build.engines_for(ctx, backends, made)
        champ_engines = build.engines_for(ctx, backends, [build.champion_variant(champ)]) if champ else []
        rate_file = Path(cand.folder) / "scorecard.json"
        rate = json.loads(rate_file.read_text()).get("rate", {}) if rate_file.exists() else {}
        fp32 = next(v.path for v in made if v.precision == "fp32")
        sc, raw = validate.judge(pipeline.config, slices, cand_engines, champ_engines, champion_v,
                                 validate.model_sizes(pipeline.config, fp32, champ.folder if champ else None), rate, say)
        sc = dataclasses.replace(sc, candidate_version=candidate_v)
        scorecard.publish(registry, run_id, sc, raw, ctx.folder / "scorecard", None)
        registry.set_version_tags(name, candidate_v, {"plaster.gate.decision": sc.decision, "plaster.gate.run_id": run_id})
    except BaseException:
        registry.end_run(run_id, "FAILED")
        raise
    registry.end_run(run_id, "FINISHED")
    return {"pipeline": name, "candidate_version": candidate_v, "champion_version": champion_v,
            "decision": sc.decision, "run_id": run_id, "tracking_uri": registry.tracking_uri,
            "scorecard": to_dict(sc), "files": str(ctx.folder / "scorecard")}
