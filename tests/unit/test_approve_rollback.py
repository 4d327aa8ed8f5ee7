"""Approvals, rollbacks and the alias ledger, over a fake of our own Registry interface."""

import threading

import pytest
from fakes import FakeRegistry, context
from test_promote_cycle import ScriptedStages, artifacts

from orchestrator import api, ledger
from orchestrator import cycle as cycle_mod
from orchestrator import record as records
from orchestrator.config import load_pipeline
from orchestrator.cycle import Cycle
from orchestrator.errors import CycleLockedError, GateError
from orchestrator.workspace import Workspace


def registry_with(champion="1", held="2", validated_against="1"):
    reg = FakeRegistry()
    for v in ("1", "2", "3"):
        reg.versions[v] = {"cycle_id": f"c{v}", "tags": {}, "files": {}}
    reg.aliases = {"champion": champion, "challenger": held}
    reg.versions[held]["tags"].update({"plaster.awaiting_approval": "true", "plaster.validated_against": validated_against})
    return reg


def test_approve_promotes_a_held_version_and_records_who(home, digits, monkeypatch):
    monkeypatch.setenv("PLASTER_ACTOR", "alice")
    reg = registry_with()
    e = api.approve(digits, "2", "looked at the plots", registry=reg)
    assert reg.aliases == {"champion": "2", "previous": "1"}
    assert (e["from"], e["to"], e["kind"], e["actor"], e["reason"]) == ("1", "2", "approve", "alice", "looked at the plots")
    assert reg.versions["2"]["tags"]["plaster.awaiting_approval"] == "false"
    assert "**Approved**" in reg.versions["2"]["description"] and "alice: looked at the plots" in reg.versions["2"]["description"]
    assert ledger.load(Workspace.from_env(), "digits") == [e]


def test_approve_refuses_when_the_champion_moved_since_validation(home, digits):
    reg = registry_with(champion="3", validated_against="1")
    with pytest.raises(GateError, match=r"moved from v1 to v3.*plaster gate .* --candidate 2"):
        api.approve(digits, "2", registry=reg)
    assert reg.aliases["champion"] == "3"
    with pytest.raises(GateError, match="not awaiting approval"):
        api.approve(digits, "1", registry=registry_with())


def test_rollback_to_previous_and_back_with_reasons(home, digits):
    reg = registry_with()
    reg.aliases = {"champion": "2", "previous": "1"}
    e = api.rollback(digits, "p99 doubled in prod", registry=reg)
    assert reg.aliases["champion"] == "1" and reg.aliases["previous"] == "2"
    assert reg.versions["2"]["tags"]["plaster.rolled_back"] == "true"
    assert (e["from"], e["to"], e["kind"]) == ("2", "1", "rollback")
    # Both version pages say who rolled back, when and why.
    assert "**Rolled back** " in reg.versions["2"]["description"] and "p99 doubled in prod" in reg.versions["2"]["description"]
    assert f"by {e['actor']}" in reg.versions["2"]["description"] and " UTC " in reg.versions["2"]["description"]
    assert "**Champion again**" in reg.versions["1"]["description"] and "from v2" in reg.versions["1"]["description"]
    api.rollback(digits, "false alarm", to="2", registry=reg)
    assert reg.aliases["champion"] == "2"
    assert [m["reason"] for m in ledger.load(Workspace.from_env(), "digits")] == ["p99 doubled in prod", "false alarm"]


def test_rollback_needs_a_reason_a_target_and_a_real_version(home, digits):
    reg = registry_with()
    with pytest.raises(GateError, match="--reason"):
        api.rollback(digits, "  ", registry=reg)
    reg.aliases = {"champion": "1"}
    with pytest.raises(GateError, match="no `previous`"):
        api.rollback(digits, "why", registry=reg)
    with pytest.raises(GateError, match="already the champion"):
        api.rollback(digits, "why", to="1", registry=reg)
    with pytest.raises(Exception, match="no version 9"):
        api.rollback(digits, "why", to="9", registry=reg)
    assert reg.aliases["champion"] == "1"


def test_alias_moves_wait_for_no_one_but_respect_a_running_cycle(home, digits):
    ws = Workspace.from_env()
    lock = records.PipelineLock(ws, "digits")
    lock.acquire(holder="a cycle")
    try:
        with pytest.raises(CycleLockedError):
            api.rollback(digits, "why", registry=registry_with())
    finally:
        lock.release()


def test_a_stop_request_interrupts_between_stages_and_resume_continues(home, digits, monkeypatch):
    ws, p, reg = Workspace.from_env(), load_pipeline(digits), FakeRegistry()
    stages = ScriptedStages()
    stages.arts = artifacts(context(home, digits))
    stop = threading.Event()

    def call(name, ctx, outputs):
        out = stages(name, ctx, outputs)
        if name == "train":
            stop.set()  # SIGTERM arrives while train runs
        return out

    monkeypatch.setattr(cycle_mod, "_call", call)
    rec = Cycle.start(ws, p, reg).run(stop)
    assert rec["state"] == "interrupted" and rec["decision"] is None and list(rec["stages"]) == ["ingest", "train"]
    assert reg.runs[rec["run_id"]] == "KILLED"
    assert records.unfinished(ws, "digits")["id"] == rec["id"]
    done = Cycle.resume(ws, p, reg).run()
    assert done["decision"] == "PROMOTED" and stages.calls == ["ingest", "train", "export", "build", "validate", "promote"]
