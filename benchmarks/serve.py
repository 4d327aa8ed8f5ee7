"""How fast does plaster serve the champion, beside the server a user would write instead,
and what does a swap cost the clients?

Setup: a real plaster cycle (simulate 4 digits shards, `plaster run`) gives v1; plaster's
server (`orchestrator.serving.start`, Ray Serve) serves it on loopback, and beside it the
plain server (benchmarks/plain_server.py: one FastAPI app in one uvicorn process) runs the
same engine file with the same request and response JSON. Then:

- steady state: at 1, 8 and 32 clients, each client loops POST /predict with one golden
  digit on its own keep-alive connection. Each round measures both servers at every level,
  interleaved (the order alternates round by round); the table gives the median over rounds
  of p50, p99 and requests/s;
- a promotion: a second real cycle runs while 8 clients keep posting to plaster; it promotes
  v2 and the server swaps engines in place (user_config -> reconfigure);
- a rollback: the alias is pointed back at v1 through MLflow's client while 8 clients post.

For each swap: failed requests, the longest request while it happened (detection to the new
version's first answer, plus 3 s: HAProxy reloads after a swap), and how long the swap took.

The clients are one asyncio process (raw HTTP/1.1, no client library: a `requests` thread
costs more CPU per request than the plain server does) on the same 2-core machine as the
servers: figures are for this machine, client cost included.

    .venv/bin/python benchmarks/serve.py [--seconds 3] [--rounds 5] [--out benchmarks/results/serve.json]

What was tried on the way to today's serving path, each row beside the plain server in the
same run (medians of 2 interleaved rounds of 3 s; the machine's load average from other work
was 8-20, so compare within a row, not across rows):

| serving path | p50 / p99 ms at 8 | req/s at 8 / 32 | plain in that run: p99 at 8, req/s at 32 |
|---|---|---|---|
| before: FastAPI ingress, Serve's Python HTTP proxy, @serve.batch waiting 2 ms | 61.6 / 127.5 | 128 / 204 | 10.2, 2196 |
| + user code and router on the replica's main loop | 38.1 / 96.0 | 192 / 214 | 7.8, 2757 |
| RAY_SERVE_THROUGHPUT_OPTIMIZED, still through Serve's Python proxy | 54.4 / 105.1 | 147 / 209 | 18.1, 2067 |
| HAProxy (its metrics on) + direct ingress, FastAPI ingress, batch 2 ms | 10.5 / 38.4 | 704 / 792 | 15.3, 2253 |
| ... without @serve.batch | 7.9 / 20.2 | 904 / 761 | 16.9, 2126 |
| ... 2 replicas | 10.6 / 85.0 | 531 / 1098 | 12.4, 2206 |
| today: no FastAPI, HAProxy metrics off, 1 HAProxy thread, batch wait 0 | 7.0 / 22.0 | 1070 / 1156 | 11.6, 2067 |
| ... without @serve.batch (same CPU per request as with it) | 5.3 / 13.5 | 1442 / 1352 | 10.3, 2514 |
| ... batch wait 2 ms | 7.7 / 20.2 | 968 / 1468 | 11.1, 2212 |
| ... HAProxy's per-request metrics on | 7.1 / 28.3 | 1038 / 944 | 10.4, 2081 |
| ... 4 HAProxy threads (Serve's default) | 5.7 / 33.5 | 1118 / 1187 | 9.3, 2150 |
| ... 2 replicas (a swap then reaches them one by one: a client may see v2, then v1) | 6.5 / 19.4 | 1164 / 1886 | 8.1, 2534 |
| Serve's Python proxy with today's replica | 58.5 / 225.8 | 122 / 196 | 13.4, 2070 |
| a no-op FastAPI replica reached on its own port (direct ingress, no HAProxy) | 4.1 / 11.9 | 1765 / 1625 | |
| a no-op FastAPI replica through HAProxy | 6.8 / 15.4 | 1141 / 1341 | |
| 2026-12-06 (load 0.5-2), 5 rounds: @serve.batch, wait 0, rollout/feedback code | 4.9 / 10.4 | 1486 / 1724 | 6.4, 2948 |
| ... a CPU engine answers each request at once (no @serve.batch; today's default) | 4.4 / 9.4 | 1699 / 1951 | 6.8, 3104 |

Swapping under 8 clients, by a new `user_config` (Serve marks the replica UPDATING and routes
around it: HAProxy to Serve's Python proxy and back, two HAProxy reloads): 0 failed, longest
request 93-373 ms, detected -> served 0.3-0.9 s over four runs; by a handle call to the
replica's `swap` (today): 0 failed, longest 30-71 ms, 0.04-0.38 s.

Server CPU per request at 8 clients (from /proc): the plain server 365 us; FastAPI replica
behind HAProxy 745 + HAProxy 146 + HAProxy's metrics-parsing manager actor 107; today's
replica 530-600 + HAProxy 85-95. No-op handlers: uvicorn + FastAPI 170 us, a Serve replica
with a plain `__call__` 258 us, with a FastAPI ingress 413 us. gRPC ingress was not tried:
clients would no longer send the same JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 8, 32)
SERVERS = ("plaster", "plain")


def _clients(url: str, body: bytes, n: int, ready, stop, out) -> None:
    """`n` asyncio clients each posting `body` on a keep-alive connection until `stop`; puts
    every request as (start, latency s, version or None for a failure, what failed) on `out`.
    A client honours `Connection: close` as HTTP/1.1 asks (HAProxy sends it on the connections
    it hands over when it reloads, which it does after a swap)."""
    import asyncio
    from urllib.parse import urlparse

    u = urlparse(url)
    request = (f"POST {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    samples: list[tuple[float, float, str | None, str | None]] = []

    async def answer(r: asyncio.StreamReader) -> tuple[str | None, str | None, bool]:
        """(version, what failed, whether the server closes the connection)"""
        head = await r.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:] if line)}
        if b"content-length" in headers:
            data = await r.readexactly(int(headers[b"content-length"]))
        else:  # chunked
            data = b""
            while size := int((await r.readline()).strip(), 16):
                data += (await r.readexactly(size + 2))[:-2]
            await r.readline()
        close = headers.get(b"connection", b"").lower() == b"close"
        if status != 200:
            return None, f"HTTP {status} {data[:60]!r}", close
        return json.loads(data)["version"], None, close

    async def client() -> None:
        conn = None
        while not stop.is_set():
            t0 = time.monotonic()
            version, error, close = None, None, False
            try:
                async with asyncio.timeout(60):
                    if conn is None:
                        conn = await asyncio.open_connection(u.hostname, u.port)
                    conn[1].write(request)
                    version, error, close = await answer(conn[0])
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError) as e:
                error, close = f"{type(e).__name__}: {e}"[:80], True
            if close and conn is not None:
                conn[1].close()
                conn = None
            samples.append((t0, time.monotonic() - t0, version, error))
            if version is None:
                await asyncio.sleep(0.01)  # a server that refuses connections would spin us
        if conn is not None:
            conn[1].close()

    async def main() -> None:
        tasks = [asyncio.create_task(client()) for _ in range(n)]
        ready.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    out.put(samples)


class Load:
    """Clients in their own process: the benchmark's own process runs cycles and the alias
    watcher, whose pauses (GIL) must not count as the server's latency."""

    def __init__(self, url: str, example: list, n: int):
        ctx = mp.get_context("spawn")
        self._ready, self._stop, self._out = ctx.Event(), ctx.Event(), ctx.Queue()
        self._proc = ctx.Process(target=_clients, daemon=True, args=(
            f"{url}/predict", json.dumps({"inputs": example}).encode(), n, self._ready, self._stop, self._out))
        self.samples: list[tuple[float, float, str | None, str | None]] = []

    def __enter__(self):
        self._proc.start()
        if not self._ready.wait(60):
            raise RuntimeError("the client process did not start")
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.samples = self._out.get(timeout=120)
        self._proc.join(timeout=30)


def server_processes(name: str, plain_pid: int) -> list[tuple[str, object]]:
    """(role, process) of each process a request goes through on the server side: the plain
    server's one, or plaster's HAProxy and replica."""
    import psutil

    if name == "plain":
        return [("server", psutil.Process(plain_pid))]
    return [("haproxy" if p.info["name"] == "haproxy" else "replica", p)
            for p in psutil.process_iter(["name", "cmdline"])
            if p.info["name"] == "haproxy" or "ServeReplica:plaster-" in " ".join(p.info["cmdline"] or [])]


def _cpu_s(procs: list[tuple[str, object]]) -> dict[str, float]:
    import psutil

    out: dict[str, float] = {}
    for role, p in procs:
        try:
            t = p.cpu_times()
        except psutil.Error:  # gone (an HAProxy reload): its share is not counted
            continue
        out[role] = out.get(role, 0.0) + t.user + t.system
    return out


def steady(url: str, example: list, n: int, seconds: float, find) -> dict:
    """`n` clients for `seconds` after a warmup; `find()` lists the server's processes."""
    warmup = 0.5
    with Load(url, example, n) as load:
        t_from = time.monotonic() + warmup
        time.sleep(warmup)
        procs = find()
        cpu0 = _cpu_s(procs)
        time.sleep(seconds)
        cpu1 = _cpu_s(procs)
    kept = [s for s in load.samples if t_from <= s[0] < t_from + seconds]
    lat_ms = np.array([s[1] for s in kept]) * 1000
    return {"clients": n, "requests": len(kept), "failed": sum(s[2] is None for s in kept),
            "p50_ms": float(np.percentile(lat_ms, 50)), "p99_ms": float(np.percentile(lat_ms, 99)),
            "requests_per_s": len(kept) / seconds,
            "cpu_us_per_request": {k: 1e6 * (cpu1[k] - cpu0.get(k, 0.0)) / max(len(kept), 1) for k in cpu1}}


def side_by_side(urls: dict[str, str], procs: dict, example: list, seconds: float,
                 rounds: int) -> list[dict]:
    """Every server at every level, interleaved, `rounds` times: medians over rounds."""
    runs: dict[tuple[str, int], list[dict]] = {}
    for r in range(rounds):
        for n in CONCURRENCY:
            for name in (SERVERS if r % 2 == 0 else SERVERS[::-1]):
                runs.setdefault((name, n), []).append(steady(urls[name], example, n, seconds, procs[name]))
    rows = []
    for n in CONCURRENCY:
        for name in SERVERS:
            rs = runs[(name, n)]
            rows.append({"server": name, "clients": n, "rounds": len(rs),
                         **{k: float(np.median([r[k] for r in rs])) for k in ("p50_ms", "p99_ms", "requests_per_s")},
                         "requests": sum(r["requests"] for r in rs), "failed": sum(r["failed"] for r in rs),
                         "cpu_us_per_request": {k: float(np.median([r["cpu_us_per_request"].get(k, 0.0) for r in rs]))
                                                for k in rs[0]["cpu_us_per_request"]},
                         "per_round": [{k: round(r[k], 2) for k in ("p50_ms", "p99_ms", "requests_per_s")} for r in rs]})
    return rows


AFTER_SWAP_S = 3.0  # HAProxy reloads once or twice in the 2 s after a swap: count them in


def swap_figures(load: Load, detected: float, new_version: str) -> dict:
    """Figures of one swap: from the watcher noticing the alias move to the first answer of
    the new version, plus AFTER_SWAP_S."""
    first_new = min(s[0] + s[1] for s in load.samples if s[2] == new_version)
    during = [s for s in load.samples if s[0] + s[1] >= detected and s[0] <= first_new + AFTER_SWAP_S]
    errors = Counter(s[3] for s in load.samples if s[2] is None)
    slowest = max(during, key=lambda s: s[1])
    return {"to_version": new_version, "requests_during": len(during), "errors": dict(errors.most_common(5)),
            "failed_during": sum(s[2] is None for s in during),
            "max_latency_ms": 1000 * slowest[1], "slowest_started_s_after_detection": slowest[0] - detected,
            "p99_during_ms": float(np.percentile([s[1] * 1000 for s in during], 99)),
            "swap_s": first_new - detected}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def plain_server(engine: Path, champion: dict, spec, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "plain_server.py"), "--engine", str(engine),
                             "--port", str(port), "--backend", champion["backend"], "--input", spec.name,
                             "--shape", ",".join(map(str, spec.shape)), "--dtype", spec.dtype,
                             "--version", champion["version"], "--precision", champion["precision"]],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("the plain server did not start") from None
            time.sleep(0.2)


def _cpu_text(r: dict) -> str:
    cpu = r["cpu_us_per_request"]
    if len(cpu) == 1:
        return f"{sum(cpu.values()):.0f}"
    return f"{sum(cpu.values()):.0f} (" + " + ".join(f"{k} {v:.0f}" for k, v in sorted(cpu.items(), reverse=True)) + ")"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per server, level and round")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians are over these)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve.json")
    args = ap.parse_args()
    from rich.console import Console
    from rich.table import Table

    with tempfile.TemporaryDirectory(prefix="plaster-serve-bench-") as tmp:
        os.environ["PLASTER_HOME"] = f"{tmp}/home"
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        from mlflow import MlflowClient

        from orchestrator import api, serving
        from orchestrator.config import load_pipeline
        from orchestrator.dataset import load_arrays
        from orchestrator.workspace import Workspace

        digits = Path(tmp) / "digits"
        shutil.copytree(ROOT / "pipelines" / "digits", digits)
        t0 = time.monotonic()
        api.simulate(digits, shards=4)
        first = api.run_cycle(digits)
        setup_s = time.monotonic() - t0
        if first["decision"] != "PROMOTED":
            sys.exit(f"cycle 1 was {first['decision']}: {first['reasons']}")
        gx, _ = load_arrays(Path(first["stages"]["ingest"]["output"]["golden_file"]))
        example = gx["input"][0].tolist()

        moves: list[float] = []  # when the watcher noticed each alias move

        def say(msg: str) -> None:
            if msg.startswith("champion moved to v"):
                moves.append(time.monotonic())

        t0 = time.monotonic()
        server = serving.start(digits, port=_free_port(), poll_s=0.5, say=say)
        start_s = time.monotonic() - t0
        champion = server._champion(first["version"])  # the engine file plaster serves
        spec = load_pipeline(digits, check=False).inputs[0]
        plain_port = _free_port()
        plain = plain_server(Path(champion["engine"]), champion, spec, plain_port)
        try:
            levels = side_by_side({"plaster": server.url, "plain": f"http://127.0.0.1:{plain_port}"},
                                  {"plaster": lambda: server_processes("plaster", 0),
                                   "plain": lambda: server_processes("plain", plain.pid)},
                                  example, args.seconds, args.rounds)
            plain.terminate()

            with Load(server.url, example, 8) as load:
                api.simulate(digits, shards=4)
                second = api.run_cycle(digits)
                cycle_done = time.monotonic()
                if second["decision"] != "PROMOTED":
                    sys.exit(f"cycle 2 was {second['decision']}: {second['reasons']}")
                server.wait_for_version(second["version"], timeout=30)
                time.sleep(AFTER_SWAP_S + 0.5)
            promotion = swap_figures(load, moves[-1], second["version"])
            promotion.update(kind="promotion (cycle 2)", requests_total=len(load.samples),
                             failed_total=sum(s[2] is None for s in load.samples), cycle_time_s=second["cycle_time_s"],
                             cycle_returned_s_after_detection=cycle_done - moves[-1])

            with Load(server.url, example, 8) as load:
                time.sleep(1.0)
                moved = time.monotonic()
                MlflowClient(tracking_uri=Workspace.from_env().tracking_uri).set_registered_model_alias(
                    "digits", "champion", first["version"])
                server.wait_for_version(first["version"], timeout=30)
                time.sleep(AFTER_SWAP_S + 0.5)
            rollback = swap_figures(load, moves[-1], first["version"])
            rollback.update(kind="rollback (alias moved by hand)", requests_total=len(load.samples),
                            failed_total=sum(s[2] is None for s in load.samples),
                            alias_to_served_s=min(s[0] + s[1] for s in load.samples
                                                  if s[0] > moved and s[2] == first["version"]) - moved)
        finally:
            plain.kill()
            t0 = time.monotonic()
            server.stop()
            stop_s = time.monotonic() - t0

    console = Console(width=120)
    t = Table(title=f"Serving digits on loopback, one example per request: medians of {args.rounds} interleaved "
                    f"rounds of {args.seconds:g} s", caption=f"{os.cpu_count()} cores, shared with the clients")
    for col in ("server", "clients", "p50 ms", "p99 ms", "req/s", "failed", "server CPU us/request"):
        t.add_column(col, justify="left" if col == "server" else "right")
    for r in levels:
        t.add_row(r["server"], str(r["clients"]), f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                  f"{r['requests_per_s']:.0f}", str(r["failed"]), _cpu_text(r))
    console.print(t)
    by = {(r["server"], r["clients"]): r for r in levels}
    ratios = {n: {"p99_ratio": by["plaster", n]["p99_ms"] / by["plain", n]["p99_ms"],
                  "throughput_ratio": by["plaster", n]["requests_per_s"] / by["plain", n]["requests_per_s"]}
              for n in CONCURRENCY}
    console.print("plaster / plain: " + ", ".join(
        f"{n} clients p99 x{r['p99_ratio']:.2f} req/s x{r['throughput_ratio']:.2f}" for n, r in ratios.items()))
    steady8 = by["plaster", 8]
    swaps = Table(title=f"Swapping the champion under 8 clients (steady p99 at 8: {steady8['p99_ms']:.1f} ms)")
    for col in ("swap", "requests", "failed", "max latency during swap ms", "p99 during swap ms",
                "detected → served s"):
        swaps.add_column(col, justify="left" if col == "swap" else "right")
    for r in (promotion, rollback):
        swaps.add_row(f"{r['kind']} → v{r['to_version']}", str(r["requests_total"]), str(r["failed_total"]),
                      f"{r['max_latency_ms']:.0f}", f"{r['p99_during_ms']:.1f}", f"{r['swap_s']:.2f}")
    console.print(swaps)
    out = {"benchmark": "serve", "pipeline": "digits", "machine_cores": os.cpu_count(),
           "setup_cycle_s": round(setup_s, 1), "server_start_s": round(start_s, 1), "server_stop_s": round(stop_s, 1),
           "measured_s_per_level": args.seconds, "rounds": args.rounds, "batch_wait_s": serving.BATCH_WAIT_S,
           "serve_env": serving.SERVE_ENV, "levels": levels, "plaster_vs_plain": ratios,
           "swaps": [promotion, rollback]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    md = ["| server | clients | p50 ms | p99 ms | req/s | failed | server CPU us/request |",
          "|---|---|---|---|---|---|---|"]
    md += [f"| {r['server']} | {r['clients']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['requests_per_s']:.0f} | "
           f"{r['failed']} | {_cpu_text(r)} |" for r in levels]
    md += ["", "| swap (8 clients) | requests | failed | max latency during swap ms | p99 during swap ms | "
               "detected → served s |", "|---|---|---|---|---|---|"]
    md += [f"| {r['kind']} → v{r['to_version']} | {r['requests_total']} | {r['failed_total']} | "
           f"{r['max_latency_ms']:.0f} | {r['p99_during_ms']:.1f} | {r['swap_s']:.2f} |" for r in (promotion, rollback)]
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    console.print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
