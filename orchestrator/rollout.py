"""Rollout: how `plaster serve` moves live traffic to a new model, watched by the live gate.

`rollout.strategy` in pipeline.yaml:
- all_at_once: the server swaps when the champion alias moves (serving.Server).
- canary / linear: when a cycle (or an approval) moves the champion alias, the server keeps
  answering with the model it served and sends `fraction` of requests to the new champion
  (linear: steps of `fraction`), each step baked `bake_s`, then all of them.
- shadow: a promoted cycle leaves its version `challenger` (stages/promote.py); the server
  runs it on a copy of every request, its answers kept from clients, and when the live gate
  completes it moves the champion alias itself (compare-and-set) and swaps.

A `Rollout` is advanced by the server's watcher thread each poll (`tick`). A failed live gate
rolls back by itself: traffic first (the replica stops sending requests to the new model at
once), then the alias, compare-and-set (`api.rollback` with `expect`), with the reason and
the figures in the ledger and on the MLflow version. Time to detect is from the new model's
first request to the failing look; time to restore from there to the moment no request
reaches it. Every rollout is a line in PLASTER_HOME/rollouts/<pipeline>.jsonl, which
`plaster history` and the report read.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from orchestrator import ledger, live_gate
from orchestrator.errors import CycleLockedError
from orchestrator.workspace import Workspace

LIVE_GATE_ACTOR = "plaster serve (live gate)"
COMPLETED, ROLLED_BACK, REJECTED, ABORTED = "completed", "rolled_back", "rejected", "aborted"


def steps(strategy: str, fraction: float) -> list[float]:
    """The shares of requests the new model answers, step by step, before it answers all."""
    if strategy == "shadow":
        return [1.0]  # every request is watched; none is answered by the shadow
    if strategy == "canary":
        return [fraction]
    out, k = [], 1
    while k * fraction < 1 - 1e-9:
        out.append(round(k * fraction, 6))
        k += 1
    return out or [fraction]


def path(ws: Workspace, pipeline: str):
    return ws.home / "rollouts" / f"{pipeline}.jsonl"


def record(ws: Workspace, pipeline: str, entry: dict) -> None:
    ledger.append(path(ws, pipeline), entry)


def load(ws: Workspace, pipeline: str) -> list[dict[str, Any]]:
    return ledger.read(path(ws, pipeline))


class Rollout:
    """One rollout of `new` in place of `old` on the live replica.

    `replica` calls the replica's methods (start_watch, set_fraction, take_watched,
    end_watch) and waits for the answer; `registry` is the MLflow registry."""

    def __init__(self, ws: Workspace, pipeline, registry, replica: Callable[..., Any], old: dict, new: dict,
                 say: Callable[[str], None]):
        self.ws, self.pipeline, self.registry, self.replica, self.say = ws, pipeline, registry, replica, say
        self.cfg = pipeline.config.rollout
        self.strategy = self.cfg.strategy
        self.old, self.new = old, new
        self.steps = steps(self.strategy, self.cfg.fraction)
        self.step = 0
        self.watched = live_gate.Watched()
        self.step_requests = 0
        self.log: list[dict] = []
        self.outcome: str | None = None
        self._alias_pending: dict | None = None  # the verdict's registry side, retried each tick until done
        self.started_at = self.step_at = time.time()
        self._looked_at = 0.0
        self.figures: dict = {}  # the last look's

    @property
    def moving_alias(self) -> bool:
        return self._alias_pending is not None

    @property
    def name(self) -> str:
        return self.pipeline.name

    def begin(self) -> None:
        mode = "shadow" if self.strategy == "shadow" else "canary"
        self.started_at = self.step_at = self.replica("start_watch", self.new, mode, self.steps[0])
        self.say(f"{self.strategy}: v{self.new['version']} " + (
            "answers a copy of every request (clients get the champion's answers)" if mode == "shadow" else
            f"answers {self.steps[0]:.0%} of requests") + f"; live gate every {self.cfg.check_s:g} s")

    def tick(self) -> bool:
        """Look once; True when the rollout is over (completed, rolled back, rejected or aborted)."""
        if self._alias_pending is not None:
            return self._move_alias()
        now = time.time()
        if now - self._looked_at < self.cfg.check_s * 0.9:  # the watcher may poll more often
            return False
        self._looked_at = now
        got = self.replica("take_watched")
        if got["watching"] != self.new["version"]:  # Serve restarted the replica: it lost the rollout
            return self.abort("the replica restarted during the rollout; it starts again")
        self.watched.add(got)
        self.step_requests += got["requests"]
        v = live_gate.judge(self.watched, self.cfg, now - self.step_at, self.step_requests, live_gate.looks(self.cfg))
        self.figures = v.figures
        if v.action == live_gate.ROLLBACK:
            return self._fail(v, now)
        if v.action == live_gate.COMPLETE:
            self.log.append({"fraction": self.steps[self.step], "seconds": round(now - self.step_at, 3),
                             "requests": self.step_requests})
            self.step += 1
            if self.step < len(self.steps):
                self.replica("set_fraction", self.steps[self.step])
                self.say(f"{self.strategy}: live gate passed ({'; '.join(v.reasons)}); v{self.new['version']} "
                         f"now answers {self.steps[self.step]:.0%}")
                self.step_at, self.step_requests = now, 0
                return False
            return self._pass(v)
        return False

    def abort(self, why: str) -> bool:
        """Stop the rollout without a verdict of its own (the alias moved elsewhere, the replica
        restarted, the server stops); what was measured is kept in the record."""
        figures = self._alias_pending["figures"] if self._alias_pending else self.figures
        try:
            self.replica("end_watch", False)
        finally:
            self._finish(ABORTED, [why], figures)
        return True

    def _entry(self, outcome: str, reasons, figures: dict, **extra) -> dict:
        return {"at": time.time(), "pipeline": self.name, "strategy": self.strategy, "from": self.old["version"],
                "to": self.new["version"], "outcome": outcome, "started_at": self.started_at,
                "seconds": round(time.time() - self.started_at, 3), "steps": self.log, "reasons": list(reasons),
                "figures": figures, **extra}

    def _finish(self, outcome: str, reasons, figures: dict, **extra) -> None:
        self.outcome = outcome
        record(self.ws, self.name, self._entry(outcome, reasons, figures, **extra))

    def _fail(self, v: live_gate.Verdict, detected_at: float) -> bool:
        restored_at = self.replica("end_watch", False)  # traffic first: the alias can wait for the lock
        detect_s, restore_s = detected_at - self.started_at, restored_at - detected_at
        why = "; ".join(v.reasons)
        # Pending from here on: whatever fails below is retried at the next tick, never taken
        # for a restarted replica (which would start the bad model again).
        self._alias_pending = {"verdict": v, "why": why,
                               "figures": {**v.figures, "detect_s": round(detect_s, 3), "restore_s": round(restore_s, 4)}}
        self.say(f"{self.strategy}: live gate failed for v{self.new['version']} ({why}); every request is back on "
                 f"v{self.old['version']} (detected in {detect_s:.1f} s, restored in {restore_s * 1000:.0f} ms)")
        return self._move_alias()

    def _pass(self, v: live_gate.Verdict) -> bool:
        self._alias_pending = {"verdict": v, "figures": v.figures, "why": "; ".join(v.reasons), "pass": True}
        return self._move_alias()

    def _move_alias(self) -> bool:
        """The registry side of the verdict, under the pipeline lock. Every step may run again
        (a failed call, a cycle holding the lock: False, retried at the next tick)."""
        p = self._alias_pending
        try:
            if p.get("pass"):
                self._complete(p)
            else:
                self._roll_back(p)
        except CycleLockedError:
            if not p.get("said_locked"):
                self.say("a cycle holds the pipeline lock: the alias moves when it ends (traffic already has)")
                p["said_locked"] = True
            return False
        self._alias_pending = None
        return True

    def _complete(self, p: dict) -> None:
        if self.strategy == "shadow":
            _promote_shadowed(self.ws, self.registry, self.name, self.new["version"], self.old["version"],
                              f"shadow live gate passed: {p['why']}", p["figures"])
        self.replica("end_watch", True)
        self.registry.set_version_tags(self.name, self.new["version"], {
            "plaster.live_gate": "PASS", "plaster.live_gate.reason": p["why"][:500], "plaster.awaiting_shadow": "false"})
        self.say(f"{self.strategy}: v{self.new['version']} answers every request ({p['why']})")
        self._finish(COMPLETED, p["verdict"].reasons, p["figures"])

    def _roll_back(self, p: dict) -> None:
        from orchestrator import api

        f = p["figures"]
        self.registry.set_version_tags(self.name, self.new["version"], {
            "plaster.live_gate": "REJECT" if self.strategy == "shadow" else "ROLLBACK",
            "plaster.live_gate.reason": p["why"][:500], "plaster.live_gate.detect_s": f"{f['detect_s']:.3f}",
            "plaster.live_gate.restore_s": f"{f['restore_s']:.4f}", "plaster.awaiting_shadow": "false"})
        if self.strategy == "shadow":
            _reject_shadowed(self.ws, self.registry, self.name, self.new["version"], f"live gate: {p['why']}")
            self._finish(REJECTED, p["verdict"].reasons, f)
            return
        entry = api.rollback(self.pipeline.folder, f"live gate: {p['why']}", to=self.old["version"],
                             registry=self.registry, expect=self.new["version"], who=LIVE_GATE_ACTOR,
                             extra={k: f[k] for k in ("detect_s", "restore_s")})
        self._finish(ROLLED_BACK, p["verdict"].reasons, f,
                     alias_moved_s=round(entry["at"] - self.started_at, 3) if entry else None)


def _promote_shadowed(ws, registry, name: str, version: str, expect: str, reason: str, figures: dict) -> None:
    """Move the champion alias to a version the shadow's live gate passed, only if the champion
    is still the one it was shadowed against."""
    from orchestrator.errors import GateError
    from orchestrator.record import PipelineLock

    with PipelineLock(ws, name) as lock:
        lock.acquire(wait=False, holder=f"plaster serve: promoting v{version} after its shadow")
        current = registry.alias(name, "champion")
        if current == version:  # an earlier try moved it, then failed after: nothing to do again
            return
        if current != expect:
            raise GateError(f"the champion moved from v{expect} to v{current} during v{version}'s shadow")
        registry.set_alias(name, "previous", current)
        registry.set_alias(name, "champion", version)
        if registry.alias(name, "challenger") == version:
            registry.delete_alias(name, "challenger")
        ledger.record(ws, name, "champion", current, version, ledger.PROMOTE, reason, who=LIVE_GATE_ACTOR,
                      extra={"live_gate": figures})


def _reject_shadowed(ws, registry, name: str, version: str, reason: str) -> None:
    from orchestrator.record import PipelineLock

    with PipelineLock(ws, name) as lock:
        lock.acquire(wait=False, holder=f"plaster serve: rejecting v{version} after its shadow")
        if registry.alias(name, "challenger") == version:  # not again when a retry comes back here
            registry.delete_alias(name, "challenger")
            ledger.record(ws, name, "challenger", version, None, ledger.REJECT, reason, who=LIVE_GATE_ACTOR)
