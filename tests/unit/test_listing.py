"""A data source folder read as a Parquet dataset (orchestrator/listing.py), and ingest on it:
every kind of entry a writer, a user or a failed job leaves in a source gets a verdict with
its reason, none stops a cycle, and no good row is lost."""

import json
import os
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fakes import context

from orchestrator import api, folder_source, listing
from orchestrator.dataset import read_shard, with_partitions
from orchestrator.door import InputSpec, TargetSpec
from orchestrator.stages import ingest

ROOT = os.geteuid() == 0
OLD = time.time() - 3600  # written an hour ago: settled


def _table(n=3, label=1):
    return pa.table({"pixels": pa.array([[0.5] * 64] * n, type=pa.list_(pa.float32())),
                     "label": pa.array([label] * n, type=pa.int64())})


def _write(path, n=3, label=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(_table(n, label), path)
    os.utime(path, (OLD, OLD))
    return path


def _source(src):
    """A source holding every kind of entry: (verdict by name, what it is)."""
    # Spark, one folder per write: parts, a success marker, checksums, an uncommitted attempt.
    _write(src / "events.parquet" / "part-00000-a1.snappy.parquet")
    _write(src / "events.parquet" / "part-00001-a1.snappy.parquet", n=4)
    (src / "events.parquet" / "_SUCCESS").touch()
    (src / "events.parquet" / ".part-00000-a1.snappy.parquet.crc").write_bytes(b"crc")
    _write(src / "events.parquet" / "_temporary" / "0" / "_temporary" / "attempt_1" / "part-00002.parquet")
    (src / "events.parquet" / "_committed_123").touch()
    (src / "events.parquet" / "_started_123").touch()
    # Hive partitions; the same file name in two partitions.
    _write(src / "day=2026-12-01" / "region=eu" / "part-00000.parquet", n=5)
    _write(src / "day=2026-12-02" / "region=north%20east" / "part-00000.parquet", n=6)
    # An extension-less part file (Hadoop style): Parquet is data, anything else is not.
    _write(src / "part-00003", n=2)
    (src / "part-00004").write_text("a,b\n1,2\n")
    os.utime(src / "part-00004", (OLD, OLD))
    # Not data, left alone.
    _write(src / ".hidden.parquet")
    (src / "notes.txt").write_text("hello")
    (src / "elsewhere").mkdir()
    (src / "linked-folder").symlink_to(src / "elsewhere")
    # Not readable data.
    (src / "dangling.parquet").symlink_to(src / "gone.parquet")
    (src / "empty.parquet").touch()
    os.utime(src / "empty.parquet", (OLD, OLD))
    os.mkfifo(src / "pipe.parquet")
    (src / "nodata.parquet").mkdir()
    (src / "nodata.parquet" / "_SUCCESS").touch()
    # Still being written (modified now), and what earlier cycles set aside.
    pq.write_table(_table(), src / "fresh.parquet")
    _write(src / "_quarantine" / "old.parquet")


def test_scan_gives_every_entry_a_verdict_with_its_reason(tmp_path):
    src = tmp_path / "src"
    _source(src)
    s = listing.scan(src, settle_s=60)

    assert [f.name for f in s.files] == [
        "day=2026-12-01/region=eu/part-00000.parquet", "day=2026-12-02/region=north%20east/part-00000.parquet",
        "events.parquet/part-00000-a1.snappy.parquet", "events.parquet/part-00001-a1.snappy.parquet", "part-00003"]
    assert s.partitions["day=2026-12-02/region=north%20east/part-00000.parquet"] == {"day": "2026-12-02",
                                                                                     "region": "north east"}
    assert s.partitions["events.parquet/part-00000-a1.snappy.parquet"] == {}
    skipped = {e.name: e.reason for e in s.skipped}
    assert set(skipped) == {"events.parquet/.part-00000-a1.snappy.parquet.crc", "events.parquet/_SUCCESS",
                            "events.parquet/_committed_123", "events.parquet/_started_123",
                            "events.parquet/_temporary/", ".hidden.parquet", "notes.txt", "part-00004",
                            "linked-folder/"}
    assert "success marker" in skipped["events.parquet/_SUCCESS"]
    assert "_temporary" in skipped["events.parquet/_temporary/"]
    assert "checksum" in skipped["events.parquet/.part-00000-a1.snappy.parquet.crc"]
    assert "hidden" in skipped[".hidden.parquet"] and "not Parquet" in skipped["part-00004"]
    assert "not followed" in skipped["linked-folder/"]
    bad = {e.name: e.reason for e in s.bad}
    assert set(bad) == {"dangling.parquet", "empty.parquet", "pipe.parquet", "nodata.parquet"}
    assert "dangling symlink" in bad["dangling.parquet"] and "gone.parquet" in bad["dangling.parquet"]
    assert "zero bytes" in bad["empty.parquet"] and "not a readable Parquet" in bad["empty.parquet"]
    assert "not a regular file" in bad["pipe.parquet"]
    assert "holds no data files" in bad["nodata.parquet"]
    assert [(e.name, "ingest.settle_s=60" in e.reason) for e in s.waiting] == [("fresh.parquet", True)]
    # Nothing under _quarantine/ is listed at all, and nothing was moved.
    names = [e.name for e in (*s.files, *s.skipped, *s.bad, *s.waiting)]
    assert not any(n.startswith("_quarantine") for n in names)
    assert (src / "events.parquet" / "_SUCCESS").exists() and (src / "dangling.parquet").is_symlink()
    # Without settle_s a file written whole is data at once.
    assert "fresh.parquet" in [f.name for f in listing.scan(src).files]


@pytest.mark.skipif(ROOT, reason="root reads a mode-000 file; the pipe in the scan test is this case's real "
                                  "unreadable-as-root stand-in")
def test_a_file_without_read_permission_is_bad(tmp_path):
    locked = _write(tmp_path / "locked.parquet")
    locked.chmod(0)
    try:
        (entry,) = listing.scan(tmp_path).bad
    finally:
        locked.chmod(0o644)
    assert entry.name == "locked.parquet" and "unreadable" in entry.reason and "permission" in entry.reason.lower()


def test_a_file_growing_between_the_two_looks_is_waiting(tmp_path):
    growing = _write(tmp_path / "growing.parquet")
    _write(tmp_path / "done.parquet")

    def append():
        time.sleep(0.1)
        with open(growing, "ab") as f:
            f.write(b"more")

    t = threading.Thread(target=append)
    t.start()
    s = listing.scan(tmp_path, recheck_s=0.5)
    t.join()
    assert [f.name for f in s.files] == ["done.parquet"]
    assert [e.name for e in s.waiting] == ["growing.parquet"] and "changed while it was listed" in s.waiting[0].reason


def test_the_partition_filter_prunes_by_typed_values_as_pyarrow_filters_do(tmp_path):
    for day in ("2026-11-30", "2026-12-01", "2026-12-02"):
        for h in ("5", "17"):
            _write(tmp_path / f"day={day}" / f"h={h}" / "part-0.parquet")
    (tmp_path / "day=2026-11-30" / "h=5" / "broken.parquet").touch()  # pruned: not reported either
    _write(tmp_path / "flat.parquet")  # no day: a null, which no comparison keeps
    s = listing.scan(tmp_path, [[("day", ">=", "2026-12-01"), ("h", "<", 10)]])
    assert [f.name for f in s.files] == ["day=2026-12-01/h=5/part-0.parquet", "day=2026-12-02/h=5/part-0.parquet"]
    assert s.bad == [] and s.pruned == 6
    either = [[("day", "==", "2026-11-30"), ("h", "in", (17,))], [("day", "=", "2026-12-02"), ("h", "not in", (17,))]]
    assert [f.name for f in listing.scan(tmp_path, either).files] == ["day=2026-11-30/h=17/part-0.parquet",
                                                                      "day=2026-12-02/h=5/part-0.parquet"]


def test_partition_values_become_typed_columns_a_pipeline_can_read(tmp_path):
    path = tmp_path / "h=07" / "w=0.5" / "city=Paris" / "part-0.parquet"
    pq.write_table(pa.table({"a": pa.array([1.0, 2.0]), "label": pa.array([0, 1])}), path.parent.mkdir(parents=True)
                   or path)
    (f,) = listing.scan(tmp_path).files
    table = with_partitions(pq.read_table(path), f.partitions)
    assert table.schema.field("h").type == pa.int64() and table.column("h").to_pylist() == [7, 7]
    assert table.schema.field("w").type == pa.float64() and table.column("city").to_pylist() == ["Paris"] * 2
    spec = InputSpec("x", (3,), "float32", columns=("a", "h", "w"))
    x, y = read_shard(path, (spec,), TargetSpec("classification", ("label",), 2, 2), f.partitions)
    assert x["x"].tolist() == [[1.0, 7.0, 0.5], [2.0, 7.0, 0.5]] and y.tolist() == [0, 1]
    assert [listing.typed(v) for v in ("-3", "1e3", "2026-12-01", "nan", "99999999999999999999", None)] == \
        [-3, 1000.0, "2026-12-01", "nan", "99999999999999999999", None]


@pytest.fixture
def stream(home, digits):
    good = api.simulate(digits, shards=2)
    for p in good:
        os.utime(p, (OLD, OLD))
    return digits, good


def _with_settle(digits, settle_s):
    text = (digits / "pipeline.yaml").read_text()
    (digits / "pipeline.yaml").write_text(text.replace("ingest:\n", f"ingest:\n  settle_s: {settle_s}\n", 1))


def test_ingest_learns_the_good_shards_and_names_every_other_entry(stream, home):
    digits, good = stream
    src = good[0].parent
    _source(src)
    # Two bad part-00000.parquet in different partitions: quarantined side by side, not over each other.
    for region, n in (("eu", 1), ("us", 2)):
        _write(src / "day=2026-12-03" / f"region={region}" / "part-00000.parquet", n=n, label=12)
    _with_settle(digits, 60)
    good_rows = 500 + 3 + 4 + 5 + 6 + 2

    snap = ingest.run(context(home, digits))

    assert snap.skip_reason is None
    assert snap.train_rows + snap.holdout_new_rows - snap.replay_rows == good_rows
    assert {s.name for s in snap.new_shards} == {p.name for p in good} | {
        "day=2026-12-01/region=eu/part-00000.parquet", "day=2026-12-02/region=north%20east/part-00000.parquet",
        "events.parquet/part-00000-a1.snappy.parquet", "events.parquet/part-00001-a1.snappy.parquet", "part-00003"}
    moved = {q.name: q for q in snap.quarantined}
    assert set(moved) == {"dangling.parquet", "empty.parquet", "pipe.parquet", "nodata.parquet",
                          "day=2026-12-03/region=eu/part-00000.parquet", "day=2026-12-03/region=us/part-00000.parquet"}
    q = src / "_quarantine"
    assert (q / "dangling.parquet").is_symlink() and not (src / "dangling.parquet").exists()
    assert (q / "nodata.parquet" / "_SUCCESS").exists() and not (src / "nodata.parquet").exists()
    for region in ("eu", "us"):
        kept = q / "day=2026-12-03" / f"region={region}" / "part-00000.parquet"
        assert kept.is_file() and "outside 0..9" in json.loads(kept.with_name(kept.name + ".reason.json")
                                                               .read_text())["reason"]
    skipped = dict(snap.skipped)
    assert "ingest.settle_s=60" in skipped["fresh.parquet"] and (src / "fresh.parquet").exists()
    assert "success marker" in skipped["events.parquet/_SUCCESS"] and (src / "events.parquet" / "_SUCCESS").exists()
    assert "events.parquet/_temporary/" in skipped and "notes.txt" in skipped


def test_a_shard_that_vanishes_mid_cycle_is_named_and_the_cycle_goes_on(stream, home, monkeypatch):
    digits, good = stream
    extra = _write(good[0].parent / "leaving.parquet", n=3)
    seen = listing.scan(good[0].parent)
    extra.unlink()  # gone after the listing, before it is hashed and read
    monkeypatch.setattr(folder_source, "scan", lambda pipeline: seen)
    snap = ingest.run(context(home, digits))
    assert [s.name for s in snap.new_shards] == [p.name for p in good]
    assert dict(snap.skipped)["leaving.parquet"] == folder_source.VANISHED and snap.quarantined == ()


def test_pending_counts_partitioned_rows_and_skips_debris_and_files_still_written(stream, home):
    digits, good = stream
    src = good[0].parent
    _source(src)
    rows, oldest = folder_source.pending(src, set(), settle_s=60)
    assert rows == 500 + 3 + 4 + 5 + 6 + 2 and oldest is not None
    assert folder_source.pending(src, set(), [[("day", "=", "2026-12-01")]]) == (5, pytest.approx(OLD, abs=1))


def test_a_bucket_is_listed_recursively_with_the_same_rules_and_quarantined_keeping_keys(tmp_path):
    """The bucket source's own code over pyarrow's local filesystem (the S3 server run is
    tests/integration/test_source_bucket.py): keys at any depth, debris left out and named,
    the mirror keeping each key as its path, quarantine keeping it under _quarantine/."""
    from orchestrator.sources import Bucket

    store = tmp_path / "store"
    a = _write(store / "events.parquet" / "part-00000-a.snappy.parquet")
    _write(store / "day=2026-12-01" / "part-00000.parquet", n=4)
    _write(store / "day=2026-12-02" / "part-00000.parquet", n=5)
    (store / "events.parquet" / "_SUCCESS").touch()
    _write(store / "events.parquet" / "_temporary" / "0" / "part-00009.parquet")
    _write(store / "_quarantine" / "old.parquet")
    bucket = Bucket(f"file://{store}")
    mirror = tmp_path / "mirror"

    skipped = bucket.mirror(mirror)

    assert dict(skipped).keys() == {"events.parquet/_SUCCESS", "events.parquet/_temporary/0/part-00009.parquet"}
    assert "_temporary" in dict(skipped)["events.parquet/_temporary/0/part-00009.parquet"]
    s = listing.scan(mirror)
    assert [f.name for f in s.files] == ["day=2026-12-01/part-00000.parquet", "day=2026-12-02/part-00000.parquet",
                                         "events.parquet/part-00000-a.snappy.parquet"]
    assert s.skipped == [] and (mirror / "events.parquet" / "part-00000-a.snappy.parquet").read_bytes() == a.read_bytes()
    assert bucket.pending(mirror, set(), lambda p: None, [[("day", ">", "2026-12-01")]])[0] == 5

    q = folder_source.quarantine(mirror / "day=2026-12-02" / "part-00000.parquet", "ab" * 32, "a test reason", bucket, mirror)
    assert q.name == "day=2026-12-02/part-00000.parquet"
    assert q.moved_to == f"file://{store}/_quarantine/day=2026-12-02/part-00000.parquet"
    kept = store / "_quarantine" / "day=2026-12-02" / "part-00000.parquet"
    assert kept.is_file() and not (store / "day=2026-12-02" / "part-00000.parquet").exists()
    assert json.loads(kept.with_name(kept.name + ".reason.json").read_text())["shard"] == q.name
    assert (mirror / "_quarantine" / "day=2026-12-02" / "part-00000.parquet").is_file()
    # An object gone from the bucket leaves the mirror too; the quarantine stays.
    (store / "day=2026-12-01" / "part-00000.parquet").unlink()
    bucket.mirror(mirror)
    assert [f.name for f in listing.scan(mirror).files] == ["events.parquet/part-00000-a.snappy.parquet"]
    assert not (mirror / "day=2026-12-01").exists(), "a prefix whose objects are gone leaves no empty folder behind"


def test_a_streamed_read_adds_the_partition_columns_too(tmp_path):
    """Training's Ray Data tasks read the files themselves: the manifest carries each file's
    partition values, also when a bucket's mirror paths become object URIs."""
    from orchestrator import stream
    from orchestrator.sources import Bucket

    path = tmp_path / "h=3" / "part-0.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"a": pa.array([1.0, 2.0]), "label": pa.array([0, 1])}), path)
    (f,) = listing.scan(tmp_path).files
    plan = stream.manifest([], [str(path)], 0.0, 0.0, 2, {str(path): f.partitions, "/elsewhere": {"h": "9"}})
    assert plan["partitions"] == {str(path): {"h": "3"}}, "only the plan's files, only those with partitions"
    spec = InputSpec("x", (2,), "float32", columns=("a", "h"))
    (rows,) = stream._read_files({"path": [str(path)]}, (spec,), TargetSpec("classification", ("label",), 2, 2),
                                 ["a", "h", "label"], frozenset(), 0.0, plan["partitions"])
    assert rows["in.x"].tolist() == [[1.0, 3.0], [2.0, 3.0]]
    where = stream.located(plan, Bucket(f"file://{tmp_path / 'store'}"), tmp_path)
    assert where["replay"] == [f"file://{tmp_path / 'store'}/h=3/part-0.parquet"]
    assert where["partitions"] == {where["replay"][0]: {"h": "3"}}


def test_data_partitions_filter_in_pipeline_yaml_prunes_what_ingest_reads(stream, home):
    digits, good = stream
    src = good[0].parent
    for p, day in zip(good, ("2026-12-01", "2026-12-02")):
        to = src / f"day={day}" / "part-00000.parquet"
        to.parent.mkdir()
        p.rename(to)
    (src / "day=2026-12-01" / "empty.parquet").touch()  # pruned: neither read nor reported
    text = (digits / "pipeline.yaml").read_text()
    # YAML reads an unquoted 2026-12-02 as a date: it is compared as the folder writes it.
    text = text.replace("  label: {column: label, num_classes: 10}",
                        "  label: {column: label, num_classes: 10}\n  partitions: {filter: [[day, '>=', 2026-12-02]]}")
    (digits / "pipeline.yaml").write_text(text.replace("min_new_rows: 200", "min_new_rows: 100"))
    snap = ingest.run(context(home, digits))
    assert [s.name for s in snap.new_shards] == ["day=2026-12-02/part-00000.parquet"]
    assert snap.quarantined == () and snap.skipped == () and snap.train_rows + snap.holdout_new_rows == 250
