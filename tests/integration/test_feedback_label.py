"""What the model served, labelled later, is what the next cycle learns: a real cycle, the
champion's ONNX answering requests that the feedback Writer keeps, `plaster label` joining
labels by request id, and a second real cycle whose new data is exactly the labelled rows."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from orchestrator import api, feedback
from orchestrator.cli import app
from orchestrator.config import load_pipeline
from orchestrator.dataset import read_shard
from orchestrator.workspace import Workspace

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_labelled_feedback_is_the_next_cycles_new_data(tmp_path, monkeypatch):
    monkeypatch.setenv("PLASTER_HOME", str(tmp_path / "plaster-home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("PLASTER_CRASH_AFTER", raising=False)
    folder = tmp_path / "pipelines" / "digits"
    shutil.copytree(ROOT / "pipelines" / "digits", folder)
    api.simulate(folder, shards=4)
    first = api.run_cycle(folder)
    assert first["decision"] == "PROMOTED", first["reasons"]

    # Later traffic: the stream's 6th shard (drifted), answered by the champion's ONNX.
    ws, pipeline = Workspace.from_env(), load_pipeline(folder, check=False)
    later = pipeline.module("simulate.py").simulate(tmp_path / "later", None, 6)[-1]
    x, y = read_shard(later, pipeline.inputs, pipeline.target)
    session = ort.InferenceSession(first["stages"]["export"]["output"]["path"], providers=["CPUExecutionProvider"])
    writer = feedback.Writer(feedback.location(pipeline, ws), [dataclasses.asdict(i) for i in pipeline.inputs],
                             "classification", flush_rows=20, flush_s=60.0)
    ids, examples, start, r = [], [], 0, 0
    while start < len(y):  # requests of 1, 2 and 5 examples
        n = min((1, 2, 5)[r % 3], len(y) - start)
        batch = {"input": x["input"][start:start + n]}
        answers = session.run(None, {session.get_inputs()[0].name: batch["input"]})[0].argmax(1).tolist()
        writer.add(f"req-{r}", batch, answers, first["version"], at=1.0e9 + r)
        ids += [f"req-{r}"] * n
        examples += list(range(n))
        start, r = start + n, r + 1
    writer.close()
    assert sum(pq.read_metadata(p).num_rows for p in feedback.location(pipeline, ws).glob("*.parquet")) == len(y)

    # Every served row labelled, plus 3 labels whose requests the server has not kept (yet).
    labels = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"request_id": ids + ["gone-1", "gone-2", "gone-3"], "example": examples + [0, 0, 0],
                             "label": y.tolist() + [1, 2, 3]}), labels)
    res = CliRunner().invoke(app, ["label", str(folder), str(labels), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert (out["joined"], out["pending"], out["already_labelled"]) == (len(y), 3, 0)
    [shard] = map(Path, out["shards"])
    got_x, got_y = read_shard(shard, pipeline.inputs, pipeline.target)
    np.testing.assert_array_equal(got_x["input"], x["input"])
    np.testing.assert_array_equal(got_y, y)

    second = api.run_cycle(folder)
    new = second["stages"]["ingest"]["output"]["new_shards"]
    assert [(s["name"], s["rows"]) for s in new] == [(shard.name, len(y))], second["stages"]["ingest"]
    assert second["decision"] in ("PROMOTED", "REJECTED", "HELD"), second.get("error")

    again = api.label(folder, labels)  # labelling the same file again writes nothing new
    assert (again["joined"], again["already_labelled"], again["shards"]) == (0, len(y), [])


def test_labelled_rows_land_in_a_bucket_source_as_one_object(home, digits, s3_server, monkeypatch, tmp_path):
    import re

    import pyarrow.fs as pafs

    host, port = s3_server
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    opts = f"endpoint_override=http://{host}:{port}&region=us-east-1"
    fs, _ = pafs.FileSystem.from_uri(f"s3://shards?{opts}&allow_bucket_creation=true")
    fs.create_dir("shards")
    yaml_file = digits / "pipeline.yaml"
    # its own prefix: the moto server is shared with test_source_bucket, which owns shards/digits
    yaml_file.write_text(re.sub(r"source: .*", f'source: "s3://shards/labelled?{opts}"', yaml_file.read_text()))
    ws, pipeline = Workspace.from_env(), load_pipeline(digits, check=False)
    x, y = read_shard(pipeline.module("simulate.py").simulate(tmp_path / "later", None, 1)[0], pipeline.inputs,
                      pipeline.target)
    writer = feedback.Writer(feedback.location(pipeline, ws), [dataclasses.asdict(i) for i in pipeline.inputs],
                             "classification", flush_rows=10, flush_s=60.0)
    writer.add("r", {"input": x["input"][:3]}, [0, 0, 0], "1", at=1.0)
    writer.close()

    out = api.label(digits, pa.table({"request_id": ["r"] * 3, "example": [0, 1, 2], "label": y[:3].tolist()}))
    [uri] = out["shards"]
    assert uri.startswith("s3://shards/labelled/feedback-") and "?" not in uri  # no endpoint options printed
    with fs.open_input_file("shards/labelled/" + uri.rsplit("/", 1)[1]) as f:
        got = pq.read_table(f)
    assert got.column_names == ["pixels", "label"] and got["label"].to_pylist() == y[:3].tolist()
    assert not any((feedback.location(pipeline, ws) / "_labels" / "staged").iterdir())  # staging cleaned up
