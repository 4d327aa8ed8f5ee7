"""Tasks: what a model predicts, and with it the default loss, the metrics and their paired
statistics on identical examples.

A task turns a model's outputs and the targets into per-example statistics (a row per
example: correct; absolute and squared error; true/false positives and false negatives).
Every metric is a function of the column sums of those rows, so one paired bootstrap
(resampling examples, which keeps candidate and champion paired) serves every metric, and
an epoch's training metric is the same function of sums all-reduced across workers.
Classification keeps its exact statistics (Wilson interval, McNemar, the exact multinomial
bootstrap of measure/stats.py). Pure numpy here; torch only for the default losses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from orchestrator.artifacts import AccuracyDiff, Figure
from orchestrator.measure import stats

RESAMPLES = 2000


@dataclass(frozen=True)
class Task:
    name: str
    primary: str  # the metric the precision choice and a bare gate margin use
    metrics: dict[str, bool]  # metric -> higher is better

    # --- training -------------------------------------------------------------------
    def loss(self, outputs, target):
        import torch.nn.functional as F

        if self.name == "classification":
            return F.cross_entropy(outputs, target)
        if self.name == "regression":
            return F.mse_loss(outputs, target)
        return F.binary_cross_entropy_with_logits(outputs, target)

    # --- per-example statistics -------------------------------------------------------
    def per_example(self, outputs: np.ndarray, y: np.ndarray) -> np.ndarray:
        """float64 [N, k]: the sufficient statistics of each example."""
        outputs = np.asarray(outputs, dtype=np.float64)
        if self.name == "classification":
            return (outputs.argmax(axis=1) == y).astype(np.float64)[:, None]
        if self.name == "regression":
            err = outputs.reshape(len(outputs), -1) - np.asarray(y, np.float64).reshape(len(y), -1)
            return np.stack([np.abs(err).mean(axis=1), (err ** 2).mean(axis=1)], axis=1)
        pred, truth = outputs > 0, np.asarray(y) > 0.5
        return np.stack([(pred & truth).sum(1), (pred & ~truth).sum(1), (~pred & truth).sum(1)], axis=1).astype(
            np.float64)

    def from_sums(self, metric: str, sums: np.ndarray, n) -> np.ndarray:
        """The metric from column sums over n examples (vectorised over leading axes)."""
        sums = np.asarray(sums, dtype=np.float64)
        if metric == "accuracy":
            return sums[..., 0] / n
        if metric == "mae":
            return sums[..., 0] / n
        if metric == "rmse":
            return np.sqrt(sums[..., 1] / n)
        tp, fp, fn = sums[..., 0], sums[..., 1], sums[..., 2]
        denom = 2 * tp + fp + fn
        return np.where(denom > 0, 2 * tp / np.maximum(denom, 1e-12), 1.0)

    def value(self, metric: str, rows: np.ndarray) -> float:
        return float(self.from_sums(metric, rows.sum(axis=0), len(rows)))

    # --- intervals ----------------------------------------------------------------------
    def figure(self, metric: str, rows: np.ndarray, confidence: float) -> Figure:
        n = len(rows)
        if metric == "accuracy":
            k = int(rows[:, 0].sum())
            return Figure(k / n if n else 0.0, stats.wilson(k, n, confidence), note=f"n={n}")
        boot = self.from_sums(metric, _resampled_sums(rows, np.random.default_rng(0)), n)
        a = 1 - confidence
        lo, hi = np.quantile(boot, [a / 2, 1 - a / 2])
        return Figure(self.value(metric, rows), (float(lo), float(hi)), note=f"n={n}")

    def paired(self, metric: str, cand: np.ndarray, champ: np.ndarray, confidence: float,
               slice_name: str) -> AccuracyDiff:
        """Candidate minus champion on identical examples, with a paired bootstrap CI."""
        if cand.shape != champ.shape:
            raise ValueError(f"paired statistics need the same examples, got {cand.shape} and {champ.shape}")
        if metric == "accuracy":
            return stats.paired_accuracy(cand[:, 0] > 0.5, champ[:, 0] > 0.5, confidence, slice_name=slice_name)
        n = len(cand)
        if n == 0:
            raise ValueError("no examples to compare")
        rows = np.concatenate([cand, champ], axis=1)  # resample both with the same draw: the pairing
        sums = _resampled_sums(rows, np.random.default_rng(0))
        k = cand.shape[1]
        boot = self.from_sums(metric, sums[:, :k], n) - self.from_sums(metric, sums[:, k:], n)
        a = 1 - confidence
        lo, hi = np.quantile(boot, [a / 2, 1 - a / 2])
        c, h = self.value(metric, cand), self.value(metric, champ)
        return AccuracyDiff(slice_name, n, c, h, c - h, (float(lo), float(hi)), metric=metric,
                            higher_is_better=self.metrics[metric])


def _resampled_sums(rows: np.ndarray, rng: np.random.Generator, resamples: int = RESAMPLES) -> np.ndarray:
    """Column sums of `resamples` bootstrap resamples of the rows, [resamples, k]. Drawn as
    multinomial counts per row, in chunks so a large slice never needs resamples x n memory."""
    n = len(rows)
    out = []
    chunk = max(1, 2_000_000 // max(n, 1))
    for start in range(0, resamples, chunk):
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=min(chunk, resamples - start))
        out.append(counts @ rows)
    return np.concatenate(out)


TASKS = {
    "classification": Task("classification", "accuracy", {"accuracy": True}),
    "regression": Task("regression", "mae", {"mae": False, "rmse": False}),
    "multilabel": Task("multilabel", "micro_f1", {"micro_f1": True}),
}


def task_for(name: str) -> Task:
    return TASKS[name]


def is_proportion(metric: str) -> bool:
    return metric in ("accuracy", "micro_f1")


def show(metric: str, value: float | None, ci: tuple[float, float] | None = None) -> str:
    """A metric as people read it: proportions in percent, errors in the data's units."""
    if value is None:
        return "—"
    if is_proportion(metric):
        return f"{100 * value:.2f}%" + (f" [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]" if ci else "")
    return f"{value:.4g}" + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "")


def show_diff(metric: str, diff: float, ci: tuple[float, float]) -> str:
    if is_proportion(metric):
        return f"{100 * diff:+.2f} pp [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}] pp"
    return f"{diff:+.4g} [{ci[0]:+.4g}, {ci[1]:+.4g}]"
