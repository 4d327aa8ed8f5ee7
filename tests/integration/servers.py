"""Real servers the integration tests start on 127.0.0.1: free ports and `mlflow server`."""

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server_at(folder, backend_uri: str | None = None):
    """`mlflow server` on a free 127.0.0.1 port, its store and artifacts under `folder`;
    yields its URL and stops it (SIGTERM ends its workers too)."""
    port = _free_port()
    log = open(folder / "mlflow-server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", backend_uri or f"sqlite:///{folder / 'server.db'}",
         "--artifacts-destination", str(folder / "server-artifacts"), "--serve-artifacts"],
        stdout=log, stderr=subprocess.STDOUT,
        # Job execution (on by default) adds a runner and huey consumers that outlive SIGTERM.
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"mlflow server did not start; see {folder / 'mlflow-server.log'}") from None
            time.sleep(0.5)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
