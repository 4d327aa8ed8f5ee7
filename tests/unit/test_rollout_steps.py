"""A Rollout's steps and verdicts against a scripted replica (our own interface: the callable
the server hands it); the real replica and Ray Serve are in tests/integration/test_rollout.py."""

from types import SimpleNamespace

import pytest
from fakes import FakeRegistry

from orchestrator import ledger, rollout
from orchestrator.config import RolloutConfig
from orchestrator.workspace import Workspace


class Replica:
    """Answers the Rollout's calls; each take_watched reports `per_look` watched requests."""

    def __init__(self, new_s: float = 30e-6, new_errors: int = 0):
        self.calls: list[tuple] = []
        self.new_s, self.new_errors = new_s, new_errors

    def __call__(self, method: str, *args):
        self.calls.append((method, *args))
        if method == "take_watched":
            return {"new_s": [self.new_s] * 10, "old_s": [30e-6] * 10, "requests": 10, "new_errors": self.new_errors,
                    "old_errors": 0, "examples": 10, "agreed": 10, "watching": "2", "fraction": None}
        if method in ("start_watch", "end_watch"):
            return 1000.0
        return None


def _rollout(tmp_path, monkeypatch, replica, **cfg):
    monkeypatch.setenv("PLASTER_HOME", str(tmp_path))
    ws = Workspace.from_env()
    registry = FakeRegistry()
    registry.aliases = {"champion": "2", "previous": "1"}
    pipeline = SimpleNamespace(name="digits", folder=tmp_path,
                               config=SimpleNamespace(rollout=RolloutConfig(**{"bake_s": 1e-3, "min_requests": 5,
                                                                               **cfg})))
    r = rollout.Rollout(ws, pipeline, registry, replica, {"version": "1"}, {"version": "2"}, lambda m: None)
    return r, ws, registry


def test_linear_steps_through_each_fraction_then_all(tmp_path, monkeypatch):
    replica = Replica()
    r, ws, registry = _rollout(tmp_path, monkeypatch, replica, strategy="linear", fraction=0.4)
    r.begin()
    assert not r.tick()  # 0.4 baked: on to 0.8
    assert r.tick()  # 0.8 baked: all of it
    assert [c for c in replica.calls if c[0] != "take_watched"] == [
        ("start_watch", {"version": "2"}, "canary", 0.4), ("set_fraction", 0.8), ("end_watch", True)]
    done = rollout.load(ws, "digits")[-1]
    assert done["outcome"] == rollout.COMPLETED and [s["fraction"] for s in done["steps"]] == [0.4, 0.8]
    assert registry.version_tags("digits", "2")["plaster.live_gate"] == "PASS"


def test_a_failed_live_gate_restores_traffic_then_waits_for_the_lock_to_move_the_alias(tmp_path, monkeypatch):
    from orchestrator.errors import CycleLockedError

    replica = Replica(new_s=300e-6)  # 10x slower: the latency rule fails at the first look
    r, ws, registry = _rollout(tmp_path, monkeypatch, replica, strategy="canary")
    r.begin()
    moves = []

    def locked(*a, **kw):
        raise CycleLockedError("a cycle runs")

    import orchestrator.api as api

    monkeypatch.setattr(api, "rollback", locked)
    assert not r.tick() and r.moving_alias  # traffic is back, the alias waits for the cycle
    assert ("end_watch", False) in replica.calls
    monkeypatch.setattr(api, "rollback", lambda *a, **kw: moves.append(kw) or {"at": 1001.0})
    assert r.tick()
    assert moves[0]["expect"] == "2" and moves[0]["to"] == "1" and moves[0]["who"] == rollout.LIVE_GATE_ACTOR
    assert set(moves[0]["extra"]) == {"detect_s", "restore_s"}
    done = rollout.load(ws, "digits")[-1]
    assert done["outcome"] == rollout.ROLLED_BACK and done["reasons"][0].startswith("latency:")
    assert registry.version_tags("digits", "2")["plaster.live_gate"] == "ROLLBACK"


def test_a_shadow_that_fails_rejects_the_challenger_and_leaves_the_champion(tmp_path, monkeypatch):
    replica = Replica(new_errors=10)
    r, ws, registry = _rollout(tmp_path, monkeypatch, replica, strategy="shadow", max_error_rate=0.01)
    registry.aliases["challenger"] = "2"
    registry.aliases["champion"] = "1"
    r.begin()
    assert r.tick()
    assert registry.alias("digits", "challenger") is None and registry.alias("digits", "champion") == "1"
    move = ledger.load(ws, "digits")[-1]
    assert move["kind"] == ledger.REJECT and move["alias"] == "challenger" and move["from"] == "2"
    assert rollout.load(ws, "digits")[-1]["outcome"] == rollout.REJECTED


@pytest.mark.parametrize("strategy,expected", [("canary", [0.1]), ("linear", [0.1 * k for k in range(1, 10)])])
def test_steps(strategy, expected):
    assert rollout.steps(strategy, 0.1) == pytest.approx(expected)
