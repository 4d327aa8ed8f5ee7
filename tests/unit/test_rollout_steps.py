"""A Rollout's steps and verdicts against a scripted replica (our own interface: the callable
the server hands it); the real replica and Ray Serve are in tests/integration/test_rollout.py."""

import time
from types import SimpleNamespace

import pytest
from fakes import FakeRegistry

from orchestrator import ledger, rollout
from orchestrator.config import RolloutConfig
from orchestrator.workspace import Workspace


class Replica:
    """Answers the Rollout's calls; each take_watched reports `per_look` watched requests."""

    def __init__(self, new_s: float = 30e-6, new_errors: int = 0, fail_once: str | None = None):
        self.calls: list[tuple] = []
        self.new_s, self.new_errors, self.fail_once = new_s, new_errors, fail_once

    def __call__(self, method: str, *args):
        self.calls.append((method, *args))
        if method == self.fail_once:
            self.fail_once = None
            raise TimeoutError(f"{method} did not answer")
        if method == "take_watched":
            return {"new_s": [self.new_s] * 10, "old_s": [30e-6] * 10, "requests": 10, "new_errors": self.new_errors,
                    "old_errors": 0, "examples": 10, "agreed": 10, "watching": "2", "fraction": None}
        if method in ("start_watch", "end_watch"):
            return time.time()
        return None


def _tick(r) -> bool:
    time.sleep(0.005)  # past bake_s and check_s (1 ms) since the last look
    return r.tick()


def _rollout(tmp_path, monkeypatch, replica, **cfg):
    monkeypatch.setenv("PLASTER_HOME", str(tmp_path))
    ws = Workspace.from_env()
    registry = FakeRegistry()
    registry.aliases = {"champion": "2", "previous": "1"}
    pipeline = SimpleNamespace(name="digits", folder=tmp_path,
                               config=SimpleNamespace(rollout=RolloutConfig(**{"bake_s": 1e-3, "check_s": 1e-3,
                                                                               "min_requests": 5, **cfg})))
    r = rollout.Rollout(ws, pipeline, registry, replica, {"version": "1"}, {"version": "2"}, lambda m: None)
    return r, ws, registry


def test_linear_steps_through_each_fraction_then_all(tmp_path, monkeypatch):
    replica = Replica()
    r, ws, registry = _rollout(tmp_path, monkeypatch, replica, strategy="linear", fraction=0.4)
    r.begin()
    assert not _tick(r)  # 0.4 baked: on to 0.8
    assert _tick(r)  # 0.8 baked: all of it
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
    assert not _tick(r) and r.moving_alias  # traffic is back, the alias waits for the cycle
    assert ("end_watch", False) in replica.calls
    monkeypatch.setattr(api, "rollback", lambda *a, **kw: moves.append(kw) or {"at": 1001.0})
    assert _tick(r)
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
    assert _tick(r)
    assert registry.alias("digits", "challenger") is None and registry.alias("digits", "champion") == "1"
    move = ledger.load(ws, "digits")[-1]
    assert move["kind"] == ledger.REJECT and move["alias"] == "challenger" and move["from"] == "2"
    assert rollout.load(ws, "digits")[-1]["outcome"] == rollout.REJECTED


@pytest.mark.parametrize("strategy,expected", [("canary", [0.1]), ("linear", [0.1 * k for k in range(1, 10)])])
def test_steps(strategy, expected):
    assert rollout.steps(strategy, 0.1) == pytest.approx(expected)


def test_a_registry_error_after_the_restore_is_retried_and_the_bad_model_gets_no_traffic_again(tmp_path, monkeypatch):
    import orchestrator.api as api

    replica = Replica(new_s=300e-6)
    r, ws, registry = _rollout(tmp_path, monkeypatch, replica, strategy="canary")
    flaky, tags = [True], registry.set_version_tags

    def set_tags(*a):
        if flaky.pop() if flaky else False:
            raise ConnectionError("MLflow is down")
        return tags(*a)

    registry.set_version_tags = set_tags
    moves = []
    monkeypatch.setattr(api, "rollback", lambda *a, **kw: moves.append(kw) or {"at": 1001.0})
    r.begin()
    with pytest.raises(ConnectionError):
        _tick(r)
    assert r.moving_alias and not moves
    assert _tick(r) and len(moves) == 1
    # traffic went back once and the new engine was never watched again
    assert [c[0] for c in replica.calls] == ["start_watch", "take_watched", "end_watch"]
    assert rollout.load(ws, "digits")[-1]["outcome"] == rollout.ROLLED_BACK


def test_a_shadow_promoted_but_not_yet_swapped_finishes_at_the_next_tick(tmp_path, monkeypatch):
    replica = Replica(fail_once="end_watch")
    r, ws, registry = _rollout(tmp_path, monkeypatch, replica, strategy="shadow")
    registry.aliases.update({"champion": "1", "challenger": "2"})
    r.begin()
    with pytest.raises(TimeoutError):
        _tick(r)  # the alias moved, then the swap did not answer
    assert registry.alias("digits", "champion") == "2"
    assert _tick(r)  # the promotion is not tried again; the swap is
    assert [m["kind"] for m in ledger.load(ws, "digits")] == [ledger.PROMOTE]
    assert registry.alias("digits", "previous") == "1" and registry.alias("digits", "challenger") is None
    assert rollout.load(ws, "digits")[-1]["outcome"] == rollout.COMPLETED


def test_the_gate_looks_no_more_often_than_check_s_and_tests_each_look_at_its_share(tmp_path, monkeypatch):
    from orchestrator import live_gate

    replica = Replica()
    r, ws, registry = _rollout(tmp_path, monkeypatch, replica, strategy="canary", bake_s=300, check_s=1.0)
    r.begin()
    assert not _tick(r) and not _tick(r)
    assert [c[0] for c in replica.calls].count("take_watched") == 1
    assert live_gate.looks(r.cfg) == 300
