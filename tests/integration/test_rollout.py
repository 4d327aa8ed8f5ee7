"""Rollouts on a real Ray Serve at 127.0.0.1, watched by the live gate, with real cycles.

One module: cycle 1 (v1) served with `rollout: canary`; cycle 2's promotion is canaried and
completes; two candidates planted to fail live (an engine 30x slower; an engine that errors on
a quarter of inputs) are canaried and rolled back by themselves; then the server restarts with
`rollout: shadow` and feedback on: cycle 3's candidate is shadowed (no client sees its answers)
and promoted by the live gate, the served requests are labelled and cycle 4 learns them.
"""

import json
import random
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import requests
from homes import module_home
from planted import move_champion, register_planted
from servers import _free_port

from orchestrator import api, ledger, rollout, serving
from orchestrator.dataset import load_arrays
from orchestrator.workspace import Workspace

pytestmark = pytest.mark.integration

CANARY = """
rollout:
  strategy: canary
  fraction: 0.3
  bake_s: 4
  min_requests: 40
  check_s: 0.5
"""


class Clients:
    """`n` threads each POSTing one golden example after another; every answer and failure kept."""

    def __init__(self, url: str, examples: np.ndarray, n: int = 4, pause_s: float = 0.003):
        self.url, self.examples, self.pause_s = url, examples, pause_s
        self.answers: list[dict] = []  # {at, version, request_id, example (golden index), prediction, outputs}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(n)]

    def _loop(self, seed: int) -> None:
        rng = random.Random(seed)
        with requests.Session() as s:
            while not self._stop.is_set():
                k = rng.randrange(len(self.examples))
                try:
                    r = s.post(f"{self.url}/predict", json={"inputs": self.examples[k].tolist()}, timeout=30)
                    if r.status_code != 200:
                        self.failures.append(f"{r.status_code} {r.text[:200]}")
                    else:
                        b = r.json()
                        self.answers.append({"at": time.time(), "version": b["version"], "request_id": b["request_id"],
                                             "example": k, "prediction": b["predictions"][0], "outputs": b["outputs"]})
                except requests.RequestException as e:
                    self.failures.append(repr(e))
                time.sleep(self.pause_s)

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


def _until(what, timeout: float, every: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(every)
    return None


def _rollouts(to: str) -> list[dict]:
    return [r for r in rollout.load(Workspace.from_env(), "digits") if r["to"] == to]


@pytest.fixture(scope="module")
def canaried(tmp_path_factory):
    mp, digits = module_home(tmp_path_factory, "rollout")
    (digits / "pipeline.yaml").write_text((digits / "pipeline.yaml").read_text() + CANARY)
    api.simulate(digits, shards=4)
    first = api.run_cycle(digits)
    assert first["decision"] == "PROMOTED", first["reasons"]
    gx, gy = load_arrays(Path(first["stages"]["ingest"]["output"]["golden_file"]))
    said: list[str] = []
    server = serving.start(digits, port=_free_port(), poll_s=0.5, say=said.append)
    ns = SimpleNamespace(digits=digits, server=server, gx=gx["input"], gy=gy, said=said, mp=mp)
    yield ns
    ns.server.stop()  # the shadow fixture's server by then: the next module starts its own Serve
    assert not serve_apps(), f"Serve applications left running: {serve_apps()}"
    mp.undo()


def serve_apps() -> list[str]:
    from ray import serve

    try:
        return list(serve.status().applications)
    except Exception:  # Serve is shut down: nothing runs
        return []


def test_a_canary_of_a_good_candidate_completes(canaried):
    srv = canaried.server
    with Clients(srv.url, canaried.gx) as clients:
        api.simulate(canaried.digits, shards=4)
        second = api.run_cycle(canaried.digits)
        assert second["decision"] == "PROMOTED", second["reasons"]
        v2 = second["version"]
        done = _until(lambda: _rollouts(v2), timeout=120)
        time.sleep(1)
    assert done and done[0]["outcome"] == "completed", (done, canaried.said[-10:])
    r = done[0]
    assert r["strategy"] == "canary" and r["from"] == "1" and r["figures"]["requests"] >= 40
    assert r["figures"]["agreement"] > 0.8 and r["figures"]["new_errors"] == 0
    assert clients.failures == []
    # while it baked both answered; since it completed only v2 answers
    during = [a["version"] for a in clients.answers if r["started_at"] < a["at"] < r["started_at"] + r["seconds"] - 0.5]
    assert {"1", v2} <= set(during), "the canary never split the traffic"
    assert 0.1 < during.count(v2) / len(during) < 0.5  # fraction 0.3
    assert [a["version"] for a in clients.answers if a["at"] > r["at"] + 0.5] and \
        {a["version"] for a in clients.answers if a["at"] > r["at"] + 0.5} == {v2}
    tags = api.registry_for(Workspace.from_env()).version_tags("digits", v2)
    assert tags["plaster.live_gate"] == "PASS"


@pytest.mark.parametrize("kind", ["slow", "errors"])
def test_a_canary_planted_to_fail_live_rolls_back_by_itself(canaried, kind):
    srv = canaried.server
    before = srv.version
    planted = register_planted(kind, canaried.gx)
    with Clients(srv.url, canaried.gx) as clients:
        move_champion(planted)
        done = _until(lambda: _rollouts(planted), timeout=90)
        time.sleep(1.5)
    assert done, canaried.said[-10:]
    r = done[0]
    assert r["outcome"] == "rolled_back", r
    reason = r["reasons"][0]
    assert reason.startswith("latency:" if kind == "slow" else "errors:"), reason
    # nothing failed for any client: the planted errors were answered by the old champion
    assert clients.failures == []
    ws = Workspace.from_env()
    registry = api.registry_for(ws)
    assert registry.alias("digits", "champion") == before and srv.version == before
    move = [m for m in ledger.load(ws, "digits") if m["kind"] == ledger.ROLLBACK and m["from"] == planted][-1]
    assert move["to"] == before and move["actor"] == rollout.LIVE_GATE_ACTOR and move["reason"].startswith("live gate:")
    # both times recorded (the figures are printed below; a test checks behaviour, not times)
    assert move["detect_s"] >= 0 and move["restore_s"] >= 0
    tags = registry.version_tags("digits", planted)
    assert tags["plaster.live_gate"] == "ROLLBACK" and tags["plaster.rolled_back"] == "true"
    # after the restore no answer came from the planted version
    restored = r["started_at"] + move["detect_s"] + move["restore_s"]
    assert not [a for a in clients.answers if a["version"] == planted and a["at"] > restored + 0.2]
    # `plaster status` says so
    from rich.console import Console

    from orchestrator import render

    st = api.status(canaried.digits)
    assert (st["last_rollout"]["to"], st["last_rollout"]["outcome"]) == (planted, rollout.ROLLED_BACK)
    console = Console(record=True, width=200)
    render.status(console, st)
    assert f"last rollout: canary v{before} → v{planted} rolled_back" in console.export_text()
    print(f"{kind}: detected in {move['detect_s']:.2f} s after {r['figures']['requests']} watched requests, "
          f"restored in {move['restore_s'] * 1000:.1f} ms; alias moved {r['alias_moved_s']:.2f} s after the start")


SHADOW = """
rollout:
  strategy: shadow
  bake_s: 4
  min_requests: 40
  check_s: 0.5
feedback:
  enabled: true
  flush_rows: 200
  flush_s: 1
"""


@pytest.fixture(scope="module")
def shadowed(canaried):
    """The same pipeline served again with `rollout: shadow` and feedback on; clients send
    examples of the first learned shard (so their labels are known)."""
    from orchestrator.config import load_pipeline
    from orchestrator.dataset import read_shard

    canaried.server.stop()
    y = (canaried.digits / "pipeline.yaml").read_text().replace(CANARY, SHADOW)
    (canaried.digits / "pipeline.yaml").write_text(y)
    pipeline = load_pipeline(canaried.digits)
    x, labels = read_shard(sorted(pipeline.source.glob("*.parquet"))[0], pipeline.inputs, pipeline.target)
    said: list[str] = []
    server = serving.start(canaried.digits, port=_free_port(), poll_s=0.5, say=said.append)
    canaried.server = server  # the canary fixture's teardown stops this one
    return SimpleNamespace(digits=canaried.digits, server=server, x=x["input"], y=labels, said=said,
                           pipeline=pipeline, answers=[])


def _engine_outputs(version: str, x: np.ndarray) -> np.ndarray:
    from orchestrator.engines import load_runner

    ws = Workspace.from_env()
    ref = api.registry_for(ws).fetch("digits", version, ws.home / "versions" / "digits")
    engine = Path(ref.folder) / json.loads((Path(ref.folder) / "manifest.json").read_text())["engine"]
    return load_runner(ref.backend, engine)({"input": x})


def test_a_shadow_judges_the_candidate_without_any_client_seeing_it_then_promotes_it(shadowed):
    srv = shadowed.server
    champion = srv.version
    with Clients(srv.url, shadowed.x) as clients:
        api.simulate(shadowed.digits, shards=4)
        third = api.run_cycle(shadowed.digits)
        assert third["decision"] == "HELD" and any("rollout: shadow" in r for r in third["reasons"]), third["reasons"]
        v3 = third["version"]
        done = _until(lambda: _rollouts(v3), timeout=120)
        time.sleep(1.5)
    shadowed.answers += clients.answers
    assert done and done[0]["outcome"] == "completed", (done, shadowed.said[-10:])
    r = done[0]
    assert r["strategy"] == "shadow" and r["from"] == champion and r["figures"]["requests"] >= 40
    assert clients.failures == []
    during = [a for a in clients.answers if a["at"] < r["at"] - 0.5]
    assert during and {a["version"] for a in during} == {champion}, "a client saw the shadowed candidate"
    # the answers are the champion's engine's, example by example
    sent = np.stack([shadowed.x[a["example"]] for a in during])
    assert np.allclose(np.array([a["outputs"][0] for a in during]), _engine_outputs(champion, sent), atol=1e-4)
    ws = Workspace.from_env()
    registry = api.registry_for(ws)
    assert registry.alias("digits", "champion") == v3 and registry.alias("digits", "challenger") is None
    move = [m for m in ledger.load(ws, "digits") if m["to"] == v3][-1]
    assert move["kind"] == ledger.PROMOTE and move["actor"] == rollout.LIVE_GATE_ACTOR and move["from"] == champion
    assert {a["version"] for a in clients.answers if a["at"] > r["at"] + 0.5} == {v3}


def test_a_shadow_of_a_candidate_planted_to_fail_is_rejected_and_the_champion_stays(shadowed):
    srv = shadowed.server
    champion = srv.version
    ws = Workspace.from_env()
    registry = api.registry_for(ws)
    planted = register_planted("errors", shadowed.x.reshape(len(shadowed.x), 1, 8, 8))
    with Clients(srv.url, shadowed.x) as clients:
        registry.set_version_tags("digits", planted, {"plaster.awaiting_shadow": "true",
                                                      "plaster.validated_against": champion})
        registry.set_alias("digits", "challenger", planted)
        done = _until(lambda: _rollouts(planted), timeout=90)
        time.sleep(1)
    shadowed.answers += clients.answers
    assert done and done[0]["outcome"] == "rejected", (done, shadowed.said[-10:])
    assert done[0]["reasons"][0].startswith("errors:")
    assert clients.failures == [] and {a["version"] for a in clients.answers} == {champion}
    assert registry.alias("digits", "champion") == champion and registry.alias("digits", "challenger") is None
    assert registry.version_tags("digits", planted)["plaster.live_gate"] == "REJECT"


def test_served_requests_are_kept_labelled_and_learned_by_the_next_cycle(shadowed):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from orchestrator import feedback

    ws = Workspace.from_env()
    folder = feedback.location(shadowed.pipeline, ws)
    time.sleep(2.5)  # flush_s 1 and a 0.5 s poll: the quiet server's last requests reach a shard
    kept = pa.concat_tables([pq.read_table(p) for p in sorted(folder.glob("*.parquet"))])
    ids = set(kept.column("request_id").to_pylist())
    answered = {a["request_id"]: a for a in shadowed.answers}
    assert set(answered) <= ids, f"{len(set(answered) - ids)} answered requests are not in the feedback"
    # the shadow's answers were kept beside the champion's
    shadows = [v for v in kept.column("shadow_version").to_pylist() if v is not None]
    assert shadows, "no feedback row holds the shadowed candidate's answer"

    labels = pa.table({"request_id": list(answered), "label": [int(shadowed.y[a["example"]]) for a in answered.values()]})
    pq.write_table(labels, ws.home / "labels.parquet")
    joined = api.label(shadowed.digits, ws.home / "labels.parquet")
    assert joined["joined"] == len(answered) and joined["pending"] == 0, joined
    assert len(joined["shards"]) == 1, joined
    shard = Path(joined["shards"][0])
    assert shard.parent == shadowed.pipeline.source

    fourth = api.run_cycle(shadowed.digits)
    assert fourth["decision"] in ("PROMOTED", "REJECTED", "HELD"), fourth
    new = fourth["stages"]["ingest"]["output"]["new_shards"]
    assert [s["rows"] for s in new if Path(s["path"]).name == shard.name] == [len(answered)], new
