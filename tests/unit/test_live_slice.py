"""The `live` slice: labelled requests a shadowed version answered, read back from the feedback
shards and joined labels (feedback.live_slice), and judged by `plaster gate` beside the holdout
slices. Real Writer, real Parquet files, real pipelines; the gate's engines are scripted runners."""

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from orchestrator import api, feedback
from orchestrator.artifacts import Engine, ModelSize, VersionRef
from orchestrator.config import load_pipeline
from orchestrator.dataset import read_shard, save_arrays
from orchestrator.workspace import Workspace
from tests.unit.fakes import FakeRegistry

ROOT = Path(__file__).resolve().parents[2]
SHADOWS = ["3", None, "3", "4", "3"]  # the shadow version of each request, None: not shadowed
SIZES = [2, 1, 3, 2, 2]  # examples per request


def _served(name: str, tmp_path: Path, folder: Path | None = None):
    pipeline = load_pipeline(folder or ROOT / "pipelines" / name, check=False)
    shard = pipeline.module("simulate.py").simulate(tmp_path / "simulated", None, 1)[0]
    x, y = read_shard(shard, pipeline.inputs, pipeline.target)
    return pipeline, x, y


def _writer(pipeline, ws):
    return feedback.Writer(feedback.location(pipeline, ws), [dataclasses.asdict(i) for i in pipeline.inputs],
                           pipeline.config.task, flush_rows=1000, flush_s=60.0)


def _wrong(y: np.ndarray, task: str) -> list:
    """An answer that is not the label, so a slice built from predictions would show."""
    if task == "classification":
        return ((y + 1) % 3).tolist()
    return (1 - y).astype(int).tolist() if task == "multilabel" else (y + 5).tolist()


def _serve(writer, x, y, task, sizes=SIZES, shadows=SHADOWS, ids=None) -> list[tuple[str, int]]:
    """Requests over the examples in order, shadowed as `shadows` says; (id, example) per row."""
    keys, start = [], 0
    for r, (n, v) in enumerate(zip(sizes, shadows)):
        rid = ids[r] if ids else f"req-{r}"
        part = {k: a[start:start + n] for k, a in x.items()}
        writer.add(rid, part, _wrong(y[start:start + n], task), "2", at=1000.0 + r,
                   shadow={"version": v, "prediction": _wrong(y[start:start + n], task)} if v else None)
        keys += [(rid, e) for e in range(n)]
        start += n
    writer.close()
    return keys


def _labels(keys, rows, y, pipeline) -> pa.Table:
    t = pipeline.target
    cols = {"request_id": [keys[i][0] for i in rows], "example": [keys[i][1] for i in rows]}
    if t.task == "regression":
        cols.update({c: y[rows, j].astype(float).tolist() for j, c in enumerate(t.columns)})
    else:
        cols[t.columns[0]] = y[rows].astype(int).tolist()
    return pa.table(cols)


def _assert_rows(got, x, y, rows):
    gx, gy = got
    assert sorted(gx) == sorted(x)
    for name in x:
        np.testing.assert_array_equal(gx[name], x[name][rows])
        assert gx[name].dtype == x[name].dtype
    np.testing.assert_allclose(gy, y[rows], rtol=1e-6)
    assert gy.dtype == y.dtype


@pytest.mark.parametrize("name", ("digits", "tabular", "regression", "text"))
def test_live_slice_is_exactly_the_labelled_rows_the_version_answered_in_a_shadow(name, tmp_path, home):
    ws = Workspace.from_env()
    pipeline, x, y = _served(name, tmp_path)
    keys = _serve(_writer(pipeline, ws), x, y, pipeline.config.task)
    # rows: req-0 0-1 (shadow 3), req-1 2 (none), req-2 3-5 (3), req-3 6-7 (4), req-4 8-9 (3)
    assert feedback.live_slice(pipeline, ws, "3") is None  # served, but nothing labelled yet

    # Every row but req-2 example 1 and req-4, in another order.
    feedback.label(pipeline, ws, _labels(keys, [7, 0, 2, 5, 3, 1, 6], y, pipeline))
    _assert_rows(feedback.live_slice(pipeline, ws, "3"), x, y, [0, 1, 3, 5])
    _assert_rows(feedback.live_slice(pipeline, ws, "4"), x, y, [6, 7])
    assert feedback.live_slice(pipeline, ws, "2") is None  # the answering champion was never a shadow
    assert feedback.live_slice(pipeline, ws, "7") is None

    # Labels that arrive later join the slice; rows stay in the order they were served.
    out = feedback.label(pipeline, ws, _labels(keys, [9, 8, 4], y, pipeline))
    assert out["joined"] == 3
    _assert_rows(feedback.live_slice(pipeline, ws, "3"), x, y, [0, 1, 3, 4, 5, 8, 9])


def test_a_request_id_served_twice_counts_the_answer_its_label_joined(tmp_path, home):
    """label() joins a label with the last request served under its id: live_slice takes the
    same row, so the slice never pairs a label with inputs it was not given for."""
    ws = Workspace.from_env()
    pipeline, x, y = _served("digits", tmp_path)
    keys = _serve(_writer(pipeline, ws), x, y, "classification", sizes=[1, 1, 1, 1], shadows=["3", None, None, "3"],
                  ids=["again", "again", "other", "other"])
    feedback.label(pipeline, ws, _labels(keys, [1, 3], y, pipeline))  # the labels of the last rows
    _assert_rows(feedback.live_slice(pipeline, ws, "3"), x, y, [3])  # "again" last served unshadowed


def test_labels_joined_before_labels_were_kept_are_left_out_and_stay_written(tmp_path, home):
    ws = Workspace.from_env()
    pipeline, x, y = _served("digits", tmp_path)
    keys = _serve(_writer(pipeline, ws), x, y, "classification")
    state = feedback.location(pipeline, ws) / "_labels"
    state.mkdir(parents=True)
    # joined.parquet as an earlier `plaster label` wrote it: keys and shard, no labels
    pq.write_table(pa.table({"request_id": ["req-0", "req-0"], "example": pa.array([0, 1], pa.int64()),
                             "shard": ["feedback-old.parquet"] * 2}), state / "joined.parquet")
    assert feedback.live_slice(pipeline, ws, "3") is None

    out = feedback.label(pipeline, ws, _labels(keys, [0, 1, 3, 4], y, pipeline))
    assert (out["joined"], out["already_labelled"]) == (2, 2)
    _assert_rows(feedback.live_slice(pipeline, ws, "3"), x, y, [3, 4])
    assert pq.read_table(state / "joined.parquet").num_rows == 4


class _Registry(FakeRegistry):
    """Two registered versions, each downloaded to its own folder; gate runs recorded."""

    def __init__(self):
        super().__init__()
        self.versions.update({v: {"cycle_id": None, "tags": {}, "files": {}} for v in ("2", "3")})
        self.aliases.update({"champion": "2", "challenger": "3"})

    def fetch(self, model, version, download_to):
        return VersionRef(str(version), "run", str(Path(download_to) / str(version)), "fp32", "onnxruntime")

    def start_run(self, model, name, tags):
        self.runs[name] = "RUNNING"
        return name


def test_plaster_gate_judges_the_candidate_and_champion_on_the_live_slice(tmp_path, home, digits, monkeypatch):
    """api.gate end to end but for the engines: scripted runners (the candidate answers 0, the
    champion 8) make each slice's accuracy the share of its labels that are 0 or 8."""
    from orchestrator.stages import build, validate

    cfg = yaml.safe_load((digits / "pipeline.yaml").read_text())
    cfg["validate"].update({"rounds": 6, "calls_per_round": 1, "warmup": 0, "latency_batches": [1],
                            "throughput_batches": [1], "energy_seconds": 0.01})
    cfg["build"]["precisions"] = ["fp32"]
    (digits / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
    ws = Workspace.from_env()
    api.simulate(digits, 1)  # the golden slice
    pipeline, x, y = _served("digits", tmp_path, digits)
    versions = ws.home / "versions" / "digits"
    for v in ("2", "3"):
        (versions / v / "variants").mkdir(parents=True)
        (versions / v / "variants" / "fp32.onnx").write_bytes(v.encode())
    (versions / "3" / "holdout").mkdir()
    save_arrays(versions / "3" / "holdout" / "new.npz", {"input": x["input"][20:60]}, y[20:60])

    def engines(ctx, backends, variants):
        return [Engine("onnxruntime", v.precision, v.path, v.sha256, v.sha256, v.sha256, True, 0.0) for v in variants]

    def runner(backend, path):
        answer = 0 if Path(path).parent.parent.name == "3" else 8
        return lambda batch: np.eye(10, dtype=np.float32)[np.full(len(batch["input"]), answer)]

    monkeypatch.setattr(build, "engines_for", engines)
    monkeypatch.setattr(validate, "load_runner", runner)
    monkeypatch.setattr(validate, "model_sizes", lambda *a: (ModelSize(1, 1), None))
    registry = _Registry()

    before = api.gate(digits, registry=registry)["scorecard"]
    assert "live" not in before["chosen"]["accuracy"]  # no labelled shadow traffic yet

    keys = _serve(_writer(pipeline, ws), x, y, "classification")
    feedback.label(pipeline, ws, _labels(keys, list(range(10)), y, pipeline))
    said = []
    out = api.gate(digits, registry=registry, say=said.append)
    sc, live = out["scorecard"], y[[0, 1, 3, 4, 5, 8, 9]]  # the rows shadowed by v3
    assert list(sc["chosen"]["accuracy"]) == ["new", "golden", "live"]
    assert sc["chosen"]["accuracy"]["live"]["value"] == pytest.approx(np.mean(live == 0))
    d = next(d for d in sc["comparison"]["accuracy"] if d["slice"] == "live")
    assert d["n"] == 7 and d["champion"] == pytest.approx(np.mean(live == 8))
    assert d["diff"] == pytest.approx(np.mean(live == 0) - np.mean(live == 8))
    assert any("live slice: 7 labelled" in m for m in said)
    # The rules name golden and new only: the extra slice is shown, judged by none of them.
    rules = [v["rule"] for v in sc["verdicts"]]
    assert rules == [v["rule"] for v in before["verdicts"]] and not any("live" in r for r in rules)
    assert registry.runs[out["run_id"]] == "FINISHED"
