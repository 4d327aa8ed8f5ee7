"""data.source in a bucket: a real S3-compatible server (moto in server mode) on 127.0.0.1 holds
the shards, good and bad; a real cycle learns the good ones, the bad one is moved to the
bucket's `_quarantine/` with its reason beside it (nothing deleted), and the scheduler's data
trigger sees new objects from listings and Parquet footers alone."""

import json
import re

import pyarrow.fs as pafs
import pytest
from polling import decided, wait_for

from orchestrator import api, scheduler
from orchestrator.config import load_pipeline
from orchestrator.workspace import Workspace

pytestmark = pytest.mark.integration


@pytest.fixture
def bucket(s3_server, monkeypatch):
    host, port = s3_server
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    opts = f"endpoint_override=http://{host}:{port}&region=us-east-1"
    fs, _ = pafs.FileSystem.from_uri(f"s3://shards?{opts}&allow_bucket_creation=true")
    fs.create_dir("shards")
    return f"s3://shards/digits?{opts}", fs


def _names(fs, prefix):
    infos = fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
    return sorted(i.path.removeprefix(prefix + "/") for i in infos if i.type == pafs.FileType.File)


def test_the_data_trigger_fires_from_a_bucket_and_bad_objects_are_quarantined_there(home, digits, bucket):
    uri, fs = bucket
    yaml_file = digits / "pipeline.yaml"
    text = re.sub(r"source: .*", f'source: "{uri}"', yaml_file.read_text())
    yaml_file.write_text(text + "\nschedule: {poll_seconds: 1}\n")
    folder = str(digits.resolve())
    pipeline = load_pipeline(digits)
    assert pipeline.bucket is not None and pipeline.bucket.describe() == "s3://shards/digits"
    ws = Workspace.from_env()

    d = scheduler.Daemon([digits]).start()
    try:
        assert d.due(folder) is None, "an empty bucket is not due"
        api.simulate(digits, shards=4)  # a producer uploading four shards; nobody calls run
        with fs.open_output_stream("shards/digits/zz-bad.parquet") as f:
            f.write(b"PAR1 not really parquet")  # a corrupt object beside the good ones
        rec = wait_for(lambda: decided(ws, "data"), 300, "a data-triggered cycle from the bucket")
    finally:
        d.shutdown()
    assert (rec["trigger"], rec["decision"]) == ("data", "PROMOTED"), rec.get("reasons")
    snap = rec["stages"]["ingest"]["output"]
    assert sorted(s["name"] for s in snap["new_shards"]) == [f"shard-0000{i}.parquet" for i in range(4)]
    (bad,) = snap["quarantined"]
    assert bad["name"] == "zz-bad.parquet" and bad["moved_to"] == "s3://shards/digits/_quarantine/zz-bad.parquet"

    # Moved, not deleted: the object and its reason are in the bucket's quarantine.
    names = _names(fs, "shards/digits")
    assert "zz-bad.parquet" not in names
    assert {"_quarantine/zz-bad.parquet", "_quarantine/zz-bad.parquet.reason.json"} <= set(names)
    with fs.open_input_stream("shards/digits/_quarantine/zz-bad.parquet") as f:
        assert f.read() == b"PAR1 not really parquet"
    with fs.open_input_stream("shards/digits/_quarantine/zz-bad.parquet.reason.json") as f:
        reason = json.loads(f.read())
    assert reason["shard"] == "zz-bad.parquet" and reason["reason"] == bad["reason"]

    assert d.due(folder) is None, "learned objects are not new data"
    api.simulate(digits, shards=2)
    assert d.due(folder) == "data", "new objects are seen from the listing and their footers"
    second = api.run_cycle(digits)
    snap2 = second["stages"]["ingest"]["output"]
    assert sorted(s["name"] for s in snap2["new_shards"]) == ["shard-00004.parquet", "shard-00005.parquet"]
    assert snap2["replay_rows"] > 0, "replay reads the learned shards' mirrored copies"


def test_an_unreachable_bucket_is_a_data_error_naming_data_source(home, digits, monkeypatch):
    from orchestrator.errors import DataError

    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yaml_file = digits / "pipeline.yaml"
    uri = "s3://k3y:s3cret@nowhere/x?endpoint_override=http://127.0.0.1:9&region=us-east-1&connect_timeout=1"
    yaml_file.write_text(re.sub(r"source: .*", f'source: "{uri}"', yaml_file.read_text()))
    with pytest.raises(DataError) as e:
        load_pipeline(digits).bucket.shards()
    assert "data.source" in str(e.value) and "s3cret" not in str(e.value)


def test_a_streamed_cycle_reads_its_training_rows_from_the_bucket(home, digits, bucket):
    # Ray Data's tasks open the objects themselves (the mirror is on the driver's disk only).
    uri, fs = bucket
    yaml_file = digits / "pipeline.yaml"
    text = re.sub(r"source: .*", f'source: "{uri}"', yaml_file.read_text())
    yaml_file.write_text(text.replace("ingest:\n", "ingest:\n  stream_above_rows: 100\n", 1))
    api.simulate(digits, shards=4)
    pipeline = load_pipeline(digits)
    rec = api.run_cycle(digits)
    plan = rec["stages"]["ingest"]["output"]["train_manifest"]
    assert plan is not None and rec["decision"] in ("PROMOTED", "REJECTED"), rec.get("reasons")
    from orchestrator import stream

    where = stream.located(plan, pipeline.bucket)
    assert all(p.startswith("s3://shards/digits/shard-") and "endpoint_override=" in p for p in where["new"])
    for p in pipeline.source.glob("*.parquet"):
        p.unlink()  # the mirror gone: the read below can only go to the bucket
    got = sum(len(b["y"]) for b in stream.dataset(where, pipeline.inputs, pipeline.target)
              .iter_batches(batch_size=None, batch_format="numpy"))
    assert got == plan["train_rows"]
