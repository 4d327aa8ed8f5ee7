"""Every reference pipeline through the whole product: two real cycles (PROMOTED, then PROMOTED
against the champion), `plaster gate`, `plaster serve` with a good request and bad ones,
`plaster history` and the report. Tabular columns, token ids with a second dense input
(multilabel), a regression target gated on MAE, and the hooks pipeline."""

import json
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import requests
from typer.testing import CliRunner

from orchestrator import api, serving
from orchestrator.cli import app
from orchestrator.config import load_pipeline
from orchestrator.dataset import load_arrays

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = ("tabular", "text", "regression", "weighted")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=PIPELINES)
def cycles(request, tmp_path_factory):
    name = request.param
    mp = pytest.MonkeyPatch()
    tmp = tmp_path_factory.mktemp(name)
    mp.setenv("PLASTER_HOME", str(tmp / "plaster-home"))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("PLASTER_CRASH_AFTER", raising=False)
    folder = tmp / "pipelines" / name
    shutil.copytree(ROOT / "pipelines" / name, folder)
    api.simulate(folder, shards=4)
    first = api.run_cycle(folder)
    api.simulate(folder, shards=4)
    second = api.run_cycle(folder)
    yield SimpleNamespace(name=name, folder=folder, first=first, second=second, pipeline=load_pipeline(folder))
    mp.undo()


def test_two_cycles_promote_and_the_second_is_judged_against_the_champion(cycles):
    first, second = cycles.first, cycles.second
    assert (first["decision"], first["version"]) == ("PROMOTED", "1"), first["reasons"]
    assert (second["decision"], second["version"]) == ("PROMOTED", "2"), second["reasons"]
    task = cycles.pipeline.task
    sc = second["stages"]["validate"]["output"]
    assert sc["champion_version"] == "1" and sc["chosen"]["metric"] == task.primary
    assert set(sc["chosen"]["metrics"]) == set(task.metrics)
    diffs = {(d["slice"], d["metric"]) for d in sc["comparison"]["accuracy"]}
    assert {("new", m) for m in task.metrics} <= diffs, "every metric paired on the new slice"
    for d in sc["comparison"]["accuracy"]:
        assert d["ci"][0] <= d["diff"] <= d["ci"][1]
    train = second["stages"]["train"]["output"]
    assert train["warm_started_from"] == "1" and f"train_{task.primary}" in train["history"][-1]
    assert train["mixed_precision"].startswith("off: training on CPU")
    onnx_inputs = second["stages"]["export"]["output"]["input_names"]
    assert set(onnx_inputs) == {i.name for i in cycles.pipeline.inputs}
    assert {p["precision"] for p in sc["candidate"]} == {"fp32", "fp16", "int8"}
    assert second["cycle_time_s"] > 0


def test_hooks_and_training_settings_reach_the_loop(cycles):
    train = cycles.first["stages"]["train"]["output"]
    if cycles.name == "weighted":
        assert set(train["hooks"]) == {"loss", "build_optimizer", "augment"}
        assert "lr" in train["history"][0], "the schedule's learning rate is in the history"
        lrs = [row["lr"] for row in train["history"]]
        assert lrs[-1] < lrs[0], "cosine decay lowered the learning rate"
    if cycles.pipeline.config.train.early_stopping_patience:
        assert all("val_loss" in row for row in train["history"])
        snapshot = cycles.first["stages"]["ingest"]["output"]
        assert snapshot["validation_file"] and Path(snapshot["validation_file"]).exists()
        _, vy = load_arrays(snapshot["validation_file"])
        _, hy = load_arrays(snapshot["holdout_new_file"])
        assert len(vy) > 0 and len(hy) > 0


def test_the_version_page_tells_the_story(cycles):
    from mlflow import MlflowClient

    from orchestrator.workspace import Workspace

    ws = Workspace.from_env()
    client = MlflowClient(tracking_uri=ws.tracking_uri, registry_uri=ws.tracking_uri)
    v2 = client.get_model_version(cycles.name, "2")
    task = cycles.pipeline.task
    assert v2.description.startswith("**PROMOTE** vs champion v1") and f"| {task.primary} (new) |" in v2.description
    assert f"[scorecard/scorecard.md](#/experiments/{client.get_run(v2.run_id).info.experiment_id}/runs/" in v2.description
    assert "p99 @ batch 1" in v2.description
    assert float(v2.tags[f"plaster.{task.primary}.new"]) > 0 and f"plaster.{task.primary}.new.diff" in v2.tags
    found = client.search_model_versions(f"name = '{cycles.name}' and tags.`plaster.decision` = 'PROMOTE'")
    assert {str(m.version) for m in found} == {"1", "2"}
    model = client.get_registered_model(cycles.name)
    assert f"task: {task.name}" in model.description and cycles.pipeline.inputs[0].name in model.description
    # Cycle time and the data-to-live lag, known after promotion, end the page and tag the version.
    assert "cycle time" in v2.description and "data-to-live lag" in v2.description
    assert float(v2.tags["plaster.cycle_time_s"]) > 0 and float(v2.tags["plaster.data_to_live_s"]) > 0


# MLflow's UI asks who is logged in; without its auth app that is a 404 on every page.
MLFLOW_OWN_404 = ("/ajax-api/2.0/mlflow/users/current",)


def test_a_reviewer_reads_the_story_in_a_browser(cycles, tmp_path):
    """The version page and the run's scorecard in the MLflow 3 UI, and `plaster report`'s
    HTML, rendered by headless Chromium: the decision and headline figures are on screen."""
    from browser import browser
    from mlflow import MlflowClient
    from servers import mlflow_server_at

    from orchestrator.workspace import Workspace

    ws = Workspace.from_env()
    client = MlflowClient(tracking_uri=ws.tracking_uri, registry_uri=ws.tracking_uri)
    v2 = client.get_model_version(cycles.name, "2")
    run = client.get_run(v2.run_id)
    primary = cycles.pipeline.task.primary
    row = next(line for line in v2.description.splitlines() if line.startswith(f"| {primary} (new) |"))
    candidate_cell = row.strip("|").split("|")[1].strip()
    rep = CliRunner().invoke(app, ["report", str(cycles.folder), "--out", str(tmp_path / "report")])
    assert rep.exit_code == 0, rep.output
    with browser() as look, mlflow_server_at(tmp_path, ws.tracking_uri) as url:
        page = look(f"{url}/#/models/{cycles.name}/versions/2", "vs champion v1")
        assert "PROMOTE" in page.text and "**PROMOTE**" not in page.text, "the description renders as Markdown"
        assert f"{primary} (new)" in page.text and candidate_cell in page.text, page.text[:3000]
        assert "p99 @ batch 1" in page.text and "data-to-live lag" in page.text
        assert [f for f in page.failed if not f.endswith(MLFLOW_OWN_404)] == [], page.failed

        # The page's own link to the full scorecard is what a reviewer follows.
        href = page.links.get("scorecard/scorecard.md", "")
        assert href.endswith(f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
                             "/artifacts/scorecard/scorecard.md"), page.links
        card = look(href, "Gate →")
        assert "Gate → PROMOTE" in card.text, card.text[:3000]
        assert f"{primary} (new)" in card.text and candidate_cell in card.text, card.text[:3000]
        assert "latency p99 @ batch 1 (ms)" in card.text
        assert [f for f in card.failed if not f.endswith(MLFLOW_OWN_404)] == [], card.failed

        # The version list shows the headline tags beside each version.
        versions = look(f"{url}/#/models/{cycles.name}", "Version 2")
        assert f"plaster.{primary}.new" in versions.text, versions.text[:3000]

        report = look((tmp_path / "report" / "index.html").as_uri(), "Plots")
        assert report.images and all(report.images.values()), f"images that did not load: {report.images}"
        assert report.console_errors == [] and report.failed == [], (report.console_errors, report.failed)
        assert "PROMOTED" in report.text


def test_gate_history_and_report(cycles, tmp_path):
    runner = CliRunner()
    gate = runner.invoke(app, ["gate", str(cycles.folder), "--candidate", "2", "--junit", str(tmp_path / "g.xml")])
    assert gate.exit_code == 0, gate.output
    assert "Gate → PROMOTE" in gate.output and (tmp_path / "g.xml").exists()
    h = json.loads(runner.invoke(app, ["history", str(cycles.folder), "--json"]).stdout)
    assert [c["decision"] for c in h["cycles"]] == ["PROMOTED", "PROMOTED"]
    assert h["cycles"][-1]["metric"] == cycles.pipeline.task.primary
    rep = runner.invoke(app, ["report", str(cycles.folder), "--out", str(tmp_path / "report")])
    assert rep.exit_code == 0, rep.output
    assert (tmp_path / "report" / "accuracy.png").read_bytes().startswith(b"\x89PNG")


def _bad_requests(pipeline) -> list[tuple[dict, str]]:
    """(body, a phrase the 422 must contain), per declared input."""
    inputs = pipeline.inputs
    out = []
    for i in inputs:
        good = {j.name: np.zeros((1, *j.shape), j.dtype).tolist() for j in inputs}
        if i.dtype == "int64":
            good[i.name] = np.full((1, *i.shape), i.vocab_size, np.int64).tolist()
            out.append(({"inputs": good}, f"outside 0..{i.vocab_size - 1}"))
            bad = {j.name: np.zeros((1, *j.shape), j.dtype).tolist() for j in inputs}
            bad[i.name] = np.full((1, *i.shape), 0.5).tolist()
            out.append(({"inputs": bad}, "integer ids"))
        else:
            bad = dict(good)
            bad[i.name] = [["x"] * int(np.prod(i.shape))]
            out.append(({"inputs": bad if len(inputs) > 1 else bad[i.name]}, "numbers"))
        short = {j.name: np.zeros((1, *j.shape), j.dtype).tolist() for j in inputs}
        short[i.name] = [[0] * (int(np.prod(i.shape)) + 1)]
        out.append(({"inputs": short if len(inputs) > 1 else short[i.name]}, "shape"))
    if len(inputs) > 1:
        out.append(({"inputs": {inputs[0].name: np.zeros((1, *inputs[0].shape)).tolist()}}, "missing"))
    return out


def test_serve_answers_a_good_request_and_names_what_a_bad_one_got_wrong(cycles):
    p = cycles.pipeline
    hx, hy = load_arrays(cycles.second["stages"]["ingest"]["output"]["holdout_new_file"])
    server = serving.start(cycles.folder, port=_free_port(), poll_s=0.5)
    try:
        body = {"inputs": {k: v[:3].tolist() for k, v in hx.items()}}
        r = requests.post(f"{server.url}/predict", json=body, timeout=30)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["version"] == "2" and np.asarray(out["outputs"]).shape == (3, p.target.outputs)
        if p.task.name == "classification":
            assert all(0 <= c < p.target.outputs for c in out["predictions"])
        elif p.task.name == "multilabel":
            assert set(np.ravel(out["predictions"])) <= {0, 1}
        for bad, phrase in _bad_requests(p):
            r = requests.post(f"{server.url}/predict", json=bad, timeout=30)
            assert r.status_code == 422 and phrase in r.json()["error"], (bad, r.text)
    finally:
        server.stop()


ROLLOUT = """
rollout: {strategy: linear, fraction: 0.4, bake_s: 2, min_requests: 20, min_agreement: 0.3, check_s: 0.5}
feedback: {enabled: true, flush_rows: 50, flush_s: 0.5}
"""


def test_a_linear_rollout_and_the_feedback_loop_hold_for_every_pipeline(cycles):
    """v1 served, v2 rolled out beside it in steps of 40% (both engines on each watched request,
    the task's own agreement), every answered request kept in the pipeline's schema, labelled,
    and the labelled shard readable as data (the next cycle's input)."""
    import time

    from orchestrator import feedback, ledger, rollout
    from orchestrator.dataset import read_shard
    from orchestrator.workspace import Workspace

    p = cycles.pipeline
    (cycles.folder / "pipeline.yaml").write_text((cycles.folder / "pipeline.yaml").read_text() + ROLLOUT)
    ws = Workspace.from_env()
    registry = api.registry_for(ws)
    registry.set_alias(p.name, "champion", "1")  # serve v1, then move to v2 as an approval would
    hx, hy = load_arrays(cycles.second["stages"]["ingest"]["output"]["holdout_new_file"])
    server = serving.start(cycles.folder, port=_free_port(), poll_s=0.5)
    answered, failed = {}, []
    try:
        registry.set_alias(p.name, "previous", "1")
        registry.set_alias(p.name, "champion", "2")
        ledger.record(ws, p.name, "champion", "1", "2", ledger.APPROVE, "rollout test")
        deadline, i = time.monotonic() + 90, 0
        with requests.Session() as s:
            while not rollout.load(ws, p.name) and time.monotonic() < deadline:
                k = i % len(hy)
                r = s.post(f"{server.url}/predict", json={"inputs": {n: v[k:k + 1].tolist() for n, v in hx.items()}},
                           timeout=30)
                if r.status_code == 200:
                    answered[r.json()["request_id"]] = (k, r.json()["version"])
                else:
                    failed.append(r.text)
                i += 1
    finally:
        server.stop()  # writes the last feedback batch
    done = rollout.load(ws, p.name)
    assert done, "the rollout never ended"
    r = done[0]
    assert failed == [] and {v for _, v in answered.values()} <= {"1", "2"}
    assert r["outcome"] in (rollout.COMPLETED, rollout.ROLLED_BACK), r
    if r["outcome"] == rollout.COMPLETED:
        assert [s["fraction"] for s in r["steps"]] == [0.4, 0.8], r["steps"]
    assert {"latency_ratio", "agreement", "error_rate"} <= set(r["figures"]), r["figures"]
    print(f"{p.name}: linear rollout {r['outcome']} after {r['figures']['requests']} watched requests, agreement "
          f"{r['figures']['agreement']:.1%}, time ratio {r['figures']['latency_ratio']:.2f}")

    import pyarrow as pa

    labels = {"request_id": list(answered)}
    for j, c in enumerate(p.target.columns):
        y = hy[[k for k, _ in answered.values()]]
        if p.task.name == "regression":  # [N, targets]: one column each
            y = y.reshape(len(y), -1)[:, j]
        labels[c] = y.tolist()
    joined = feedback.label(p, ws, pa.table(labels))
    assert joined["joined"] == len(answered) and joined["pending"] == 0, joined
    x, y = read_shard(Path(joined["shards"][0]), p.inputs, p.target)
    order = sorted(answered)  # the shard holds the rows in the order they were served; compare as sets of rows
    assert len(y) == len(order)
    sent = {n: np.sort(v[[answered[i][0] for i in order]].reshape(len(order), -1), axis=0) for n, v in hx.items()}
    for n in hx:
        assert np.allclose(np.sort(x[n].reshape(len(y), -1), axis=0), sent[n], atol=1e-6), n
