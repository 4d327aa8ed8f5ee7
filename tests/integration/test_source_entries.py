"""A real cycle (local Ray, ONNX Runtime, MLflow on SQLite) on a data source holding every kind
of entry beside the good shards, laid out as Spark and Hive write them: the cycle decides,
every entry that is not learned is named with its reason in the record and in `plaster
status`, bad ones are moved to `_quarantine/` keeping their paths, and no good row is lost."""

import json
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from orchestrator import api
from orchestrator.cli import app

pytestmark = pytest.mark.integration


def test_a_source_with_every_kind_of_entry_decides_and_names_each_with_its_reason(home, digits, monkeypatch):
    shards = api.simulate(digits, shards=4)
    src = shards[0].parent
    # Two of the good shards where Spark puts them: a dataset folder and Hive partitions.
    spark = src / "events.parquet" / "part-00000-5f1c.snappy.parquet"
    hive = src / "day=2026-12-01" / "region=eu" / "part-00000.parquet"
    for shard, to in ((shards[2], spark), (shards[3], hive)):
        to.parent.mkdir(parents=True)
        shard.rename(to)
    good = {shards[0].name: shards[0], shards[1].name: shards[1], "events.parquet/part-00000-5f1c.snappy.parquet": spark,
            "day=2026-12-01/region=eu/part-00000.parquet": hive}
    good_rows = sum(pq.read_metadata(p).num_rows for p in good.values())
    bytes_of = {n: p.read_bytes() for n, p in good.items()}

    # Writer debris: left where it is, named.
    (src / "events.parquet" / "_SUCCESS").touch()
    (src / "events.parquet" / ".part-00000-5f1c.snappy.parquet.crc").write_bytes(b"crc")
    attempt = src / "events.parquet" / "_temporary" / "0" / "part-00001-5f1c.snappy.parquet"
    attempt.parent.mkdir(parents=True)
    attempt.write_bytes(spark.read_bytes()[:200])
    (src / ".shard-00009.parquet.inprogress").write_bytes(b"PAR1")
    # Not readable data: moved aside with the reason.
    (src / "gone.parquet").symlink_to(src / "missing.parquet")
    (src / "empty.parquet").touch()
    os.mkfifo(src / "pipe.parquet")
    (src / "nodata.parquet").mkdir()
    (src / "nodata.parquet" / "_SUCCESS").touch()
    (src / "broken.parquet").write_bytes(b"not parquet at all")
    for region, n in (("eu", 1), ("us", 2)):  # the same file name in two partitions, both bad
        bad = src / "day=2026-12-02" / f"region={region}" / "part-00000.parquet"
        bad.parent.mkdir(parents=True)
        pq.write_table(pa.table({"pixels": pa.array([[0.0] * 64] * n, type=pa.list_(pa.float32())),
                                 "label": pa.array([12] * n)}), bad)
    unreadable = os.geteuid() != 0  # root reads a mode-000 file: the pipe above is the real case then
    if unreadable:
        (src / "locked.parquet").write_bytes(bytes_of[shards[0].name])
        (src / "locked.parquet").chmod(0)
    # Everything so far landed a minute ago; one file is still being written now.
    landed = time.time() - 60
    for p in src.rglob("*"):
        if p.is_file() and not p.is_symlink():
            os.utime(p, (landed, landed))
    (src / "incoming.parquet").write_bytes(spark.read_bytes()[:300])
    yaml_file = digits / "pipeline.yaml"
    yaml_file.write_text(yaml_file.read_text().replace("ingest:\n", "ingest:\n  settle_s: 30\n", 1))

    rec = api.run_cycle(digits)

    assert rec["decision"] == "PROMOTED", rec["reasons"]
    snap = rec["stages"]["ingest"]["output"]
    assert sorted(s["name"] for s in snap["new_shards"]) == sorted(good)
    assert snap["train_rows"] + snap["holdout_new_rows"] == good_rows and snap["replay_rows"] == 0
    for name, p in good.items():
        assert p.read_bytes() == bytes_of[name], f"{name} was changed"

    quarantined = {q["name"]: q for q in rec["quarantined"]}
    expected = {"gone.parquet": "dangling symlink", "empty.parquet": "zero bytes", "pipe.parquet": "not a regular file",
                "nodata.parquet": "holds no data files", "broken.parquet": "not a readable Parquet",
                "day=2026-12-02/region=eu/part-00000.parquet": "outside 0..9",
                "day=2026-12-02/region=us/part-00000.parquet": "outside 0..9"}
    if unreadable:
        expected["locked.parquet"] = "unreadable"
    assert set(quarantined) == set(expected)
    for name, words in expected.items():
        q = quarantined[name]
        assert words in q["reason"], q
        moved = src / "_quarantine" / name
        assert q["moved_to"] == str(moved) and os.path.lexists(moved) and not os.path.lexists(src / name)
        assert json.loads(moved.with_name(moved.name + ".reason.json").read_text())["reason"] == q["reason"]
    assert (src / "_quarantine" / "gone.parquet").is_symlink(), "a dangling link moves as the link"

    skipped = {e["name"]: e["reason"] for e in rec["skipped"]}
    assert set(skipped) == {"events.parquet/_SUCCESS", "events.parquet/.part-00000-5f1c.snappy.parquet.crc",
                            "events.parquet/_temporary/", ".shard-00009.parquet.inprogress", "incoming.parquet"}
    assert "still being written" in skipped["incoming.parquet"] and "settle_s=30" in skipped["incoming.parquet"]
    assert "success marker" in skipped["events.parquet/_SUCCESS"]
    assert all((src / n.rstrip("/")).exists() for n in skipped), "debris and waiting files stay in place"

    monkeypatch.setenv("COLUMNS", "1000")  # one line per entry: the names and reasons unwrapped
    out = CliRunner().invoke(app, ["status", str(digits)])
    assert out.exit_code == 0, out.output
    for name, q in quarantined.items():
        assert f"quarantined {name}: {q['reason']}" in out.output
    for name, reason in skipped.items():
        assert f"skipped {name}: {reason}" in out.output
