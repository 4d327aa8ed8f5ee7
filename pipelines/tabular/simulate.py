"""A drifting stream of tabular shards: 24 numeric columns on very different scales, 3 classes.

Each row comes from 6 hidden factors z. The class is the sector of a 3-armed spiral around the
origin in the (z0, z1) plane, twisted by z2. Two things drift, shard by shard:
- the population (covariate shift): it sits off-centre and its centre rotates around the origin
  (shard k: k * 0.5 rad), so the part of the boundary the data sees turns with k;
- the boundary itself (concept drift): the spiral's arms turn by 0.03 rad a shard for 6 shards,
  then back to where they began over the next 6, and again (at most 0.18 rad, about 10 degrees),
  so the same point can change class from one shard to the next.
A champion fitted on early shards misplaces the boundary on later ones on both counts. The
golden holdout is shard 0's population under shard 0's rule: the boundary never strays from
that rule by more than 0.18 rad, which relabels at most ~8% of the golden rows, so the golden
slice stays a fair test of not forgetting (the gate's golden floor and non-inferiority margin
are read against it). The columns are the factors mixed and noised, then put in a user's units:
some in the thousands, some in 0..1, some skewed and positive, float64 and float32; 2% of the
labels are flipped at random. A fixed golden holdout is written once; shards are only ever
appended, never rewritten.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from orchestrator.dataset import write_columns

ROWS_PER_SHARD = 250
GOLDEN_ROWS = 500
FACTORS = 6
COLUMNS = [f"f{j:02d}" for j in range(24)]
ROTATION_PER_SHARD = 0.5  # radians the population's centre turns per shard
RADIUS = 0.8  # of the population's centre from the spiral's origin
BOUNDARY_TURN_PER_SHARD = 0.03  # radians the spiral's arms turn per shard...
BOUNDARY_SWING_SHARDS = 6  # ...for this many shards, then as many back, and again
LABEL_NOISE = 0.02  # labels flipped at random, as real tables have

# A fixed mixing of the factors into the columns and each column's units (seed 7).
_rng = np.random.default_rng(7)
_MIX = _rng.normal(0.0, 1.0, size=(FACTORS, len(COLUMNS))) / np.sqrt(FACTORS)
_KIND = np.array(["thousands"] * 6 + ["unit"] * 8 + ["skewed"] * 4 + ["plain"] * 6)
_SCALE = _rng.uniform(0.5, 3.0, size=len(COLUMNS))
_OFFSET = _rng.uniform(-1.0, 1.0, size=len(COLUMNS))
_FLOAT32 = {"f14", "f15", "f16", "f17", "f22", "f23"}  # a few columns stored as float32


def boundary_turn(k: int) -> float:
    """How far (radians) the spiral's arms have turned at shard k: out and back, never further
    than BOUNDARY_TURN_PER_SHARD * BOUNDARY_SWING_SHARDS from shard 0's (the golden) rule."""
    phase = k % (2 * BOUNDARY_SWING_SHARDS)
    return BOUNDARY_TURN_PER_SHARD * min(phase, 2 * BOUNDARY_SWING_SHARDS - phase)


def labels_of(z: np.ndarray, turn: float = 0.0) -> np.ndarray:
    """The rule: the arm of a 3-armed spiral, turned by `turn` radians, that the point (z0, z1),
    twisted by z2, lies on."""
    angle = np.arctan2(z[:, 1], z[:, 0]) + 0.4 * np.hypot(z[:, 0], z[:, 1]) + 0.2 * z[:, 2] - turn
    return (np.floor(np.mod(angle, 2 * np.pi) / (2 * np.pi / 3)).astype(np.int64)) % 3


def _factors(k: int, n: int, rng: np.random.Generator) -> np.ndarray:
    z = rng.normal(0.0, 1.0, size=(n, FACTORS))
    turn = k * ROTATION_PER_SHARD
    z[:, 0] += RADIUS * np.cos(turn)
    z[:, 1] += RADIUS * np.sin(turn)
    return z


def _columns(z: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    u = z @ _MIX + rng.normal(0.0, 0.15, size=(len(z), len(COLUMNS)))
    out = {}
    for j, name in enumerate(COLUMNS):
        v = u[:, j]
        if _KIND[j] == "thousands":  # amounts such as a price or a salary
            v = 1000.0 * _SCALE[j] * (3.0 + v)
        elif _KIND[j] == "unit":  # rates and shares in 0..1
            v = 1.0 / (1.0 + np.exp(-(v + _OFFSET[j])))
        elif _KIND[j] == "skewed":  # positive, long-tailed: durations, counts
            v = 20.0 * _SCALE[j] * np.exp(0.5 * v)
        else:
            v = _SCALE[j] * v + 10.0 * _OFFSET[j]
        out[name] = v.astype(np.float32 if name in _FLOAT32 else np.float64)
    return out


def _rows(k: int, n: int, rng: np.random.Generator, shuffle_labels: bool) -> dict[str, np.ndarray]:
    z = _factors(k, n, rng)
    label = labels_of(z, boundary_turn(k))
    flip = rng.random(n) < LABEL_NOISE
    label[flip] = rng.integers(0, 3, size=int(flip.sum()))
    if shuffle_labels:
        rng.shuffle(label)
    return {**_columns(z, rng), "label": label}


def simulate(source: Path, golden: Path | None, shards: int, shuffle_labels: bool = False) -> list[Path]:
    """Append the next `shards` shards of the stream to `source`; return their paths."""
    source.mkdir(parents=True, exist_ok=True)
    if golden is not None and not golden.exists():
        golden.parent.mkdir(parents=True, exist_ok=True)
        write_columns(golden, _rows(0, GOLDEN_ROWS, np.random.default_rng(10_000), False))
    start = len(list(source.glob("shard-*.parquet")))
    written = []
    for k in range(start, start + shards):
        path = source / f"shard-{k:05d}.parquet"
        write_columns(path, _rows(k, ROWS_PER_SHARD, np.random.default_rng(k), shuffle_labels))
        written.append(path)
    return written
