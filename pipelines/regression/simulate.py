"""A drifting stream of diabetes records (regression), from scikit-learn's bundled diabetes data.

The 442 real patients (10 measurements in their own units: age in years, sex 1/2, BMI,
blood pressure, six blood serum values) are split once: 142 are the golden holdout, real rows
and real disease progression; the other 300 seed the stream. A stream row is a seed patient
with its measurements jittered (a fifth of each column's spread), and its progression a
linear fit of the seed patients plus one of their real residuals, so the noise is the data's
own. Drift with shard k (severity min(1, k / 8)): the population grows heavier (BMI +4,
blood pressure +8, the s5 serum value +0.3 at full severity), and progression rises faster
above a BMI of 30 (up to +8 per unit), a change a model fitted on early shards has not seen.
Shards are only ever appended, never rewritten.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from orchestrator.dataset import write_columns

ROWS_PER_SHARD = 250
GOLDEN_ROWS = 142
COLUMNS = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
SHIFT = {"bmi": 4.0, "bp": 8.0, "s5": 0.3}  # at full severity
KINK_AT, KINK_SLOPE = 30.0, 8.0  # progression per BMI unit above KINK_AT, at full severity


def _diabetes() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_diabetes

    d = load_diabetes(scaled=False)
    return d.data.astype(np.float64), d.target.astype(np.float64)


def _split():
    x, y = _diabetes()
    order = np.random.default_rng(1234).permutation(len(x))
    golden, pool = order[:GOLDEN_ROWS], order[GOLDEN_ROWS:]
    return (x[golden], y[golden]), (x[pool], y[pool])


def _columns(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    out = {name: x[:, j] for j, name in enumerate(COLUMNS)}
    out["sex"] = x[:, 1].astype(np.int64)  # a category code, as a user's table keeps it
    out["progression"] = y
    return out


def _rows(k: int, pool_x: np.ndarray, pool_y: np.ndarray, rng: np.random.Generator,
          shuffle_labels: bool) -> dict[str, np.ndarray]:
    design = np.column_stack([np.ones(len(pool_x)), pool_x])
    coef, *_ = np.linalg.lstsq(design, pool_y, rcond=None)
    residuals = pool_y - design @ coef
    severity = min(1.0, k / 8.0)

    seed = rng.integers(0, len(pool_x), size=ROWS_PER_SHARD)
    x = pool_x[seed] + rng.normal(0.0, 0.2, size=(ROWS_PER_SHARD, len(COLUMNS))) * pool_x.std(0)
    x[:, 1] = pool_x[seed, 1]  # sex stays 1 or 2
    for name, shift in SHIFT.items():
        x[:, COLUMNS.index(name)] += severity * shift
    bmi = x[:, COLUMNS.index("bmi")]
    y = np.column_stack([np.ones(len(x)), x]) @ coef + rng.choice(residuals, size=len(x))
    y += severity * KINK_SLOPE * np.maximum(0.0, bmi - KINK_AT)
    y = np.clip(y, 25.0, 400.0)  # the measure's range
    if shuffle_labels:
        rng.shuffle(y)
    return _columns(x, y)


def simulate(source: Path, golden: Path | None, shards: int, shuffle_labels: bool = False) -> list[Path]:
    """Append the next `shards` shards of the stream to `source`; return their paths."""
    source.mkdir(parents=True, exist_ok=True)
    (golden_x, golden_y), (pool_x, pool_y) = _split()
    if golden is not None and not golden.exists():
        golden.parent.mkdir(parents=True, exist_ok=True)
        write_columns(golden, _columns(golden_x, golden_y))
    start = len(list(source.glob("shard-*.parquet")))
    written = []
    for k in range(start, start + shards):
        path = source / f"shard-{k:05d}.parquet"
        write_columns(path, _rows(k, pool_x, pool_y, np.random.default_rng(k), shuffle_labels))
        written.append(path)
    return written
