"""What the CLI does, callable from Python: run a cycle, read status, simulate data.

Each function loads the pipeline, wires the real parts (workspace, lock, MLflow registry)
and calls the library; the CLI only parses arguments and prints. What they return is
masked (secrets.mask_obj), since the CLI prints it: a tracking URI keeps its host, not its password.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from orchestrator import record as records
from orchestrator import secrets
from orchestrator.config import load_pipeline
from orchestrator.errors import ConfigError
from orchestrator.workspace import Workspace


def registry_for(ws: Workspace):
    from orchestrator.registry import MlflowRegistry

    return MlflowRegistry(ws.tracking_uri, ws.mlflow_artifacts)


def run_cycle(folder: str | Path, resume: bool = False, wait: bool = False, trigger: str = "manual",
              say: Callable[[str], None] = lambda m: None, registry=None, stop=None) -> dict[str, Any]:
    """Run (or resume) one cycle of the pipeline in `folder`; return its record.

    Raises:
        CycleLockedError: another cycle of this pipeline is running (and `wait` is False).
        PlasterError: the cycle could not reach a decision; resume it after fixing the cause.
        Interrupted: `stop` was set while waiting for the lock (a stop during the cycle
            returns its record in state `interrupted` instead).
    """
    from orchestrator.cycle import Cycle

    ws = Workspace.from_env()
    pipeline = load_pipeline(folder)
    with records.PipelineLock(ws, pipeline.name) as lock:
        lock.acquire(wait=wait, holder=f"plaster run {folder}", stop=stop)
        registry = registry or registry_for(ws)
        if resume:
            cycle = Cycle.resume(ws, pipeline, registry, say=say)
        else:
            cycle = Cycle.start(ws, pipeline, registry, trigger=trigger, say=say)
        return secrets.mask_obj(cycle.run(stop))


def status(folder: str | Path, last: int = 10, registry=None) -> dict[str, Any]:
    from orchestrator import rollout
    from orchestrator.registry import read_aliases

    ws = Workspace.from_env()
    pipeline = load_pipeline(folder, check=False)
    found = read_aliases(ws.tracking_uri, pipeline.name) if registry is None else None
    if found is None:  # a store only MLflow's client reads (or a registry handed in)
        registry = registry or registry_for(ws)
        found = {a: registry.alias(pipeline.name, a) for a in ("champion", "challenger", "previous")}
    aliases = {a: found.get(a) for a in ("champion", "challenger", "previous")}
    cycles = []
    for r in records.load_all(ws, pipeline.name)[-last:]:
        cycles.append({
            "id": r["id"], "state": r["state"], "trigger": r.get("trigger"), "decision": r["decision"],
            "reasons": r["reasons"], "version": r["version"], "champion_before": r["champion_before"],
            "stage_seconds": {n: s["seconds"] for n, s in r["stages"].items()},
            "cycle_time_s": r["cycle_time_s"], "data_to_live_s": r["data_to_live_s"],
            "quarantined": [{"name": q["name"], "reason": q["reason"], "moved_to": q["moved_to"]} for q in r["quarantined"]],
            "skipped": r.get("skipped", []),  # records from before it have none
            "table": r.get("table"),  # a lake table source: the version read
            "error": r["error"], "run_id": r["run_id"],
        })
    return secrets.mask_obj({
        "pipeline": pipeline.name, "tracking_uri": registry.tracking_uri if registry else ws.tracking_uri,
        "registered_model": pipeline.name, "champion": {"name": pipeline.name, "version": aliases["champion"]},
        "aliases": aliases, "plaster_home": str(ws.home), "cycles": cycles,
        "last_rollout": next(iter(rollout.load(ws, pipeline.name)[-1:]), None)})


def simulate(folder: str | Path, shards: int, shuffle_labels: bool = False) -> list[Path]:
    Workspace.from_env()
    pipeline = load_pipeline(folder, check=False)
    sim = pipeline.folder / "simulate.py"
    if not sim.is_file():
        raise ConfigError(f"{pipeline.folder} has no simulate.py: only reference pipelines ship a data simulator; "
                          f"drop your own Parquet shards into {pipeline.source}")
    if pipeline.table_format != "parquet":  # a lake table: the simulator commits new versions to the table itself
        table = {"catalog": pipeline.catalog} if pipeline.table_format == "iceberg" else {}
        return pipeline.module("simulate.py").simulate(pipeline.source_uri, pipeline.golden, shards,
                                                       shuffle_labels=shuffle_labels, **table)
    bucket = pipeline.bucket
    if bucket is None:
        return pipeline.module("simulate.py").simulate(pipeline.source, pipeline.golden, shards,
                                                       shuffle_labels=shuffle_labels)
    # A bucket source: simulate into a staging folder (which also numbers the shards), then
    # upload each new shard, as a producer writing to the bucket would.
    staging = Workspace.from_env().home / "simulated" / pipeline.name
    made = pipeline.module("simulate.py").simulate(staging, pipeline.golden, shards, shuffle_labels=shuffle_labels)
    for p in made:
        bucket.upload(p)
    return made


def gate(folder: str | Path, candidate: str | None = None, registry=None,
         say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Validate a registered version against the champion again, on this machine, and apply
    the pipeline's gate. Moves no alias; logs the scorecard to a new MLflow run and tags the
    version with the decision. `candidate` defaults to the challenger, else the newest version.
    Slices: its holdout, the pipeline's golden and data.slices, and `live` (the labelled requests
    it answered in a shadow, feedback.live_slice) when there are any.

    Raises:
        GateError / RegistryError: nothing to judge, or the version cannot be fetched.
    """
    import dataclasses
    import json

    from orchestrator import feedback, scorecard
    from orchestrator.artifacts import Variant, sha256_file, to_dict
    from orchestrator.context import StageContext
    from orchestrator.dataset import ShardInvalid, load_arrays, read_shard
    from orchestrator.errors import GateError
    from orchestrator.stages import build, validate
    from orchestrator.storage import for_pipeline as storage_for

    ws = Workspace.from_env()
    pipeline = load_pipeline(folder, check=False)
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
    for s in pipeline.partition_slices:  # cut from its cycle's new data by partition value
        if (Path(cand.folder) / "holdout" / f"{s}.npz").exists():
            slices[s] = load_arrays(Path(cand.folder) / "holdout" / f"{s}.npz")
    for s, path in pipeline.slice_files.items():
        try:
            slices[s] = read_shard(path, pipeline.inputs, pipeline.target)
        except (OSError, ValueError, ShardInvalid) as e:
            raise GateError(f"holdout slice '{s}' at {path} is unreadable ({e}): fix data.golden / data.slices "
                            f"or run `plaster simulate {folder}` for a reference pipeline") from None
    # Labelled requests it answered as a shadow: accuracy on real traffic. Added last, since
    # the first slice is the one latency is timed on.
    live = feedback.live_slice(pipeline, ws, candidate_v)
    if live is not None and "live" in slices:
        say(f"data.slices names a slice 'live': v{candidate_v}'s labelled shadow traffic is left out; rename "
            "that slice to see it")
    elif live is not None:
        slices["live"] = live
        say(f"live slice: {len(live[1])} labelled example(s) v{candidate_v} answered in a shadow")
    if not slices:
        raise GateError(f"nothing to judge v{candidate_v} on: its bundle has no holdout and the pipeline names no "
                        "data.golden or data.slices")
    variants = sorted((Path(cand.folder) / "variants").glob("*.onnx"))
    order = {p: i for i, p in enumerate(pipeline.config.build.precisions)}
    made = sorted((Variant(p.stem, str(p), sha256_file(p)) for p in variants), key=lambda v: order.get(v.precision, 99))

    gate_id = f"gate-v{candidate_v}-{records.new_id()}"
    run_id = registry.start_run(name, gate_id, {"plaster.gate_for": candidate_v, "plaster.champion": champion_v or ""})
    ctx = StageContext(ws, pipeline, gate_id, ws.home / "gates" / name / gate_id, registry, run_id, say=say,
                       storage=storage_for(pipeline, ws.home))
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
        registry.set_version_tags(name, candidate_v, {"plaster.gate.decision": sc.decision, "plaster.gate.run_id": run_id,
                                                      "plaster.validated_against": champion_v or ""})
    except BaseException:
        registry.end_run(run_id, "FAILED")
        raise
    registry.end_run(run_id, "FINISHED")
    return secrets.mask_obj({"pipeline": name, "candidate_version": candidate_v, "champion_version": champion_v,
                             "decision": sc.decision, "run_id": run_id, "tracking_uri": registry.tracking_uri,
                             "scorecard": to_dict(sc), "files": str(ctx.folder / "scorecard")})


def approve(folder: str | Path, version: str, reason: str = "", registry=None) -> dict[str, Any]:
    """Promote a version held for approval, with the same compare-and-set check as a cycle:
    only if the champion is still the one it was validated against.

    Raises:
        GateError: the version is not awaiting approval, or the champion moved since it was validated.
        CycleLockedError: a cycle of this pipeline is running.
    """
    from orchestrator import ledger
    from orchestrator.errors import GateError

    ws = Workspace.from_env()
    pipeline = load_pipeline(folder, check=False)
    registry = registry or registry_for(ws)
    name, version = pipeline.name, str(version)
    with records.PipelineLock(ws, name) as lock:
        lock.acquire(wait=False, holder=f"plaster approve {name} {version}")
        tags = registry.version_tags(name, version)
        if tags.get("plaster.awaiting_approval") != "true":
            raise GateError(f"{name} v{version} is not awaiting approval (gate decision: "
                            f"{tags.get('plaster.gate.decision') or tags.get('plaster.decision') or 'unknown'}); only a "
                            f"HELD candidate can be approved: `plaster gate {folder} --candidate {version}` judges it")
        if tags.get("plaster.gate.decision") == "REJECT":
            raise GateError(f"{name} v{version} was re-judged REJECT by `plaster gate`; it cannot be approved")
        current = registry.alias(name, "champion")
        against = tags.get("plaster.validated_against") or None
        if current != against:
            raise GateError(f"the champion moved from v{against or '(none)'} to v{current} since v{version} was validated; "
                            f"re-validate with `plaster gate {folder} --candidate {version}`, then approve")
        if current is not None:
            registry.set_alias(name, "previous", current)
        registry.set_alias(name, "champion", version)
        if registry.alias(name, "challenger") == version:
            registry.delete_alias(name, "challenger")
        who = ledger.actor()
        registry.set_version_tags(name, version, {"plaster.awaiting_approval": "false", "plaster.approved_by": who})
        entry = ledger.record(ws, name, "champion", current, version, ledger.APPROVE, reason or "approved", who=who)
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(entry["at"]))
        registry.append_to_description(name, version, f"**Approved** {when} by {who}: {entry['reason']}. Champion "
                                       f"since then" + (f" (previous: v{current})." if current else "."))
    return entry


def rollback(folder: str | Path, reason: str, to: str | None = None, registry=None, expect: str | None = None,
             who: str | None = None, extra: dict | None = None) -> dict[str, Any] | None:
    """Point `champion` back at `to` (default: `previous`); the version rolled away from
    becomes `previous`, so a rollback can itself be undone. With `expect` (the live gate's
    automatic rollback) only if the champion is still that version: None, and nothing moved,
    if someone moved it already. `who` and `extra` go into the ledger entry.

    Raises:
        GateError: no reason given, nothing to roll back to, or `to` is already the champion.
        RegistryError: `to` does not exist or has no plaster bundle (it could not be served).
    """
    from orchestrator import ledger
    from orchestrator.errors import GateError

    if not reason.strip():
        raise GateError("a rollback needs --reason \"...\": it is recorded in `plaster history` for whoever looks next")
    ws = Workspace.from_env()
    pipeline = load_pipeline(folder, check=False)
    registry = registry or registry_for(ws)
    name = pipeline.name
    with records.PipelineLock(ws, name) as lock:
        lock.acquire(wait=False, holder=f"plaster rollback {name}")
        current = registry.alias(name, "champion")
        if expect is not None and current != str(expect):
            return None
        target = str(to) if to else registry.alias(name, "previous")
        if target is None:
            raise GateError(f"'{name}' has no `previous` version to roll back to; name one with --to VERSION")
        if target == current:
            raise GateError(f"v{target} is already the champion of '{name}'")
        registry.fetch(name, target, ws.home / "versions" / name)  # it must be servable before it goes live
        registry.set_alias(name, "champion", target)
        if current is not None:
            registry.set_alias(name, "previous", current)
            registry.set_version_tags(name, current, {"plaster.rolled_back": "true", "plaster.rolled_back_reason": reason[:500]})
        entry = ledger.record(ws, name, "champion", current, target, ledger.ROLLBACK, reason, who=who, extra=extra)
        # The version pages tell it too: a reviewer on v{current} sees who took it down, when and why.
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(entry["at"]))
        if current is not None:
            registry.append_to_description(name, current, f"**Rolled back** {when} by {entry['actor']}: "
                                           f"{entry['reason']}. The champion went back to v{target}.")
        registry.append_to_description(name, target, f"**Champion again** {when} by rollback from v{current} "
                                       f"({entry['actor']}): {entry['reason']}.")
    return entry


def history(folder: str | Path, last: int = 50) -> dict[str, Any]:
    """Cycles with their decisions, timings and accuracy on new data (stale champion vs
    candidate), and every alias move from the ledger. Reads local records only (no MLflow)."""
    from orchestrator import ledger, rollout

    ws = Workspace.from_env()
    pipeline = load_pipeline(folder, check=False)
    moves = ledger.load(ws, pipeline.name)
    rollouts = rollout.load(ws, pipeline.name)
    cycles = []
    for r in records.load_all(ws, pipeline.name)[-last:]:
        sc = r["stages"].get("validate", {}).get("output")
        metric = sc["chosen"].get("metric", "accuracy") if sc else "accuracy"
        new = next((d for d in (sc.get("comparison") or {}).get("accuracy", [])
                    if d["slice"] == "new" and d.get("metric", "accuracy") == metric), None) if sc else None
        cand_new = sc["chosen"]["accuracy"].get("new", {}).get("value") if sc else None
        cycles.append({
            "id": r["id"], "started_at": r["started_at"], "decided_at": r["decided_at"], "state": r["state"],
            "trigger": r.get("trigger"), "decision": r["decision"], "version": r["version"],
            "champion_before": r["champion_before"], "data_to_live_s": r["data_to_live_s"],
            "cycle_time_s": r["cycle_time_s"], "stage_seconds": {n: s["seconds"] for n, s in r["stages"].items()},
            "new_accuracy_champion": new["champion"] if new else None, "new_accuracy_candidate": cand_new,
            "metric": metric,
            "new_rows": sum(s["rows"] for s in r["stages"].get("ingest", {}).get("output", {}).get("new_shards", [])),
            "drift": (r["stages"].get("ingest", {}).get("output") or {}).get("drift"),
            "alias_moves": [m for m in moves if m.get("cycle_id") == r["id"]],
            # when the promote stage moved the alias: data_to_live_s ends here (report.lag_parts)
            "promoted_at": (r["stages"].get("promote", {}).get("output") or {}).get("decided_at"),
            # how `plaster serve` moved traffic to it (canary, linear, shadow), if it did
            "rollout": next((x for x in reversed(rollouts) if r["version"] and x["to"] == r["version"]), None),
        })
    return {"pipeline": pipeline.name, "cycles": cycles, "alias_moves": moves, "rollouts": rollouts,
            "slo": {"data_to_live_s": pipeline.config.slo.data_to_live_s}}


def report(folder: str | Path, out: str | Path, last: int = 50, registry=None) -> dict[str, Any]:
    """history() as an HTML report with plots in `out`, also logged to MLflow as a run
    `report-<time>` (artifacts under report/, DevOps figures as metrics)."""
    import time

    from orchestrator import report as rep

    h = history(folder, last)
    now = time.time()
    files = rep.write_html(h, Path(out), now=now)
    figures = rep.devops(h, now)
    registry = registry or registry_for(Workspace.from_env())
    run_id = registry.start_run(h["pipeline"], time.strftime("report-%Y%m%d-%H%M%S", time.gmtime(now)),
                                {"plaster.report": "true"})
    try:
        registry.log_artifacts(run_id, Path(out), "report")
        registry.log_metrics(run_id, {f"devops.{k}": v for k, v in figures.items()
                                      if isinstance(v, (int, float)) and not isinstance(v, bool)})
    except BaseException:
        registry.end_run(run_id, "FAILED")
        raise
    registry.end_run(run_id, "FINISHED")
    return secrets.mask_obj({"files": [str(p) for p in files], "run_id": run_id, "tracking_uri": registry.tracking_uri,
                             "devops": figures})


def label(folder: str | Path, labels, say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Join labels (a Parquet or CSV file, or a pyarrow Table, with request_id, optionally
    example, and the target) with the requests the server kept (`feedback:`), writing the
    matched rows as a new shard of the data source that the next cycle learns; labels of
    requests not served yet wait for a later call. See feedback.label."""
    from orchestrator import feedback

    ws = Workspace.from_env()
    pipeline = load_pipeline(folder, check=False)
    return secrets.mask_obj(feedback.label(pipeline, ws, labels, say=say))
