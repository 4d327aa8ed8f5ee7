"""Secrets never written: a tracking URI with a password and a secret in the environment, one real
cycle through the CLI against `mlflow server`, then every byte plaster and the server wrote is
searched for them. The masked URI must show up where the URI is reported, so this proves masking,
not merely a cycle that never mentioned the URI."""

import base64
import json
import os
import subprocess
import sys

import pytest

from orchestrator import api
from orchestrator import record as records
from orchestrator.submit import OUTCOME_PREFIX
from orchestrator.workspace import Workspace

pytestmark = pytest.mark.integration

PASSWORD = "Planted-S3cret-123"
AWS_KEY = "Planted-Aws-Key-456"


def plaster(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def planted_in(data: bytes) -> list[str]:
    # The password also travels as HTTP basic auth: its base64 form must be nowhere either.
    basic = base64.b64encode(f"plaster:{PASSWORD}".encode()).decode()
    return [s for s in (PASSWORD, AWS_KEY, basic) if data.find(s.encode()) >= 0]


def test_no_secret_reaches_records_mlflow_logs_or_output(home, digits, mlflow_server, tmp_path, monkeypatch):
    secret_uri = mlflow_server.replace("http://", f"http://plaster:{PASSWORD}@")
    shown_uri = mlflow_server.replace("http://", "http://plaster:***@")
    env = {"MLFLOW_TRACKING_URI": secret_uri, "AWS_SECRET_ACCESS_KEY": AWS_KEY}
    monkeypatch.delenv("PLASTER_STORAGE_URI", raising=False)  # PLASTER_HOME is the store: no S3 needed
    api.simulate(digits, shards=4)

    outputs = {}
    ran = outputs["run"] = plaster("run", str(digits), "--json", env=env)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    outputs["status"] = plaster("status", str(digits), "--json", env=env)
    gate = outputs["gate"] = plaster("gate", str(digits), "--candidate", "1", env=env)
    assert gate.returncode == 0, gate.stdout + gate.stderr
    missing = outputs["missing"] = plaster("gate", str(digits), "--candidate", "7", env=env)

    # Masked where the URI is reported: the record, status, the gate's message, an error naming the server.
    ws = Workspace.from_env()
    rec = records.load_all(ws, "digits")[-1]
    assert rec["decision"] == "PROMOTED" and rec["tracking_uri"] == shown_uri
    assert json.loads(outputs["status"].stdout)["tracking_uri"] == shown_uri
    printed = [ln for ln in ran.stdout.splitlines() if ln.startswith(OUTCOME_PREFIX)][-1]
    assert json.loads(printed[len(OUTCOME_PREFIX):])["tracking_uri"] == shown_uri  # `run --json`
    assert f"({shown_uri})" in gate.stdout.replace("\n", "")
    assert missing.returncode == 2 and "no version 7" in missing.stderr and shown_uri in missing.stderr

    for name, out in outputs.items():
        assert not planted_in((out.stdout + out.stderr).encode()), f"`plaster {name}` printed a secret"

    # Every file under the test's folder: PLASTER_HOME (records, ledger, engines, bundles, Ray Train's
    # storage, logs/ray.log), the server's SQLite store, its artifacts and its log, the pipeline folder.
    scanned, leaks = 0, []
    for path in sorted(tmp_path.rglob("*")):
        if path.is_file() and not path.is_symlink():
            scanned += 1
            if found := planted_in(path.read_bytes()):
                leaks.append(f"{path.relative_to(tmp_path)}: {found}")
    assert not leaks, leaks
    assert (tmp_path / "server.db").is_file() and (home / "cycles" / "digits" / rec["id"] / "record.json").is_file()
    assert any((tmp_path / "server-artifacts").rglob("record.json")) and scanned > 50

    # What MLflow hands back: every run of the experiment with its params and tags, the model and
    # its versions with their tags, read through MLflow's own client.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    exp = client.get_experiment_by_name("plaster/digits")
    runs = client.search_runs([exp.experiment_id])
    assert {r.info.run_id for r in runs} >= {rec["run_id"]} and len(runs) >= 2  # the cycle's and the gate's
    seen = [json.dumps(exp.tags)]
    for r in runs:
        seen += [r.info.run_name, r.info.artifact_uri, json.dumps(r.data.params), json.dumps(r.data.tags)]
    model = client.get_registered_model("digits")
    seen += [model.description or "", json.dumps(model.tags), json.dumps(model.aliases)]
    for mv in client.search_model_versions("name='digits'"):
        seen += [mv.source, mv.description or "", json.dumps(mv.tags)]
    assert not planted_in("\n".join(seen).encode())
    params = client.get_run(rec["run_id"]).data.params
    assert params["pipeline_folder"] == str(digits) and "cfg.train" in params
