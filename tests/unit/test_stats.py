"""The gate's statistics on data whose answers are known in closed form."""

import math

import numpy as np
import pytest

from orchestrator.measure import stats


def test_wilson_matches_the_textbook_interval():
    lo, hi = stats.wilson(8, 10, 0.95)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert stats.wilson(0, 0) == (0.0, 1.0)


def test_exact_mcnemar_is_the_two_sided_binomial_tail():
    # Only the 40 disagreements count: P(X <= 10 | 40, 1/2), doubled.
    expected = 2 * sum(math.comb(40, k) for k in range(11)) / 2 ** 40
    assert stats.mcnemar_exact(30, 10) == pytest.approx(expected, rel=1e-9)
    assert stats.mcnemar_exact(10, 30) == pytest.approx(expected, rel=1e-9)
    assert stats.mcnemar_exact(0, 0) == 1.0
    assert stats.mcnemar_exact(5, 5) == 1.0


def paired(b: int, c: int, both: int, neither: int):
    cand = np.array([True] * b + [False] * c + [True] * both + [False] * neither)
    champ = np.array([False] * b + [True] * c + [True] * both + [False] * neither)
    return cand, champ


def test_paired_bootstrap_interval_matches_the_normal_approximation():
    cand, champ = paired(b=30, c=10, both=900, neither=60)  # n = 1000
    d = stats.paired_accuracy(cand, champ, 0.95, slice_name="new")
    assert (d.slice, d.n, d.candidate_only, d.champion_only) == ("new", 1000, 30, 10)
    assert d.diff == pytest.approx(0.02) and d.candidate == pytest.approx(0.93) and d.champion == pytest.approx(0.91)
    # Var of the paired difference: ((b + c) - (b - c)^2 / n) / n^2
    half = 1.959964 * math.sqrt(40 - 400 / 1000) / 1000
    assert d.ci[0] == pytest.approx(0.02 - half, abs=0.0015) and d.ci[1] == pytest.approx(0.02 + half, abs=0.0015)
    assert d.mcnemar_p == pytest.approx(stats.mcnemar_exact(30, 10))
    again = stats.paired_accuracy(cand, champ, 0.95, slice_name="new")
    assert again == d, "fixed seed: the same inputs give the same interval"


def test_a_model_against_itself_has_a_zero_width_interval():
    ok = np.random.default_rng(1).random(500) < 0.9
    d = stats.paired_accuracy(ok, ok.copy())
    assert d.diff == 0 and d.ci == (0.0, 0.0) and d.mcnemar_p == 1.0


def test_paired_inputs_must_line_up():
    with pytest.raises(ValueError, match="same 1-d shape"):
        stats.paired_accuracy(np.ones(3, bool), np.ones(4, bool))


def test_median_ci_ranks_from_the_binomial():
    # n = 30: P(X <= 9) = 0.0214 <= 0.025 < P(X <= 10): the 10th and 21st order statistics.
    assert stats.median_ci_ranks(30, 0.95) == (9, 20)
    assert stats.median_ci_ranks(5, 0.95) == (0, 4)  # too few rounds for 95%: the full range


def test_quantile_interval_brackets_the_true_p99():
    # Exponential latencies: the true p99 is ln(100). Over many samples the interval holds it ~95% of the time.
    rng = np.random.default_rng(3)
    true = math.log(100)
    hits = sum(lo <= true <= hi for lo, hi in (stats.quantile_ci(rng.exponential(size=600), 0.99) for _ in range(400)))
    assert 0.90 <= hits / 400 <= 0.995


def test_latency_ratio_recovers_a_planted_slowdown_and_not_a_phantom_one():
    rng = np.random.default_rng(0)
    champ = 1e-4 * (1 + 0.05 * rng.random((30, 10)))
    noise = 1 + 0.05 * rng.random((30, 10))
    slowed = stats.latency_ratio(champ * 1.2 * noise / noise.mean(), champ, 0.95, batch=64)
    assert slowed.batch == 64 and slowed.rounds == 30
    assert slowed.ci[0] <= 1.2 <= slowed.ci[1] + 0.01 and slowed.ci[0] > 1.1
    same = stats.latency_ratio(champ * noise / noise.mean(), champ, 0.95)
    assert same.ci[0] <= 1.0 + 0.01 and same.ci[0] < 1.1


def test_a_noisy_round_cannot_drag_the_ratio():
    champ = np.full((30, 10), 1e-4)
    cand = champ.copy()
    cand[3] *= 50  # a noisy neighbour hit the candidate in one round
    r = stats.latency_ratio(cand, champ)
    assert r.ratio == pytest.approx(1.0) and r.ci == (pytest.approx(1.0), pytest.approx(1.0))


def test_wilson_reaches_exactly_0_and_1_at_the_ends():
    # a hair inside would put the point estimate outside its own interval (negative error bars)
    for n in (3, 7, 10, 12, 13, 25):
        assert stats.wilson(0, n)[0] == 0.0 and stats.wilson(n, n)[1] == 1.0
