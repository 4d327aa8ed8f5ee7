"""An imbalanced, drifting stream of digits shards, from scikit-learn's bundled digits (no download).

The stream's classes are far from balanced: 0-5 are common, 6 less so, 7, 8 and 9 rare
(about 2-4% of rows each, a handful per shard), as in a stream where some events seldom
happen. CLASS_FREQUENCY is that prior; model.py weights its loss by it. Shard k applies the
digits pipeline's drift of severity min(1, k / 8): rotation up to 30 degrees, a shift up to
1 pixel, thicker strokes and growing noise. The golden holdout is 400 undrifted images, every
class about equally common as in the original digits, written once: it asks whether a model knows the rare digits too,
which an imbalanced `new` slice barely measures. Shards are only ever appended, never
rewritten.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from orchestrator.dataset import write_columns

ROWS_PER_SHARD = 250
GOLDEN_ROWS = 400
_RELATIVE = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.25, 0.15, 0.15])
CLASS_FREQUENCY = _RELATIVE / _RELATIVE.sum()  # of the stream's rows; the golden holdout is balanced


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def _split():
    x, y = _digits()
    order = np.random.default_rng(1234).permutation(len(x))
    golden, pool = order[:GOLDEN_ROWS], order[GOLDEN_ROWS:]
    return (x[golden], y[golden]), (x[pool], y[pool])


def drift(images: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    out = np.empty_like(images)
    for i, img in enumerate(images):
        angle = severity * 30.0 * rng.uniform(0.7, 1.0)
        shift = severity * rng.uniform(-1.0, 1.0, size=2)
        im = ndimage.rotate(img, angle, reshape=False, order=1, mode="constant")
        im = ndimage.shift(im, shift, order=1, mode="constant")
        if severity >= 0.5:
            im = ndimage.grey_dilation(im, size=(2, 2))
        im = im + rng.normal(0.0, 0.1 * severity, size=im.shape)
        out[i] = np.clip(im, 0.0, 1.0)
    return out


def _imbalanced(pool_y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row indices of one shard: classes drawn by CLASS_FREQUENCY, images without repeats."""
    classes = rng.choice(10, size=ROWS_PER_SHARD, p=CLASS_FREQUENCY)
    idx = np.empty(ROWS_PER_SHARD, dtype=np.int64)
    for c in range(10):
        at = np.flatnonzero(classes == c)
        idx[at] = rng.choice(np.flatnonzero(pool_y == c), size=len(at), replace=False)
    return idx


def simulate(source: Path, golden: Path | None, shards: int, shuffle_labels: bool = False) -> list[Path]:
    """Append the next `shards` shards of the stream to `source`; return their paths."""
    source.mkdir(parents=True, exist_ok=True)
    (golden_x, golden_y), (pool_x, pool_y) = _split()
    if golden is not None and not golden.exists():
        golden.parent.mkdir(parents=True, exist_ok=True)
        write_columns(golden, {"pixels": golden_x[:, None], "label": golden_y})
    start = len(list(source.glob("shard-*.parquet")))
    written = []
    for k in range(start, start + shards):
        rng = np.random.default_rng(k)
        idx = _imbalanced(pool_y, rng)
        images = drift(pool_x[idx], min(1.0, k / 8.0), rng)
        labels = pool_y[idx].copy()
        if shuffle_labels:
            rng.shuffle(labels)
        path = source / f"shard-{k:05d}.parquet"
        write_columns(path, {"pixels": images[:, None], "label": labels})
        written.append(path)
    return written
