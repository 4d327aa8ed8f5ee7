import dataclasses
import json

import numpy as np
import pytest

from orchestrator import scorecard
from orchestrator.artifacts import (
    AccuracyDiff,
    Comparison,
    EngineScore,
    Figure,
    LatencyAt,
    LatencyRatio,
    ModelSize,
    Scorecard,
    ThroughputAt,
    Verdict,
    from_dict,
)
from orchestrator.stages.validate import Raw

BATCHES = (1, 64)
ENERGY_NOTE = "not measured: no energy counter for cpu"


def engine(precision, golden, new, p50, backend="onnxruntime", size=4000):
    return EngineScore(
        backend=backend, precision=precision,
        accuracy={"golden": Figure(golden, (golden - 0.02, golden + 0.01), "n=500"),
                  "new": Figure(new, (new - 0.03, new + 0.02), "n=300")},
        latency=tuple(LatencyAt(b, p50 * b, p50 * b * 1.5, p50 * b * 2.0, 400) for b in BATCHES),
        throughput=Figure(12000.0, note="batch 64, p99 4.0 ms <= 10 ms"),
        sweep=(ThroughputAt(64, 4.0, 12000.0, True),),
        energy_j_per_1k=Figure(None, note=ENERGY_NOTE), size_bytes=size,
    )


def make(with_champion=True):
    fp32, fp16, int8 = engine("fp32", 0.95, 0.90, 0.50), engine("fp16", 0.95, 0.90, 0.40, size=2000), \
        engine("int8", 0.91, 0.88, 0.30, size=1000)
    champ = engine("fp32", 0.94, 0.80, 0.45) if with_champion else None
    comparison = Comparison(
        accuracy=(AccuracyDiff("golden", 500, 0.95, 0.94, 0.01, (-0.005, 0.025), 12, 7, 0.36),
                  AccuracyDiff("new", 300, 0.90, 0.80, 0.10, (0.06, 0.14), 40, 10, 1.2e-5)),
        latency=(LatencyRatio(1, 0.89, (0.85, 0.93), 20), LatencyRatio(64, 0.91, (0.88, 0.95), 20)),
    ) if with_champion else None
    verdicts = (Verdict("accuracy_min.golden", "PASS", "accuracy on golden 0.9500 >= 0.9", required=True),
                Verdict("non_inferiority.golden", "PASS", "golden (n=500): candidate − champion +1.00 pp"),
                Verdict("energy_j_per_1k_max", "NOT_MEASURED", ENERGY_NOTE))
    return Scorecard(
        candidate=(fp32, fp16, int8), champion=champ, chosen=fp16,
        chosen_reason="onnxruntime fp16: fastest p50 within 1 pp of fp32; int8 lost 4.00 pp",
        comparison=comparison, champion_version="3" if with_champion else None, machine="test box, 16 CPUs",
        confidence=0.95, verdicts=verdicts, decision="PROMOTE", size=ModelSize(1234, 5678),
        champion_size=ModelSize(1200, 5600) if with_champion else None,
        rate={"epochs": 3, "samples_trained": 9000, "warm_started_from": "3" if with_champion else None},
    )


def make_raw(sc):
    rng = np.random.default_rng(0)
    raw = Raw()
    engines = [("candidate", e) for e in sc.candidate] + ([("champion", sc.champion)] if sc.champion else [])
    for who, e in engines:
        key = f"{who}:{e.backend}:{e.precision}"
        raw.latency[key] = {b: rng.lognormal(np.log(1e-4 * b), 0.2, size=(20, 20)) for b in BATCHES}
        raw.examples[key] = {s: (rng.random(100) < f.value).astype(float)[:, None] for s, f in e.accuracy.items()}
    return raw


def test_metrics_have_stable_names_and_the_scorecard_values():
    m = scorecard.metrics(make())
    assert m["scorecard.accuracy.new.candidate"] == 0.90
    assert m["scorecard.accuracy.new.champion"] == 0.80
    assert m["scorecard.accuracy.new.diff"] == 0.10
    assert (m["scorecard.accuracy.golden.diff_ci_low"], m["scorecard.accuracy.golden.diff_ci_high"]) == (-0.005, 0.025)
    assert m["scorecard.accuracy.new.mcnemar_p"] == 1.2e-5
    assert m["scorecard.latency.b1.p50_ms"] == pytest.approx(0.40)
    assert m["scorecard.latency.b64.p99_ms"] == pytest.approx(0.40 * 64 * 2)
    assert (m["scorecard.latency.b64.ratio"], m["scorecard.latency.b64.ratio_ci_low"],
            m["scorecard.latency.b64.ratio_ci_high"]) == (0.91, 0.88, 0.95)
    assert m["scorecard.throughput.samples_per_s"] == 12000.0
    assert m["scorecard.size.bytes"] == 2000 and m["scorecard.size.params"] == 1234
    assert m["scorecard.size.flops_per_sample"] == 5678
    assert "scorecard.energy.j_per_1k" not in m, "an unmeasured figure is absent, not NaN"
    assert m["scorecard.decision_code"] == 0
    assert all(isinstance(v, float) and np.isfinite(v) for v in m.values())


def test_metrics_without_a_champion_and_other_decisions():
    sc = dataclasses.replace(make(with_champion=False), decision="HOLD")
    m = scorecard.metrics(sc)
    assert m["scorecard.decision_code"] == 2 and m["scorecard.accuracy.golden.candidate"] == 0.95
    assert not [k for k in m if k.endswith((".champion", ".diff", ".ratio"))]
    assert scorecard.metrics(dataclasses.replace(sc, decision="REJECT"))["scorecard.decision_code"] == 1
    measured = dataclasses.replace(sc.chosen, energy_j_per_1k=Figure(0.25, note="nvml"))
    assert scorecard.metrics(dataclasses.replace(sc, chosen=measured))["scorecard.energy.j_per_1k"] == 0.25


def test_markdown_has_every_plaster_row_the_precisions_and_the_gate():
    md = scorecard.markdown(make(), rate={"cycle_time_s": 42.5, "data_to_live_s": None,
                                          "stage_seconds": {"train": 30.0}})
    assert md.startswith("# Scorecard: PROMOTE — this cycle's candidate vs champion v3")
    assert "test box, 16 CPUs" in md
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    for letter in "PLASTER":
        assert any(r.startswith(f"| {letter} |") for r in rows), letter
    assert "+10.00 pp [+6.00, +14.00] pp" in md and "McNemar p=1.2e-05" in md
    assert "0.890x [0.850, 0.930]" in md
    assert "| R | cycle_time_s | 42.50 |" in md and "| R | data_to_live_s | — |" in md
    assert "stage_seconds.train" in md and "| P | epochs | 3 |" in md
    served = [r for r in rows if "◀ served" in r]
    assert len(served) == 1 and served[0].startswith("| onnxruntime fp16 |")
    assert "int8 lost 4.00 pp" in md
    assert "| energy_j_per_1k_max | NOT_MEASURED |" in md and "| accuracy_min.golden | PASS | yes |" in md
    assert "not measured" in md
    assert "![latency](latency.png)" in md and "**Decision: PROMOTE**" in md


def test_write_produces_json_markdown_and_three_plots(tmp_path):
    sc = make()
    paths = scorecard.write(sc, make_raw(sc), tmp_path / "sc", rate={"cycle_time_s": 12.0})
    names = {p.name for p in paths}
    assert names == {"scorecard.json", "scorecard.md", "latency.png", "accuracy.png", "precisions.png"}
    assert all(p.exists() for p in paths)
    data = json.loads((tmp_path / "sc" / "scorecard.json").read_text())
    assert data["decision"] == "PROMOTE" and data["rate_final"] == {"cycle_time_s": 12.0}
    assert from_dict(Scorecard, data) == sc
    for p in paths:
        if p.suffix == ".png":
            assert p.read_bytes()[:4] == b"\x89PNG"


def test_without_raw_samples_or_champion_there_is_no_latency_plot(tmp_path):
    sc = make(with_champion=False)
    paths = scorecard.write(sc, None, tmp_path)
    assert {p.name for p in paths} == {"scorecard.json", "scorecard.md", "accuracy.png", "precisions.png"}
    md = (tmp_path / "scorecard.md").read_text()
    assert "vs no champion" in md and "latency.png" not in md
    assert "rate_final" not in json.loads((tmp_path / "scorecard.json").read_text())
    # with raw samples but no champion, the latency plot shows the candidate alone
    assert "latency.png" in {p.name for p in scorecard.plots(sc, make_raw(sc), tmp_path)}
