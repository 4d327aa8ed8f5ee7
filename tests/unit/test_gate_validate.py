import numpy as np

from orchestrator.artifacts import EngineScore, Figure
from orchestrator.config import GateConfig
from orchestrator.gate import FAIL, HOLD, NOT_MEASURED, PASS, PROMOTE, REJECT, decide, evaluate
from orchestrator.measure import accuracy, latency
from orchestrator.stages.validate import choose


def score(precision="fp32", golden=0.95, new=0.9, p50=1.0, p99=2.0, backend="onnxruntime"):
    return EngineScore(backend, precision, {"golden": Figure(golden), "new": Figure(new)}, Figure(p50), Figure(p99),
                       Figure(1000.0), 100)


def by_rule(verdicts):
    return {v.rule: v for v in verdicts}


def test_first_candidate_is_judged_on_absolute_rules_only():
    v = by_rule(evaluate(score(), None, GateConfig()))
    assert v["accuracy_min.golden"].verdict == PASS
    assert v["accuracy_vs_champion.new"].verdict == NOT_MEASURED and "no champion" in v["accuracy_vs_champion.new"].reason
    assert v["latency_p50_ratio_max"].verdict == NOT_MEASURED
    assert decide(list(v.values()), "auto") == PROMOTE


def test_forgetting_on_golden_fails_with_figures():
    v = by_rule(evaluate(score(golden=0.90, new=0.95), score(golden=0.96, new=0.5), GateConfig()))
    r = v["accuracy_vs_champion.golden"]
    assert r.verdict == FAIL and "0.9000" in r.reason and "0.9600" in r.reason and "-0.0600" in r.reason
    assert v["accuracy_vs_champion.new"].verdict == PASS
    assert decide(list(v.values()), "auto") == REJECT


def test_latency_rules():
    gate = GateConfig(latency_p99_ms_max=1.5, latency_p50_ratio_max=1.2)
    v = by_rule(evaluate(score(p50=1.3, p99=2.0), score(p50=1.0), gate))
    assert v["latency_p99_ms_max"].verdict == FAIL and "2.000 ms > 1.5" in v["latency_p99_ms_max"].reason
    assert v["latency_p50_ratio_max"].verdict == FAIL and "1.30x" in v["latency_p50_ratio_max"].reason


def test_manual_promotion_holds_a_passing_candidate():
    assert decide(evaluate(score(), score(), GateConfig()), "manual") == HOLD


def test_precision_choice_is_fastest_within_the_accuracy_drop():
    fp32 = score("fp32", 0.95, 0.90, p50=1.0)
    fp16 = score("fp16", 0.95, 0.90, p50=0.8)
    int8 = score("int8", 0.92, 0.90, p50=0.5)  # faster, but loses 3 pp on golden
    chosen, why = choose([fp32, fp16, int8], max_drop=0.01)
    assert chosen.precision == "fp16" and "int8" in why
    chosen, _ = choose([fp32, fp16, int8], max_drop=0.05)
    assert chosen.precision == "int8"


def test_accuracy_and_interleaved_latency_on_known_runners():
    x = np.arange(6, dtype=np.float32).reshape(6, 1)
    y = np.array([0, 1, 0, 1, 0, 0])
    always_one = lambda b: np.tile(np.array([[0.0, 1.0]], dtype=np.float32), (len(b), 1))
    assert accuracy.correct(always_one, x, y).tolist() == [False, True, False, True, False, False]
    calls = []
    runners = {"a": lambda b: calls.append("a"), "b": lambda b: calls.append("b")}
    samples = latency.interleaved(runners, x, rounds=4, calls_per_round=2, warmup=1)
    assert len(samples["a"]) == len(samples["b"]) == 8
    timed = calls[2:]  # after one warm-up call each
    assert timed[:8] == ["a", "a", "b", "b", "b", "b", "a", "a"], "rounds alternate the order"
    assert latency.throughput(np.array([0.5, 1.0, 2.0]), batch=10) == 10.0
