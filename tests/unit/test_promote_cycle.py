"""promote's compare-and-set and the cycle's state machine, with fakes of our own interfaces."""

import numpy as np
import pytest
from fakes import FakeRegistry, context
from test_gate_validate import score

from orchestrator import cycle as cycle_mod
from orchestrator import record as records
from orchestrator.artifacts import (
    Checkpoint,
    Engine,
    EngineSet,
    ModelSize,
    OnnxModel,
    Promotion,
    Scorecard,
    Snapshot,
    Variant,
    Verdict,
)
from orchestrator.config import load_pipeline
from orchestrator.cycle import Cycle
from orchestrator.errors import CandidateRejected, ChampionMoved, CycleLockedError, ResumeError, TrainingError
from orchestrator.stages import promote
from orchestrator.workspace import Workspace


def artifacts(ctx, decision="PROMOTE", champion_version=None):
    d = ctx.folder / "a"
    d.mkdir(parents=True)
    np.savez(d / "hold.npz", x=np.zeros((4, 1, 8, 8), np.float32), y=np.zeros(4, np.int64))
    for name in ("w.pt", "m.onnx", "fp32.onnx", "e.onnx"):
        (d / name).write_bytes(b"x")
    snap = Snapshot((), (), 0, "", str(d / "hold.npz"), None, 0, 4, 0, ("h1",), None)
    ckpt = Checkpoint(str(d / "w.pt"), "s", 1, 1, False, None, ())
    onnx_model = OnnxModel(str(d / "m.onnx"), "s", "input", 0.0)
    engines = EngineSet((Variant("fp32", str(d / "fp32.onnx"), "s"),),
                        (Engine("onnxruntime", "fp32", str(d / "e.onnx"), "s", "s", "k", False, 0.0),), ())
    sc = Scorecard((score(),), None, score(), "why", None, champion_version, "m", 0.95, (Verdict("r", "PASS", "ok"),),
                   decision, ModelSize(1, 1), None, {})
    return snap, ckpt, onnx_model, engines, sc


def test_promotion_moves_champion_and_keeps_previous(home, digits):
    reg = FakeRegistry()
    reg.aliases["champion"] = "7"
    ctx = context(home, digits, reg)
    p = promote.run(ctx, *artifacts(ctx, champion_version="7"))
    assert (p.decision, p.version, p.champion_before) == ("PROMOTED", "1", "7")
    assert reg.aliases == {"champion": "1", "previous": "7"}
    # The bundle a later cycle needs: weights, variants, manifest, lineage.
    bundle = reg.versions["1"]["files"]["plaster"]
    assert {p.name for p in bundle.iterdir()} >= {"weights.pt", "variants", "manifest.json", "lineage.json"}


def test_reject_leaves_the_champion_untouched(home, digits):
    reg = FakeRegistry()
    reg.aliases["champion"] = "7"
    ctx = context(home, digits, reg)
    p = promote.run(ctx, *artifacts(ctx, decision="REJECT", champion_version="7"))
    assert p.decision == "REJECTED" and reg.aliases == {"champion": "7"}


def test_champion_moved_since_validation_is_not_overwritten(home, digits):
    reg = FakeRegistry()
    reg.aliases["champion"] = "7"
    reg.move_champion_on_read = "8"  # another process promoted v8 after we validated against v7
    ctx = context(home, digits, reg)
    with pytest.raises(ChampionMoved):
        promote.run(ctx, *artifacts(ctx, champion_version="7"))
    assert reg.aliases["champion"] == "8"


def test_promote_twice_registers_and_promotes_once(home, digits):
    reg = FakeRegistry()
    ctx = context(home, digits, reg)
    arts = artifacts(ctx)
    first = promote.run(ctx, *arts)
    again = promote.run(ctx, *arts)
    assert first.version == again.version == "1" and len(reg.versions) == 1
    assert "previous" not in reg.aliases


class ScriptedStages:
    """Stand-in for the stage functions: records calls, fails once on cue."""

    def __init__(self, fail_at=None, reject_at=None, skip=False):
        self.calls, self.fail_at, self.reject_at, self.skip = [], fail_at, reject_at, skip

    def __call__(self, name, ctx, outputs):
        self.calls.append(name)
        if name == self.fail_at:
            self.fail_at = None
            raise TrainingError("worker died on cue")
        if name == self.reject_at:
            raise CandidateRejected("parity 0.5 > 1e-4")
        snap, ckpt, onnx_model, engines, sc = self.arts
        return {"ingest": snap if not self.skip else Snapshot((), (), 0, "", "", None, 0, 0, 0, (), None, "too little"),
                "train": ckpt, "export": onnx_model, "build": engines, "validate": sc,
                "promote": Promotion("PROMOTED", "1", None, "1", 0.0, ("ok",))}[name]


@pytest.fixture
def scripted(home, digits, monkeypatch):
    stages = ScriptedStages()
    stages.arts = artifacts(context(home, digits))
    monkeypatch.setattr(cycle_mod, "_call", stages)
    return stages


def test_failed_cycle_resumes_without_redoing_finished_stages(home, digits, scripted):
    ws, p, reg = Workspace.from_env(), load_pipeline(digits), FakeRegistry()
    scripted.fail_at = "export"
    with pytest.raises(TrainingError):
        Cycle.start(ws, p, reg).run()
    rec = records.unfinished(ws, "digits")
    assert rec["state"] == "failed" and rec["error"]["stage"] == "export"
    assert list(rec["stages"]) == ["ingest", "train"]
    scripted.calls.clear()
    done = Cycle.resume(ws, p, reg).run()
    assert scripted.calls == ["export", "build", "validate", "promote"]
    assert done["decision"] == "PROMOTED" and done["resumes"] == 1
    assert reg.runs[done["run_id"]] == "FINISHED"
    with pytest.raises(ResumeError, match="plaster run"):
        Cycle.resume(ws, p, reg)


def test_skip_and_reject_are_decisions_not_errors(home, digits, scripted):
    ws, p = Workspace.from_env(), load_pipeline(digits)
    scripted.skip = True
    rec = Cycle.start(ws, p, FakeRegistry()).run()
    assert rec["decision"] == "SKIPPED" and rec["reasons"] == ["too little"] and list(rec["stages"]) == ["ingest"]
    scripted.skip, scripted.reject_at = False, "export"
    rec = Cycle.start(ws, p, FakeRegistry()).run()
    assert rec["decision"] == "REJECTED" and "parity" in rec["reasons"][0]


def test_lock_refuses_a_second_cycle_with_a_clear_message(home, digits):
    ws = Workspace.from_env()
    first = records.PipelineLock(ws, "digits")
    first.acquire(holder="test")
    try:
        with pytest.raises(CycleLockedError, match="another cycle of 'digits' is running.*--wait"):
            records.PipelineLock(ws, "digits").acquire()
    finally:
        first.release()
    second = records.PipelineLock(ws, "digits")
    second.acquire()  # free again once released
    second.release()
