"""The heavy benchmark's data: a drifting stream of 16x16 digit shards, generated here from
scikit-learn's bundled 8x8 digits (no download).

Each image is upsampled to 16x16, then jittered (a small random rotation and sub-pixel
shift, so no two shards repeat an image) and drifted with severity min(1, k / 8) for shard k:
rotation up to 30 degrees, a shift up to 2 pixels, thicker strokes from severity 0.5, and
growing noise. A fixed golden holdout of upsampled, undrifted images is written once.
Same Parquet layout as pipelines/digits (a `pixels` list<float32> column of 256 values and
an int64 `label`), so ingest reads it unchanged. Shards are only ever appended.

`plaster simulate benchmarks/heavy --shards 4` (or api.simulate) calls simulate() below.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from orchestrator.dataset import write_shard

SIDE = 16
ROWS_PER_SHARD = 1000
GOLDEN_ROWS = 400


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    small = (d.images / 16.0).astype(np.float32)
    big = np.stack([ndimage.zoom(im, SIDE / 8, order=1) for im in small])
    return np.clip(big, 0.0, 1.0).astype(np.float32), d.target.astype(np.int64)


def _split():
    x, y = _digits()
    order = np.random.default_rng(1234).permutation(len(x))
    golden, pool = order[:GOLDEN_ROWS], order[GOLDEN_ROWS:]
    return (x[golden], y[golden]), (x[pool], y[pool])


def drift(images: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    out = np.empty_like(images)
    for i, img in enumerate(images):
        angle = rng.uniform(-8.0, 8.0) + severity * 30.0 * rng.uniform(0.7, 1.0)
        shift = rng.uniform(-0.5, 0.5, size=2) + severity * rng.uniform(-2.0, 2.0, size=2)
        im = ndimage.rotate(img, angle, reshape=False, order=1, mode="constant")
        im = ndimage.shift(im, shift, order=1, mode="constant")
        if severity >= 0.5:
            im = ndimage.grey_dilation(im, size=(2, 2))
        im = im + rng.normal(0.0, 0.1 * severity, size=im.shape)
        out[i] = np.clip(im, 0.0, 1.0)
    return out


def simulate(source: Path, golden: Path | None, shards: int, shuffle_labels: bool = False) -> list[Path]:
    """Append the next `shards` shards of the stream to `source`; return their paths."""
    source.mkdir(parents=True, exist_ok=True)
    (golden_x, golden_y), (pool_x, pool_y) = _split()
    if golden is not None and not golden.exists():
        golden.parent.mkdir(parents=True, exist_ok=True)
        write_shard(golden, golden_x, golden_y)
    start = len(list(source.glob("shard-*.parquet")))
    written = []
    for k in range(start, start + shards):
        rng = np.random.default_rng(10_000 + k)
        idx = rng.choice(len(pool_x), size=ROWS_PER_SHARD, replace=ROWS_PER_SHARD > len(pool_x))
        images = drift(pool_x[idx], min(1.0, k / 8.0), rng)
        labels = pool_y[idx].copy()
        if shuffle_labels:
            rng.shuffle(labels)
        path = source / f"shard-{k:05d}.parquet"
        write_shard(path, images, labels)
        written.append(path)
    return written
