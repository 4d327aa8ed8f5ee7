"""The whole cycle for real: local Ray Train, ONNX Runtime engines, MLflow on SQLite."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator import api

pytestmark = pytest.mark.integration


def test_two_cycles_quarantine_skip_and_a_rejected_bad_candidate(home, digits):
    # Cycle 1: four shards plus a corrupt one and a wrong-schema one.
    shards = api.simulate(digits, shards=4)
    src = shards[0].parent
    (src / "broken.parquet").write_bytes(b"not parquet at all")
    pq.write_table(pa.table({"img": pa.array([[0.0] * 64]), "digit": pa.array([3])}), src / "wrong-schema.parquet")

    first = api.run_cycle(digits)
    assert first["decision"] == "PROMOTED" and first["version"] == "1"
    assert {q["name"] for q in first["quarantined"]} == {"broken.parquet", "wrong-schema.parquet"}
    assert (src / "_quarantine" / "broken.parquet").exists()
    assert set(first["stages"]) == {"ingest", "train", "export", "build", "validate", "promote"}
    assert first["cycle_time_s"] > 0 and first["data_to_live_s"] >= first["cycle_time_s"]
    train = first["stages"]["train"]["output"]
    assert train["num_workers"] == 2 and train["warm_started_from"] is None and len(train["history"]) == 30

    # Cycle 2: drifted shards; the candidate warm-starts from v1 and is judged against it.
    api.simulate(digits, shards=4)
    second = api.run_cycle(digits)
    sc = second["stages"]["validate"]["output"]
    assert sc["champion_version"] == "1" and sc["champion"] is not None
    assert second["stages"]["train"]["output"]["warm_started_from"] == "1"
    assert sc["chosen"]["accuracy"]["new"]["value"] > sc["champion"]["accuracy"]["new"]["value"], \
        "retraining on drifted data must beat the stale champion on it"
    assert second["decision"] == "PROMOTED" and second["version"] == "2"

    # MLflow's own client loads the champion and reads digits correctly.
    import mlflow.pyfunc
    from mlflow import MlflowClient

    from orchestrator.dataset import load_arrays

    client = MlflowClient()
    assert client.get_model_version_by_alias("digits", "champion").version in ("2", 2)
    assert str(client.get_model_version_by_alias("digits", "previous").version) == "1"
    gx, gy = load_arrays(Path(second["stages"]["ingest"]["output"]["golden_file"]))
    out = mlflow.pyfunc.load_model("models:/digits@champion").predict(gx)
    logits = next(iter(out.values()))
    assert (logits.argmax(1) == gy).mean() > 0.85

    # No new data: SKIPPED, with the reason.
    skipped = api.run_cycle(digits)
    assert skipped["decision"] == "SKIPPED" and "min_new_rows" in skipped["reasons"][0]

    # A deliberately worse candidate (shuffled labels) is rejected; the champion stays.
    api.simulate(digits, shards=4, shuffle_labels=True)
    bad = api.run_cycle(digits)
    assert bad["decision"] == "REJECTED", bad["reasons"]
    # Its labels are noise, so it cannot reach the absolute bar on the newest data.
    assert any(r.startswith("accuracy_min.new: FAIL") for r in bad["reasons"]), bad["reasons"]
    assert str(client.get_model_version_by_alias("digits", "champion").version) == "2"

    st = api.status(digits)
    assert st["champion"] == {"name": "digits", "version": "2"} and st["tracking_uri"].startswith("sqlite:///")
    assert [c["decision"] for c in st["cycles"]] == ["PROMOTED", "PROMOTED", "SKIPPED", "REJECTED"]
    c = st["cycles"][1]
    assert set(c["stage_seconds"]) >= {"train", "validate"} and c["data_to_live_s"] > 0
    json.dumps(st)  # --json prints exactly this
