"""Lake tables as data sources, through real cycles (local Ray, MLflow on SQLite, ONNX Runtime):
a Delta table on disk, appended, compacted, moved on under a crashed cycle, widened and retyped;
a streamed snapshot whose files were vacuumed; an Iceberg table in the SQL catalog; a Delta table
in an S3-compatible bucket (moto on 127.0.0.1). New data is always the rows of the versions after
the champion's, never a compaction's rewrite, and a resumed cycle keeps the version it read."""

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest
import yaml
from deltalake import DeltaTable, write_deltalake
from typer.testing import CliRunner

from orchestrator import api
from orchestrator import record as records
from orchestrator.cli import app
from orchestrator.config import load_pipeline
from orchestrator.errors import DataError
from orchestrator.stages.ingest import pending_of
from orchestrator.workspace import Workspace

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DAY = 250  # rows per day (pipelines/lake/simulate.py ROWS_PER_DAY)


def _pipelines(tmp: Path, which: str, **overrides) -> Path:
    """Copies of the lake/iceberg reference pipelines (with tabular, whose stream their simulators load),
    made fast: few epochs, the fp32 engine only, short timing; the gate keeps its accuracy rules, loosened,
    so these cycles promote and the next learns after them (judging models is test_cycle's)."""
    for name in ("tabular", "lake", "iceberg"):
        shutil.copytree(ROOT / "pipelines" / name, tmp / "pipelines" / name)
    folder = tmp / "pipelines" / which
    cfg = yaml.safe_load((folder / "pipeline.yaml").read_text())
    cfg["train"].update(epochs=8, warm_start_epochs=4, early_stopping_patience=None)
    cfg["build"] = {"precisions": ["fp32"]}
    cfg["validate"] = {"latency_batches": [1], "throughput_batches": [1], "rounds": 6, "calls_per_round": 5, "warmup": 5}
    cfg["gate"] = {"accuracy_min": {"golden": 0.4, "new": 0.4}, "non_inferiority": {"golden": 0.5, "new": 0.5},
                   "latency_p99_ms_max": None, "latency_ratio_max": None}
    for section, values in overrides.items():
        cfg.setdefault(section, {}).update(values)
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return folder


def _sim(folder: Path):
    return load_pipeline(folder, check=False).module("simulate.py")


def _write_days_in_halves(folder: Path, days, storage_options=None) -> None:
    """Each day landed as two loads (two files in its partition), as intraday loads do: what a
    compaction then merges (deltalake's compact() leaves a partition of one file alone)."""
    p = load_pipeline(folder, check=False)
    sim = _sim(folder)
    sim.write_golden(p.golden)
    if "://" not in p.source_uri:
        Path(p.source_uri).mkdir(parents=True, exist_ok=True)
    for k in days:
        rows = sim.day_rows(k)
        for part in (rows.slice(0, DAY // 2), rows.slice(DAY // 2)):
            write_deltalake(p.source_uri, part, mode="append", partition_by=["day"], storage_options=storage_options)


def _pending(folder: Path) -> tuple[int, float | None]:
    """What the scheduler's data trigger sees: the table's new rows since the champion's version."""
    p = load_pipeline(folder)
    ws = Workspace.from_env()
    registry = api.registry_for(ws)
    champion = registry.champion(p.name, ws.home / "champions" / p.name)
    learned = set(registry.lineage(champion)) if champion else set()
    waiting = pending_of(p, learned, champion)
    return waiting.rows, waiting.oldest


def _plaster(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def _crash_after_ingest(folder: Path) -> dict:
    """A real `plaster run` SIGKILLed right after ingest persisted its snapshot; its record."""
    crashed = _plaster("run", str(folder), env={"PLASTER_CRASH_AFTER": "ingest"})
    assert crashed.returncode == -9, crashed.stdout + crashed.stderr
    rec = records.unfinished(Workspace.from_env(), load_pipeline(folder, check=False).name)
    assert rec is not None and list(rec["stages"]) == ["ingest"]
    return rec


def _new_paths(rec) -> set[str]:
    return {s["path"] for s in rec["stages"]["ingest"]["output"]["new_shards"]}


@pytest.fixture(scope="module")
def delta(tmp_path_factory):
    """One Delta table on local disk and its cycles: 3 days (6 loads) → c1; 2 days → c2; compaction
    → c3; 2 days → a cycle killed after ingest, then a day with a new column lands → its resume
    (c4) → c5; then f03 rewritten as a string → the cycle stops at ingest."""
    mp = pytest.MonkeyPatch()
    tmp = tmp_path_factory.mktemp("lake-cycles")
    mp.setenv("PLASTER_HOME", str(tmp / "plaster-home"))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("PLASTER_CRASH_AFTER", raising=False)
    folder = _pipelines(tmp, "lake")
    uri = load_pipeline(folder).source_uri
    s = SimpleNamespace(folder=folder, uri=uri)

    _write_days_in_halves(folder, range(3))
    s.c1 = api.run_cycle(folder)

    before = set(DeltaTable(uri).file_uris())
    api.simulate(folder, shards=2)
    s.appended_files = set(DeltaTable(uri).file_uris()) - before
    s.pending_appended = _pending(folder)
    s.c2 = api.run_cycle(folder)

    s.compacted = DeltaTable(uri).optimize.compact()
    s.pending_compacted = _pending(folder)
    s.c3 = api.run_cycle(folder)

    # The table moves on under a crashed cycle: its resume keeps the version it read.
    api.simulate(folder, shards=2)
    s.crash_version = DeltaTable(uri).version()
    s.crashed = _crash_after_ingest(folder)
    extra = _sim(folder).day_rows(7)
    extra = extra.append_column("note", pa.array(["late load"] * len(extra)))  # a column no input reads
    write_deltalake(uri, extra, mode="append", partition_by=["day"], schema_mode="merge")
    s.moved_version = DeltaTable(uri).version()
    s.resumed_cli = CliRunner().invoke(app, ["run", str(folder), "--resume"])
    s.c4 = records.load_all(Workspace.from_env(), "lake")[-1]
    s.c5 = api.run_cycle(folder)

    # f03 written as a string: the declared input changed type.
    retyped = _sim(folder).day_rows(8)
    retyped = retyped.set_column(retyped.schema.get_field_index("f03"), "f03",
                                 pa.array([f"{v:.3f}" for v in retyped.column("f03").to_pylist()]))
    write_deltalake(uri, retyped, mode="overwrite", schema_mode="overwrite", partition_by=["day"])
    with pytest.raises(DataError) as e:
        api.run_cycle(folder)
    s.retype_error = str(e.value)
    s.retype_record = records.load_all(Workspace.from_env(), "lake")[-1]
    yield s
    mp.undo()


def test_delta_cycles_learn_only_the_versions_after_the_champions(delta):
    c1, c2 = delta.c1, delta.c2
    assert c1["decision"] == "PROMOTED" and c1["version"] == "1", c1.get("reasons")
    t1 = c1["table"]
    assert (t1["format"], t1["table"], t1["since"], t1["version"]) == ("delta", delta.uri, None, 5)
    assert t1["added_rows"] == 3 * DAY and t1["added_files"] == 6
    snap1 = c1["stages"]["ingest"]["output"]
    assert sum(s["rows"] for s in snap1["new_shards"]) == 3 * DAY and snap1["replay_rows"] == 0

    assert c2["decision"] == "PROMOTED" and c2["version"] == "2", c2.get("reasons")
    t2 = c2["table"]
    assert (t2["since"], t2["version"]) == (t1["version"], 7) and t2["version"] == t1["version"] + 2
    assert t2["added_rows"] == 2 * DAY and t2["added_files"] == 2 and t2["rewritten_files"] == 0
    snap2 = c2["stages"]["ingest"]["output"]
    assert len(delta.appended_files) == 2
    assert _new_paths(c2) == {u.removeprefix("file://") for u in delta.appended_files}, "exactly the 2 new files"
    assert sum(s["rows"] for s in snap2["new_shards"]) == 2 * DAY and snap2["replay_rows"] > 0
    assert not _new_paths(c1) & _new_paths(c2)
    assert c2["stages"]["train"]["output"]["warm_started_from"] == "1"
    # The data trigger saw the appended rows from the log and the files' times.
    rows, oldest = delta.pending_appended
    assert rows == 2 * DAY and oldest is not None


def test_a_compaction_adds_nothing_to_learn(delta):
    assert delta.compacted["numFilesRemoved"] == 6 and delta.compacted["numFilesAdded"] == 3
    c3 = delta.c3
    assert c3["decision"] == "SKIPPED" and "min_new_rows" in c3["reasons"][0], c3.get("reasons")
    assert c3["version"] is None and set(c3["stages"]) == {"ingest"}
    t3 = c3["table"]
    assert (t3["since"], t3["version"]) == (7, 8)
    assert t3["added_rows"] == 0 and t3["added_files"] == 0 and t3["rewritten_files"] == 3
    assert any("OPTIMIZE" in n for n in t3["notes"]), t3["notes"]
    assert c3["stages"]["ingest"]["output"]["new_shards"] == []
    assert delta.pending_compacted == (0, None), "a compaction alone does not trigger a cycle"


def test_a_resumed_cycle_keeps_the_version_it_read_and_the_next_learns_the_rest(delta):
    crashed, c4, c5 = delta.crashed, delta.c4, delta.c5
    assert delta.resumed_cli.exit_code == 0, delta.resumed_cli.output
    assert "PROMOTED v3" in delta.resumed_cli.output
    assert c4["id"] == crashed["id"] and c4["resumes"] == 1 and c4["decision"] == "PROMOTED", c4.get("reasons")
    assert delta.moved_version > delta.crash_version
    # The snapshot is the crashed attempt's: same version, files, rows; the day that landed since is not in it.
    assert c4["table"] == crashed["table"] and c4["table"]["version"] == delta.crash_version
    # Since c2's version (the SKIPPED c3 promoted nothing): the compaction between is still not learned.
    assert (c4["table"]["since"], c4["table"]["added_rows"], c4["table"]["rewritten_files"]) == (7, 2 * DAY, 3)
    assert c4["stages"]["ingest"] == crashed["stages"]["ingest"], "ingest must not run again"
    snap4 = c4["stages"]["ingest"]["output"]
    assert sorted(s["name"].split("/")[0] for s in snap4["new_shards"]) == ["day=2026-12-06", "day=2026-12-07"]

    # The next cycle learns the day that landed during the crash (with a new column: fine).
    assert c5["decision"] == "PROMOTED" and c5["version"] == "4", c5.get("reasons")
    t5 = c5["table"]
    assert (t5["since"], t5["version"], t5["added_rows"], t5["added_files"]) == (delta.crash_version,
                                                                                  delta.moved_version, DAY, 1)
    (shard,) = c5["stages"]["ingest"]["output"]["new_shards"]
    assert shard["name"].startswith("day=2026-12-08/") and shard["rows"] == DAY
    assert "note" not in t5["schema"] and t5["schema"]["f03"] == "double"
    assert c5["stages"]["train"]["output"]["warm_started_from"] == "3"


def test_a_declared_column_retyped_stops_the_cycle_naming_it_and_both_types(delta):
    msg = delta.retype_error
    assert "'f03' was double, is now" in msg and "string" in msg.split("'f03' was double, is now", 1)[1], msg
    assert "data.inputs" in msg
    rec = delta.retype_record
    assert rec["state"] == "failed" and rec["error"]["stage"] == "ingest" and rec["error"]["type"] == "DataError"
    assert "f03" in rec["error"]["message"]
    decisions = [r.get("decision") or r["state"] for r in records.load_all(Workspace.from_env(), "lake")]
    assert decisions == ["PROMOTED", "PROMOTED", "SKIPPED", "PROMOTED", "PROMOTED", "failed"], decisions
    from mlflow import MlflowClient

    assert str(MlflowClient().get_model_version_by_alias("lake", "champion").version) == "4", "nothing promoted"


def test_a_streamed_snapshot_whose_files_were_vacuumed_fails_at_train_naming_the_retention(home, tmp_path):
    folder = _pipelines(tmp_path, "lake", ingest={"stream_above_rows": 100})
    _write_days_in_halves(folder, range(3))
    crashed = _crash_after_ingest(folder)
    plan = crashed["stages"]["ingest"]["output"]["train_manifest"]
    assert plan is not None and len(plan["new"]) == 6, "streamed: the snapshot names the table's files"
    assert all(Path(p).exists() for p in plan["new"])

    uri = load_pipeline(folder).source_uri
    DeltaTable(uri).optimize.compact()
    vacuumed = DeltaTable(uri).vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    assert len(vacuumed) == 6 and not any(Path(p).exists() for p in plan["new"])

    out = CliRunner().invoke(app, ["run", str(folder), "--resume"])
    assert out.exit_code != 0
    text = " ".join(out.output.split())
    assert "delta.deletedFileRetentionDuration" in text, out.output
    rec = records.load_all(Workspace.from_env(), "lake")[-1]
    assert rec["id"] == crashed["id"] and rec["state"] == "failed"
    assert rec["error"]["stage"] == "train" and rec["error"]["type"] == "DataError", rec["error"]
    assert "delta.deletedFileRetentionDuration" in rec["error"]["message"]

    # What the message advises: a fresh cycle reads the current version's (compacted) files, streamed.
    fresh = api.run_cycle(folder)
    assert fresh["decision"] == "PROMOTED", fresh.get("reasons")
    assert fresh["table"]["version"] == DeltaTable(uri).version() and fresh["table"]["added_rows"] == 3 * DAY
    assert fresh["stages"]["train"]["output"]["placement"] == "in_process_streamed"
    assert len(fresh["stages"]["ingest"]["output"]["train_manifest"]["new"]) == 3
    assert records.load_all(Workspace.from_env(), "lake")[0]["state"] == "abandoned"


def test_iceberg_cycles_learn_only_the_new_snapshots(home, tmp_path):
    folder = _pipelines(tmp_path, "iceberg")
    api.simulate(folder, shards=3)
    first = api.run_cycle(folder)
    assert first["decision"] == "PROMOTED" and first["version"] == "1", first.get("reasons")
    t1 = first["table"]
    assert (t1["format"], t1["table"], t1["since"], t1["added_rows"]) == ("iceberg", "plaster/lake.events", None, 3 * DAY)
    assert _pending(folder) == (0, None)

    api.simulate(folder, shards=2)
    rows, oldest = _pending(folder)
    assert rows == 2 * DAY and oldest is not None
    second = api.run_cycle(folder)
    assert second["decision"] == "PROMOTED", second.get("reasons")
    t2 = second["table"]
    from orchestrator.lake_iceberg import load

    current = load(home).load_table("lake.events").current_snapshot().snapshot_id
    assert t2["format"] == "iceberg" and (t2["since"], t2["version"]) == (t1["version"], current)
    assert t2["added_rows"] == 2 * DAY and t2["added_files"] == 2
    shards = second["stages"]["ingest"]["output"]["new_shards"]
    assert sum(s["rows"] for s in shards) == 2 * DAY
    assert sorted(s["path"].split("/")[-2] for s in shards) == ["day=2026-12-04", "day=2026-12-05"]
    assert not _new_paths(first) & _new_paths(second)


def test_a_delta_table_in_a_bucket_is_learned_version_by_version(home, tmp_path, s3_server, monkeypatch):
    import pyarrow.fs as pafs

    host, port = s3_server
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "moto-accepts-any-secret", "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    pafs.S3FileSystem(access_key="test", secret_key=env["AWS_SECRET_ACCESS_KEY"], endpoint_override=f"{host}:{port}",
                      scheme="http", region="us-east-1", allow_bucket_creation=True).create_dir("lake")
    folder = _pipelines(tmp_path, "lake")
    cfg = yaml.safe_load((folder / "pipeline.yaml").read_text())
    cfg["data"]["source"] = "s3://lake/cycle-events"
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    writer = {**env, "AWS_S3_ALLOW_UNSAFE_RENAME": "true"}  # one writer, no lock service
    sim = _sim(folder)
    sim.write_golden(load_pipeline(folder).golden)
    for k in range(3):
        write_deltalake("s3://lake/cycle-events", sim.day_rows(k), mode="append", partition_by=["day"], storage_options=writer)

    first = api.run_cycle(folder)
    assert first["decision"] == "PROMOTED", first.get("reasons")
    t1 = first["table"]
    assert (t1["format"], t1["table"], t1["version"], t1["added_rows"]) == ("delta", "s3://lake/cycle-events", 2, 3 * DAY)
    assert all(s["path"].startswith("s3://lake/cycle-events/day=") for s in first["stages"]["ingest"]["output"]["new_shards"])

    for k in (3, 4):
        write_deltalake("s3://lake/cycle-events", sim.day_rows(k), mode="append", partition_by=["day"], storage_options=writer)
    rows, oldest = _pending(folder)
    assert rows == 2 * DAY and oldest is not None
    second = api.run_cycle(folder)
    assert second["decision"] == "PROMOTED", second.get("reasons")
    t2 = second["table"]
    assert (t2["since"], t2["version"], t2["added_rows"], t2["added_files"]) == (2, 4, 2 * DAY, 2)
    snap = second["stages"]["ingest"]["output"]
    assert sorted(s["name"].split("/")[0] for s in snap["new_shards"]) == ["day=2026-12-04", "day=2026-12-05"]
    assert snap["replay_rows"] > 0, "replay reads the learned files from the bucket"
    assert env["AWS_SECRET_ACCESS_KEY"] not in str(second)

