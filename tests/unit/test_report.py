import json
import re

import pytest
from rich.console import Console

from orchestrator import report

T0 = 1_700_000_000.0
T1 = T0 + 3600  # v2 promoted
T2 = T1 + 1800  # v2 rolled back to v1
T3 = T2 + 7200  # held v4 approved
EVIL = "<script>alert(1)</script> labels shifted"
STAGES = {"ingest": 1.2, "train": 26.5, "export": 3.7, "build": 5.0, "validate": 8.1, "promote": 1.0}


def move(at, frm, to, kind, reason, cycle_id=None):
    return {"at": at, "pipeline": "digits", "alias": "champion", "from": frm, "to": to, "kind": kind,
            "actor": "ci", "reason": reason, "cycle_id": cycle_id}


def cycle(cid, decided, seconds, decision, version, lag=None, before=None, after=None, moves=(), stages=STAGES):
    return {"id": cid, "started_at": decided - seconds, "decided_at": decided, "state": "done", "trigger": "schedule",
            "decision": decision, "version": version, "champion_before": None, "data_to_live_s": lag,
            "cycle_time_s": seconds, "stage_seconds": stages, "new_accuracy_champion": before,
            "new_accuracy_candidate": after, "new_rows": 600, "alias_moves": list(moves)}


def make():
    m1 = move(T0, None, "1", "promote", "gate PROMOTE: 3 rule(s) passed", "20231114-221110-a1b2c1")
    m2 = move(T1, "1", "2", "promote", "gate PROMOTE: 3 rule(s) passed", "20231114-221120-a1b2c2")
    cycles = [
        cycle("20231114-221110-a1b2c1", T0, 100.0, "PROMOTED", "1", lag=150.0, after=0.9, moves=[m1]),
        cycle("20231114-221120-a1b2c2", T1, 60.0, "PROMOTED", "2", lag=90.0, before=0.8, after=0.94, moves=[m2]),
        cycle("20231114-221130-a1b2c3", T2 + 600, 50.0, "REJECTED", "3", before=0.9, after=0.85),
        cycle("20231114-221140-a1b2c4", T2 + 1200, 2.0, "SKIPPED", None, stages={"ingest": 2.0}),
        cycle("20231114-221150-a1b2c5", T2 + 2055, 55.0, "HELD", "4", before=0.9, after=0.91),
    ]
    moves = [m1, m2, move(T2, "2", "1", "rollback", EVIL), move(T3, "1", "4", "approve", "looked fine")]
    return {"pipeline": "digits", "cycles": cycles, "alias_moves": moves}


def empty():
    return {"pipeline": "digits", "cycles": [], "alias_moves": []}


def test_devops_figures():
    h = make()
    start = T0 - 100  # the first cycle's start: the first event
    d = report.devops(h, now=start + 2 * report.DAY)
    assert d["promotions"] == 3  # two promotes and an approval; the rollback is not one
    assert d["window_days"] == pytest.approx(2.0)
    assert d["promotions_per_day"] == pytest.approx(1.5)
    assert d["rollbacks"] == 1
    assert d["change_failure_rate"] == pytest.approx(1 / 3)
    assert d["median_time_to_restore_s"] == pytest.approx(T2 - T1)  # v2 live at T1, rolled back at T2
    assert d["median_lead_time_s"] == pytest.approx(120.0)  # PROMOTED lags 150 and 90
    assert d["median_cycle_time_s"] == pytest.approx(57.5)  # 100, 60, 50, 55: the SKIPPED 2 s does not count
    assert d["decisions"] == {"PROMOTED": 2, "REJECTED": 1, "SKIPPED": 1, "HELD": 1}


def test_devops_window_is_at_least_a_day():
    assert report.devops(make(), now=T3 + 60)["promotions_per_day"] == pytest.approx(3.0)


def test_time_to_restore_counts_from_the_latest_time_the_version_went_live():
    h = make()
    # v2 comes back by an undoing rollback at T3, then is rolled back again an hour later
    h["alias_moves"] = h["alias_moves"][:3] + [move(T3, "1", "2", "rollback", "undo"),
                                               move(T3 + 3600, "2", "1", "rollback", "again")]
    d = report.devops(h, now=T3 + 3600)
    assert d["rollbacks"] == 3 and d["promotions"] == 2
    assert d["median_time_to_restore_s"] == pytest.approx(3600.0)  # restores 1800, 7200 (v1 live since T2), 3600


def test_devops_empty_and_undecided():
    d = report.devops(empty(), now=T0)
    assert d == {"promotions": 0, "window_days": 1.0, "promotions_per_day": 0.0, "median_lead_time_s": None,
                 "median_cycle_time_s": None, "rollbacks": 0, "change_failure_rate": None,
                 "median_time_to_restore_s": None, "decisions": {}, "slo_data_to_live_s": None,
                 "lag_promoted_cycles": 0, "lag_p50_s": None, "lag_p95_s": None, "lag_within_slo": None,
                 "slo_budget_s": None, "lag_wait_p50_s": None, "lag_cycle_p50_s": None, "lag_rollout_p50_s": None,
                 "rollouts": 0, "auto_rollbacks": 0, "median_time_to_detect_s": None,
                 "median_time_to_restore_traffic_s": None}
    h = empty()
    h["cycles"] = [dict(cycle("c8", T0, 10.0, None, None), state="failed", decided_at=None, cycle_time_s=None)]
    assert report.devops(h, now=T0)["decisions"] == {"failed": 1}


@pytest.mark.parametrize("width", [100, 80])
def test_history_table(width):
    console = Console(record=True, width=width)
    report.history_table(console, make())
    text = console.export_text()
    for s in ("20231114-221110-a1b2c1", "20231114-221150-a1b2c5", "PROMOTED v2", "REJECTED v3", "SKIPPED", "HELD v4",
              "80.0% → 94.0%", "— → 90.0%",
              "v1 → v2", "rollback", "approve", "<script>alert(1)</script>", "2.5m", "tra 26.5",
              "2023-11-14 23:43"):
        assert s in text, s
    assert re.search(r"change-failure rate +33%", text) and re.search(r"median time to restore +30.0m", text)
    assert max(len(line) for line in text.splitlines()) <= width


def test_history_table_empty():
    console = Console(record=True, width=80)
    report.history_table(console, empty())
    text = console.export_text()
    assert "no cycles yet" in text and re.search(r"promotions +0 ", text)


def test_write_html(tmp_path):
    out = tmp_path / "report"
    files = report.write_html(make(), out, now=T3 + 60)
    names = {p.name for p in files}
    assert names == {"index.html", "history.json", "cycle_time.png", "stages.png", "accuracy.png"}
    for p in files:
        assert p.parent == out and p.exists()
        if p.suffix == ".png":
            assert p.read_bytes().startswith(b"\x89PNG")
    page = (out / "index.html").read_text(encoding="utf-8")
    for img in ("cycle_time.png", "stages.png", "accuracy.png"):
        assert f"<img src='{img}'" in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "digits" in page and "80.0% → 94.0%" in page and "33%" in page and "30.0m" in page
    data = json.loads((out / "history.json").read_text())
    assert data["devops"]["promotions"] == 3 and len(data["cycles"]) == 5


def test_write_html_empty(tmp_path):
    files = report.write_html(empty(), tmp_path / "r")
    assert [p.name for p in files] == ["index.html", "history.json"]
    page = files[0].read_text(encoding="utf-8")
    assert "No cycles yet" in page and "<img" not in page
    assert json.loads(files[1].read_text())["devops"]["promotions"] == 0


def test_write_html_with_an_unfinished_cycle(tmp_path):
    h = empty()  # a failed cycle: no decision, no decision time, only the stages it finished
    h["cycles"] = [dict(cycle("c9", T0, 10.0, None, None, stages={"ingest": 1.0}), state="failed", decided_at=None,
                        cycle_time_s=None)]
    files = report.write_html(h, tmp_path / "r", now=T0)
    assert {p.name for p in files} == {"index.html", "history.json", "cycle_time.png", "stages.png", "accuracy.png"}
    assert "<td>failed</td>" in files[0].read_text(encoding="utf-8")


def with_slo(seconds=120.0):
    h = make()
    h["slo"] = {"data_to_live_s": seconds}
    return h


def test_devops_slo_figures():
    d = report.devops(with_slo(), now=T3 + 60)
    # PROMOTED lags 150 and 90: numpy's linear p50 120, p95 90 + 0.95 * 60
    assert d["lag_promoted_cycles"] == 2
    assert (d["lag_p50_s"], d["lag_p95_s"]) == pytest.approx((120.0, 147.0))
    assert d["lag_within_slo"] == pytest.approx(0.5)
    assert d["slo_budget_s"] == pytest.approx(-27.0)
    # cycle 1: 100 s cycle, lag 150 → waited 50; cycle 2: 60 s, lag 90 → waited 30 (alias moved at decision)
    assert (d["lag_wait_p50_s"], d["lag_cycle_p50_s"], d["lag_rollout_p50_s"]) == pytest.approx((40.0, 80.0, 0.0))
    assert report.devops(with_slo(200.0), now=T3 + 60)["slo_budget_s"] == pytest.approx(53.0)


@pytest.mark.parametrize("width", [100, 80])
def test_history_table_slo(width):
    console = Console(record=True, width=width)
    report.history_table(console, with_slo())
    text = console.export_text()
    for s in ("2.5m > SLO", "wait 50.0s + cycle 100.0s", "wait 30.0s + cycle 60.0s", "rollout 0.0s", "tra 26.5"):
        assert s in text, s
    assert "90.0s > SLO" not in text and "lag 90.0s" in text  # the 90 s lag is within the 120 s SLO
    assert re.search(r"data-to-live SLO +2.0m", text)
    assert re.search(r"lag p50 / p95 +2.0m / 2.5m over 2 promoted cycle\(s\)", text)
    assert re.search(r"within SLO +50.0% \(1 of 2\)", text)
    assert re.search(r"SLO budget left +-27.0s \(breached\)", text)
    assert re.search(r"lag by part \(p50\) +wait 40.0s, cycle 80.0s, rollout 0.0s", text)
    assert max(len(line) for line in text.splitlines()) <= width


def test_history_table_without_slo():
    console = Console(record=True, width=80)
    report.history_table(console, make())
    text = console.export_text()
    assert "> SLO" not in text and re.search(r"data-to-live SLO +— \(set slo.data_to_live_s\)", text)
    assert re.search(r"SLO budget left +—", text)


def test_write_html_slo(tmp_path, monkeypatch):
    from orchestrator import plots

    figures, save = [], plots.save
    monkeypatch.setattr(plots, "save", lambda plt, fig, path: (figures.append((path.name, fig)), save(plt, fig, path))[1])
    out = tmp_path / "report"
    report.write_html(with_slo(), out, now=T3 + 60)
    ax = dict(figures)["cycle_time.png"].axes[0]
    slo = [line for line in ax.get_lines() if line.get_label().startswith("data→live SLO")]
    assert len(slo) == 1 and list(slo[0].get_ydata()) == [120.0, 120.0]  # a horizontal line at the SLO
    page = (out / "index.html").read_text(encoding="utf-8")
    for s in ("data-to-live SLO", "2.0m / 2.5m over 2 promoted cycle(s)", "-27.0s (breached)",
              "lag: wait + cycle + rollout", "wait 50.0s + cycle 100.0s + rollout 0.0s", "all traffic at once"):
        assert s in page, s
    data = json.loads((out / "history.json").read_text())
    assert data["slo"] == {"data_to_live_s": 120.0} and data["devops"]["slo_budget_s"] == pytest.approx(-27.0)
    figures.clear()
    report.write_html(make(), tmp_path / "no-slo", now=T3 + 60)  # no SLO: no line
    ax = dict(figures)["cycle_time.png"].axes[0]
    assert not [line for line in ax.get_lines() if "SLO" in line.get_label()]


def with_rollouts():
    """make() where v2 went live through a canary of 40 s, and a planted v5 was rolled back by the live gate."""
    h = with_slo()
    canary = {"at": T1 + 40, "pipeline": "digits", "strategy": "canary", "from": "1", "to": "2",
              "outcome": "completed", "started_at": T1 + 1, "seconds": 39.0, "steps": [{"fraction": 0.1}],
              "reasons": ["no rule failed over 300 requests"], "figures": {"requests": 300}}
    bad = {"at": T3 + 10, "pipeline": "digits", "strategy": "canary", "from": "4", "to": "5",
           "outcome": "rolled_back", "started_at": T3 + 9, "seconds": 1.0, "steps": [],
           "reasons": ["latency: new/old engine time 30.1x"],
           "figures": {"requests": 61, "detect_s": 0.5, "restore_s": 0.012}}
    h["cycles"][1]["rollout"] = canary
    h["rollouts"] = [canary, bad]
    return h


def test_a_canary_is_part_of_the_lag_and_the_live_gate_figures_are_shown(tmp_path):
    h = with_rollouts()
    d = report.devops(h, now=T3 + 60)
    # cycle 2 went live 40 s after its alias moved (at its decision): lag 90 + 40
    assert report.lag_parts(h["cycles"][1])["rollout_s"] == pytest.approx(40.0)
    assert (d["lag_p50_s"], d["lag_rollout_p50_s"]) == pytest.approx((140.0, 20.0))
    assert (d["rollouts"], d["auto_rollbacks"]) == (2, 1)
    assert (d["median_time_to_detect_s"], d["median_time_to_restore_traffic_s"]) == pytest.approx((0.5, 0.012))
    console = Console(record=True, width=100)
    report.history_table(console, h)
    text = console.export_text()
    assert "Rollouts (live gate)" in text and "canary v4 → v5" in text and "0.5s / 12 ms" in text
    assert re.search(r"live gate +1 automatic rollback\(s\) of 2 rollout\(s\)", text)
    assert re.search(r"time to detect / restore +0.5s / 12 ms", text)
    assert "rollout 40.0s" in text
    page = (report.write_html(h, tmp_path / "r", now=T3 + 60)[0]).read_text(encoding="utf-8")
    assert "<h2>Rollouts (live gate)</h2>" in page and "latency: new/old engine time 30.1x" in page
