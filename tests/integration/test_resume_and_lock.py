"""Crash, resume and the concurrent-run guard, through the real CLI against `mlflow server`."""

import json
import os
import subprocess
import sys

import pytest

from orchestrator import api
from orchestrator import record as records
from orchestrator.workspace import Workspace

pytestmark = pytest.mark.integration


def plaster(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def test_killed_between_stages_resumes_and_registers_once(home, digits, mlflow_server):
    env = {"MLFLOW_TRACKING_URI": mlflow_server}
    api.simulate(digits, shards=4)

    crashed = plaster("run", str(digits), env={**env, "PLASTER_CRASH_AFTER": "train"})
    assert crashed.returncode == -9, crashed.stderr  # SIGKILL: nothing got to clean up
    ws = Workspace.from_env()
    rec = records.unfinished(ws, "digits")
    assert rec is not None and rec["state"] == "running" and list(rec["stages"]) == ["ingest", "train"]
    train_started = rec["stages"]["train"]["started_at"]

    resumed = plaster("run", str(digits), "--resume", env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "PROMOTED v1" in resumed.stdout
    done = records.load_all(ws, "digits")[-1]
    assert done["id"] == rec["id"] and done["resumes"] == 1
    assert done["stages"]["train"]["started_at"] == train_started, "train must not run again"

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    assert len(client.search_model_versions("name='digits'")) == 1
    assert str(client.get_model_version_by_alias("digits", "champion").version) == "1"
    run = client.get_run(done["run_id"])
    assert run.data.tags["plaster.decision"] == "PROMOTED" and "stage_train_s" in run.data.metrics

    again = plaster("run", str(digits), "--resume", env=env)
    assert again.returncode != 0 and "no unfinished cycle" in again.stderr

    st = json.loads(plaster("status", str(digits), "--json", env=env).stdout)
    assert st["tracking_uri"] == mlflow_server and st["champion"]["version"] == "1"

    # The scorecard went to MLflow with the version: files, plots and stable metric names.
    names = {a.path for a in client.list_artifacts(done["run_id"], "scorecard")}
    assert {"scorecard/scorecard.json", "scorecard/scorecard.md", "scorecard/accuracy.png",
            "scorecard/latency.png", "scorecard/precisions.png"} <= names
    assert "scorecard.accuracy.golden.candidate" in run.data.metrics

    # `plaster gate` as a CI/CD step over HTTP: the champion against itself is an A/A
    # comparison and passes (exit 0); a version that does not exist is an error (exit 2).
    gate = plaster("gate", str(digits), "--candidate", "1", "--json", env=env)
    assert gate.returncode == 0, gate.stdout + gate.stderr
    out = json.loads(gate.stdout)
    assert out["decision"] == "PROMOTE" and out["candidate_version"] == "1" and out["champion_version"] == "1"
    diffs = {d["slice"]: d for d in out["scorecard"]["comparison"]["accuracy"]}
    assert diffs["golden"]["diff"] == 0 and diffs["golden"]["ci"] == [0.0, 0.0]
    assert client.get_model_version("digits", "1").tags["plaster.gate.decision"] == "PROMOTE"
    gate_run = client.get_run(out["run_id"])
    assert gate_run.data.tags["plaster.gate_for"] == "1" and "scorecard.latency.b1.ratio" in gate_run.data.metrics
    missing = plaster("gate", str(digits), "--candidate", "7", env=env)
    assert missing.returncode == 2 and "no version 7" in missing.stderr


def test_second_concurrent_run_is_refused_clearly(home, digits):
    ws = Workspace.from_env()
    lock = records.PipelineLock(ws, "digits")
    lock.acquire(holder="a cycle in another process")
    try:
        out = plaster("run", str(digits))
    finally:
        lock.release()
    assert out.returncode == 3
    assert "another cycle of 'digits' is running" in out.stderr and "--wait" in out.stderr
