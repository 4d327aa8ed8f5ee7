"""orchestrator.lake on real Delta and Iceberg tables written in tmp_path by deltalake and pyiceberg:
which files hold new rows after a version, what compactions, deletes, overwrites and updates do,
and the refusals (cleaned logs, vacuumed files, expired snapshots, deletion vectors)."""

import json
import os
import struct
import time

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from orchestrator.errors import DataError
from orchestrator.lake import detect, open_table


def rows(day, xs):
    return pa.table({"day": pa.array([day] * len(xs), pa.string()), "x": pa.array(xs, pa.int64())})


@pytest.fixture
def delta(tmp_path):
    """v0 create + v1..v3 appends, partitioned by day; returns (path, {version: rows written})."""
    path = tmp_path / "events"
    write_deltalake(path, rows("d0", [1, 2, 3]), partition_by=["day"])
    for batch in (rows("d1", [-1, 4, 5, 6]), rows("d2", [-2, -3, 7, 8, 9]), rows("d1", [10, 11])):
        write_deltalake(path, batch, mode="append", partition_by=["day"])
    return path


def total(files):
    return sum(f.rows for f in files)


def test_delta_changes_since_a_version_are_the_later_appends(delta, tmp_path):
    t = open_table("delta", str(delta), home=tmp_path)
    assert t.current() == 3 and t.format == "delta"
    ch = t.changes(since=1)
    assert (ch.format, ch.version, ch.since, ch.table) == ("delta", 3, 1, str(delta))
    assert sorted((f.added_in, f.rows, f.partition["day"]) for f in ch.added) == [(2, 5, "d2"), (3, 2, "d1")]
    # Old files: added at or before `since` (which version exactly is not read: that is the whole log).
    assert sorted((f.added_in, f.rows, f.partition["day"]) for f in ch.old) == [(1, 3, "d0"), (1, 4, "d1")]
    assert (ch.deleted_rows, ch.rewritten_files, ch.notes) == (0, 0, ())
    assert all(f.uri.startswith(str(delta)) and f.size > 0 for f in ch.added)

    everything = t.changes(since=None)
    assert total(everything.added) == 14 and everything.old == () and sorted(f.added_in for f in everything.added) == [0, 1, 2, 3]
    assert t.changes(since=3).added == ()
    assert sorted(f.rows for f in t.files_at(1)) == [3, 4]

    d2 = next(f for f in ch.added if f.partition["day"] == "d2")
    got = t.read(d2)
    assert got.column_names == ["day", "x"] and got.column("day").to_pylist() == ["d2"] * 5
    assert sorted(got.column("x").to_pylist()) == [-3, -2, 7, 8, 9]
    assert t.read(d2, columns=["x"]).column_names == ["x"]
    assert t.schema().names == ["day", "x"] and t.schema().field("day").type == pa.string()

    assert detect(str(delta)) == "delta" and detect(str(tmp_path)) == "parquet"


def test_delta_compaction_adds_nothing_and_delete_counts_removed_rows(delta, tmp_path):
    t = open_table("delta", str(delta), home=tmp_path)
    DeltaTable(delta).optimize.compact()  # d1 has two files (v1, v3): merged into one
    ch = t.changes(since=3)
    assert ch.version == 4 and ch.added == () and ch.rewritten_files == 1 and ch.deleted_rows == 0
    assert total(ch.old) == 14 and any("version 4: OPTIMIZE" in n for n in ch.notes)
    assert sorted(f.added_in for f in ch.old) == [3, 3, 4]  # the compacted file by version 4; older ones "at or before 3"

    DeltaTable(delta).delete("x < 0")  # v5 rewrites d1 and d2 without their 3 negative rows
    ch = t.changes(since=4)
    assert ch.added == () and ch.deleted_rows == 3 and total(ch.old) == 11
    assert ch.notes == ("version 5: DELETE removed 3 rows",)

    # Rows appended after `since` and then rewritten by a delete were never learned: still new.
    write_deltalake(delta, rows("d3", [-5, 20, 21]), mode="append", partition_by=["day"])
    DeltaTable(delta).delete("x < 0")
    ch = t.changes(since=5)
    assert [(f.rows, f.partition["day"], f.added_in) for f in ch.added] == [(2, "d3", 7)]
    assert ch.deleted_rows == 1 and total(ch.old) == 11
    # ... and a compaction after `since` keeps those rows new while counting the rewrite.
    ch = t.changes(since=3)
    assert ch.rewritten_files == 1 and ch.deleted_rows == 4 and [f.rows for f in ch.added] == [2]


def test_delta_overwrite_and_update(delta, tmp_path):
    t = open_table("delta", str(delta), home=tmp_path)
    DeltaTable(delta).update(predicate="x < 0", updates={"x": "0"})  # v4: rewritten, not learned again
    ch = t.changes(since=3)
    assert ch.added == () and total(ch.old) == 14 and ch.deleted_rows == 0
    assert len(ch.notes) == 1 and ch.notes[0].startswith("version 4: UPDATE")

    write_deltalake(delta, rows("d9", [1, 2]), mode="overwrite", partition_by=["day"])  # v5
    ch = t.changes(since=4)
    assert [(f.rows, f.partition["day"]) for f in ch.added] == [(2, "d9")] and ch.old == ()
    assert ch.deleted_rows == 14 and "version 5: WRITE" in ch.notes[0]


def test_delta_vacuumed_files_and_cleaned_log_are_refused_with_the_retention_settings(delta, tmp_path):
    t = open_table("delta", str(delta), home=tmp_path)
    before = t.files_at(3)
    dt = DeltaTable(delta)
    dt.optimize.compact()
    dt.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    with pytest.raises(DataError, match="deletedFileRetentionDuration") as e:
        t.files_at(3)
    assert "version 3" in str(e.value) and str(delta) in str(e.value) and "re-learn from the current version" in str(e.value)
    d1 = [f for f in before if f.partition["day"] == "d1"]
    with pytest.raises(DataError, match="deletedFileRetentionDuration.*re-learn from the current version"):
        t.read(d1[0])
    # What changes() needs is the commits after `since` and the live files: both still there.
    ch = t.changes(since=3)
    assert ch.added == () and ch.rewritten_files == 1 and all(len(t.read(f)) == f.rows for f in ch.old)

    dt = DeltaTable(delta)
    dt.alter.set_table_properties({"delta.logRetentionDuration": "interval 0 seconds"})
    dt = DeltaTable(delta)
    dt.create_checkpoint()
    dt.cleanup_metadata()  # the log now starts at the checkpoint: earlier versions are gone
    for call in (lambda: t.changes(since=1), lambda: t.files_at(1)):
        with pytest.raises(DataError, match="logRetentionDuration") as e:
            call()
        assert "version 1" in str(e.value) and "re-learn from the current version" in str(e.value)
    assert total(t.changes(since=None).added) == 14


def _z85(data: bytes) -> str:
    chars = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
    data += b"\0" * (-len(data) % 4)
    out = []
    for i in range(0, len(data), 4):
        v = struct.unpack(">I", data[i:i + 4])[0]
        out += reversed([chars[(v // 85 ** k) % 85] for k in range(5)])
    return "".join(out)


def test_delta_deletion_vectors_are_refused(tmp_path):
    """delta-rs deletes copy-on-write; Spark and Databricks mark rows in a deletion vector instead.
    Version 1 is the commit such an engine writes: the file re-added with an inline vector."""
    from pyroaring import BitMap

    path = tmp_path / "dv"
    write_deltalake(path, rows("d0", [1, 2, 3, 4]), partition_by=["day"],
                    configuration={"delta.enableDeletionVectors": "true"})
    log0 = (path / "_delta_log" / f"{0:020d}.json").read_text().splitlines()
    add = next(json.loads(line)["add"] for line in log0 if line.startswith('{"add"'))
    bitmap = struct.pack("<iqi", 1681511377, 1, 0) + BitMap([0, 2]).serialize()  # RoaringBitmapArray: rows 0 and 2
    dv = {"storageType": "i", "pathOrInlineDv": _z85(bitmap), "sizeInBytes": len(bitmap), "cardinality": 2}
    now = int(time.time() * 1000)
    commit = [{"commitInfo": {"timestamp": now, "operation": "DELETE", "operationParameters": {"predicate": "x in (1, 3)"}}},
              {"remove": {"path": add["path"], "dataChange": True, "deletionTimestamp": now, "size": add["size"]}},
              {"add": {**add, "modificationTime": now, "deletionVector": dv}}]
    (path / "_delta_log" / f"{1:020d}.json").write_text("".join(json.dumps(a) + "\n" for a in commit))
    assert len(DeltaTable(path).deletion_vectors().read_all()) == 1  # deltalake reads it as a real vector

    t = open_table("delta", str(path), home=tmp_path)
    for since in (None, 0):
        with pytest.raises(DataError, match="delta.enableDeletionVectors=false") as e:
            t.changes(since=since)
        assert "version 1" in str(e.value) and str(path) in str(e.value)


# -- Iceberg -----------------------------------------------------------------------------------

@pytest.fixture
def iceberg(tmp_path):
    """ns.events in the default catalog under a home: 3 appends partitioned by day; (home, table, [snapshot ids])."""
    home = tmp_path / "home"
    from pyiceberg.catalog import load_catalog

    (home / "iceberg" / "warehouse").mkdir(parents=True)
    cat = load_catalog("plaster", type="sql", uri=f"sqlite:///{home}/iceberg/catalog.db",
                       warehouse=f"file://{home}/iceberg/warehouse")
    cat.create_namespace("ns")
    t = cat.create_table("ns.events", schema=rows("d", [1]).schema)
    with t.update_spec() as spec:
        spec.add_identity("day")
    for batch in (rows("d0", [1, 2, 3]), rows("d1", [-1, 4, 5, 6]), rows("d0", [-2, 7])):
        t.append(batch)
    return home, t, [s.snapshot_id for s in t.snapshots()]


def test_iceberg_changes_since_a_snapshot_are_the_later_appends(iceberg):
    home, _, snaps = iceberg
    t = open_table("iceberg", "ns.events", home=home)
    assert t.current() == snaps[-1] and t.format == "iceberg"
    ch = t.changes(since=snaps[0])
    assert (ch.format, ch.version, ch.since, ch.table) == ("iceberg", snaps[-1], snaps[0], "plaster/ns.events")
    assert sorted((f.added_in, f.rows, f.partition["day"]) for f in ch.added) == sorted([(snaps[1], 4, "d1"),
                                                                                     (snaps[2], 2, "d0")])
    assert [(f.added_in, f.rows) for f in ch.old] == [(snaps[0], 3)]
    assert (ch.deleted_rows, ch.rewritten_files, ch.notes) == (0, 0, ())
    assert all(f.uri.startswith(str(home)) for f in ch.added)

    assert total(t.changes(since=None).added) == 9 and t.changes(since=snaps[-1]).added == ()
    assert [f.rows for f in t.files_at(snaps[0])] == [3]
    d1 = next(f for f in ch.added if f.partition["day"] == "d1")
    got = t.read(d1)
    assert got.column_names == ["day", "x"] and got.column("day").to_pylist() == ["d1"] * 4
    assert t.read(d1, columns=["x"]).column("x").to_pylist() == [-1, 4, 5, 6]
    assert t.schema().names == ["day", "x"]


def _replace(table, files, merged):
    """Commit what Spark's rewrite_data_files commits: a `replace` snapshot, same rows in fewer files.
    pyiceberg 0.12 has no compaction and its summary code refuses `replace`, so this test writes the
    snapshot with pyiceberg's own overwrite producer, labelled replace."""
    from pyiceberg.io.pyarrow import _dataframe_to_data_files
    from pyiceberg.table.snapshots import Operation, Summary
    from pyiceberg.table.update.snapshot import _OverwriteFiles

    class ReplaceFiles(_OverwriteFiles):
        def _summary(self, snapshot_properties=None):
            summary = super()._summary(snapshot_properties or {})
            return Summary(Operation.REPLACE, **summary.additional_properties)

    with table.transaction() as tx:
        producer = ReplaceFiles(operation=Operation.OVERWRITE, transaction=tx, io=table.io)
        with producer as p:
            for f in files:
                p.delete_data_file(f)
            for f in _dataframe_to_data_files(tx.table_metadata, merged, table.io, write_uuid=p.commit_uuid):
                p.append_data_file(f)


def test_iceberg_replace_delete_overwrite_and_expiry(iceberg):
    home, table, snaps = iceberg
    t = open_table("iceberg", "ns.events", home=home)
    d1 = next(f for f in t.changes(since=snaps[0]).added if f.partition["day"] == "d1")
    d0 = [task.file for task in table.scan(row_filter="day == 'd0'").plan_files()]
    _replace(table, d0, table.scan(row_filter="day == 'd0'").to_arrow())
    ch = t.changes(since=snaps[-1])
    assert ch.added == () and ch.rewritten_files == 1 and ch.deleted_rows == 0 and total(ch.old) == 9
    assert "replace rewrote 2 files into 1" in ch.notes[0]
    # Since snapshot 1, d0's rows of snapshot 2 were never learned: the file they were compacted into is new.
    ch = t.changes(since=snaps[1])
    assert [f.rows for f in ch.added] == [5] and ch.rewritten_files == 1 and "added after snapshot" in ch.notes[1]

    after_replace = t.current()
    table = table.refresh()
    table.delete("day == 'd1'")  # drops whole files: a `delete` snapshot
    ch = t.changes(since=after_replace)
    assert ch.added == () and ch.deleted_rows == 4 and ch.notes == (f"snapshot {t.current()}: delete removed 4 rows",)

    table.delete("x < 0")  # rewrites d0's file without row -2: pyiceberg commits an `overwrite`
    ch = t.changes(since=after_replace)
    assert ch.deleted_rows == 4 + 5 and [f.rows for f in ch.added] == [4] and "overwrite removed 5 rows" in ch.notes[1]

    table = table.refresh()
    table.maintenance.expire_snapshots().by_ids(snaps[:2]).commit()
    for call in (lambda: t.changes(since=snaps[0]), lambda: t.files_at(snaps[1])):
        with pytest.raises(DataError, match="history.expire.max-snapshot-age-ms.*expire_snapshots") as e:
            call()
        assert "plaster/ns.events" in str(e.value) and "re-learn from the current snapshot" in str(e.value)
    assert total(t.changes(since=None).added) == 4
    # pyiceberg's expiry drops metadata only; Spark's also deletes the files no snapshot keeps any more.
    os.remove(d1.uri)
    with pytest.raises(DataError, match=f"{d1.uri}.*snapshot {snaps[1]}.*expire_snapshots"):
        t.read(d1)


def test_iceberg_unknown_table_and_format(tmp_path):
    with pytest.raises(DataError, match="ns.missing"):
        open_table("iceberg", "ns.missing", home=tmp_path)
    assert (tmp_path / "iceberg" / "warehouse").is_dir()
    with pytest.raises(DataError, match="not a Delta table.*data.source"):
        open_table("delta", str(tmp_path / "nothing"), home=tmp_path).current()
    with pytest.raises(DataError, match="delta, iceberg"):
        open_table("hudi", "x", home=tmp_path)
