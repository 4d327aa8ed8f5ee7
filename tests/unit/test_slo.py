"""The data-to-live SLO: its figures over PROMOTED cycles, where each cycle's lag went, the
history the report reads, and the scheduler's gauges."""

import json

import pytest
from pydantic import ValidationError

from orchestrator import api, report
from orchestrator.config import PipelineConfig
from orchestrator.metrics import LAG_WINDOW, Metrics

T0 = 1_700_000_000.0


def cycle(decision, started, cycle_time, lag=None, promoted_at=None, moves=()):
    return {"id": f"c{started:.0f}", "started_at": started, "decided_at": started + cycle_time, "state": "done",
            "decision": decision, "data_to_live_s": lag, "cycle_time_s": cycle_time, "promoted_at": promoted_at,
            "alias_moves": list(moves)}


def cycles():
    # Lags 100, 400, 200, 300 of PROMOTED cycles; the REJECTED and SKIPPED ones have none.
    return [
        cycle("PROMOTED", T0, 60.0, lag=100.0),               # waited 40, cycle 60
        cycle("REJECTED", T0 + 1000, 50.0),
        cycle("PROMOTED", T0 + 2000, 100.0, lag=400.0),       # waited 300, cycle 100
        cycle("SKIPPED", T0 + 3000, 2.0),
        cycle("PROMOTED", T0 + 4000, 80.0, lag=200.0),        # waited 120, cycle 80
        cycle("PROMOTED", T0 + 5000, 300.0, lag=300.0),       # waited 0, cycle 300
    ]


def test_figures_against_hand_computed_percentiles():
    f = report.lag_slo(cycles(), 250.0)
    assert f["lag_promoted_cycles"] == 4
    # sorted 100, 200, 300, 400; linear: p50 at rank 1.5, p95 at rank 2.85
    assert f["lag_p50_s"] == pytest.approx(250.0)
    assert f["lag_p95_s"] == pytest.approx(300 + 0.85 * 100)
    assert f["lag_within_slo"] == pytest.approx(0.5)  # 100 and 200
    assert f["slo_budget_s"] == pytest.approx(250.0 - 385.0)  # negative: breached
    assert f["slo_data_to_live_s"] == 250.0
    assert f["lag_wait_p50_s"] == pytest.approx(80.0)  # waits 40, 300, 120, 0
    assert f["lag_cycle_p50_s"] == pytest.approx(90.0)  # cycles 60, 100, 80, 300
    assert f["lag_rollout_p50_s"] == 0.0


def test_budget_sign_and_boundary():
    f = report.lag_slo(cycles(), 400.0)
    assert f["slo_budget_s"] == pytest.approx(15.0) and f["slo_budget_s"] > 0
    assert f["lag_within_slo"] == 1.0  # a lag equal to the SLO is within it
    one = [cycle("PROMOTED", T0, 10.0, lag=30.0)]
    f = report.lag_slo(one, 30.0)
    assert (f["lag_p50_s"], f["lag_p95_s"], f["slo_budget_s"], f["lag_within_slo"]) == (30.0, 30.0, 0.0, 1.0)


def test_without_slo_or_promotions():
    f = report.lag_slo(cycles(), None)
    assert f["lag_p95_s"] == pytest.approx(385.0)
    assert f["lag_within_slo"] is None and f["slo_budget_s"] is None and f["slo_data_to_live_s"] is None
    f = report.lag_slo([cycle("REJECTED", T0, 50.0)], 60.0)
    assert f == {"slo_data_to_live_s": 60.0, "lag_promoted_cycles": 0, "lag_p50_s": None, "lag_p95_s": None,
                 "lag_within_slo": None, "slo_budget_s": None, "lag_wait_p50_s": None, "lag_cycle_p50_s": None,
                 "lag_rollout_p50_s": None}


def test_breakdown_parts_add_up_to_the_lag():
    for c in cycles():
        p = report.lag_parts(c)
        if c["decision"] != "PROMOTED":
            assert p is None
            continue
        assert p["rollout_s"] == 0.0 and p["wait_s"] >= 0
        assert p["wait_s"] + p["cycle_s"] + p["rollout_s"] == pytest.approx(c["data_to_live_s"])
    assert report.lag_parts(cycles()[2]) == {"wait_s": 300.0, "cycle_s": 100.0, "rollout_s": 0.0}
    assert report.lag_parts(cycles()[5]) == {"wait_s": 0.0, "cycle_s": 300.0, "rollout_s": 0.0}
    # a shard that arrived after the cycle started (lag < cycle time) waited for nothing
    assert report.lag_parts(cycle("PROMOTED", T0, 300.0, lag=250.0)) == {"wait_s": 0.0, "cycle_s": 250.0,
                                                                         "rollout_s": 0.0}


def test_breakdown_ends_at_the_alias_move():
    # The record is decided a moment after the promote stage moved the alias: that move is where the lag ends.
    c = cycle("PROMOTED", T0, 60.0, lag=100.0, promoted_at=T0 + 58.0)
    assert report.lag_parts(c) == pytest.approx({"wait_s": 42.0, "cycle_s": 58.0, "rollout_s": 0.0})
    move = {"alias": "champion", "kind": "promote", "at": T0 + 59.0}
    c = cycle("PROMOTED", T0, 60.0, lag=100.0, moves=[move])  # a history without promoted_at: the ledger's move
    assert report.lag_parts(c) == pytest.approx({"wait_s": 41.0, "cycle_s": 59.0, "rollout_s": 0.0})


def test_devops_carries_the_slo_figures():
    h = {"pipeline": "digits", "cycles": cycles(), "alias_moves": [], "slo": {"data_to_live_s": 250.0}}
    d = report.devops(h, now=T0 + 6000)
    assert d["slo_budget_s"] == pytest.approx(-135.0) and d["lag_promoted_cycles"] == 4
    del h["slo"]  # a history written before slo: existed
    assert report.devops(h, now=T0 + 6000)["slo_budget_s"] is None


def test_config_slo():
    base = {"name": "d", "data": {"source": "/x", "features": {"shape": [4]}, "label": {"num_classes": 2}}}
    assert PipelineConfig.model_validate(base).slo.data_to_live_s is None
    assert PipelineConfig.model_validate({**base, "slo": {"data_to_live_s": 3600}}).slo.data_to_live_s == 3600.0
    for bad in ({"data_to_live_s": 0}, {"data_to_live_s": -5}, {"lag": 10}):
        with pytest.raises(ValidationError):
            PipelineConfig.model_validate({**base, "slo": bad})


def test_history_has_the_slo_and_the_alias_move_time(home, digits):
    (digits / "pipeline.yaml").write_text((digits / "pipeline.yaml").read_text() + "\nslo:\n  data_to_live_s: 900\n")
    folder = home / "cycles" / "digits" / "c1"
    folder.mkdir(parents=True)
    rec = {"id": "c1", "pipeline": "digits", "state": "decided", "trigger": "data", "started_at": T0,
           "decided_at": T0 + 61.0, "decision": "PROMOTED", "reasons": [], "version": "1", "champion_before": None,
           "cycle_time_s": 61.0, "data_to_live_s": 160.0,
           "stages": {"ingest": {"seconds": 1.0, "output": {"new_shards": [{"rows": 300}], "drift": None}},
                      "promote": {"seconds": 1.0, "output": {"decided_at": T0 + 60.0}}}}
    (folder / "record.json").write_text(json.dumps(rec))
    h = api.history(digits)
    assert h["slo"] == {"data_to_live_s": 900.0}
    assert h["cycles"][0]["promoted_at"] == T0 + 60.0
    assert report.lag_parts(h["cycles"][0]) == pytest.approx({"wait_s": 100.0, "cycle_s": 60.0, "rollout_s": 0.0})


def value(m, name, pipeline="digits"):
    return m.registry.get_sample_value(name, {"pipeline": pipeline})


def rec(decision, lag=None, pipeline="digits"):
    return {"pipeline": pipeline, "decision": decision, "cycle_time_s": 50.0, "data_to_live_s": lag,
            "stages": {"train": {"seconds": 30.0}}}


def test_gauges():
    m = Metrics()
    m.observe_slo("digits", 250.0, [100.0, 400.0])  # recorded promotions, seeded at start
    assert value(m, "plaster_data_to_live_slo_seconds") == 250.0
    assert value(m, "plaster_data_to_live_p50_seconds") == pytest.approx(250.0)
    assert value(m, "plaster_data_to_live_slo_budget_seconds") == pytest.approx(250.0 - (100 + 0.95 * 300))
    m.observe_cycle(rec("REJECTED"))
    m.observe_cycle(rec("PROMOTED", 200.0))
    m.observe_cycle(rec("PROMOTED", 300.0))
    assert value(m, "plaster_data_to_live_p50_seconds") == pytest.approx(250.0)
    assert value(m, "plaster_data_to_live_p95_seconds") == pytest.approx(385.0)
    assert value(m, "plaster_data_to_live_slo_budget_seconds") == pytest.approx(-135.0)
    # the existing histogram stays, counting the cycles this daemon saw (not the seeded ones)
    assert value(m, "plaster_data_to_live_seconds_count") == 2.0
    assert value(m, "plaster_data_to_live_seconds_sum") == 500.0


def test_gauges_without_slo_and_window():
    m = Metrics()
    m.observe_slo("digits", None)
    assert value(m, "plaster_data_to_live_slo_seconds") is None  # no objective, no gauge
    assert value(m, "plaster_data_to_live_p50_seconds") is None  # and no lag yet
    for i in range(LAG_WINDOW + 10):
        m.observe_cycle(rec("PROMOTED", 1000.0 if i < 10 else 10.0))
    assert value(m, "plaster_data_to_live_p95_seconds") == 10.0  # the 10 oldest fell out of the window
    assert value(m, "plaster_data_to_live_slo_budget_seconds") is None
    m.observe_cycle(rec("PROMOTED", 50.0, pipeline="other"))
    assert value(m, "plaster_data_to_live_p50_seconds", "other") == 50.0
