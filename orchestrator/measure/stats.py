"""The statistics behind the gate: confidence intervals that make a comparison of two
engines an experiment instead of two numbers.

- Accuracy of one engine: Wilson score interval (good at small n and near 0 or 1).
- Accuracy of candidate vs champion on the *same* examples: a paired bootstrap of the
  difference (resampling examples keeps their pairing) and the exact McNemar test, which
  only looks at the examples where the two disagree.
- Latency ratio candidate/champion: the median of per-round ratios from interleaved rounds,
  with a distribution-free interval from binomial order statistics (no normality assumed;
  a few rounds hit by a noisy neighbour cannot drag it).

Pure numpy/scipy; every function is deterministic for fixed inputs (fixed seeds).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from orchestrator.artifacts import AccuracyDiff, LatencyRatio


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Interval for a proportion k/n."""
    if n == 0:
        return (0.0, 1.0)
    z = stats.norm.ppf(0.5 + confidence / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At k = 0 or k = n the bound on that side is exactly 0 or 1; floating point leaves it a
    # hair inside, and a point estimate outside its own interval breaks error bars.
    lo = 0.0 if k == 0 else max(0.0, float(centre - half))
    hi = 1.0 if k == n else min(1.0, float(centre + half))
    return (lo, hi)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: b = examples only the candidate gets right,
    c = only the champion. Under 'no difference' b ~ Binomial(b + c, 1/2)."""
    if b + c == 0:
        return 1.0
    return float(min(1.0, 2 * stats.binom.cdf(min(b, c), b + c, 0.5)))


def paired_accuracy(candidate: np.ndarray, champion: np.ndarray, confidence: float = 0.95,
                    resamples: int = 10_000, seed: int = 0, slice_name: str = "") -> AccuracyDiff:
    """Candidate minus champion accuracy on identical examples, with a paired bootstrap CI.

    `candidate` and `champion` are boolean vectors (per-example correctness) over the same
    examples in the same order. Resampling n examples with replacement only changes how many
    of the b and c disagreements are drawn, so the bootstrap is one multinomial draw per
    resample: exact, and fast at any n.
    """
    cand, champ = np.asarray(candidate, bool), np.asarray(champion, bool)
    if cand.shape != champ.shape or cand.ndim != 1:
        raise ValueError(f"paired correctness vectors must have the same 1-d shape, got {cand.shape} and {champ.shape}")
    n = len(cand)
    if n == 0:
        raise ValueError("no examples to compare")
    b = int(np.sum(cand & ~champ))
    c = int(np.sum(~cand & champ))
    diff = (b - c) / n
    draws = np.random.default_rng(seed).multinomial(n, [b / n, c / n, 1 - (b + c) / n], size=resamples)
    boot = (draws[:, 0] - draws[:, 1]) / n
    alpha = 1 - confidence
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return AccuracyDiff(slice_name, n, float(cand.mean()), float(champ.mean()), float(diff), (float(lo), float(hi)), b, c,
                      mcnemar_exact(b, c))


def quantile_ci_ranks(n: int, q: float, confidence: float = 0.95) -> tuple[int, int]:
    """0-based ranks (lo, hi) of the sorted sample that bracket the q-quantile with at
    least `confidence` coverage: X ~ Binomial(n, q) counts samples below the quantile."""
    alpha = 1 - confidence
    lo = int(stats.binom.ppf(alpha / 2, n, q))  # smallest k with P(X <= k) >= alpha/2
    while lo > 0 and stats.binom.cdf(lo - 1, n, q) > alpha / 2:
        lo -= 1
    hi = int(stats.binom.ppf(1 - alpha / 2, n, q))  # smallest k with P(X <= k) >= 1 - alpha/2
    # P(x_(lo) <= Q < x_(hi+1)) = P(lo <= X <= hi) in 1-based ranks; shift to 0-based
    return max(lo - 1, 0), min(hi, n - 1)


def median_ci_ranks(n: int, confidence: float = 0.95) -> tuple[int, int]:
    """0-based ranks bracketing the median; the full range when n is too small."""
    return quantile_ci_ranks(n, 0.5, confidence)


def quantile_ci(samples: np.ndarray, q: float, confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free interval for the q-quantile of `samples` (any shape, flattened)."""
    s = np.sort(np.ravel(samples))
    lo, hi = quantile_ci_ranks(len(s), q, confidence)
    return float(s[lo]), float(s[hi])


def latency_ratio(candidate: np.ndarray, champion: np.ndarray, confidence: float = 0.95, batch: int = 1) -> LatencyRatio:
    """Candidate/champion latency ratio from interleaved rounds.

    Both arrays are (rounds, calls_per_round) seconds measured in the same rounds. Each
    round gives one ratio of medians (both engines saw the same machine state then); the
    figure is the median of those ratios, with an order-statistics CI.
    """
    cand, champ = np.atleast_2d(candidate), np.atleast_2d(champion)
    if cand.shape[0] != champ.shape[0]:
        raise ValueError(f"both engines need the same rounds, got {cand.shape[0]} and {champ.shape[0]}")
    ratios = np.sort(np.median(cand, axis=1) / np.median(champ, axis=1))
    lo, hi = median_ci_ranks(len(ratios), confidence)
    return LatencyRatio(batch, float(np.median(ratios)), (float(ratios[lo]), float(ratios[hi])), len(ratios))
