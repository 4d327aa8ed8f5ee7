"""The live gate: the new model against the one it replaces, on live requests.

During a canary, linear or shadow rollout the replica runs both engines on every watched
request (the client gets one answer) and keeps, per group of requests run together, both
engines' seconds, and per request whether each engine failed and per example whether their
answers agree. `judge` turns those paired records into continue / complete / rollback with
the same kind of statistics as the offline gate (measure/stats.py):

- latency: the median of per-group new/old ratios, with its order-statistics interval; roll
  back when the whole interval lies above `max_latency_ratio`.
- errors: the new model's failures on requests the old one answered, against
  `max_error_rate` with an exact one-sided binomial test.
- agreement: the share of examples both answer alike, with a Wilson interval; roll back when
  the whole interval lies below `min_agreement`.

A rule rolls back only on evidence; the rollout completes when the step has baked
`bake_s` and the new model answered `min_requests`. The gate looks every `check_s`, so each
look tests at (1 - confidence) / (bake_s / check_s): over a whole step a model within every
bound is rolled back with probability at most 1 - confidence (0.01 by default).

Pure numpy/scipy: arrays in, a Verdict out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as sstats

from orchestrator.measure.stats import median_ci_ranks, wilson

CONTINUE, COMPLETE, ROLLBACK = "continue", "complete", "rollback"


@dataclass
class Watched:
    """What the replica recorded of the watched requests (appended to, then judged)."""

    new_s: list[float] = field(default_factory=list)  # per group run together: the new engine's seconds
    old_s: list[float] = field(default_factory=list)  # ... and the old one's on the same inputs
    requests: int = 0  # watched requests
    new_errors: int = 0  # requests the new engine failed and the old one answered
    old_errors: int = 0  # requests the old engine failed
    examples: int = 0  # examples both engines answered
    agreed: int = 0  # ... and answered alike

    def add(self, other: dict) -> None:
        """Fold in one `take_watched()` of the replica (a dict of the same fields)."""
        self.new_s += other["new_s"]
        self.old_s += other["old_s"]
        for k in ("requests", "new_errors", "old_errors", "examples", "agreed"):
            setattr(self, k, getattr(self, k) + other[k])


@dataclass(frozen=True)
class Verdict:
    action: str  # CONTINUE, COMPLETE or ROLLBACK
    reasons: tuple[str, ...]  # why, a line per rule that decided (or what it still waits for)
    figures: dict  # every measured figure, for the ledger and the rollout record


def agree(new: np.ndarray, old: np.ndarray, task: str, within: float) -> np.ndarray:
    """Per example: do both models answer alike (the class; the label set; a value within
    `within` of the old one's, relative, absolute below 1)?"""
    if task == "classification":
        return new.argmax(1) == old.argmax(1)
    if task == "multilabel":
        return ((new > 0) == (old > 0)).all(axis=1)
    n, o = new.reshape(len(new), -1), old.reshape(len(old), -1)
    return (np.abs(n - o) <= within * np.maximum(np.abs(o), 1.0)).all(axis=1)


def looks(cfg) -> int:
    """How many times the gate looks during one step's bake (it looks every check_s)."""
    return max(1, math.ceil(cfg.bake_s / cfg.check_s))


def judge(w: Watched, cfg, baked_s: float, step_requests: int | None = None, n_looks: int = 1) -> Verdict:
    """Decide on what was watched so far (all steps: the evidence adds up). `cfg` is the
    pipeline's RolloutConfig; `baked_s` how long the current step has run and `step_requests`
    how many watched requests it had (default: all). The gate looks `n_looks` times a step:
    each look tests at (1 - confidence) / n_looks (Bonferroni), so a model within every bound
    is rolled back at any look of a step with probability at most 1 - confidence."""
    step_requests = w.requests if step_requests is None else step_requests
    alpha = (1 - cfg.confidence) / n_looks
    confidence = 1 - alpha
    figures: dict = {"requests": w.requests, "new_errors": w.new_errors, "old_errors": w.old_errors,
                     "examples": w.examples, "agreed": w.agreed, "baked_s": round(baked_s, 3)}
    failed: list[str] = []

    if w.new_s:
        ratios = np.sort(np.asarray(w.new_s) / np.maximum(np.asarray(w.old_s), 1e-9))
        lo, hi = median_ci_ranks(len(ratios), confidence)
        r, ci = float(np.median(ratios)), (float(ratios[lo]), float(ratios[hi]))
        figures["latency_ratio"], figures["latency_ratio_ci"] = r, ci
        # Below this many runs even [min, max] covers the median with less than `confidence`:
        # no interval, no verdict.
        enough = 1 - 2 * 0.5 ** len(ratios) >= confidence
        if cfg.max_latency_ratio is not None and enough and ci[0] > cfg.max_latency_ratio:
            failed.append(f"latency: new/old engine time {r:.2f}x, CI [{ci[0]:.2f}, {ci[1]:.2f}] above "
                          f"{cfg.max_latency_ratio:g}x over {len(ratios)} paired runs")

    answered = w.requests - w.old_errors  # a request the old model failed too is no evidence against the new one
    if answered > 0:
        rate = w.new_errors / answered
        figures["error_rate"] = rate
        if cfg.max_error_rate is not None:
            if cfg.max_error_rate == 0:
                p = 0.0 if w.new_errors else 1.0
            else:
                p = float(sstats.binomtest(w.new_errors, answered, cfg.max_error_rate, alternative="greater").pvalue)
            figures["error_p"] = p
            if p < alpha:
                failed.append(f"errors: {w.new_errors} of {answered} requests ({rate:.1%}) failed on the new model, "
                              f"above {cfg.max_error_rate:g} (exact binomial p={p:.2g})")

    if w.examples > 0:
        share, ci = w.agreed / w.examples, wilson(w.agreed, w.examples, confidence)
        figures["agreement"], figures["agreement_ci"] = share, ci
        if cfg.min_agreement is not None and ci[1] < cfg.min_agreement:
            failed.append(f"agreement: the models answered alike on {share:.1%} of {w.examples} examples, CI "
                          f"[{ci[0]:.1%}, {ci[1]:.1%}] below {cfg.min_agreement:.0%}")

    if failed:
        return Verdict(ROLLBACK, tuple(failed), figures)
    waits = []
    if baked_s < cfg.bake_s:
        waits.append(f"baking {baked_s:.0f} of {cfg.bake_s:g} s")
    if step_requests < cfg.min_requests:
        waits.append(f"{step_requests} of {cfg.min_requests} requests")
    if waits:
        return Verdict(CONTINUE, tuple(waits), figures)
    return Verdict(COMPLETE, (f"no rule failed over {w.requests} requests; this step {step_requests} in "
                              f"{baked_s:.0f} s",), figures)
