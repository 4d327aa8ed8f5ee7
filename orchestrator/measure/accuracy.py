"""Accuracy of an engine on a slice, keeping per-example correctness so candidate and
champion can be compared pairwise on identical examples (the statistics slot in here)."""

from __future__ import annotations

import numpy as np

from orchestrator.engines import Runner


def predictions(runner: Runner, x: np.ndarray, batch: int = 256) -> np.ndarray:
    out = [np.asarray(runner(np.ascontiguousarray(x[i:i + batch]))).argmax(axis=1) for i in range(0, len(x), batch)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def correct(runner: Runner, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Boolean vector: which examples the engine gets right."""
    return predictions(runner, x) == y
