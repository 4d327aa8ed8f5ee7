"""Served requests kept as feedback shards, and labels joined into the data source: for every
reference pipeline shape (a list column of pixels, scalar columns, a regression target, token
ids beside scalar columns with multilabel targets). Real Parquet files, real pipelines."""

import dataclasses
import gc
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator import feedback
from orchestrator.config import load_pipeline
from orchestrator.dataset import decode, read_shard
from orchestrator.errors import ConfigError, DataError
from orchestrator.workspace import Workspace

ROOT = Path(__file__).resolve().parents[2]
SHAPES = ("digits", "tabular", "regression", "text")


def _served(name: str, tmp_path: Path):
    """The pipeline, one simulated shard's examples (inputs by name, targets) and a Writer."""
    pipeline = load_pipeline(ROOT / "pipelines" / name, check=False)
    shard = pipeline.module("simulate.py").simulate(tmp_path / "simulated", None, 1)[0]
    x, y = read_shard(shard, pipeline.inputs, pipeline.target)
    return pipeline, x, y


def _writer(pipeline, ws, **kw):
    return feedback.Writer(feedback.location(pipeline, ws), [dataclasses.asdict(i) for i in pipeline.inputs],
                           pipeline.config.task, **{"flush_rows": 1000, "flush_s": 60.0, **kw})


def _answers(y: np.ndarray, task: str) -> list:
    """What a model might have answered (deliberately not the label: the label must win)."""
    if task == "classification":
        return ((y + 1) % 3).tolist()
    return (1 - y).astype(int).tolist() if task == "multilabel" else (y + 5).tolist()


def _label_table(ids: list[str], examples: list[int], y: np.ndarray, pipeline) -> pa.Table:
    t = pipeline.target
    cols = {"request_id": ids, "example": examples}
    if t.task == "regression":
        cols.update({c: y[:, j].astype(float).tolist() for j, c in enumerate(t.columns)})
    else:
        cols[t.columns[0]] = y.astype(int).tolist()
    return pa.table(cols)


def _serve(writer, x, y, task, sizes):
    """Requests of these batch sizes over the examples in order; returns (id, example) per row."""
    keys, start = [], 0
    for r, n in enumerate(sizes):
        part = {k: v[start:start + n] for k, v in x.items()}
        writer.add(f"req-{r}", part, _answers(y[start:start + n], task), "3", at=1000.0 + r,
                   shadow={"version": "4", "prediction": _answers(y[start:start + n], task)} if r % 2 else None)
        keys += [(f"req-{r}", e) for e in range(n)]
        start += n
    return keys


@pytest.mark.parametrize("name", SHAPES)
def test_served_rows_labelled_later_become_a_data_shard_in_the_source_schema(name, tmp_path, home):
    ws = Workspace.from_env()
    pipeline, x, y = _served(name, tmp_path)
    w = _writer(pipeline, ws)
    keys = _serve(w, x, y, pipeline.config.task, [1, 3, 2, 1, 5])
    shard = w.close()
    assert w.flush() is None  # nothing left behind after close

    served = pq.read_table(shard)
    assert served.column_names[:4] == ["request_id", "example", "at", "version"]
    assert served.column_names[-3:] == ["prediction", "shadow_version", "shadow_prediction"]
    assert list(zip(served["request_id"].to_pylist(), served["example"].to_pylist())) == keys
    assert served["prediction"].to_pylist() == _answers(y[:12], pipeline.config.task)
    assert served["shadow_version"].to_pylist()[:4] == [None, "4", "4", "4"]
    assert served["shadow_prediction"].to_pylist()[:2] == [None] + _answers(y[1:2], pipeline.config.task)
    # The inputs read back exactly as ingest reads the source's columns (given a target to read).
    t, as_data = pipeline.target, served
    for c in t.columns:
        as_data = as_data.append_column(c, _label_table(["r"] * 12, [0] * 12, y[:12], pipeline).column(c))
    got, _ = decode(as_data, pipeline.inputs, t)
    for spec in pipeline.inputs:
        np.testing.assert_array_equal(got[spec.name], x[spec.name][:12])

    # Labels for 10 of the 12 served rows, in another order, plus one for a request not served yet.
    order = [11, 0, 3, 2, 1, 5, 7, 6, 4, 9]
    labels = _label_table([keys[i][0] for i in order] + ["req-later"], [keys[i][1] for i in order] + [0],
                          np.concatenate([y[order], y[:1]]), pipeline)
    out = feedback.label(pipeline, ws, labels)
    assert (out["joined"], out["pending"], out["already_labelled"]) == (10, 1, 0)
    [written] = out["shards"]
    assert Path(written).parent == pipeline.source and Path(written).name.startswith("feedback-")
    got_x, got_y = read_shard(Path(written), pipeline.inputs, pipeline.target)  # what ingest will read
    assert pq.read_table(written).column_names == [c for i in pipeline.inputs for c in i.parquet_columns] + \
        list(pipeline.target.columns)
    rows = sorted(order)  # the shard holds its rows in the order they were served
    for spec in pipeline.inputs:
        np.testing.assert_array_equal(got_x[spec.name], x[spec.name][rows])
    np.testing.assert_allclose(got_y, y[rows], rtol=1e-6)


def test_digits_round_trip_reads_the_written_shard(tmp_path, home):
    """The same check through the public reader only: the feedback shard itself is not a data
    shard (no target), the labelled one is."""
    ws = Workspace.from_env()
    pipeline, x, y = _served("digits", tmp_path)
    w = _writer(pipeline, ws)
    _serve(w, x, y, "classification", [4])
    w.close()
    out = feedback.label(pipeline, ws, _label_table(["req-0"] * 4, [0, 1, 2, 3], y[:4], pipeline))
    got_x, got_y = read_shard(Path(out["shards"][0]), pipeline.inputs, pipeline.target)
    np.testing.assert_array_equal(got_x["input"], x["input"][:4])
    np.testing.assert_array_equal(got_y, y[:4])


def test_a_shard_is_written_when_the_buffer_holds_flush_rows_requests(tmp_path, home):
    ws = Workspace.from_env()
    pipeline, x, y = _served("tabular", tmp_path)
    w = _writer(pipeline, ws, flush_rows=3)
    one = {k: v[:2] for k, v in x.items()}
    assert w.add("a", one, [0, 1], "1", at=1.0) is None and w.add("b", one, [0, 1], "1", at=2.0) is None
    assert not w.due()
    shard = w.add("c", one, [0, 1], "1", at=3.0)
    assert shard is not None and pq.read_table(shard).num_rows == 6  # 3 requests of 2 examples
    folder = shard.parent
    assert [p.name for p in folder.iterdir()] == [shard.name]  # no temporary file left beside it
    w.add("d", one, [0, 1], "1", at=4.0)
    second = w.close()
    assert second.name > shard.name  # names sort by time
    assert sorted(p.name for p in folder.iterdir()) == [shard.name, second.name]


def test_a_shard_is_due_when_the_oldest_buffered_request_is_flush_s_old(tmp_path, home):
    ws = Workspace.from_env()
    pipeline, x, _ = _served("digits", tmp_path)
    w = _writer(pipeline, ws, flush_s=0.2)
    assert not w.due() and w.flush() is None  # an empty buffer is never due and writes nothing
    w.add("a", {"input": x["input"][:1]}, [3], "1", at=1.0)
    assert not w.due()
    time.sleep(0.25)
    assert w.due()
    shard = w.flush()
    assert pq.read_table(shard)["request_id"].to_pylist() == ["a"] and not w.due()


def test_writers_in_two_replicas_never_overwrite_each_other(tmp_path, home):
    ws = Workspace.from_env()
    pipeline, x, _ = _served("digits", tmp_path)
    a, b = _writer(pipeline, ws), _writer(pipeline, ws)
    for i, w in enumerate((a, b) * 5):
        w.add(f"r{i}", {"input": x["input"][:1]}, [1], "1", at=float(i))
        w.flush()
    shards = sorted(feedback.location(pipeline, ws).glob("*.parquet"))
    assert len(shards) == 10 and len({p.name for p in shards}) == 10


def test_a_crash_loses_only_the_unflushed_buffer_and_its_labels_wait(tmp_path, home):
    ws = Workspace.from_env()
    pipeline, x, y = _served("digits", tmp_path)
    w = _writer(pipeline, ws, flush_rows=3)
    keys = _serve(w, x, y, "classification", [1, 1, 1, 1, 1])  # 3 flushed, 2 buffered
    del w  # the process dies: close() never runs
    gc.collect()
    served = pa.concat_tables([pq.read_table(p) for p in feedback.location(pipeline, ws).glob("*.parquet")])
    assert served["request_id"].to_pylist() == ["req-0", "req-1", "req-2"]

    out = feedback.label(pipeline, ws, _label_table([k[0] for k in keys], [0] * 5, y[:5], pipeline))
    assert (out["joined"], out["pending"]) == (3, 2)  # the lost requests' labels are kept, not dropped


def test_pending_labels_join_when_their_requests_arrive_and_nothing_is_written_twice(tmp_path, home):
    ws = Workspace.from_env()
    pipeline, x, y = _served("tabular", tmp_path)
    labels = pa.table({"request_id": ["late", "early"], "label": [int(y[1]), int(y[0])]})  # no example column
    w = _writer(pipeline, ws)
    w.add("early", {"dense": x["dense"][:1]}, [2], "1", at=1.0)
    w.close()
    first = feedback.label(pipeline, ws, labels)
    assert (first["joined"], first["pending"], first["already_labelled"]) == (1, 1, 0)

    w = _writer(pipeline, ws)
    w.add("late", {"dense": x["dense"][1:2]}, [0], "2", at=2.0)
    w.close()
    second = feedback.label(pipeline, ws, pa.table({"request_id": ["early"], "label": [int(y[0])]}))
    assert (second["joined"], second["pending"], second["already_labelled"]) == (1, 0, 1)
    got_x, got_y = read_shard(Path(second["shards"][0]), pipeline.inputs, pipeline.target)
    np.testing.assert_array_equal(got_x["dense"], x["dense"][1:2])
    assert got_y.tolist() == [int(y[1])]

    third = feedback.label(pipeline, ws, labels)  # the same file again: both already written
    assert (third["joined"], third["pending"], third["already_labelled"], third["shards"]) == (0, 0, 2, [])
    assert len(list(pipeline.source.glob("feedback-*.parquet"))) == 2


def test_labels_from_csv_and_parquet_files(tmp_path, home):
    ws = Workspace.from_env()
    pipeline, x, y = _served("text", tmp_path)
    w = _writer(pipeline, ws)
    _serve(w, x, y, "multilabel", [2])
    w.close()
    csv = tmp_path / "labels.csv"
    rows = [f'req-0,{e},"{y[e].astype(int).tolist()}"' for e in range(2)]
    csv.write_text("request_id,example,topics\n" + "\n".join(rows) + "\n")
    out = feedback.label(pipeline, ws, csv)
    assert out["joined"] == 2
    _, got_y = read_shard(Path(out["shards"][0]), pipeline.inputs, pipeline.target)
    np.testing.assert_array_equal(got_y, y[:2])

    pq.write_table(pa.table({"request_id": ["req-0"], "example": [0], "topics": [[1, 0, 0, 0, 0]]}),
                   tmp_path / "again.parquet")
    assert feedback.label(pipeline, ws, tmp_path / "again.parquet")["already_labelled"] == 1


@pytest.mark.parametrize("name, labels, says", [
    ("digits", {"request_id": ["a", "b"], "label": [3, 12]}, "row 1 (request_id 'b'): label=12 is not a class id "
                                                             "in 0..9"),
    ("digits", {"request_id": ["a"], "label": ["three"]}, "row 0 (request_id 'a'): label='three' is not a class id"),
    ("digits", {"request_id": ["a", "a"], "label": [1, 2]}, "row 1 (request_id 'a'): labels the same example as "
                                                            "row 0"),
    ("digits", {"request_id": ["a"], "pixels": [1]}, "missing column(s) ['label']"),
    ("regression", {"request_id": ["a"], "progression": [float("nan")]}, "progression=nan is not a finite number"),
    ("text", {"request_id": ["a"], "topics": [[1, 0, 2, 0, 0]]}, "is not a list of 5 0/1 labels"),
])
def test_a_bad_label_is_refused_naming_its_row_and_nothing_is_written(name, labels, says, tmp_path, home):
    ws = Workspace.from_env()
    pipeline = load_pipeline(ROOT / "pipelines" / name, check=False)
    with pytest.raises(DataError, match="fix that row|labels need") as e:
        feedback.label(pipeline, ws, pa.table(labels))
    assert says in str(e.value)
    assert not pipeline.source.exists() and not (feedback.location(pipeline, ws) / "_labels").exists()


def test_a_label_without_example_for_a_batch_request_names_the_fix(tmp_path, home):
    ws = Workspace.from_env()
    pipeline, x, y = _served("digits", tmp_path)
    w = _writer(pipeline, ws)
    _serve(w, x, y, "classification", [3])
    w.close()
    with pytest.raises(DataError, match=r"served 3 examples: give each label an `example` column \(0..2\)"):
        feedback.label(pipeline, ws, pa.table({"request_id": ["req-0"], "label": [1]}))
    assert not pipeline.source.exists()


def test_a_lake_table_source_is_refused_with_what_to_do(tmp_path, home):
    ws = Workspace.from_env()
    pipeline = load_pipeline(ROOT / "pipelines" / "lake", check=False)
    with pytest.raises(ConfigError, match="delta table: `plaster label` writes Parquet shards"):
        feedback.label(pipeline, ws, pa.table({"request_id": ["a"], "label": [1]}))


def test_feedback_location_default_and_inside_the_source_refused(tmp_path, home, digits):
    ws = Workspace.from_env()
    assert feedback.location(load_pipeline(digits, check=False), ws) == ws.home / "feedback" / "digits"
    with open(digits / "pipeline.yaml", "a") as f:
        f.write("\nfeedback:\n  enabled: true\n  location: ${PLASTER_HOME}/data/digits/shards/served\n")
    with pytest.raises(ConfigError, match="lies inside data.source: point it at a folder outside"):
        feedback.location(load_pipeline(digits, check=False), ws)


def test_plaster_label_prints_the_counts_and_a_bad_label_exits_non_zero(tmp_path, home, digits):
    from typer.testing import CliRunner

    from orchestrator.cli import app

    ws = Workspace.from_env()
    pipeline = load_pipeline(digits, check=False)
    _, x, y = _served("digits", tmp_path)
    w = _writer(pipeline, ws)
    _serve(w, x, y, "classification", [1, 1])
    w.close()
    csv = tmp_path / "labels.csv"
    csv.write_text(f"request_id,label\nreq-0,{int(y[0])}\nreq-1,{int(y[1])}\nreq-9,4\n")
    res = CliRunner().invoke(app, ["label", str(digits), str(csv)])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())  # rich wraps long lines at spaces
    assert "labelled 2 row(s)" in said and "1 label(s) pending" in said

    csv.write_text("request_id,label\nreq-0,10\n")
    res = CliRunner().invoke(app, ["label", str(digits), str(csv)])
    assert res.exit_code == 1
    assert "row 0 (request_id 'req-0'): label=10 is not a class id in 0..9" in " ".join(res.output.split())


def test_a_shard_that_cannot_be_written_keeps_its_rows_for_the_next_flush(tmp_path, home):
    ws = Workspace.from_env()
    pipeline, x, y = _served("tabular", tmp_path)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the feedback folder should be")
    w = feedback.Writer(blocked, [dataclasses.asdict(i) for i in pipeline.inputs], pipeline.config.task,
                        flush_rows=2, flush_s=60.0)
    one = {k: v[:1] for k, v in x.items()}
    w.add("a", one, [0], "1", at=1.0)
    with pytest.raises(OSError):
        w.add("b", one, [1], "1", at=2.0)  # the second fills the buffer: its write fails
    for k in range(2, 2 + 2 * feedback.KEEP_BATCHES):  # still failing: the buffer is capped
        with pytest.raises(OSError):
            w.add(f"r{k}", one, [0], "1", at=float(k))
    assert w.dropped == 2 and w.due()
    w.folder = feedback.location(pipeline, ws)  # the disk is back
    shard = w.flush()
    ids = pq.read_table(shard).column("request_id").to_pylist()
    assert len(ids) == 2 * feedback.KEEP_BATCHES and ids[0] == "r2"  # the oldest two were dropped, the rest kept in order


def test_a_label_call_stopped_after_writing_its_shard_is_finished_by_the_next_never_doubled(tmp_path, home,
                                                                                             monkeypatch):
    ws = Workspace.from_env()
    pipeline, x, y = _served("digits", tmp_path)
    w = _writer(pipeline, ws)
    keys = _serve(w, x, y, "classification", [1, 1, 1, 1])
    w.close()
    ids = [k[0] for k in keys]
    write = feedback._write_atomic

    def stop_before_recording(table, path):
        if path.name == "joined.parquet":
            raise KeyboardInterrupt("the process stops here")
        return write(table, path)

    monkeypatch.setattr(feedback, "_write_atomic", stop_before_recording)
    with pytest.raises(KeyboardInterrupt):
        feedback.label(pipeline, ws, _label_table(ids[:2], [0, 0], y[:2], pipeline))
    monkeypatch.setattr(feedback, "_write_atomic", write)
    written = sorted(pipeline.source.glob("feedback-*.parquet"))
    assert len(written) == 1  # the shard was written, its record was not

    said = []
    out = feedback.label(pipeline, ws, _label_table(ids, [0] * 4, y[:4], pipeline), say=said.append)
    assert "finished the shard an interrupted `plaster label` was writing" in said[0]
    assert (out["joined"], out["already_labelled"]) == (2, 2)  # the two of the stopped call count as written
    shards = sorted(pipeline.source.glob("feedback-*.parquet"))
    assert len(shards) == 2 and written[0] in shards
    rows = sum(read_shard(p, pipeline.inputs, pipeline.target)[1].shape[0] for p in shards)
    assert rows == 4  # every labelled row once
