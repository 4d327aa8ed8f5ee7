"""The whole cycle for real: local Ray Train, ONNX Runtime engines, MLflow on SQLite; then
`plaster gate` re-judging the registered versions."""

import json
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from homes import module_home
from typer.testing import CliRunner

from orchestrator import api
from orchestrator.cli import app
from orchestrator.config import load_pipeline

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cycles(tmp_path_factory):
    """Four cycles on one registry: PROMOTED v1, PROMOTED v2, SKIPPED, REJECTED v3 (shuffled labels)."""
    mp, digits = module_home(tmp_path_factory, "cycles")

    # Cycle 1: four shards plus a corrupt one and a wrong-schema one.
    shards = api.simulate(digits, shards=4)
    src = shards[0].parent
    (src / "broken.parquet").write_bytes(b"not parquet at all")
    pq.write_table(pa.table({"img": pa.array([[0.0] * 64]), "digit": pa.array([3])}), src / "wrong-schema.parquet")
    first = api.run_cycle(digits)
    # Cycle 2: drifted shards; the candidate warm-starts from v1 and is judged against it.
    api.simulate(digits, shards=4)
    second = api.run_cycle(digits)
    # No new data.
    skipped = api.run_cycle(digits)
    # A deliberately worse candidate.
    bad_shards = api.simulate(digits, shards=4, shuffle_labels=True)
    bad = api.run_cycle(digits)
    yield SimpleNamespace(digits=digits, src=src, first=first, second=second, skipped=skipped, bad=bad,
                          bad_shards=bad_shards)
    mp.undo()


def test_first_cycle_promotes_and_quarantines_bad_shards(cycles):
    first = cycles.first
    assert first["decision"] == "PROMOTED" and first["version"] == "1"
    assert {q["name"] for q in first["quarantined"]} == {"broken.parquet", "wrong-schema.parquet"}
    assert (cycles.src / "_quarantine" / "broken.parquet").exists()
    assert set(first["stages"]) == {"ingest", "train", "export", "build", "validate", "promote"}
    assert first["cycle_time_s"] > 0 and first["data_to_live_s"] >= first["cycle_time_s"]
    train = first["stages"]["train"]["output"]
    assert train["warm_started_from"] is None and len(train["history"]) == 30
    # Right-sized: where it trained (in the driver for digits' seconds of compute, unless the machine
    # was so loaded the estimate crossed the threshold) and why are in the record.
    assert train["placement"] in ("in_process", "ray_train") and "estimated compute" in train["workers_reason"]
    sc = first["stages"]["validate"]["output"]
    assert sc["comparison"] is None and {p["precision"] for p in sc["candidate"]} == {"fp32", "fp16", "int8"}


def test_retrained_candidate_beats_the_stale_champion_with_a_paired_interval(cycles):
    second = cycles.second
    sc = second["stages"]["validate"]["output"]
    assert sc["champion_version"] == "1" and sc["champion"] is not None
    train = second["stages"]["train"]["output"]
    assert train["warm_started_from"] == "1"
    # Fine-tuning the champion: the pipeline's warm-start epochs and learning rate, not a full training.
    cfg = load_pipeline(cycles.digits).config.train
    assert cfg.warm_start_epochs and cfg.warm_start_epochs < cfg.epochs
    assert len(train["history"]) == train["epochs"] == cfg.warm_start_epochs
    assert train["lr"] == (cfg.warm_start_lr or cfg.lr)
    new = next(d for d in sc["comparison"]["accuracy"] if d["slice"] == "new")
    assert new["ci"][0] > 0, f"retraining on drifted data must beat the stale champion beyond noise: {new}"
    assert {r["batch"] for r in sc["comparison"]["latency"]} == {1, 64}
    assert sc["size"]["param_count"] > 0 and sc["size"]["flops_per_sample"] > sc["size"]["param_count"]
    assert sc["chosen"]["throughput"]["value"] > 0 and sc["rate"]["epochs"] == cfg.warm_start_epochs
    assert second["decision"] == "PROMOTED" and second["version"] == "2"

    # MLflow's own client loads the champion and reads digits correctly.
    import mlflow.pyfunc
    from mlflow import MlflowClient

    from orchestrator.dataset import load_arrays

    client = MlflowClient()
    assert client.get_model_version_by_alias("digits", "champion").version in ("2", 2)
    assert str(client.get_model_version_by_alias("digits", "previous").version) == "1"
    gx, gy = load_arrays(Path(second["stages"]["ingest"]["output"]["golden_file"]))
    out = mlflow.pyfunc.load_model("models:/digits@champion").predict(gx)
    logits = next(iter(out.values()))
    assert (logits.argmax(1) == gy).mean() > 0.85
    run = client.get_run(second["run_id"])
    assert "scorecard.accuracy.new.diff_ci_low" in run.data.metrics
    listed = {a.path for a in client.list_artifacts(second["run_id"], "scorecard")}
    assert {"scorecard/scorecard.md", "scorecard/latency.png"} <= listed


def test_skip_and_reject(cycles):
    assert cycles.skipped["decision"] == "SKIPPED" and "min_new_rows" in cycles.skipped["reasons"][0]
    bad = cycles.bad
    assert bad["decision"] == "REJECTED", bad["reasons"]
    # Its labels are noise, so it cannot reach the absolute bar on the newest data.
    assert any(r.startswith("accuracy_min.new: FAIL") for r in bad["reasons"]), bad["reasons"]
    from mlflow import MlflowClient

    assert str(MlflowClient().get_model_version_by_alias("digits", "champion").version) == "2"
    st = api.status(cycles.digits)
    assert st["champion"] == {"name": "digits", "version": "2"} and st["tracking_uri"].startswith("sqlite:///")
    assert [c["decision"] for c in st["cycles"]] == ["PROMOTED", "PROMOTED", "SKIPPED", "REJECTED"]
    c = st["cycles"][1]
    assert set(c["stage_seconds"]) >= {"train", "validate"} and c["data_to_live_s"] > 0
    json.dumps(st)  # --json prints exactly this


def test_gate_exit_codes_reject_and_hold(cycles, tmp_path):
    import xml.etree.ElementTree as ET

    runner = CliRunner()
    report = tmp_path / "reports" / "gate.xml"
    rejected = runner.invoke(app, ["gate", str(cycles.digits), "--candidate", "3", "--junit", str(report)])
    assert rejected.exit_code == 1, rejected.output
    assert "Gate → REJECT" in rejected.output and "accuracy_min.new" in rejected.output
    # The same verdicts as a CI system shows them: the failing rule is a failed test case.
    suite = ET.parse(report).getroot().find("testsuite")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert cases["accuracy_min.new"].find("failure") is not None
    assert "< 0.7" in cases["accuracy_min.new"].find("failure").get("message")
    assert int(suite.get("failures")) >= 1 and int(suite.get("tests")) == len(cases)
    assert {p.get("name"): p.get("value") for p in suite.iter("property")}["decision"] == "REJECT"

    # Manual promotion: a passing version is held for approval (exit 2), never promoted by CI.
    yaml = cycles.digits / "pipeline.yaml"
    text = yaml.read_text()
    yaml.write_text(text.replace("promotion: auto", "promotion: manual"))
    try:
        held = runner.invoke(app, ["gate", str(cycles.digits), "--candidate", "2", "--json"])
    finally:
        yaml.write_text(text)
    assert held.exit_code == 2, held.output
    assert json.loads(held.stdout)["decision"] == "HOLD"
    from mlflow import MlflowClient

    assert str(MlflowClient().get_model_version_by_alias("digits", "champion").version) == "2", "gate moves no alias"


def test_held_version_approved_then_rolled_back_and_the_history_shows_it(cycles, tmp_path):
    from mlflow import MlflowClient

    client, runner = MlflowClient(), CliRunner()
    yaml = cycles.digits / "pipeline.yaml"
    text = yaml.read_text()
    yaml.write_text(text.replace("promotion: auto", "promotion: manual"))
    for shard in cycles.bad_shards:  # what a user does after that REJECT: set the bad shards aside
        shard.rename(cycles.src / "_quarantine" / shard.name)
    try:
        api.simulate(cycles.digits, shards=4)
        held = api.run_cycle(cycles.digits)
    finally:
        yaml.write_text(text)
    assert held["decision"] == "HELD", held["reasons"]
    v = held["version"]
    assert str(client.get_model_version_by_alias("digits", "challenger").version) == v
    assert str(client.get_model_version_by_alias("digits", "champion").version) == "2", "held, not promoted"
    page = client.get_model_version("digits", v).description
    assert "**HELD, awaiting approval**" in page and f"plaster approve {cycles.digits} {v}" in page, page

    approved = runner.invoke(app, ["approve", str(cycles.digits), v, "--reason", "plots look right"])
    assert approved.exit_code == 0, approved.output
    assert str(client.get_model_version_by_alias("digits", "champion").version) == v
    assert str(client.get_model_version_by_alias("digits", "previous").version) == "2"
    assert "**Approved**" in client.get_model_version("digits", v).description.split("**HELD")[-1]
    again = runner.invoke(app, ["approve", str(cycles.digits), v])
    assert again.exit_code == 1 and "not awaiting approval" in again.output

    rolled = runner.invoke(app, ["rollback", str(cycles.digits), "--reason", "p99 doubled in production"])
    assert rolled.exit_code == 0, rolled.output
    assert str(client.get_model_version_by_alias("digits", "champion").version) == "2"
    assert client.get_model_version("digits", v).tags["plaster.rolled_back"] == "true"

    h = json.loads(runner.invoke(app, ["history", str(cycles.digits), "--json"]).stdout)
    kinds = [(m["kind"], m["from"], m["to"]) for m in h["alias_moves"]]
    assert kinds == [("promote", None, "1"), ("promote", "1", "2"), ("approve", "2", v), ("rollback", v, "2")]
    assert h["alias_moves"][-1]["reason"] == "p99 doubled in production"
    assert h["devops"]["change_failure_rate"] == pytest.approx(1 / 3)
    table = runner.invoke(app, ["history", str(cycles.digits)])
    assert table.exit_code == 0 and "p99 doubled in production" in table.output and "HELD" in table.output

    out = tmp_path / "report"
    rep = runner.invoke(app, ["report", str(cycles.digits), "--out", str(out)])
    assert rep.exit_code == 0, rep.output
    html = (out / "index.html").read_text()
    assert "cycle_time.png" in html and "p99 doubled in production" in html
    assert all((out / f).read_bytes().startswith(b"\x89PNG") for f in ("cycle_time.png", "stages.png", "accuracy.png"))
    runs = client.search_runs([client.get_experiment_by_name("plaster/digits").experiment_id],
                              "tags.`plaster.report` = 'true'")
    assert len(runs) == 1 and {a.path for a in client.list_artifacts(runs[0].info.run_id, "report")} >= {"report/index.html"}
