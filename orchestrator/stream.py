"""Snapshots larger than one process should hold: the training rows stay in their shard files
and Ray Data streams them to the training loop, so neither the driver nor a worker ever holds
the training set.

Which rows are holdout, validation or training is decided by each row's content (a 64-bit
hash of its bytes mapped into [0, 1), its *band*), not by its position: ingest keeps the
holdout and validation bands in memory (they are capped, so they stay small), and every read
of the training data, on any node, drops exactly those rows again. A manifest (plain JSON in
the snapshot) names the files and the bands; nothing here touches the registry or moves a file.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path, PurePath
from typing import Any, Iterator

import numpy as np

from orchestrator.dataset import decode, with_partitions

_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


def bands(x: dict[str, np.ndarray], y: np.ndarray) -> np.ndarray:
    """Each row's band in [0, 1): FNV-1a over its bytes (inputs by name, then the target),
    finished with a murmur3 mix so nearby rows spread evenly. Vectorised over rows."""
    n = len(y)
    parts = [np.ascontiguousarray(x[k]).reshape(n, -1).view(np.uint8) for k in sorted(x)]
    parts.append(np.ascontiguousarray(y).reshape(n, -1).view(np.uint8))
    raw = np.concatenate(parts, axis=1)
    raw = np.pad(raw, ((0, 0), (0, (-raw.shape[1]) % 8)))
    words = np.ascontiguousarray(raw).view(np.uint64)
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(words.shape[1]):
            h = (h ^ words[:, j]) * _FNV_PRIME
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def should_stream(cfg, new_rows: int, new_bytes: int) -> bool:
    """Above ingest.stream_above_rows rows or ingest.stream_above_bytes bytes of new data."""
    rows, size = cfg.ingest.stream_above_rows, cfg.ingest.stream_above_bytes
    return bool((rows and new_rows > rows) or (size and new_bytes > size))


def split_bands(cfg, new_rows: int) -> tuple[float, float, float]:
    """(holdout, validation, sample) band widths: the configured fractions, capped so each
    kept set stays about ingest.holdout_max_rows rows however large the data grows."""
    cap = cfg.ingest.holdout_max_rows / max(new_rows, 1)
    hold = min(cfg.ingest.holdout_fraction, cap)
    val = min(cfg.train.validation_fraction * (1 - hold), cap) if cfg.train.early_stopping_patience else 0.0
    sample = min(1.0 - hold - val, cap)  # training rows kept for INT8 calibration and the drift profile
    return hold, val, sample


def manifest(new: list[str], replay: list[str], hold: float, val: float, train_rows: int,
             partitions: dict[str, dict] | None = None) -> dict[str, Any]:
    """What training reads: new shards (rows with band >= hold + val) and replayed learned
    shards (every row), by path; `partitions`: the Hive partition values of the files that
    have any (listing.scan), which every read adds as columns (dataset.with_partitions)."""
    plan = {"new": list(new), "replay": list(replay), "drop_below": hold + val, "train_rows": int(train_rows)}
    if partitions:
        plan["partitions"] = {p: v for p, v in partitions.items() if v and p in set(new) | set(replay)}
    return plan


def _training_rows(table, inputs, target, is_new: bool, drop_below: float) -> dict[str, np.ndarray]:
    """Raw Parquet rows of one file → its training rows, decoded by input name: a new shard's
    rows in the holdout or validation bands are dropped; a replayed shard gives every row."""
    x, y = decode(table, inputs, target)
    keep = bands(x, y) >= drop_below if is_new else np.ones(len(y), dtype=bool)
    out = {f"in.{k}": v[keep] for k, v in x.items()}
    out["y"] = y[keep]
    return out


def _read_files(batch: dict, inputs, target, wanted: list[str], new: frozenset[str],
                drop_below: float, partitions: dict[str, dict] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """A Ray Data task: the files named in `batch`, one row group at a time (a task holds one
    group, however large the shard)."""
    import pyarrow.parquet as pq

    for path in batch["path"]:
        f = pq.ParquetFile(_open(str(path)))
        parts = (partitions or {}).get(str(path))
        columns = [c for c in wanted if c in f.schema_arrow.names]  # partition columns come from the path
        for g in range(f.num_row_groups):
            table = with_partitions(f.read_row_group(g, columns=columns), parts)
            yield _training_rows(table, inputs, target, str(path) in new, drop_below)


def _open(location: str):
    """A local path as it is; a bucket object (s3://, gs://) through pyarrow's filesystem, with
    the credentials of the task's environment."""
    if "://" not in location:
        return location
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(location)
    return fs.open_input_file(path)


def located(plan: dict[str, Any], bucket, mirror: Path | None = None) -> dict[str, Any]:
    """The plan with each shard at the place every node can read: for a bucket source its
    object URI (the mirror is on the driver's disk only; a shard's path inside `mirror` is its
    object's key under the prefix); a folder source as it is (on a cluster, a folder every
    node mounts)."""
    if bucket is None:
        return plan

    def key(p: str) -> str:
        inside = mirror is not None and PurePath(p).is_relative_to(mirror)
        return PurePath(p).relative_to(mirror).as_posix() if inside else PurePath(p).name

    where = {p: bucket.object_uri(key(p)) for p in plan["new"] + plan["replay"]}
    out = {**plan, "new": [where[p] for p in plan["new"]], "replay": [where[p] for p in plan["replay"]]}
    if plan.get("partitions"):
        out["partitions"] = {where[p]: v for p, v in plan["partitions"].items() if p in where}
    return out


def dataset(plan: dict[str, Any], inputs, target, cpus_per_task: float = 0.25, readers: int = 2):
    """The training rows as a Ray Data dataset (lazy: nothing is read until iterated): one
    item per file, each read by a task as a stream of row groups.

    Not `read_parquet`: its file-listing task asks for a whole CPU, which a one-CPU node
    running a training worker never has (the read stalled for good on the two-node test
    cluster). Tasks here ask for a fraction of a CPU, so they run beside the workers."""
    import logging

    import ray.data

    # One line per epoch from Ray Data's executor is noise beside plaster's own progress lines.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.eager_free = True  # a block the loop has taken is freed at once, not when the store fills
    files = plan["new"] + plan["replay"]
    wanted = [c for i in inputs for c in i.parquet_columns] + list(target.columns)
    fn = partial(_read_files, inputs=inputs, target=target, wanted=wanted, new=frozenset(plan["new"]),
                 drop_below=plan["drop_below"], partitions=plan.get("partitions"))
    # At most `readers` files in flight: every file's task at once ran ahead of the loop and
    # filled the object store, so memory grew with the number of files (benchmarks/scale.py).
    return ray.data.from_items([{"path": p} for p in files], override_num_blocks=len(files)).map_batches(
        fn, batch_size=1, batch_format="numpy", num_cpus=cpus_per_task, concurrency=readers)


class InMemory:
    """Today's fast path: arrays in memory; every rank draws the same permutation per epoch
    and takes an equal disjoint slice, so DDP's collectives stay in step."""

    def __init__(self, x: dict[str, np.ndarray], y: np.ndarray):
        self.x, self.y = x, y
        self.rows = len(y)

    def batches(self, epoch: int, rank: int, world: int, batch_size: int, seed: int) -> Iterator[tuple[dict, np.ndarray]]:
        per_rank = self.rows // world
        order = np.random.default_rng(seed + epoch).permutation(self.rows)[rank * per_rank:(rank + 1) * per_rank]
        for begin in range(0, len(order), batch_size):
            idx = order[begin:begin + batch_size]
            yield {k: v[idx] for k, v in self.x.items()}, self.y[idx]


class Streamed:
    """Batches from a Ray Data dataset or a worker's shard of one (`ray.train.get_dataset_shard`),
    shuffled within a local buffer per epoch. Ray Train splits the dataset into equal shards,
    so every rank steps the same number of times."""

    def __init__(self, source, rows: int):
        self.source, self.rows = source, rows

    def batches(self, epoch: int, rank: int, world: int, batch_size: int, seed: int) -> Iterator[tuple[dict, np.ndarray]]:
        for b in self.source.iter_batches(batch_size=batch_size, batch_format="numpy",
                                          local_shuffle_buffer_size=max(8 * batch_size, 1024),
                                          local_shuffle_seed=seed + epoch):
            # Copies: Ray Data's arrays are read-only views of the object store, which torch refuses to wrap.
            yield {k[3:]: np.array(v) for k, v in b.items() if k.startswith("in.")}, np.array(b["y"])


def missing(plan: dict[str, Any]) -> list[str]:
    """The files a streaming plan names that are no longer there (a table's VACUUM or snapshot
    expiry, a shard deleted since ingest): one listing call per filesystem, before any Ray Data
    task reads them. A filesystem that cannot be listed is left for the read to report."""
    import pyarrow.fs as pafs

    from orchestrator import lake

    groups: dict[tuple[str, str, str], list[str]] = {}  # local paths, and each bucket with its query options
    for p in list(plan["new"]) + list(plan["replay"]):
        key = (p.split("://", 1)[0], lake.fs_path(p).split("/", 1)[0], p.partition("?")[2]) if "://" in p else ("",) * 3
        groups.setdefault(key, []).append(p)
    gone: list[str] = []
    for uris in groups.values():
        try:
            fs, _ = lake.filesystem(uris[0])
            infos = fs.get_file_info([lake.fs_path(u) for u in uris])
        except Exception:
            continue
        gone += [u for u, info in zip(uris, infos) if info.type == pafs.FileType.NotFound]
    return gone


def gone_message(gone: list[str], total: int, table: dict | None = None) -> str:
    """Why a streamed snapshot cannot train: which files are gone and the setting that keeps them
    (a lake table's retention), or what to do for a folder or bucket source."""
    what = f"{len(gone)} of the {total} files this streamed snapshot names are gone (e.g. {gone[0].split('?')[0]})"
    fresh = "or start a fresh cycle (`plaster run` without --resume) that reads the table's current version"
    if table and table.get("format") == "delta":
        return (f"{what}: delta table {table['table']} removed them after version {table['version']} (a VACUUM after a "
                "compaction or overwrite). Raise delta.deletedFileRetentionDuration on the table (VACUUM keeps removed "
                f"files that long) above the time a cycle may wait for --resume, {fresh}")
    if table and table.get("format") == "iceberg":
        return (f"{what}: iceberg table {table['table']} expired snapshot {table['version']} and deleted its files. Keep "
                "snapshots longer (history.expire.max-snapshot-age-ms / history.expire.min-snapshots-to-keep on the "
                f"table, or an older cut-off in expire_snapshots), {fresh}")
    return (f"{what}: they were moved or deleted since ingest. Put them back and resume, or start a fresh cycle "
            "(`plaster run` without --resume)")
