"""promote: register the candidate in the MLflow Model Registry and act on the gate's decision.

Registration is idempotent (a version is found again by its cycle id), and register()
returns only versions it has loaded and run through MLflow, so any alias may point at them. The champion alias
moves compare-and-set: only if it still points at the version the candidate was validated
against; otherwise ChampionMoved sends the cycle back to validate.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from orchestrator import ledger
from orchestrator.artifacts import Checkpoint, Decision, EngineSet, OnnxModel, Promotion, Scorecard, Snapshot, to_dict
from orchestrator.context import StageContext
from orchestrator.dataset import load_arrays
from orchestrator.errors import ChampionMoved
from orchestrator.gate import HOLD, PROMOTE, hold_reasons
from orchestrator.scorecard import headline, headline_tags

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"


def _bundle(ctx: StageContext, snapshot: Snapshot, checkpoint: Checkpoint, engines: EngineSet,
            scorecard: Scorecard) -> Path:
    """The files registered beside the ONNX model: what a later cycle needs of a champion."""
    folder = ctx.folder / "bundle"
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "variants").mkdir(parents=True)
    shutil.copy(checkpoint.weights_file, folder / "weights.pt")
    for v in engines.variants:
        shutil.copy(v.path, folder / "variants" / f"{v.precision}.onnx")
    chosen = scorecard.chosen
    engine = next(e for e in engines.candidate if e.backend == chosen.backend and e.precision == chosen.precision)
    (folder / "engines").mkdir()
    shutil.copy(engine.path, folder / "engines" / Path(engine.path).name)
    (folder / "manifest.json").write_text(json.dumps({
        "precision": chosen.precision, "backend": chosen.backend, "engine": f"engines/{Path(engine.path).name}",
        "engine_cache_key": engine.cache_key, "machine": scorecard.machine, "cycle_id": ctx.cycle_id,
    }, indent=2))
    (folder / "lineage.json").write_text(json.dumps({"learned": list(snapshot.learned),
                                                     "new": [s.sha256 for s in snapshot.new_shards],
                                                     "table": snapshot.table}, indent=2))
    (folder / "scorecard.json").write_text(json.dumps(to_dict(scorecard), indent=2))
    if snapshot.profile_file:  # the next cycle measures its new data's drift against this
        shutil.copy(snapshot.profile_file, folder / "profile.json")
    # The examples this version was judged on, so `plaster gate` can judge it again on them.
    (folder / "holdout").mkdir()
    shutil.copy(snapshot.holdout_new_file, folder / "holdout" / "new.npz")
    for name in ctx.pipeline.partition_slices:  # cut from this cycle's new data: no file to read them again from
        if name in snapshot.slices:
            shutil.copy(snapshot.slices[name], folder / "holdout" / f"{name}.npz")
    return folder


def held_for(scorecard: Scorecard, promotion: str, folder, version: str) -> str:
    """What a HELD version waits for, on its page, with the command that approves it."""
    waits = "; ".join(hold_reasons(list(scorecard.verdicts), promotion))
    return (f"**HELD, awaiting approval**: {waits}. `plaster approve {folder} {version} --reason \"...\"` "
            "promotes it if the champion is still the one it was judged against.")


def model_description(pipeline) -> str:
    """The registered model's page: pipeline.yaml's description, the task and the inputs."""
    ins = ", ".join(f"`{i.name}` {i.dtype}{list(i.shape)}" for i in pipeline.inputs)
    return (f"{pipeline.config.description or pipeline.name}\n\n- task: {pipeline.config.task} "
            f"(target {', '.join(pipeline.target.columns)}, {pipeline.target.outputs} output(s))\n- inputs: {ins}\n"
            "- registered by plaster; each version's description is its decision and scorecard headline")


def run(ctx: StageContext, snapshot: Snapshot, checkpoint: Checkpoint, onnx_model: OnnxModel,
        engines: EngineSet, scorecard: Scorecard) -> Promotion:
    name = ctx.pipeline.name
    reasons = tuple(f"{v.rule}: {v.verdict} ({v.reason})" for v in scorecard.verdicts)
    x, _ = load_arrays(snapshot.holdout_new_file)
    sample = {k: np.ascontiguousarray(v[:8]) for k, v in x.items()}
    bundle = _bundle(ctx, snapshot, checkpoint, engines, scorecard)
    ctx.say("registering the candidate in MLflow")
    version = ctx.registry.register(
        name, ctx.run_id, ctx.cycle_id, Path(onnx_model.path), {"plaster": bundle}, sample,
        tags={"plaster.decision": scorecard.decision, "plaster.precision": scorecard.chosen.precision,
              "plaster.backend": scorecard.chosen.backend, **headline_tags(scorecard)},
        description=headline(scorecard, ctx.run_id, experiment_id=ctx.registry.experiment_id(name)),
        model_description=model_description(ctx.pipeline),
    )
    current = ctx.registry.alias(name, CHAMPION)
    if current == version:  # a resumed cycle that already promoted: never promote twice
        return Promotion(Decision.PROMOTED, version, scorecard.champion_version, version, time.time(), reasons)
    ctx.registry.set_alias(name, CHALLENGER, version)

    if scorecard.decision == HOLD:
        # `plaster approve` promotes it later only if the champion is still this one.
        ctx.registry.set_version_tags(name, version, {"plaster.awaiting_approval": "true",
                                                      "plaster.validated_against": current or ""})
        ctx.registry.append_to_description(name, version, held_for(scorecard, ctx.pipeline.config.promotion,
                                                                   ctx.pipeline.folder, version))
        held = tuple(hold_reasons(list(scorecard.verdicts), ctx.pipeline.config.promotion))
        return Promotion(Decision.HELD, version, current, current, time.time(), reasons + held)
    if scorecard.decision != PROMOTE:
        ctx.registry.delete_alias(name, CHALLENGER)
        return Promotion(Decision.REJECTED, version, current, current, time.time(), reasons)

    if current != scorecard.champion_version:
        raise ChampionMoved(f"champion moved from v{scorecard.champion_version} to v{current} during the cycle")
    if ctx.pipeline.config.rollout.strategy == "shadow" and current is not None:
        # The live gate promotes it: `plaster serve` runs it on a copy of live traffic first (rollout.py).
        ctx.registry.set_version_tags(name, version, {"plaster.awaiting_shadow": "true",
                                                      "plaster.validated_against": current})
        ctx.registry.append_to_description(name, version, "**HELD for its shadow**: `plaster serve` runs it beside "
                                           f"v{current} on live requests; its live gate moves the champion alias.")
        ctx.say(f"v{version} passed the gate; held as challenger for its shadow rollout")
        return Promotion(Decision.HELD, version, current, current, time.time(),
                         reasons + ("rollout: shadow; the live gate of `plaster serve` promotes it",))
    if current is not None:
        ctx.registry.set_alias(name, PREVIOUS, current)
    ctx.registry.set_alias(name, CHAMPION, version)
    ctx.registry.delete_alias(name, CHALLENGER)
    ledger.record(ctx.workspace, name, CHAMPION, current, version, ledger.PROMOTE,
                  f"gate {scorecard.decision}: {sum(v.verdict == 'PASS' for v in scorecard.verdicts)} rule(s) passed",
                  cycle_id=ctx.cycle_id)
    ctx.say(f"promoted v{version} to champion" + (f" (previous: v{current})" if current else ""))
    return Promotion(Decision.PROMOTED, version, current, version, time.time(), reasons)
