"""A cycle started by drift: the champion keeps its training data's profile with its version;
new shards that moved beyond schedule.drift_threshold start a cycle even below
ingest.min_new_rows, and the scorecard shows the drift row."""

import re

import pytest
from polling import decided, wait_for

from orchestrator import api, scheduler
from orchestrator.workspace import Workspace

pytestmark = pytest.mark.integration


def test_drift_starts_a_cycle_and_the_scorecard_and_report_show_it(home, digits, tmp_path):
    ws = Workspace.from_env()
    api.simulate(digits, shards=4)
    first = api.run_cycle(digits)
    assert first["decision"] == "PROMOTED", first["reasons"]
    assert first["stages"]["validate"]["output"]["drift"] is None, "no champion: no drift to measure"

    yaml_file = digits / "pipeline.yaml"
    text = re.sub(r"min_new_rows: .*", "min_new_rows: 100000", yaml_file.read_text())
    if "min_new_rows" not in text:
        text = text.replace("ingest:\n", "ingest:\n  min_new_rows: 100000\n", 1)
    folder = str(digits.resolve())
    # One new shard of the stream: 250 rows, far below min_new_rows, but rotated, thicker and
    # noisier than what the champion learned (PSI ~7 on the worst pixel here).
    api.simulate(digits, shards=1)
    yaml_file.write_text(text + "\nschedule: {poll_seconds: 1, drift_threshold: 1000}\n")
    calm = scheduler.Daemon([digits]).start()
    try:
        assert calm.due(folder) is None, "below the threshold and min_new_rows: not due"
    finally:
        calm.shutdown()

    yaml_file.write_text(text + "\nschedule: {poll_seconds: 1, drift_threshold: 2.0}\n")
    d = scheduler.Daemon([digits]).start()
    try:
        rec = wait_for(lambda: decided(ws, "drift"), 300, "a drift-triggered cycle")
    finally:
        d.shutdown()
    snap = rec["stages"]["ingest"]["output"]
    assert [s["rows"] for s in snap["new_shards"]] == [250], "a drift trigger learns what arrived"
    moved = snap["drift"]
    assert moved["score"] >= 2.0 and moved["metric"] == "psi" and moved["top"][0][0] == moved["worst"]
    sc = rec["stages"]["validate"]["output"]
    assert sc["drift"]["worst"] == moved["worst"] and sc["champion_version"] == "1"
    (card,) = [p for p in ws.home.rglob("scorecard/scorecard.md") if rec["id"] in str(p)]
    text = card.read_text()
    assert "## Drift (the 250 new rows vs the champion's training data" in text and f"| {moved['worst']} |" in text

    from orchestrator import report

    h = api.history(digits)
    assert h["cycles"][-1]["drift"]["worst"] == moved["worst"]
    report.write_html(h, tmp_path / "report")
    assert f"psi {moved['score']:.3g} ({moved['worst']})" in (tmp_path / "report" / "index.html").read_text()
