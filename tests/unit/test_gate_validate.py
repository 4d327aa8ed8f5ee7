import numpy as np

from orchestrator.artifacts import AccuracyDiff, Comparison, EngineScore, Figure, LatencyAt, LatencyRatio, ThroughputAt
from orchestrator.config import GateConfig
from orchestrator.gate import FAIL, HOLD, NOT_MEASURED, PASS, PROMOTE, REJECT, decide, evaluate
from orchestrator.measure import accuracy, latency
from orchestrator.stages.validate import choose


def score(precision="fp32", golden=0.95, new=0.9, p50=1.0, p99=2.0, backend="onnxruntime", energy=None, p99_ci=None):
    return EngineScore(backend, precision, {"golden": Figure(golden), "new": Figure(new)},
                       (LatencyAt(1, p50, p99 * 0.9, p99, 300, p99_ci),), Figure(1000.0, note="batch 8"),
                       (ThroughputAt(8, p99, 1000.0, True),),
                       Figure(energy, note="" if energy else "not measured: no RAPL"), 100)


def diff(slice_name, d, lo, hi, n=1000):
    return AccuracyDiff(slice_name, n, 0.9 + d, 0.9, d, (lo, hi), 10, 5, 0.3)


def comparison(golden=(0.0, -0.01, 0.01), new=(0.0, -0.01, 0.01), ratio=(1.0, 0.98, 1.03)):
    return Comparison((diff("golden", *golden), diff("new", *new)), (LatencyRatio(1, ratio[0], ratio[1:], 30),))


def by_rule(verdicts):
    return {v.rule: v for v in verdicts}


def test_first_candidate_is_judged_on_absolute_rules_only():
    v = by_rule(evaluate(score(), None, None, GateConfig()))
    assert v["accuracy_min.golden"].verdict == PASS
    assert v["non_inferiority.new"].verdict == NOT_MEASURED and "no champion" in v["non_inferiority.new"].reason
    assert v["latency_ratio_max"].verdict == NOT_MEASURED
    assert v["latency_p99_ms_max@1"].verdict == PASS
    assert decide(list(v.values()), "auto") == PROMOTE


def test_non_inferiority_reads_the_lower_bound_not_the_point():
    gate = GateConfig(non_inferiority={"golden": 0.02})
    # Point estimate -1 pp looks fine, but the interval reaches -3 pp: not shown non-inferior.
    v = by_rule(evaluate(score(), score(), comparison(golden=(-0.01, -0.03, 0.01)), gate))
    r = v["non_inferiority.golden"]
    assert r.verdict == FAIL and "-1.00 pp" in r.reason and "[-3.00, +1.00] pp" in r.reason and "McNemar" in r.reason
    assert decide(list(v.values()), "auto") == REJECT
    v = by_rule(evaluate(score(), score(), comparison(golden=(-0.01, -0.019, 0.0)), gate))
    assert v["non_inferiority.golden"].verdict == PASS


def test_superiority_needs_the_whole_interval_above_zero():
    gate = GateConfig(non_inferiority={}, superiority=("new",))
    up = by_rule(evaluate(score(), score(), comparison(new=(0.03, 0.01, 0.05)), gate))
    assert up["superiority.new"].verdict == PASS
    noise = by_rule(evaluate(score(), score(), comparison(new=(0.003, -0.004, 0.01)), gate))
    assert noise["superiority.new"].verdict == FAIL, "0.3 pp on noise is not an improvement"


def test_latency_rules_sla_and_ratio_interval():
    gate = GateConfig(latency_p99_ms_max=1.5, latency_ratio_max=1.10)
    v = by_rule(evaluate(score(p99=2.0, p99_ci=(1.8, 2.5)), score(), comparison(ratio=(1.21, 1.18, 1.24)), gate))
    assert v["latency_p99_ms_max@1"].verdict == FAIL and "2.000 ms, 95% CI [1.800, 2.500]" in v["latency_p99_ms_max@1"].reason
    assert v["latency_ratio_max@1"].verdict == FAIL and "1.210x" in v["latency_ratio_max@1"].reason
    # Three stray spikes put the p99 over the SLA, but its interval reaches well under it.
    v = by_rule(evaluate(score(p99=2.0, p99_ci=(0.4, 9.0)), score(), comparison(), gate))
    assert v["latency_p99_ms_max@1"].verdict == PASS
    # 12% slower at the point, but the interval reaches 1.05: not shown beyond the 10% allowed.
    v = by_rule(evaluate(score(p99=1.0), score(), comparison(ratio=(1.12, 1.05, 1.2)), gate))
    assert v["latency_ratio_max@1"].verdict == PASS and v["latency_p99_ms_max@1"].verdict == PASS


def test_required_rule_not_measured_holds_and_optional_does_not():
    optional = GateConfig(energy_j_per_1k_max=5.0)
    v = evaluate(score(), score(), comparison(), optional)
    assert by_rule(v)["energy_j_per_1k_max"].verdict == NOT_MEASURED
    assert "no RAPL" in by_rule(v)["energy_j_per_1k_max"].reason
    assert decide(v, "auto") == PROMOTE
    required = GateConfig(energy_j_per_1k_max=5.0, required=("energy_j_per_1k_max",))
    v = evaluate(score(), score(), comparison(), required)
    assert by_rule(v)["energy_j_per_1k_max"].required and decide(v, "auto") == HOLD
    measured = evaluate(score(energy=7.0), score(), comparison(), required)
    assert by_rule(measured)["energy_j_per_1k_max"].verdict == FAIL and decide(measured, "auto") == REJECT


def test_manual_promotion_holds_a_passing_candidate():
    assert decide(evaluate(score(), score(), comparison(), GateConfig()), "manual") == HOLD


def test_other_rules_throughput_and_size():
    gate = GateConfig(throughput_min=2000.0, size_bytes_max=50)
    v = by_rule(evaluate(score(), score(), comparison(), gate))
    assert v["throughput_min"].verdict == FAIL and "1,000 samples/s" in v["throughput_min"].reason
    assert v["size_bytes_max"].verdict == FAIL and "100 bytes > 50" in v["size_bytes_max"].reason


def test_precision_choice_is_fastest_within_the_accuracy_drop():
    fp32 = score("fp32", 0.95, 0.90, p50=1.0)
    fp16 = score("fp16", 0.95, 0.90, p50=0.8)
    int8 = score("int8", 0.92, 0.90, p50=0.5)  # faster, but loses 3 pp on golden
    chosen, why = choose([fp32, fp16, int8], max_drop=0.01)
    assert chosen.precision == "fp16" and "int8 lost 3.00 pp" in why
    chosen, _ = choose([fp32, fp16, int8], max_drop=0.05)
    assert chosen.precision == "int8"
    # A GPU backend, when built, is preferred whatever the CPU figures.
    trt = score("fp32", 0.95, 0.90, p50=2.0, backend="tensorrt")
    assert choose([fp32, trt], 0.01)[0].backend == "tensorrt"


def test_a_lower_precision_is_served_only_when_faster_beyond_noise():
    fp32, fp16, int8 = score("fp32", p50=1.0), score("fp16", p50=0.99), score("int8", p50=0.6)
    ratios = {("onnxruntime", "fp32"): LatencyRatio(1, 1.0, (1.0, 1.0), 30),
              ("onnxruntime", "fp16"): LatencyRatio(1, 0.99, (0.95, 1.03), 30),  # a tie within noise
              ("onnxruntime", "int8"): LatencyRatio(1, 0.6, (0.55, 0.66), 30)}
    chosen, why = choose([fp32, fp16, int8], 0.01, ratios)
    assert chosen.precision == "int8" and "0.60x fp32 [0.55, 0.66]" in why
    ratios[("onnxruntime", "int8")] = LatencyRatio(1, 0.98, (0.9, 1.01), 30)
    assert choose([fp32, fp16, int8], 0.01, ratios)[0].precision == "fp32", "ties go to full precision"


def test_accuracy_and_interleaved_latency_on_known_runners():
    x = {"input": np.arange(6, dtype=np.float32).reshape(6, 1)}
    y = np.array([0, 1, 0, 1, 0, 0])
    always_one = lambda b: np.tile(np.array([[0.0, 1.0]], dtype=np.float32), (len(b["input"]), 1))
    assert accuracy.correct(always_one, x, y).tolist() == [False, True, False, True, False, False]
    calls = []
    runners = {"a": lambda b: calls.append("a"), "b": lambda b: calls.append("b")}
    samples = latency.interleaved(runners, x, rounds=4, calls_per_round=2, warmup=1)
    assert samples["a"].shape == samples["b"].shape == (4, 2), "rounds stay separate for pairing"
    timed = calls[2:]  # after one warm-up call each
    # Call by call, alternating, so neither engine always runs first or after the same one.
    assert timed[:8] == ["a", "b", "b", "a", "b", "a", "a", "b"], "calls alternate the order"


def test_throughput_is_the_best_batch_within_the_sla():
    import time

    def slow_at_big_batches(b):
        time.sleep(0.004 if len(b["input"]) >= 64 else 0.0)

    out = latency.sweep({"e": slow_at_big_batches}, {"input": np.zeros((4, 2), np.float32)}, (1, 8, 64), sla_ms=2.0,
                        rounds=2, calls_per_round=2)
    pts = {p.batch: p for p in out["e"]}
    assert pts[64].within_sla is False and pts[8].within_sla
    best = latency.best_within_sla(out["e"])
    assert best.batch == 8


# --- a regression gate: MAE is lower-is-better -------------------------------------------------


def mae_score(golden: float, new: float | None = None):
    import dataclasses

    figs = {"golden": Figure(golden), "new": Figure(golden if new is None else new)}
    return dataclasses.replace(score(), accuracy=figs, metric="mae", metrics={"mae": figs})


def mae_comparison(d: float, lo: float, hi: float, slice_name: str = "golden"):
    diff = AccuracyDiff(slice_name, 500, 50.0 + d, 50.0, d, (lo, hi), metric="mae", higher_is_better=False)
    return Comparison((diff,), ())


def test_regression_metric_max_bounds_the_candidates_mae_from_above():
    from orchestrator.tasks import TASKS

    gate = GateConfig(metric_max={"golden": {"mae": 55.0}}, non_inferiority={}, latency_ratio_max=None)
    v = by_rule(evaluate(mae_score(50.0), None, None, gate, TASKS["regression"]))
    assert v["metric_max.golden.mae"].verdict == PASS and "mae on golden 50.0000 <= 55.0" in v["metric_max.golden.mae"].reason
    assert "accuracy_min.golden" not in v, "no accuracy default for regression"
    v = by_rule(evaluate(mae_score(60.0), None, None, gate, TASKS["regression"]))
    assert v["metric_max.golden.mae"].verdict == FAIL and "60.0000 > 55.0" in v["metric_max.golden.mae"].reason
    assert decide(list(v.values()), "auto") == REJECT


def test_regression_non_inferiority_reads_the_upper_bound_of_the_mae_difference():
    """candidate − champion MAE: positive is worse. A candidate whose interval reaches beyond
    the margin is rejected, even with a point estimate inside it; a better one passes."""
    from orchestrator.tasks import TASKS

    task = TASKS["regression"]
    for margin in ({"golden": {"mae": 4.0}}, {"golden": 4.0}):  # a bare margin is in the task's main metric, mae
        gate = GateConfig(non_inferiority=margin, latency_ratio_max=None)
        rule = "non_inferiority.golden.mae" if isinstance(margin["golden"], dict) else "non_inferiority.golden"

        def verdict(d, lo, hi, gate=gate, rule=rule):
            v = by_rule(evaluate(mae_score(50.0 + d), mae_score(50.0), mae_comparison(d, lo, hi), gate, task))
            return v[rule]

        worse = verdict(6.0, 3.0, 9.0)
        assert worse.verdict == FAIL and "upper bound <= +4" in worse.reason and "[+3, +9]" in worse.reason
        assert verdict(2.0, 0.5, 5.0).verdict == FAIL, "the point is within the margin, the interval is not"
        assert verdict(2.0, 0.5, 3.5).verdict == PASS
        assert verdict(-3.0, -5.0, -1.0).verdict == PASS, "a better (lower) MAE passes"
    sup = GateConfig(non_inferiority={}, superiority={"golden": ("mae",)}, latency_ratio_max=None)
    better = by_rule(evaluate(mae_score(47.0), mae_score(50.0), mae_comparison(-3.0, -5.0, -1.0), sup, task))
    assert better["superiority.golden.mae"].verdict == PASS
    noise = by_rule(evaluate(mae_score(49.0), mae_score(50.0), mae_comparison(-1.0, -3.0, 0.5), sup, task))
    assert noise["superiority.golden.mae"].verdict == FAIL


def test_regression_gate_direction_end_to_end_with_the_paired_bootstrap():
    """The task's own paired statistics feed the gate: larger errors are rejected, smaller pass."""
    from orchestrator.tasks import TASKS

    task = TASKS["regression"]
    rng = np.random.default_rng(0)
    y = rng.normal(150.0, 50.0, size=(400, 1))
    champion = task.per_example(y + rng.normal(0, 40.0, size=y.shape), y)
    gate = GateConfig(non_inferiority={"golden": {"mae": 4.0}}, latency_ratio_max=None)
    for noise, want in ((60.0, FAIL), (20.0, PASS)):
        cand = task.per_example(y + rng.normal(0, noise, size=y.shape), y)
        d = task.paired("mae", cand, champion, 0.95, "golden")
        assert (d.diff > 0) == (noise > 40.0) and d.higher_is_better is False
        v = by_rule(evaluate(mae_score(d.candidate), mae_score(d.champion), Comparison((d,), ()), gate, task))
        assert v["non_inferiority.golden.mae"].verdict == want, v["non_inferiority.golden.mae"].reason
