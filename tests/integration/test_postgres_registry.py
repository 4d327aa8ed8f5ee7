"""The production registry: one real cycle against `mlflow server` on PostgreSQL, then what a
user reading that registry sees: MLflow's REST API with plain HTTP, MlflowClient, the
PostgreSQL tables themselves, and `plaster status`.

Needs PLASTER_TEST_POSTGRES (`.ci/run` starts a throwaway PostgreSQL and sets it); skips without."""

import json
from types import SimpleNamespace

import pytest
import requests
from homes import module_home
from postgres import connect, mlflow_on_postgres, postgres_db  # noqa: F401  (fixtures)
from typer.testing import CliRunner

from orchestrator import api
from orchestrator.cli import app
from orchestrator.workspace import Workspace

pytestmark = pytest.mark.integration

MODEL = "digits"


@pytest.fixture(scope="module")
def cycle(tmp_path_factory, mlflow_on_postgres, postgres_db):  # noqa: F811 (pytest fixtures by name)
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    # The registry sets MLflow's process-wide URIs; put them back, so no later test in this
    # process talks to a server that is gone.
    saved = tracking_utils._tracking_uri, registry_utils._registry_uri
    mp, digits = module_home(tmp_path_factory, "postgres-registry")
    mp.setenv("MLFLOW_TRACKING_URI", mlflow_on_postgres)
    api.simulate(digits, shards=4)
    record = api.run_cycle(digits)
    yield SimpleNamespace(digits=digits, record=record, server=mlflow_on_postgres, db=postgres_db)
    tracking_utils._tracking_uri, registry_utils._registry_uri = saved
    mp.undo()


def rest(server: str, endpoint: str, **params) -> dict:
    """GET one of MLflow's REST endpoints as any HTTP client would."""
    r = requests.get(f"{server}/api/2.0/mlflow/{endpoint}", params=params, timeout=30)
    assert r.status_code == 200, f"{endpoint} {params}: {r.status_code} {r.text[:500]}"
    return r.json()


def query(db: str, sql: str, *args) -> list[tuple]:
    con = connect(db)
    try:
        with con.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        con.close()


def test_cycle_promotes_version_1_into_the_postgres_backed_registry(cycle):
    rec = cycle.record
    assert rec["decision"] == "PROMOTED" and rec["version"] == "1", rec["reasons"]
    assert "publish_error" not in rec
    assert not (Workspace.from_env().home / "mlflow.db").exists(), "nothing may fall back to the embedded SQLite store"


def test_registered_model_alias_and_version_over_rest(cycle):
    server, rec = cycle.server, cycle.record
    model = rest(server, "registered-models/get", name=MODEL)["registered_model"]
    assert model["name"] == MODEL
    assert {a["alias"]: a["version"] for a in model.get("aliases", [])} == {"champion": "1"}

    by_alias = rest(server, "registered-models/alias", name=MODEL, alias="champion")["model_version"]
    assert by_alias["version"] == "1" and by_alias["run_id"] == rec["run_id"]

    mv = rest(server, "model-versions/get", name=MODEL, version="1")["model_version"]
    tags = {t["key"]: t["value"] for t in mv.get("tags", [])}
    sc = rec["stages"]["validate"]["output"]
    assert tags["plaster.cycle_id"] == rec["id"]
    assert tags["plaster.decision"] == sc["decision"] == "PROMOTE"
    assert tags["plaster.precision"] == sc["chosen"]["precision"] and tags["plaster.precision"] in {"fp32", "fp16", "int8"}
    assert tags["plaster.backend"] == sc["chosen"]["backend"] == "onnxruntime"
    assert mv["run_id"] == rec["run_id"] and mv["status"] == "READY"


def test_source_run_has_the_scorecard_metrics_and_artifact_over_http(cycle, tmp_path):
    server, rec = cycle.server, cycle.record
    run = rest(server, "runs/get", run_id=rec["run_id"])["run"]
    metrics = {m["key"]: m["value"] for m in run["data"].get("metrics", [])}
    assert metrics["scorecard.decision_code"] == 0  # 0 promote
    assert {"scorecard.accuracy.golden.candidate", "scorecard.accuracy.new.candidate",
            "scorecard.latency.b1.p50_ms", "scorecard.throughput.samples_per_s", "scorecard.size.bytes"} <= set(metrics)
    assert {t["key"]: t["value"] for t in run["data"]["tags"]}["plaster.decision"] == "PROMOTED"

    listed = rest(server, "artifacts/list", run_id=rec["run_id"], path="scorecard")
    assert "scorecard/scorecard.json" in {f["path"] for f in listed["files"]}

    # The artifact proxy (--serve-artifacts): mlflow-artifacts:/<experiment>/<run>/artifacts.
    uri = run["info"]["artifact_uri"]
    assert uri.startswith("mlflow-artifacts:/"), uri
    proxied = requests.get(f"{server}/api/2.0/mlflow-artifacts/artifacts/{uri[len('mlflow-artifacts:/'):].lstrip('/')}"
                           "/scorecard/scorecard.json", timeout=30)
    assert proxied.status_code == 200, proxied.text[:500]
    # The endpoint MLflow's UI downloads artifacts from.
    ui = requests.get(f"{server}/get-artifact", params={"run_id": rec["run_id"], "path": "scorecard/scorecard.json"},
                      timeout=30)
    assert ui.status_code == 200 and ui.content == proxied.content
    card = proxied.json()
    served = rec["stages"]["validate"]["output"]["chosen"]["precision"]
    assert card["decision"] == "PROMOTE" and card["chosen"]["precision"] == served
    assert card["rate_final"]["cycle_time_s"] == pytest.approx(rec["cycle_time_s"])

    # MLflow's own client reads the same.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=server, registry_uri=server)
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    assert client.get_model_version(MODEL, "1").tags["plaster.decision"] == "PROMOTE"
    got = client.get_run(rec["run_id"])
    assert {k: v for k, v in got.data.metrics.items() if k.startswith("scorecard.")} == \
        {k: v for k, v in metrics.items() if k.startswith("scorecard.")}
    local = client.download_artifacts(rec["run_id"], "scorecard/scorecard.json", str(tmp_path))
    assert open(local, "rb").read() == proxied.content


def test_the_registry_lives_in_postgres(cycle):
    server, rec, db = cycle.server, cycle.record, cycle.db
    assert query(db, "SELECT name FROM registered_models") == [(MODEL,)]
    assert query(db, "SELECT alias, version FROM registered_model_aliases WHERE name = %s", MODEL) == [("champion", 1)]
    assert query(db, "SELECT version, run_id FROM model_versions WHERE name = %s", MODEL) == [(1, rec["run_id"])]
    pg_tags = dict(query(db, "SELECT key, value FROM model_version_tags WHERE name = %s AND version = 1", MODEL))
    mv = rest(server, "model-versions/get", name=MODEL, version="1")["model_version"]
    assert pg_tags == {t["key"]: t["value"] for t in mv["tags"]}
    pg_metrics = dict(query(db, "SELECT key, value FROM latest_metrics WHERE run_uuid = %s AND key LIKE 'scorecard.%%'",
                            rec["run_id"]))
    run = rest(server, "runs/get", run_id=rec["run_id"])["run"]
    assert pg_metrics == {m["key"]: m["value"] for m in run["data"]["metrics"] if m["key"].startswith("scorecard.")}
    assert query(db, "SELECT name FROM experiments WHERE experiment_id = "
                     "(SELECT experiment_id FROM runs WHERE run_uuid = %s)", rec["run_id"]) == [(f"plaster/{MODEL}",)]


def test_plaster_status_reports_the_champion_from_the_server(cycle):
    st = api.status(cycle.digits)
    assert st["tracking_uri"] == cycle.server
    assert st["champion"] == {"name": MODEL, "version": "1"} and st["aliases"]["champion"] == "1"
    assert [c["decision"] for c in st["cycles"]] == ["PROMOTED"]

    out = CliRunner().invoke(app, ["status", str(cycle.digits), "--json"])
    assert out.exit_code == 0, out.output
    cli = json.loads(out.stdout)
    assert cli["tracking_uri"] == cycle.server and cli["champion"]["version"] == "1"
