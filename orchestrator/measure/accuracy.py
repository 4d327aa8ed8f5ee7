"""An engine's outputs on a slice, kept per example so candidate and champion can be compared
pairwise on identical examples (the task turns them into its statistics)."""

from __future__ import annotations

import numpy as np

from orchestrator.engines import Runner


def outputs(runner: Runner, x: dict[str, np.ndarray], batch: int = 256) -> np.ndarray:
    n = len(next(iter(x.values())))
    out = [np.asarray(runner({k: np.ascontiguousarray(v[i:i + batch]) for k, v in x.items()}))
           for i in range(0, n, batch)]
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def predictions(runner: Runner, x: dict[str, np.ndarray], batch: int = 256) -> np.ndarray:
    """Class ids (classification)."""
    return outputs(runner, x, batch).argmax(axis=1)


def per_example(runner: Runner, x: dict[str, np.ndarray], y: np.ndarray, task) -> np.ndarray:
    """The task's per-example statistics of the engine on (x, y): [N, k]."""
    return task.per_example(outputs(runner, x), y)


def correct(runner: Runner, x: dict[str, np.ndarray], y: np.ndarray) -> np.ndarray:
    """Boolean vector: which examples the engine gets right (classification)."""
    return predictions(runner, x) == y
