"""Lake tables in a bucket: a real S3-compatible server (moto in server mode) on 127.0.0.1 holds a
Delta table written by deltalake and an Iceberg table written by pyiceberg; orchestrator.lake
reads their changes and files over S3 with the options the ingest stage passes, or the environment."""

import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from deltalake import DeltaTable, write_deltalake

from orchestrator.errors import DataError
from orchestrator.lake import detect, open_table

pytestmark = pytest.mark.integration

SECRET = "moto-accepts-any-secret"  # long enough to be masked if it ever reached a message


def rows(day, xs):
    return pa.table({"day": pa.array([day] * len(xs), pa.string()), "x": pa.array(xs, pa.int64())})


@pytest.fixture
def s3(s3_server):
    """(storage options as the ingest stage passes them, endpoint URL) with a bucket `lake`."""
    host, port = s3_server
    endpoint = f"http://{host}:{port}"
    fs = pafs.S3FileSystem(access_key="test", secret_key=SECRET, endpoint_override=f"{host}:{port}", scheme="http",
                           region="us-east-1", allow_bucket_creation=True)
    fs.create_dir("lake")
    options = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": SECRET,
               "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}
    return options, endpoint


def test_delta_changes_compaction_and_vacuum_over_s3(s3, tmp_path, monkeypatch):
    options, _ = s3
    uri = "s3://lake/events"
    writer = {**options, "AWS_S3_ALLOW_UNSAFE_RENAME": "true"}  # one writer, no lock service
    write_deltalake(uri, rows("d0", [1, 2, 3]), partition_by=["day"], storage_options=writer)
    for batch in (rows("d1", [-1, 4, 5, 6]), rows("d2", [7, 8]), rows("d1", [9])):
        write_deltalake(uri, batch, mode="append", partition_by=["day"], storage_options=writer)
    assert detect(uri, options) == "delta" and detect("s3://lake/nothing-here", options) == "parquet"

    t = open_table("delta", uri, home=tmp_path, storage_options=options)
    ch = t.changes(since=1)
    assert (ch.version, ch.table) == (3, uri)
    assert sorted((f.added_in, f.rows, f.partition["day"]) for f in ch.added) == [(2, 2, "d2"), (3, 1, "d1")]
    assert all(f.uri.startswith("s3://lake/events/day=") for f in ch.added + ch.old)
    d2 = next(f for f in ch.added if f.partition["day"] == "d2")
    assert t.read(d2).to_pydict() == {"day": ["d2", "d2"], "x": [7, 8]}

    before = t.files_at(3)
    dt = DeltaTable(uri, storage_options=writer)
    dt.optimize.compact()
    ch = t.changes(since=3)
    assert ch.added == () and ch.rewritten_files == 1 and sum(f.rows for f in ch.old) == 10
    DeltaTable(uri, storage_options=writer).vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    with pytest.raises(DataError, match="deletedFileRetentionDuration") as e:
        t.files_at(3)
    old_d1 = next(f for f in before if f.partition["day"] == "d1")
    with pytest.raises(DataError, match="was vacuumed"):
        t.read(old_d1)
    assert SECRET not in str(e.value) and "s3://lake/events" in str(e.value)

    # No options: what deltalake and pyarrow find in the environment.
    for k, v in options.items():
        monkeypatch.setenv(k, v)
    from_env = open_table("delta", uri, home=tmp_path)  # vacuum committed VACUUM START/END too
    assert from_env.current() == t.current() >= 4 and sum(len(from_env.read(f)) for f in from_env.changes(since=None).added) == 10


def test_iceberg_changes_over_s3(s3, tmp_path):
    options, endpoint = s3
    from pyiceberg.catalog import load_catalog

    catalog = {"type": "sql", "uri": f"sqlite:///{tmp_path}/catalog.db", "warehouse": "s3://lake/warehouse",
               "s3.endpoint": endpoint, "s3.access-key-id": "test", "s3.secret-access-key": SECRET,
               "s3.region": "us-east-1"}
    cat = load_catalog("plaster", **catalog)
    cat.create_namespace("ns")
    table = cat.create_table("ns.events", schema=rows("d", [1]).schema)
    with table.update_spec() as spec:
        spec.add_identity("day")
    for batch in (rows("d0", [1, 2, 3]), rows("d1", [4, 5]), rows("d0", [6])):
        table.append(batch)
    snaps = [s.snapshot_id for s in table.snapshots()]

    t = open_table("iceberg", "ns.events", home=tmp_path, catalog=catalog)
    ch = t.changes(since=snaps[0])
    assert sorted((f.added_in, f.rows, f.partition["day"]) for f in ch.added) == sorted([(snaps[1], 2, "d1"),
                                                                                         (snaps[2], 1, "d0")])
    assert all(f.uri.startswith("s3://lake/warehouse/") for f in ch.added)
    d1 = next(f for f in ch.added if f.partition["day"] == "d1")
    assert t.read(d1).column("x").to_pylist() == [4, 5]
    table.delete("day == 'd1'")
    assert t.changes(since=snaps[-1]).deleted_rows == 2


def test_a_streamed_plans_gone_objects_are_found_in_the_bucket(s3, monkeypatch):
    from orchestrator.stream import missing

    options, endpoint = s3
    for k, v in options.items():  # a table's files: the credentials of the environment, as every table read
        monkeypatch.setenv(k, v)
    write_deltalake("s3://lake/plan", rows("d0", [1]), storage_options={**options, "AWS_S3_ALLOW_UNSAFE_RENAME": "true"})
    there = DeltaTable("s3://lake/plan", storage_options=options).file_uris()[0]
    query = f"?endpoint_override={endpoint.split('://')[1]}&scheme=http"  # a bucket source's object URI
    plan = {"new": [there, "s3://lake/plan/vacuumed.parquet"], "replay": [there + query, "s3://lake/gone.parquet" + query]}
    assert missing(plan) == ["s3://lake/plan/vacuumed.parquet", "s3://lake/gone.parquet" + query]
