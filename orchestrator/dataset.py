"""Reading shards into arrays, with the checks that decide whether a shard is usable.

Never moves or deletes anything: ingest decides what to do with a bad shard.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from orchestrator.config import DataConfig


class ShardInvalid(Exception):
    """A shard failed a check; the message is the quarantine reason."""


def read_shard(path: Path, data: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """Return (x float32 of shape (n, *features.shape), y int64 of shape (n,)).

    Raises:
        ShardInvalid: with a one-line reason naming what is wrong and what was expected.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several kinds for a damaged file
        raise ShardInvalid(f"not a readable Parquet file ({type(e).__name__}: {str(e)[:160]})") from None
    fcol, lcol = data.features.column, data.label.column
    missing = [c for c in (fcol, lcol) if c not in table.column_names]
    if missing:
        raise ShardInvalid(f"schema: missing column(s) {missing}; found {table.column_names}, expected '{fcol}' and '{lcol}'")
    if table.num_rows == 0:
        raise ShardInvalid("empty: the shard has no rows")
    width = int(np.prod(data.features.shape))
    ftype = table.schema.field(fcol).type
    if not (pa.types.is_list(ftype) or pa.types.is_large_list(ftype) or pa.types.is_fixed_size_list(ftype)):
        raise ShardInvalid(f"schema: column '{fcol}' is {ftype}, expected a list of {width} floats")
    if not (pa.types.is_floating(ftype.value_type) or pa.types.is_integer(ftype.value_type)):
        raise ShardInvalid(f"dtype: column '{fcol}' holds {ftype.value_type}, expected float32")
    if table.column(fcol).null_count:
        first = int(np.flatnonzero(table.column(fcol).is_null().to_numpy(zero_copy_only=False))[0])
        raise ShardInvalid(f"values: {table.column(fcol).null_count} row(s) of '{fcol}' are null (first: row {first}); "
                           f"every row needs {width} values")
    lengths = table.column(fcol).combine_chunks().value_lengths().to_numpy(zero_copy_only=False)
    if np.any(lengths != width):
        bad = int(np.flatnonzero(lengths != width)[0])
        raise ShardInvalid(f"shape: row {bad} of '{fcol}' has {lengths[bad]} values, expected {width} (shape {list(data.features.shape)})")
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf, refused just below
        x = np.asarray(table.column(fcol).combine_chunks().flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    x = x.reshape((table.num_rows, *data.features.shape))
    if not np.all(np.isfinite(x)):
        raise ShardInvalid(f"values: {int(np.sum(~np.isfinite(x)))} NaN/inf (or beyond float32 range) value(s) "
                           f"in '{fcol}'")
    ltype = table.schema.field(lcol).type
    if not pa.types.is_integer(ltype):
        raise ShardInvalid(f"dtype: column '{lcol}' is {ltype}, expected integer class ids")
    y_col = table.column(lcol)
    if y_col.null_count:
        raise ShardInvalid(f"values: {y_col.null_count} missing label(s) in '{lcol}'")
    k = data.label.num_classes
    # The range is read before any cast: a uint64 label past int64 would wrap to a negative id.
    lo, hi = (v.as_py() for v in pc.min_max(y_col).values())
    if lo < 0 or hi >= k:
        raise ShardInvalid(f"labels: values {lo}..{hi} outside 0..{k - 1} (label.num_classes={k})")
    return x, y_col.to_numpy().astype(np.int64)


def write_shard(path: Path, x: np.ndarray, y: np.ndarray, feature_column: str = "pixels",
                label_column: str = "label") -> None:
    """The inverse of read_shard, for simulators: features flattened into a list<float32>
    column, labels int64. Written to a temporary name and renamed, so ingest never reads a
    half-written shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = path.with_suffix(".tmp")
    pq.write_table(pa.table({feature_column: pa.array(list(x.reshape(len(x), -1)), type=pa.list_(pa.float32())),
                             label_column: pa.array(y, type=pa.int64())}), tmp)
    tmp.rename(path)


def save_arrays(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    np.savez(path, x=x, y=y)


def load_arrays(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as f:
        return f["x"].copy(), f["y"].copy()
