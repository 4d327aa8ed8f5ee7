"""The cycle: ingest → train → export → build → validate → promote, as a small state machine.

This is the only place that orders stages, times them, persists their outputs (after
every stage, to the record and the MLflow run) and decides what happens next: SKIPPED
when there is too little data, REJECTED when a stage or the gate says so, back to build
when the champion moved under us, and a resumable FAILED state on any error.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from typing import Any, Callable, NoReturn

from orchestrator import record as records
from orchestrator.artifacts import Checkpoint, Decision, EngineSet, OnnxModel, Promotion, Scorecard, Snapshot, from_dict, to_dict
from orchestrator.config import Pipeline
from orchestrator.context import StageContext
from orchestrator.errors import CandidateRejected, ChampionMoved, Interrupted, PlasterError, RegistryError, ResumeError
from orchestrator.storage import for_pipeline as storage_for
from orchestrator.workspace import Workspace

# Each stage: the artifact it returns and the earlier stages' artifacts it takes, in order.
# Adding a stage is one line here (and its module in orchestrator/stages/).
PLAN: dict[str, tuple[type, tuple[str, ...]]] = {
    "ingest": (Snapshot, ()),
    "train": (Checkpoint, ("ingest",)),
    "export": (OnnxModel, ("ingest", "train")),
    "build": (EngineSet, ("ingest", "export")),
    "validate": (Scorecard, ("ingest", "train", "build")),
    "promote": (Promotion, ("ingest", "train", "export", "build", "validate")),
}
STAGES = tuple(PLAN)
OUTPUT = {name: out for name, (out, _) in PLAN.items()}
PROMOTED, REJECTED, SKIPPED, HELD = Decision.PROMOTED, Decision.REJECTED, Decision.SKIPPED, Decision.HELD


def _call(name: str, ctx: StageContext, o: dict[str, Any]) -> Any:
    # Stages import torch/onnx/ray: load them only when a cycle needs them.
    import importlib

    stage = importlib.import_module(f"orchestrator.stages.{name}")
    return stage.run(ctx, *(o[n] for n in PLAN[name][1]))


def _from_registry(e: Exception) -> bool:
    return type(e).__module__.split(".")[0] in ("mlflow", "requests", "urllib3")


def registry_down(e: Exception, tracking_uri: str, folder) -> RegistryError:
    """An MLflow or HTTP error as the error a user can act on: where the registry is and how to go on."""
    first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
    return RegistryError(f"the MLflow registry at {tracking_uri} failed ({type(e).__name__}: {first}); "
                         f"start it again or fix MLFLOW_TRACKING_URI, then `plaster run {folder} --resume` "
                         "continues from the last finished stage")


class Cycle:
    def __init__(self, ws: Workspace, pipeline: Pipeline, registry, record: dict[str, Any],
                 say: Callable[[str], None] = lambda m: None):
        self.ws, self.pipeline, self.registry, self.record, self.say = ws, pipeline, registry, record, say
        self.ctx = StageContext(ws, pipeline, record["id"], ws.cycle_dir(pipeline.name, record["id"]),
                                registry, record["run_id"], say=say, extras={"trigger": record.get("trigger")},
                                storage=storage_for(pipeline, ws.home))

    @classmethod
    def start(cls, ws: Workspace, pipeline: Pipeline, registry, trigger: str = "manual",
              say: Callable[[str], None] = lambda m: None) -> "Cycle":
        for old in records.load_all(ws, pipeline.name):
            if old["state"] in (records.RUNNING, records.FAILED, records.INTERRUPTED):
                old["state"] = records.ABANDONED  # a fresh run supersedes it; its files stay for inspection
                records.save(ws, old)
        cycle_id = records.new_id()
        try:
            run_id = registry.start_cycle_run(pipeline.name, cycle_id, {"plaster.trigger": trigger})
        except Exception as e:
            if _from_registry(e):
                raise registry_down(e, getattr(registry, "tracking_uri", ""), pipeline.folder) from None
            raise
        rec = {
            "id": cycle_id, "pipeline": pipeline.name, "state": records.RUNNING, "trigger": trigger,
            "started_at": time.time(), "decided_at": None, "decision": None, "reasons": [],
            "run_id": run_id, "tracking_uri": getattr(registry, "tracking_uri", ""),
            "stages": {}, "cycle_time_s": None, "data_to_live_s": None, "quarantined": [], "skipped": [],
            "version": None, "champion_before": None, "error": None, "resumes": 0,
        }
        registry.log_params(run_id, {"pipeline_folder": str(pipeline.folder),
                                     **{f"cfg.{k}": v for k, v in pipeline.config.model_dump(by_alias=True).items()}})
        records.save(ws, rec)
        return cls(ws, pipeline, registry, rec, say)

    @classmethod
    def resume(cls, ws: Workspace, pipeline: Pipeline, registry,
               say: Callable[[str], None] = lambda m: None) -> "Cycle":
        rec = records.unfinished(ws, pipeline.name)
        if rec is None:
            raise ResumeError(f"no unfinished cycle of '{pipeline.name}' to resume; start one with "
                              f"`plaster run {pipeline.folder}`")
        rec["state"], rec["error"], rec["resumes"] = records.RUNNING, None, rec.get("resumes", 0) + 1
        try:
            registry.reopen_run(rec["run_id"])
        except Exception as e:
            if _from_registry(e):
                raise registry_down(e, getattr(registry, "tracking_uri", ""), pipeline.folder) from None
            raise
        records.save(ws, rec)
        return cls(ws, pipeline, registry, rec, say)

    def _outputs(self) -> dict[str, Any]:
        return {n: from_dict(OUTPUT[n], s["output"]) for n, s in self.record["stages"].items() if s["status"] == "done"}

    def _persist(self) -> None:
        path = records.save(self.ws, self.record)
        # The durable copy: the cycle's folder (snapshot, checkpoint, ONNX, variants, raw
        # measurements) and its record, in storage.uri when one is set.
        rel = f"cycles/{self.pipeline.name}/{self.record['id']}"
        try:
            self.ctx.storage.put_tree(self.ctx.folder, rel)
            self.ctx.storage.put_file(path, f"{rel}/record.json")
        except Exception as e:
            self.record.setdefault("storage_errors", []).append(f"{type(e).__name__}: {e}")
            self.ctx.log.warning("could not copy the cycle to %s: %s", self.ctx.storage.describe(rel), e)
        try:
            self.registry.log_file(self.record["run_id"], path, None)
        except Exception as e:  # the local record is the source of truth; MLflow mirrors it
            self.ctx.log.warning("could not mirror the cycle record to MLflow: %s", e)

    def run(self, stop: threading.Event | None = None) -> dict[str, Any]:
        """Run every stage not yet done; return the record with its decision. When `stop` is
        set, return after the stage in flight is persisted, in state `interrupted`
        (resumable, no decision).

        Raises:
            PlasterError: the cycle could not reach a decision; the record says where it
                stopped and `plaster run --resume` continues from there.
        """
        self.ctx.stop = stop
        outputs = self._outputs()
        revalidated = False
        i = 0
        while i < len(STAGES):
            name = STAGES[i]
            if name in outputs:
                i += 1
                continue
            if stop is not None and stop.is_set():
                return self._interrupt(name, "before it started")
            self.say(f"[bold]{name}[/bold]…")
            t0, started = time.perf_counter(), time.time()
            try:
                out = _call(name, self.ctx, outputs)
            except Interrupted as e:
                return self._interrupt(name, str(e))
            except CandidateRejected as e:
                return self._decide(REJECTED, [str(e)], outputs)
            except ChampionMoved as e:
                if not revalidated:
                    # Judge again against the new champion: rebuild its engines, re-validate.
                    self.say(f"{e}; validating again")
                    champion = self.registry.champion(self.pipeline.name, self.ws.home / "champions" / self.pipeline.name)
                    outputs["ingest"] = dataclasses.replace(outputs["ingest"], champion=champion)
                    self.record["stages"]["ingest"]["output"] = to_dict(outputs["ingest"])
                    for stale in ("build", "validate"):
                        outputs.pop(stale, None)
                        self.record["stages"].pop(stale, None)
                    revalidated = True
                    i = STAGES.index("build")
                    continue
                return self._fail(name, e)
            except PlasterError as e:
                return self._fail(name, e)
            except Exception as e:
                return self._fail(name, e)
            seconds = time.perf_counter() - t0
            outputs[name] = out
            self.record["stages"][name] = {"status": "done", "seconds": round(seconds, 3), "started_at": started,
                                           "output": to_dict(out)}
            if name == "ingest":
                self.record["quarantined"] = [to_dict(q) for q in out.quarantined]
                # Entries of the source left in place (debris, still being written, vanished, unmovable), with why.
                self.record["skipped"] = [{"name": n, "reason": r} for n, r in out.skipped]
                if out.table:  # a lake table: the version this cycle read, for status, history and lineage
                    self.record["table"] = out.table
            self._persist()  # first: the stage's output is kept even if the registry is down now
            try:
                self.registry.log_metrics(self.record["run_id"], {f"stage_{name}_s": seconds})
            except Exception as e:
                return self._fail(name, e)
            self.say(f"  {name} done in {seconds:.1f}s")
            if os.environ.get("PLASTER_CRASH_AFTER") == name:  # test hook: a real crash between stages
                os.kill(os.getpid(), signal.SIGKILL)
            if name == "ingest" and out.skip_reason:
                return self._decide(SKIPPED, [out.skip_reason], outputs)
            i += 1
        promotion: Promotion = outputs["promote"]
        return self._decide(promotion.decision, list(promotion.reasons), outputs)

    def _interrupt(self, stage: str, where: str) -> dict[str, Any]:
        """Stop on request (SIGTERM): the record says where, and `--resume` redoes that stage
        from its start (training from its last checkpoint). Only stages that check
        `ctx.check_stop` stop midway; promotion never does, so no alias is half-moved."""
        self.record["state"] = records.INTERRUPTED
        self.record["interrupted"] = {"stage": stage, "where": where, "at": time.time()}
        self._persist()
        self.registry.end_run(self.record["run_id"], "KILLED")
        return self.record

    def _publish_scorecard(self, sc: Scorecard) -> None:
        """scorecard.json/.md and its plots on the cycle's run (the registered version's
        source run), with the cycle's final P and R figures."""
        from orchestrator import scorecard
        from orchestrator.stages.validate import Raw

        rec = self.record
        rate = {"cycle_time_s": rec["cycle_time_s"], "data_to_live_s": rec["data_to_live_s"],
                **{f"stage_{n}_s": s["seconds"] for n, s in rec["stages"].items()}}
        raw_file = self.ctx.folder / "validate" / "raw.npz"
        try:
            scorecard.publish(self.registry, rec["run_id"], sc, Raw.load(raw_file) if raw_file.exists() else None,
                              self.ctx.folder / "scorecard", rate)
        except Exception as e:  # the decision stands; a missing plot must not undo it
            rec["publish_error"] = f"{type(e).__name__}: {e}"
            self.ctx.log.warning("could not publish the scorecard to MLflow: %s", e)

    def _fail(self, stage: str, e: Exception) -> NoReturn:
        if not isinstance(e, PlasterError) and _from_registry(e):
            e = registry_down(e, self.record.get("tracking_uri", ""), self.pipeline.folder)
        self.record["state"] = records.FAILED
        self.record["error"] = {"stage": stage, "type": type(e).__name__, "message": str(e)}
        self._persist()
        try:
            self.registry.end_run(self.record["run_id"], "FAILED")
        except Exception as end:  # the registry may be what failed; the local record says FAILED
            self.ctx.log.warning("could not mark the MLflow run failed: %s", end)
        if isinstance(e, PlasterError):
            raise e
        raise PlasterError(f"stage {stage} failed: {type(e).__name__}: {e}. "
                           f"Fix the cause, then `plaster run {self.pipeline.folder} --resume`") from e

    def _publish_rate(self, version: str) -> None:
        """The version page's last line: how long the cycle took, stage by stage, and the
        data-to-live lag; known only now, after promotion, so appended, and tagged to sort by."""
        rec = self.record
        stages = ", ".join(f"{n} {s['seconds']:.1f} s" for n, s in rec["stages"].items())
        lag = rec["data_to_live_s"]
        lag_text = f"data-to-live lag {lag:.1f} s" if lag is not None else "data-to-live lag: not live (not promoted)"
        self.registry.append_to_description(
            self.pipeline.name, version, f"Cycle `{rec['id']}`: cycle time {rec['cycle_time_s']:.1f} s ({stages}); {lag_text}.")
        tags = {"plaster.cycle_time_s": f"{rec['cycle_time_s']:.4g}"}
        if lag is not None:
            tags["plaster.data_to_live_s"] = f"{lag:.4g}"
        self.registry.set_version_tags(self.pipeline.name, version, tags)

    def _decide(self, decision: str, reasons: list[str], outputs: dict[str, Any]) -> dict[str, Any]:
        rec = self.record
        now = time.time()
        rec.update(state=records.DECIDED, decision=decision, reasons=reasons, decided_at=now,
                   cycle_time_s=round(now - rec["started_at"], 3))
        snapshot: Snapshot | None = outputs.get("ingest")
        promotion: Promotion | None = outputs.get("promote")
        if promotion is not None:
            rec["version"], rec["champion_before"] = promotion.version, promotion.champion_before
            if decision == PROMOTED and snapshot is not None and snapshot.oldest_arrival is not None:
                rec["data_to_live_s"] = round(promotion.decided_at - snapshot.oldest_arrival, 3)
        metrics = {"cycle_time_s": rec["cycle_time_s"]}
        if rec["data_to_live_s"] is not None:
            metrics["data_to_live_s"] = rec["data_to_live_s"]
        self._persist()  # the decision is made (and any alias moved): keep it whatever MLflow does next
        try:
            self.registry.log_metrics(rec["run_id"], metrics)
            self.registry.set_tags(rec["run_id"], {"plaster.decision": decision,
                                                   "plaster.reasons": "; ".join(reasons)[:5000]})
            if "validate" in outputs:
                self._publish_scorecard(outputs["validate"])
            if promotion is not None and promotion.version:
                self._publish_rate(promotion.version)
            self._persist()
            self.registry.end_run(rec["run_id"], "FINISHED")
        except Exception as e:  # only the run's mirror of the decision is missing; the record has it
            if not _from_registry(e):
                raise
            rec["mirror_error"] = str(registry_down(e, rec.get("tracking_uri", ""), self.pipeline.folder))
            records.save(self.ws, rec)
            self.ctx.log.warning("the decision is recorded, but not on its MLflow run: %s", rec["mirror_error"])
        return rec
