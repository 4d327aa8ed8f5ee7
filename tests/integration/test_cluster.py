"""A real 2-node Ray cluster on 127.0.0.1 (`ray start --head` + `ray start --address`, token auth on),
cycles sent to it with `plaster submit`, and the results read from `mlflow server` over HTTP.

Each node offers one CPU, so the two training workers can only be placed one per node.
"""

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
from homes import module_home
from servers import _free_port, mlflow_server_at

from orchestrator import api

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def _ports(*names: str) -> list[str]:
    return [arg for name in names for arg in (f"--{name}", str(_free_port()))]


def _start_node(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    # Its own session: teardown signals the whole node (raylet, GCS, workers) and nothing else.
    # (`ray stop` would kill every Ray on the machine, this test session's own included.)
    return subprocess.Popen([str(BIN / "ray"), "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                             "--num-gpus", "0", *_ports("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                        "metrics-export-port", "runtime-env-agent-port"), *args],
                            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


@pytest.fixture(scope="module")
def cluster():
    # Ray's session dir holds AF_UNIX sockets (107-byte path limit): pytest's tmp paths are too long.
    tmp = Path(tempfile.mkdtemp(prefix="plc-", dir="/tmp"))
    token = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token,
               RAY_USAGE_STATS_ENABLED="0")
    gcs, dash = _free_port(), _free_port()
    head = _start_node(["--head", "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
                        "--ray-client-server-port", str(_free_port()), "--temp-dir", str(tmp)],
                       env, tmp / "head.log")
    nodes = [head]
    url = f"http://127.0.0.1:{dash}"
    auth = {"Authorization": f"Bearer {token}"}
    try:
        _wait(lambda: requests.get(f"{url}/api/version", headers=auth, timeout=2).ok, "head", tmp)
        # Its own temp dir, as a second machine would have: nodes sharing one would also share the
        # runtime_env working_dir, and one node's clean-up would delete the other's files.
        nodes.append(_start_node(["--address", f"127.0.0.1:{gcs}", "--temp-dir", str(tmp / "w")], env, tmp / "worker.log"))
        _wait(lambda: _alive_nodes(url, auth) >= 2, "second node", tmp)
        yield {"address": url, "token": token, "env": env, "auth": auth, "tmp": tmp}
    finally:
        for proc in reversed(nodes):
            _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def _alive_nodes(url: str, auth: dict) -> int:
    r = requests.get(f"{url}/api/v0/nodes", params={"limit": 10}, headers=auth, timeout=5)
    return sum(n["state"] == "ALIVE" for n in r.json()["data"]["result"]["result"]) if r.ok else 0


def _wait(ready, what: str, tmp: Path, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if ready():
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the Ray {what} did not come up in {timeout:.0f} s; see the logs in {tmp}")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A PLASTER_HOME, a pipeline whose training takes a few checkpoints, and an `mlflow server`."""
    mp, digits = module_home(tmp_path_factory, "cluster-site")
    yaml_file = digits / "pipeline.yaml"
    # Two Ray Train workers (not the right-sized in-process training digits gets by default).
    text = re.sub(r"workers: auto.*", "workers: 2", yaml_file.read_text())
    text = text.replace("epochs: 30", "epochs: 12\n  checkpoint_every: 3")
    text = re.sub(r"warm_start_epochs: \d+", "warm_start_epochs: 12", text)  # the kill test's cycle is a warm start
    yaml_file.write_text(text)
    with mlflow_server_at(tmp_path_factory.mktemp("cluster-mlflow")) as server:
        mp.setenv("MLFLOW_TRACKING_URI", server)
        yield {"digits": digits, "server": server}
    mp.undo()


def submit(cluster, site, *extra: str, token: str | None = None) -> subprocess.CompletedProcess:
    env = {**cluster["env"], "RAY_AUTH_TOKEN": token or cluster["token"], "PLASTER_HOME": os.environ["PLASTER_HOME"],
           "MLFLOW_TRACKING_URI": site["server"]}
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "submit", str(site["digits"]), "--address",
                          cluster["address"], *extra], capture_output=True, text=True, env=env, timeout=600)
    if out.returncode == 2:  # for the failure message: the head's job agent is the usual suspect
        for log in cluster["tmp"].glob("session_latest/logs/dashboard_agent*.log"):
            out.stderr += f"\n--- {log.name} (last 2,000 characters) ---\n" + log.read_text(errors="replace")[-2000:]
    return out


def _last_record(site) -> dict:
    from orchestrator import record as records
    from orchestrator.workspace import Workspace

    return records.load_all(Workspace.from_env(), "digits")[-1]


def test_a_wrong_token_is_refused_with_the_fix_and_a_token_file_is_read(cluster, site, tmp_path):
    out = submit(cluster, site, token="not-the-token")
    assert out.returncode == 2
    assert "RAY_AUTH_TOKEN" in out.stderr, out.stderr

    # Ray's token file instead of the variable: the job server answers.
    token_file = tmp_path / "auth_token"
    token_file.write_text(cluster["token"])
    env = {k: v for k, v in cluster["env"].items() if k != "RAY_AUTH_TOKEN"}
    probe = subprocess.run([sys.executable, "-c", "import sys; from orchestrator.submit import client; "
                            "print(len(client(sys.argv[1]).list_jobs()))", cluster["address"]],
                           capture_output=True, text=True, env={**env, "RAY_AUTH_TOKEN_PATH": str(token_file)},
                           timeout=120)
    assert probe.returncode == 0 and probe.stdout.strip().isdigit(), probe.stderr[-2000:]


def test_submitted_cycle_trains_across_both_nodes_and_promotes_in_mlflow(cluster, site):
    api.simulate(site["digits"], shards=4)
    out = submit(cluster, site, "--follow")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "submitted plaster-digits-" in out.stdout and "PROMOTED v1" in out.stdout

    rec = _last_record(site)
    train = rec["stages"]["train"]["output"]
    assert train["num_workers"] == 2 and len(set(train["nodes"])) == 2, train["nodes"]
    assert rec["trigger"] == "submit" and rec["decision"] == "PROMOTED"

    # What a user reading the registry over HTTP sees.
    r = requests.get(f"{site['server']}/api/2.0/mlflow/registered-models/alias",
                     params={"name": "digits", "alias": "champion"}, timeout=10)
    assert r.ok and r.json()["model_version"]["version"] == "1"
    run = requests.get(f"{site['server']}/api/2.0/mlflow/runs/get", params={"run_id": rec["run_id"]}, timeout=10).json()
    tags = {t["key"]: t["value"] for t in run["run"]["data"]["tags"]}
    assert tags["plaster.decision"] == "PROMOTED" and tags["plaster.trigger"] == "submit"


def test_a_worker_killed_mid_training_restarts_from_its_checkpoint(cluster, site):
    api.simulate(site["digits"], shards=4)
    # Rank 1 SIGKILLs itself at epoch 7 on the first attempt; checkpoints after epochs 2, 5, 8, 11.
    out = submit(cluster, site, "--follow", "--env", "PLASTER_TEST_KILL_WORKER=1:7")
    assert out.returncode in (0, 1), out.stdout[-3000:] + out.stderr[-3000:]  # a decision, either way

    train = _last_record(site)["stages"]["train"]["output"]
    # From a checkpoint, not from scratch: epoch 3 or 6 (Ray Train restores the latest checkpoint
    # its controller had registered when the worker died, which may lag rank 0's last report).
    assert train["restarts"] == 1 and train["resumed_from_epoch"] in (3, 6), train
    assert [h["epoch"] for h in train["history"]] == list(range(12)), "each epoch once: resumed, not retrained"
    assert len(set(train["nodes"])) == 2


def test_a_streamed_cycle_reads_its_shards_through_ray_data_on_both_nodes(cluster, site):
    # Above ingest.stream_above_rows the training rows stay in their files: each worker reads
    # its shard of them through Ray Data (half-CPU workers, spread one per node).
    yaml_file = site["digits"] / "pipeline.yaml"
    text = yaml_file.read_text()
    yaml_file.write_text(text.replace("ingest:\n", "ingest:\n  stream_above_rows: 100\n", 1))
    try:
        api.simulate(site["digits"], shards=4)
        out = submit(cluster, site, "--follow")
    finally:
        yaml_file.write_text(text)
    assert out.returncode in (0, 1), out.stdout[-3000:] + out.stderr[-3000:]  # a decision, either way
    rec = _last_record(site)
    snap, train = rec["stages"]["ingest"]["output"], rec["stages"]["train"]["output"]
    assert snap["train_manifest"] is not None and len(snap["train_manifest"]["new"]) == 4
    assert "streamed through Ray Data" in train["workers_reason"], train["workers_reason"]
    assert train["num_workers"] == 2 and len(set(train["nodes"])) == 2, train["nodes"]
    assert [h["epoch"] for h in train["history"]] == list(range(12))
