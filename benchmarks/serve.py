"""How fast does plaster serve the champion, and what does a swap cost the clients?

Setup: a real plaster cycle (simulate 4 digits shards, `plaster run`) gives v1; the server
(`orchestrator.serving.start`) serves it on loopback. Then:

- steady state: at concurrency 1, 4, 8 and 16, that many client threads each loop
  POST /predict with one golden digit for a few seconds: p50 / p99 latency and requests/s;
- a promotion: a second real cycle runs while 8 clients keep posting; it promotes v2 and the
  server swaps engines in place (user_config -> reconfigure);
- a rollback: the alias is pointed back at v1 through MLflow's client while 8 clients post.

For each swap: failed requests, the longest request latency while it happened (detection
to the new version's first answer, plus a second), and how long the swap took.

The clients are Python threads in a process of their own (this process runs the cycles and
the alias watcher) on the same 2-core machine as the server: figures are for this machine,
client cost included.

    .venv/bin/python benchmarks/serve.py [--seconds 5] [--out benchmarks/results/serve.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 4, 8, 16)


def _clients(url: str, body: str, n: int, ready, stop, out) -> None:
    """`n` threads each posting `body` until `stop`; puts every request as
    (start, latency s, version or None for a failure) on `out`."""
    samples: list[tuple[float, float, str | None]] = []

    def loop() -> None:
        headers = {"Content-Type": "application/json"}
        with requests.Session() as s:
            while not stop.is_set():
                t0 = time.monotonic()
                version = None
                try:
                    r = s.post(url, data=body, headers=headers, timeout=60)
                    if r.status_code == 200:
                        version = r.json()["version"]
                except requests.RequestException:
                    pass
                samples.append((t0, time.monotonic() - t0, version))

    threads = [threading.Thread(target=loop) for _ in range(n)]
    for t in threads:
        t.start()
    ready.set()
    for t in threads:
        t.join()
    out.put(samples)


class Load:
    """Clients in their own process: the benchmark's own process runs cycles and the alias
    watcher, whose pauses (GIL) must not count as the server's latency."""

    def __init__(self, url: str, example: list, n: int):
        ctx = mp.get_context("spawn")
        self._ready, self._stop, self._out = ctx.Event(), ctx.Event(), ctx.Queue()
        self._proc = ctx.Process(target=_clients, daemon=True, args=(
            f"{url}/predict", json.dumps({"inputs": example}), n, self._ready, self._stop, self._out))
        self.samples: list[tuple[float, float, str | None]] = []

    def __enter__(self):
        self._proc.start()
        if not self._ready.wait(60):
            raise RuntimeError("the client process did not start")
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.samples = self._out.get(timeout=120)
        self._proc.join(timeout=30)


def steady(url: str, example: list, n: int, seconds: float) -> dict:
    warmup = 0.5
    with Load(url, example, n) as load:
        t_from = time.monotonic() + warmup
        time.sleep(warmup + seconds)
    kept = [s for s in load.samples if t_from <= s[0] < t_from + seconds]
    lat_ms = np.array([s[1] for s in kept]) * 1000
    return {"concurrency": n, "requests": len(kept), "failed": sum(s[2] is None for s in kept),
            "p50_ms": float(np.percentile(lat_ms, 50)), "p99_ms": float(np.percentile(lat_ms, 99)),
            "requests_per_s": len(kept) / seconds}


def swap_figures(load: Load, detected: float, new_version: str) -> dict:
    """Figures of one swap: from the watcher noticing the alias move to the first answer of
    the new version, plus one second."""
    first_new = min(s[0] + s[1] for s in load.samples if s[2] == new_version)
    during = [s for s in load.samples if s[0] + s[1] >= detected and s[0] <= first_new + 1.0]
    return {"to_version": new_version, "requests_during": len(during),
            "failed_during": sum(s[2] is None for s in during),
            "max_latency_ms": 1000 * max(s[1] for s in during),
            "swap_s": first_new - detected}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per concurrency level")
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
        gx = gx["input"]
        example = gx[0].tolist()

        moves: list[float] = []  # when the watcher noticed each alias move

        def say(msg: str) -> None:
            if msg.startswith("champion moved to v"):
                moves.append(time.monotonic())

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        t0 = time.monotonic()
        server = serving.start(digits, port=port, poll_s=0.5, say=say)
        start_s = time.monotonic() - t0
        try:
            levels = [steady(server.url, example, n, args.seconds) for n in CONCURRENCY]

            with Load(server.url, example, 8) as load:
                api.simulate(digits, shards=4)
                second = api.run_cycle(digits)
                if second["decision"] != "PROMOTED":
                    sys.exit(f"cycle 2 was {second['decision']}: {second['reasons']}")
                server.wait_for_version(second["version"], timeout=30)
                time.sleep(1.5)
            promotion = swap_figures(load, moves[-1], second["version"])
            promotion.update(kind="promotion (cycle 2)", requests_total=len(load.samples),
                             failed_total=sum(s[2] is None for s in load.samples), cycle_time_s=second["cycle_time_s"])

            with Load(server.url, example, 8) as load:
                time.sleep(1.0)
                moved = time.monotonic()
                MlflowClient(tracking_uri=Workspace.from_env().tracking_uri).set_registered_model_alias(
                    "digits", "champion", first["version"])
                server.wait_for_version(first["version"], timeout=30)
                time.sleep(1.5)
            rollback = swap_figures(load, moves[-1], first["version"])
            rollback.update(kind="rollback (alias moved by hand)", requests_total=len(load.samples),
                            failed_total=sum(s[2] is None for s in load.samples),
                            alias_to_served_s=min(s[0] + s[1] for s in load.samples
                                                  if s[0] > moved and s[2] == first["version"]) - moved)
        finally:
            server.stop()

    console = Console(width=120)
    t = Table(title="Serving digits on loopback, one example per request",
              caption=f"{os.cpu_count()} cores, shared with the clients")
    for col in ("concurrency", "requests/s", "p50 ms", "p99 ms", "failed"):
        t.add_column(col, justify="right")
    for r in levels:
        t.add_row(str(r["concurrency"]), f"{r['requests_per_s']:.0f}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
                  str(r["failed"]))
    console.print(t)
    steady8 = next(r for r in levels if r["concurrency"] == 8)
    swaps = Table(title=f"Swapping the champion under 8 clients (steady p99 at 8: {steady8['p99_ms']:.0f} ms)")
    for col in ("swap", "requests", "failed", "max latency during swap ms", "detected → served s"):
        swaps.add_column(col, justify="left" if col == "swap" else "right")
    for r in (promotion, rollback):
        swaps.add_row(f"{r['kind']} → v{r['to_version']}", str(r["requests_total"]), str(r["failed_total"]),
                  f"{r['max_latency_ms']:.0f}", f"{r['swap_s']:.2f}")
    console.print(swaps)
    out = {"benchmark": "serve", "pipeline": "digits", "machine_cores": os.cpu_count(),
           "setup_cycle_s": round(setup_s, 1), "server_start_s": round(start_s, 1), "measured_s_per_level": args.seconds,
           "batch_wait_s": serving.BATCH_WAIT_S, "levels": levels, "swaps": [promotion, rollback]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    md = ["| concurrency | requests/s | p50 ms | p99 ms | failed |", "|---|---|---|---|---|"]
    md += [f"| {r['concurrency']} | {r['requests_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['failed']} |"
           for r in levels]
    md += ["", "| swap (8 clients) | requests | failed | max latency during swap ms | detected → served s |",
           "|---|---|---|---|---|"]
    md += [f"| {r['kind']} → v{r['to_version']} | {r['requests_total']} | {r['failed_total']} | "
           f"{r['max_latency_ms']:.0f} | {r['swap_s']:.2f} |" for r in (promotion, rollback)]
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    console.print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
