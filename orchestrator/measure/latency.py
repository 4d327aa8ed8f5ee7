"""Latency and throughput of several engines measured interleaved (A B C A B C ...) after
a warm-up, so a noisy neighbour slows every engine alike instead of whichever ran then."""

from __future__ import annotations

import time

import numpy as np

from orchestrator.engines import Runner


def interleaved(runners: dict[str, Runner], x: np.ndarray, rounds: int, calls_per_round: int = 10,
                warmup: int = 5) -> dict[str, np.ndarray]:
    """Seconds per call for each runner, `rounds * calls_per_round` samples each."""
    x = np.ascontiguousarray(x)
    for r in runners.values():
        for _ in range(warmup):
            r(x)
    samples: dict[str, list[float]] = {k: [] for k in runners}
    names = list(runners)
    for i in range(rounds):
        # Alternate the order each round so neither engine always runs first.
        for name in (names if i % 2 == 0 else names[::-1]):
            run = runners[name]
            for _ in range(calls_per_round):
                t0 = time.perf_counter()
                run(x)
                samples[name].append(time.perf_counter() - t0)
    return {k: np.asarray(v) for k, v in samples.items()}


def percentile_ms(seconds: np.ndarray, q: float) -> float:
    return float(np.percentile(seconds, q) * 1e3)


def throughput(seconds_per_call: np.ndarray, batch: int) -> float:
    """Samples per second at the median call time."""
    return float(batch / np.median(seconds_per_call))
