"""Reading shards into arrays, with the checks that decide whether a shard is usable.

Never moves or deletes anything: ingest decides what to do with a bad shard.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from orchestrator.door import InputSpec, TargetSpec


class ShardInvalid(Exception):
    """A shard failed a check; the message is the quarantine reason."""


Inputs = dict[str, np.ndarray]  # model inputs by name, each (n, *shape)


def read_shard(path: Path, inputs: tuple[InputSpec, ...], target: TargetSpec,
               partitions: dict[str, str | None] | None = None) -> tuple[Inputs, np.ndarray]:
    """Return (inputs by name, targets): each input (n, *shape) of its dtype; targets int64 (n,)
    class ids, float32 (n, targets) values or float32 (n, num_labels) 0/1. `partitions`: the
    file's Hive partition values (listing.scan), added as columns first (with_partitions).

    Raises:
        ShardInvalid: with a one-line reason naming the column, what is wrong and what was expected.
        FileNotFoundError: the file is gone (moved or deleted since it was listed): not a defect of it.
    """
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise
    except Exception as e:  # pyarrow raises several kinds for a damaged file
        raise ShardInvalid(f"not a readable Parquet file ({type(e).__name__}: {str(e)[:160]})") from None
    return decode(with_partitions(table, partitions), inputs, target)


def read_row_groups(path: Path, groups: list[int], inputs: tuple[InputSpec, ...], target: TargetSpec,
                    partitions: dict[str, str | None] | None = None) -> tuple[Inputs, np.ndarray]:
    """Only these row groups of a shard, and only the declared columns: what replay drew,
    without reading the rest of the file (its footer says where each group lies)."""
    import pyarrow.parquet as pq

    wanted = [c for i in inputs for c in i.parquet_columns] + list(target.columns)
    try:
        f = pq.ParquetFile(path)
        # A partition column is not in the file; a missing one is decode's schema error, not pyarrow's.
        table = f.read_row_groups(groups, columns=[c for c in wanted if c in f.schema_arrow.names])
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ShardInvalid(f"not a readable Parquet file ({type(e).__name__}: {str(e)[:160]})") from None
    return decode(with_partitions(table, partitions), inputs, target)


def with_partitions(table, partitions: dict[str, str | None] | None):
    """The file's Hive partition values as constant columns, typed as listing.typed says (int64,
    float64, else string; the null partition as float64 nulls, which decode refuses by name),
    so a pipeline can name a partition key as an input or target column. A column the file
    holds itself wins: Spark never writes the partition column into the file."""
    if not partitions:
        return table
    import pyarrow as pa

    from orchestrator.listing import typed

    for key, raw in partitions.items():
        if key in table.column_names:
            continue
        v = typed(raw)
        kind = pa.int64() if isinstance(v, int) else pa.string() if isinstance(v, str) else pa.float64()
        table = table.append_column(key, pa.repeat(pa.scalar(v, kind), table.num_rows))
    return table


def decode(table, inputs: tuple[InputSpec, ...], target: TargetSpec) -> tuple[Inputs, np.ndarray]:
    """An Arrow table as (inputs by name, targets), checked against the declared schema."""
    wanted = [c for i in inputs for c in i.parquet_columns] + list(target.columns)
    missing = [c for c in wanted if c not in table.column_names]
    if missing:
        raise ShardInvalid(f"schema: missing column(s) {missing}; found {table.column_names}, expected "
                           f"{', '.join(repr(c) for c in wanted)}")
    if table.num_rows == 0:
        raise ShardInvalid("empty: the shard has no rows")
    out = {i.name: _read_input(table, i) for i in inputs}
    return out, _read_target(table, target)


def _scalar(table, col: str, what: str) -> np.ndarray:
    """A numeric scalar column as float64, refusing strings, lists and nulls."""
    import pyarrow as pa

    t = table.schema.field(col).type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
        raise ShardInvalid(f"dtype: column '{col}' is {t}, expected {what}")
    c = table.column(col)
    if c.null_count:
        first = int(np.flatnonzero(c.is_null().to_numpy(zero_copy_only=False))[0])
        raise ShardInvalid(f"values: {c.null_count} null(s) in '{col}' (first: row {first}); every row needs {what}")
    return c.to_numpy().astype(np.float64)


def _list(table, col: str, width: int, shape: list, kind: str, what: str) -> np.ndarray:
    """A list column of `width` values per row, flattened to (n, width), in its own dtype.
    kind: "ids" (integers), "floats" (floats or integers) or "labels" (0/1 as integers, floats
    or booleans); `what` says what each value should be, for the messages."""
    import pyarrow as pa

    t = table.schema.field(col).type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        raise ShardInvalid(f"schema: column '{col}' is {t}, expected a list of {width} {what} per row")
    vt = t.value_type
    ok = {"ids": pa.types.is_integer(vt),
          "floats": pa.types.is_floating(vt) or pa.types.is_integer(vt),
          "labels": pa.types.is_integer(vt) or pa.types.is_floating(vt) or pa.types.is_boolean(vt)}[kind]
    if not ok:
        raise ShardInvalid(f"dtype: column '{col}' holds {vt}, expected {what}")
    c = table.column(col)
    if c.null_count:
        first = int(np.flatnonzero(c.is_null().to_numpy(zero_copy_only=False))[0])
        raise ShardInvalid(f"values: {c.null_count} row(s) of '{col}' are null (first: row {first}); "
                           f"every row needs {width} {what}")
    chunk = c.combine_chunks()
    lengths = chunk.value_lengths().to_numpy(zero_copy_only=False)
    if np.any(lengths != width):
        bad = int(np.flatnonzero(lengths != width)[0])
        raise ShardInvalid(f"shape: row {bad} of '{col}' has {lengths[bad]} values, expected {width} {what} "
                           f"(shape {shape})")
    flat = chunk.flatten()
    if flat.null_count:  # every row holds `width` values here, so value i is in row i // width
        first = int(np.flatnonzero(flat.is_null().to_numpy(zero_copy_only=False))[0]) // width
        raise ShardInvalid(f"values: {flat.null_count} null value(s) inside the lists of '{col}' (first: row {first}); "
                           f"every value must be {what}")
    return flat.to_numpy(zero_copy_only=False).reshape(table.num_rows, width)


def _read_input(table, spec: InputSpec) -> np.ndarray:
    n = table.num_rows
    if spec.columns:
        x = np.stack([_scalar(table, c, "a number (one feature of input " + repr(spec.name) + ")")
                      for c in spec.columns], axis=1)
        with np.errstate(over="ignore"):
            x = x.astype(np.float32)
        bad = ~np.isfinite(x)
        if bad.any():
            col = spec.columns[int(np.flatnonzero(bad.any(axis=0))[0])]
            raise ShardInvalid(f"values: {int(bad.sum())} NaN/inf (or beyond float32 range) value(s) in input "
                               f"'{spec.name}' (first in column '{col}')")
        return x
    width = int(np.prod(spec.shape))
    what = (f"int64 ids in 0..{spec.vocab_size - 1} (input '{spec.name}')" if spec.dtype == "int64"
            else f"float32 numbers (input '{spec.name}')")
    raw = _list(table, spec.column, width, list(spec.shape), "ids" if spec.dtype == "int64" else "floats", what)
    if spec.dtype == "int64":
        lo, hi = int(raw.min()), int(raw.max())
        if lo < 0 or hi >= spec.vocab_size:
            raise ShardInvalid(f"ids: '{spec.column}' holds ids {lo}..{hi} outside 0..{spec.vocab_size - 1} "
                               f"(vocab_size={spec.vocab_size} of input '{spec.name}')")
        return raw.astype(np.int64).reshape((n, *spec.shape))
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf, refused just below
        x = raw.astype(np.float32).reshape((n, *spec.shape))
    if not np.all(np.isfinite(x)):
        first = int(np.flatnonzero(~np.isfinite(x).reshape(n, -1).all(axis=1))[0])
        raise ShardInvalid(f"values: {int(np.sum(~np.isfinite(x)))} NaN/inf (or beyond float32 range) value(s) "
                           f"in '{spec.column}' (first: row {first}); input '{spec.name}' needs finite float32 numbers")
    return x


def _read_target(table, t: TargetSpec) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    if t.task == "classification":
        col = t.columns[0]
        ltype = table.schema.field(col).type
        if not pa.types.is_integer(ltype):
            raise ShardInvalid(f"dtype: column '{col}' is {ltype}, expected integer class ids")
        y_col = table.column(col)
        k = t.num_classes
        if y_col.null_count:
            first = int(np.flatnonzero(y_col.is_null().to_numpy(zero_copy_only=False))[0])
            raise ShardInvalid(f"values: {y_col.null_count} missing label(s) in '{col}' (first: row {first}); every row "
                               f"needs a class id in 0..{k - 1}")
        # The range is read before any cast: a uint64 label past int64 would wrap to a negative id.
        lo, hi = (v.as_py() for v in pc.min_max(y_col).values())
        if lo < 0 or hi >= k:
            raise ShardInvalid(f"labels: '{col}' holds values {lo}..{hi} outside 0..{k - 1} (num_classes={k})")
        return y_col.to_numpy().astype(np.int64)
    if t.task == "regression":
        y = np.stack([_scalar(table, c, "a float target") for c in t.columns], axis=1)
        with np.errstate(over="ignore"):  # checked after the cast: a float64 beyond float32's range becomes inf
            y = y.astype(np.float32)
        bad = ~np.isfinite(y)
        if bad.any():
            col = t.columns[int(np.flatnonzero(bad.any(axis=0))[0])]
            first = int(np.flatnonzero(bad.any(axis=1))[0])
            raise ShardInvalid(f"target: {int(bad.sum())} NaN/inf (or beyond float32 range) value(s) in '{col}' "
                               f"(first: row {first}); a regression target must be a finite number")
        return y
    col = t.columns[0]
    y = _list(table, col, t.outputs, [t.outputs], "labels", f"0/1 labels (num_labels={t.outputs})")
    if not np.isin(y, (0, 1)).all():
        first = int(np.flatnonzero(~np.isin(y, (0, 1)).all(axis=1))[0])
        found = sorted({float(v) for v in np.unique(y[~np.isin(y, (0, 1))])})[:5]
        raise ShardInvalid(f"labels: '{col}' holds values other than 0 and 1 (first: row {first}; found "
                           f"{', '.join(f'{v:g}' for v in found)}); every row needs {t.outputs} 0/1 labels")
    return y.astype(np.float32)


def take(inputs: Inputs, idx) -> Inputs:
    return {k: v[idx] for k, v in inputs.items()}


def concat(parts: list[Inputs]) -> Inputs:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def rows(inputs: Inputs) -> int:
    return len(next(iter(inputs.values())))


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


def example_columns(pipeline, n: int = 3, fill: int = 0) -> dict:
    """n valid rows of a pipeline's declared columns (list columns filled with `fill`), for
    writing shards that break one rule at a time in tests and benchmarks/bad_inputs.py."""
    cols = {}
    for i in pipeline.inputs:
        if i.columns:
            cols.update({c: np.arange(n, dtype=np.float64) for c in i.columns})
        else:
            cols[i.column] = np.full((n, *i.shape), fill, dtype=i.dtype)
    t = pipeline.target
    if t.task == "classification":
        cols[t.columns[0]] = np.arange(n, dtype=np.int64) % t.num_classes
    elif t.task == "regression":
        cols.update({c: np.linspace(50.0, 150.0, n) for c in t.columns})
    else:
        cols[t.columns[0]] = np.eye(t.outputs, dtype=np.int64)[np.arange(n) % t.outputs]
    return cols


def write_columns(path: Path, columns: dict) -> None:
    """Write one Parquet shard from named columns, atomically (a temporary name, then a
    rename), so ingest never reads a half-written shard. A 1-d array is a scalar column of
    its dtype; an array of more dimensions is a list column, each row flattened."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {}
    for name, values in columns.items():
        a = np.asarray(values)
        if a.ndim <= 1:
            arrays[name] = pa.array(a)
        else:
            flat = a.reshape(len(a), -1)
            arrays[name] = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1]).cast(
                pa.list_(pa.from_numpy_dtype(a.dtype)))
    tmp = path.with_suffix(".tmp")
    pq.write_table(pa.table(arrays), tmp)
    tmp.rename(path)


def save_arrays(path: Path, inputs: Inputs, y: np.ndarray) -> None:
    np.savez(path, y=y, **{f"in.{k}": v for k, v in inputs.items()})


def load_arrays(path: str | Path) -> tuple[Inputs, np.ndarray]:
    """(inputs by name, targets) of a snapshot file; a file from before named inputs holds one, 'input'."""
    with np.load(path) as f:
        if "x" in f.files:
            return {"input": f["x"].copy()}, f["y"].copy()
        return {k[3:]: f[k].copy() for k in f.files if k.startswith("in.")}, f["y"].copy()
