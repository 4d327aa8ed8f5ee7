"""Serving the champion for real: Ray Serve over HTTP, MLflow on SQLite, real cycles.

The tests share one server and run in file order: v1 served, bad input refused, a
promotion to v2 swapped in under load, a rollback to v1 followed, the application stopped.
"""

import json
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import requests
from homes import module_home

from orchestrator import api, serving
from orchestrator.dataset import load_arrays
from orchestrator.errors import PlasterError, RegistryError
from orchestrator.workspace import Workspace

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _replicas() -> list[str]:
    """Names of the live Champion replica actors (a new name would mean a restarted replica)."""
    import ray

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "#Champion#" in a["name"])


class Clients:
    """`n` threads each looping POST /predict with one example; every answer and failure kept."""

    def __init__(self, url: str, example: list, n: int, pause_s: float = 0.005):
        self.url, self.example, self.pause_s = url, example, pause_s
        self.answers: list[tuple[int, float, str]] = []  # (client, latency s, version)
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(n)]

    def _loop(self, i: int) -> None:
        with requests.Session() as s:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    r = s.post(f"{self.url}/predict", json={"inputs": self.example}, timeout=30)
                    if r.status_code != 200:
                        self.failures.append(f"{r.status_code} {r.text[:200]}")
                    else:
                        self.answers.append((i, time.perf_counter() - t0, r.json()["version"]))
                except requests.RequestException as e:
                    self.failures.append(repr(e))
                time.sleep(self.pause_s)  # leave the 2 cores some room for the cycle beside it

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def versions_by_client(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for client, _, version in self.answers:
            out.setdefault(client, []).append(version)
        return out


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One real cycle (PROMOTED v1), then the server on a free port, watching the alias."""
    mp, digits = module_home(tmp_path_factory, "serving")
    api.simulate(digits, shards=4)
    first = api.run_cycle(digits)
    assert first["decision"] == "PROMOTED" and first["version"] == "1", first["reasons"]
    gx, gy = load_arrays(Path(first["stages"]["ingest"]["output"]["golden_file"]))
    gx = gx["input"]  # digits has one input
    said: list[str] = []
    server = serving.start(digits, port=_free_port(), poll_s=0.5, say=said.append)
    yield SimpleNamespace(digits=digits, server=server, first=first, gx=gx, gy=gy, said=said)
    server.stop()
    mp.undo()


@pytest.fixture(scope="module")
def promoted(served):
    """Cycle 2 runs while 8 clients hammer the server; the alias moves to v2 under their load."""
    srv = served.server
    replicas = _replicas()
    with Clients(srv.url, served.gx[0].tolist(), n=8) as clients:
        api.simulate(served.digits, shards=4)
        second = api.run_cycle(served.digits)
        if second["decision"] != "PROMOTED":
            pytest.fail(f"cycle 2 was {second['decision']}, so there is no swap to test: {second['reasons']}")
        srv.wait_for_version(second["version"], timeout=10)
        time.sleep(2)  # keep the load on past the swap
    return SimpleNamespace(second=second, clients=clients, replicas_before=replicas, replicas_after=_replicas())


def _post(url: str, **kw) -> requests.Response:
    return requests.post(f"{url}/predict", timeout=30, **kw)


def test_no_champion_is_a_clear_error(home, digits):
    with pytest.raises(RegistryError, match="plaster run"):
        serving.start(digits, port=_free_port())


def test_serves_the_champion_with_the_engine_validation_measured(served):
    srv, url = served.server, served.server.url
    assert srv.version == "1" and srv.url.startswith("http://127.0.0.1:")
    assert requests.get(f"{url}/healthz", timeout=10).json() == {"status": "ok", "version": "1"}
    info = requests.get(f"{url}/version", timeout=10).json()
    chosen = served.first["stages"]["validate"]["output"]["chosen"]
    assert (info["version"], info["precision"], info["backend"]) == ("1", chosen["precision"], chosen["backend"])
    assert info["engine"].endswith(".ort.onnx") and info["loaded_at"]
    assert any("serving digits v1" in m for m in served.said)

    # One example in, one row of logits out.
    one = _post(url, json={"inputs": served.gx[0].tolist()})
    assert one.status_code == 200, one.text
    body = one.json()
    assert body["version"] == "1" and len(body["outputs"]) == 1 and len(body["outputs"][0]) == 10
    assert body["predictions"] == [int(np.argmax(body["outputs"][0]))]

    # Batches over the golden digits: right, and exactly what the bundle's engine file answers.
    from orchestrator.engines import load_runner

    bundle = Workspace.from_env().home / "versions" / "digits" / "v1"
    engine = bundle / json.loads((bundle / "manifest.json").read_text())["engine"]
    assert engine.name == info["engine"]
    runner = load_runner(info["backend"], engine)
    outputs, predictions = [], []
    for i in range(0, len(served.gx), 64):
        r = _post(url, json={"inputs": served.gx[i:i + 64].tolist()})
        assert r.status_code == 200, r.text
        outputs += r.json()["outputs"]
        predictions += r.json()["predictions"]
    assert np.allclose(outputs, runner({"input": served.gx}), atol=1e-5)
    assert np.mean(np.array(predictions) == served.gy) > 0.85


@pytest.mark.parametrize("payload, status, words", [
    ({"data": b"not json at all"}, 400, "not JSON"),
    ({"json": {"examples": [1, 2]}}, 422, '{"inputs"'),
    ({"json": {"inputs": "pixels"}}, 422, "list of numbers"),
    ({"json": {"inputs": []}}, 422, "empty batch"),
    ({"json": {"inputs": np.zeros((2, 1, 8, 7)).tolist()}}, 422, "[1, 8, 8]"),
    ({"json": {"inputs": np.zeros(64).tolist()}}, 422, "[1, 8, 8]"),
    ({"json": {"inputs": np.full((1, 8, 8), "x").tolist()}}, 422, "only numbers, found str"),
    ({"json": {"inputs": np.full((1, 8, 8), True).tolist()}}, 422, "only numbers, found bool"),
    ({"json": {"inputs": [np.zeros((1, 8, 8)).tolist(), [[0.0] * 3]]}}, 422, "ragged"),
    ({"data": b'{"inputs": ' + b"[" * 200 + b"1" + b"]" * 200 + b"}"}, 422, "nested deeper than 4"),
    ({"json": {"inputs": np.zeros((257, 1, 8, 8)).tolist()}}, 413, "at most 256"),
    ({"data": b"[" * (9 << 20)}, 413, "bytes"),
])
def test_bad_input_is_a_4xx_with_a_message_and_serving_goes_on(served, payload, status, words):
    url = served.server.url
    r = _post(url, **payload)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    good = _post(url, json={"inputs": served.gx[:2].tolist()})
    assert good.status_code == 200 and len(good.json()["predictions"]) == 2


def test_wrong_paths_and_methods_are_a_404_or_405_naming_the_routes(served):
    url = served.server.url
    r = requests.get(f"{url}/predict", timeout=10)
    assert r.status_code == 405 and r.headers["Allow"] == "POST" and "POST only" in r.json()["error"]
    r = requests.post(f"{url}/nope", json={"inputs": []}, timeout=10)
    assert r.status_code == 404 and "POST /predict" in r.json()["error"]


def test_the_port_is_haproxy_forwarding_to_the_replica_not_a_python_proxy(served):
    """Ray Serve's fast path (serving.SERVE_ENV): with Serve's Python proxy actor on the port
    instead, a request took ~10x as long (benchmarks/serve.py)."""
    import psutil

    port = int(served.server.url.rsplit(":", 1)[1])
    listeners = {c.pid for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    assert [psutil.Process(pid).name() for pid in listeners] == ["haproxy"]


def test_a_second_server_on_another_port_is_refused_and_the_first_serves_on(served):
    with pytest.raises(PlasterError, match=f"already runs .* --port {served.server.url.rsplit(':', 1)[1]}"):
        serving.start(served.digits, port=_free_port())
    assert requests.get(f"{served.server.url}/healthz", timeout=10).json()["version"] == "1"


def test_promotion_is_swapped_in_under_load_without_a_failed_request(served, promoted):
    clients, srv = promoted.clients, served.server
    assert promoted.second["version"] == "2" and srv.version == "2"
    assert clients.failures == [], clients.failures[:5]
    assert len(clients.answers) > 200, "the clients barely ran"
    seen = {v for _, _, v in clients.answers}
    assert seen == {"1", "2"}, seen
    for client, versions in clients.versions_by_client().items():
        # Once a client got v2 it never got v1 again: the swap is one reference, not a mix.
        first_v2 = versions.index("2")
        assert set(versions[first_v2:]) == {"2"}, f"client {client} saw v1 after v2"
    assert any("champion moved to v2" in m for m in served.said)
    assert len(promoted.replicas_before) == 1
    assert promoted.replicas_after == promoted.replicas_before, "the replica is reconfigured in place, not replaced"


def test_a_replica_serve_restarts_is_brought_back_to_the_champion(served, promoted):
    """The deployed user_config still names v1; a restarted replica starts there and the
    watcher swaps it to the champion (v2)."""
    import ray

    srv = served.server
    (name,) = _replicas()
    ray.kill(ray.get_actor(name, namespace="serve"))

    def back_on_v2() -> bool:
        new_replica = _replicas() not in ([], [name])
        return new_replica and (serving._get(f"{srv.url}/version") or {}).get("version") == "2"

    deadline = time.monotonic() + 90
    while not back_on_v2():
        assert time.monotonic() < deadline, f"no replica back on v2 after 90 s: {_replicas()}"
        time.sleep(0.5)
    assert srv.version == "2"
    assert any("came back serving an older champion" in m for m in served.said), served.said[-5:]


def test_rollback_is_served_within_seconds(served, promoted):
    srv = served.server
    replicas = _replicas()
    with Clients(srv.url, served.gx[0].tolist(), n=4) as clients:
        time.sleep(0.5)
        api.rollback(served.digits, "serving test: back to v1")  # `plaster rollback`: champion -> previous
        srv.wait_for_version("1", timeout=10)
        time.sleep(1)
    assert srv.version == "1"
    assert clients.failures == [], clients.failures[:5]
    assert clients.answers[-1][2] == "1"
    assert _replicas() == replicas, "a rollback reconfigures the same replica"
    assert requests.get(f"{srv.url}/version", timeout=10).json()["version"] == "1"
    # The MLflow version page of the version rolled away from says who, when and why.
    page = api.registry_for(Workspace.from_env()).client.get_model_version("digits", "2").description
    assert "**Rolled back**" in page and "serving test: back to v1" in page, page


def test_stop_takes_the_application_down(served):
    url = served.server.url
    served.server.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/healthz", timeout=5)
    assert _replicas() == []
    served.server.stop()  # a second stop is harmless (the fixture stops it again)


def test_a_taken_port_is_a_clear_error(served):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(PlasterError, match="another program holds it"):
            serving.start(served.digits, port=taken.getsockname()[1])
