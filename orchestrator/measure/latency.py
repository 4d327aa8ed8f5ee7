"""Latency and throughput of several engines measured interleaved call by call (A B C, C B A, ...) after
a warm-up, so a noisy neighbour slows every engine alike instead of whichever ran then."""

from __future__ import annotations

import time

import numpy as np

from orchestrator.artifacts import ThroughputAt
from orchestrator.engines import Runner


def batch_of(pool: dict[str, np.ndarray], b: int) -> dict[str, np.ndarray]:
    """A batch of `b` examples from the pool, repeating it if it is smaller, every input alike."""
    return {k: np.ascontiguousarray(np.resize(v, (b, *v.shape[1:])).astype(v.dtype)) for k, v in pool.items()}


def interleaved(runners: dict[str, Runner], x: dict[str, np.ndarray], rounds: int, calls_per_round: int = 10,
                warmup: int = 5) -> dict[str, np.ndarray]:
    """Seconds per call for each runner, shaped (rounds, calls_per_round): rounds stay
    separate so candidate and champion can be paired round by round."""
    for r in runners.values():
        for _ in range(warmup):
            r(x)
    samples = {k: np.empty((rounds, calls_per_round)) for k in runners}
    names = list(runners)
    clock = time.perf_counter
    for i in range(rounds):
        for j in range(calls_per_round):
            # Call by call, in an order that alternates, so every engine's calls of a round
            # span the same fraction of a second and none always runs first or after the
            # same neighbour: a burst of load then lands on all of them, not on one's block.
            for name in (names if (i + j) % 2 == 0 else names[::-1]):
                t0 = clock()
                runners[name](x)
                samples[name][i, j] = clock() - t0
    return samples


def percentile_ms(seconds: np.ndarray, q: float) -> float:
    return float(np.percentile(seconds, q) * 1e3)


def sweep(runners: dict[str, Runner], pool: dict[str, np.ndarray], batches: tuple[int, ...], sla_ms: float | None,
          rounds: int = 10, calls_per_round: int = 5) -> dict[str, list[ThroughputAt]]:
    """Throughput at each batch size, interleaved like latency, with the p99 that came with it."""
    out: dict[str, list[ThroughputAt]] = {k: [] for k in runners}
    for b in batches:
        x = batch_of(pool, b)
        s = interleaved(runners, x, rounds=rounds, calls_per_round=calls_per_round, warmup=2)
        for k, sec in s.items():
            p99 = percentile_ms(sec, 99)
            out[k].append(ThroughputAt(b, p99, float(b / sec.mean()), sla_ms is None or p99 <= sla_ms))
    return out


def best_within_sla(points: list[ThroughputAt]) -> ThroughputAt | None:
    """PLASTER's throughput: the most samples/s at a batch size whose p99 meets the SLA."""
    ok = [p for p in points if p.within_sla]
    return max(ok, key=lambda p: p.samples_per_s) if ok else None
