"""Served traffic as future training data: the server's feedback shards, and `plaster label`.

With `feedback.enabled`, each serving replica keeps a `Writer` that buffers every answered
request (id, inputs, answer, version, time) and writes them as Parquet shards in the
feedback location. The inputs are stored in the pipeline's data-source schema, so once
`label()` adds the target columns, a feedback row is a data row: `label()` joins labels
that arrive later by request id (and example) and writes the matched rows as a new shard
in the pipeline's data source, which the next cycle learns. `live_slice()` reads the labelled
rows a shadowed version answered back as a slice for `plaster gate`.

Never answers requests, never trains, never deletes a feedback shard. Every file it writes
appears whole (a temporary name, then a rename) or not at all.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

import numpy as np

from orchestrator.errors import ConfigError, DataError

META = ("request_id", "example", "at", "version")
ANSWERS = ("prediction", "shadow_version", "shadow_prediction")
LABELS = "_labels"  # below the feedback location: pending labels and the keys already written
KEEP_BATCHES = 10  # while shards cannot be written, buffer at most this many batches
INTENT = "intent.parquet"  # below LABELS: the record of a shard being written (see _write_matched)
_KEPT = "target."  # joined.parquet keeps each label under this prefix (no clash with its own columns)


def location(pipeline, ws) -> Path:
    """The pipeline's feedback folder: feedback.location, else PLASTER_HOME/feedback/<pipeline>."""
    where = pipeline.config.feedback.location
    home = Path(os.path.expanduser(os.path.expandvars(where))) if where else ws.home / "feedback" / pipeline.name
    if pipeline.bucket is None and pipeline.table_format == "parquet" and \
            home.resolve().is_relative_to(Path(pipeline.source_uri).resolve()):
        # ingest would read the unlabelled feedback shards as data and quarantine them
        raise ConfigError(f"feedback.location {home} lies inside data.source: point it at a folder outside "
                          f"{pipeline.source_uri}")
    return home


class Writer:
    """Buffers answered requests in memory and writes them as feedback shards.

    A shard is written when `flush_rows` requests are buffered (by `add`), or when the oldest
    buffered request is `flush_s` old (`due()`; the server's timer calls `flush()`), and by
    `close()`. What a crash (the process killed, `close` never called) loses is the buffer
    only: fewer than `flush_rows` requests, at most `flush_s` seconds of traffic (plus the
    time the timer takes to notice); every shard already written is whole and stays.

    Args:
        folder: the feedback location (`location()`); created when the first shard is written.
        inputs: door.InputSpec fields as dicts (`dataclasses.asdict`), in the pipeline's order.
        task: classification | regression | multilabel: the type of the prediction columns.
    """

    def __init__(self, folder: Path, inputs: list[dict], task: str, flush_rows: int, flush_s: float):
        self.folder, self.inputs, self.task = Path(folder), inputs, task
        self.flush_rows, self.flush_s = flush_rows, flush_s
        clash = [c for i in inputs for c in _columns(i) if c in META + ANSWERS]
        if clash:
            raise ConfigError(f"data.inputs: column(s) {clash} are names feedback shards keep for themselves "
                              f"({', '.join(META + ANSWERS)}): rename them to keep feedback.enabled")
        self._lock = threading.Lock()  # add() in the request path, flush() also from the server's timer
        self.dropped = 0  # requests dropped because shards could not be written (see flush)
        self._reset()

    def _reset(self) -> None:
        self._requests: list[tuple] = []
        self._oldest: float | None = None  # time.monotonic() of the first buffered request

    def add(self, request_id: str, x: dict[str, np.ndarray], prediction: list, version: str, at: float,
            shadow: dict | None = None) -> Path | None:
        """Buffer one answered request: `x` its batch by input name (N examples), `prediction`
        its N answers, `shadow` None or {"version", "prediction"} of a shadow candidate. Writes
        a shard (and returns its path) only when this request fills the buffer."""
        n = len(prediction)
        if shadow is not None and len(shadow["prediction"]) != n:
            raise ValueError(f"request {request_id}: {n} answers but {len(shadow['prediction'])} shadow answers")
        with self._lock:
            self._requests.append((str(request_id), n, float(at), str(version), x, prediction, shadow))
            if self._oldest is None:
                self._oldest = time.monotonic()
            full = len(self._requests) >= self.flush_rows
        return self.flush() if full else None

    def due(self) -> bool:
        with self._lock:
            return len(self._requests) >= self.flush_rows or (
                self._oldest is not None and time.monotonic() - self._oldest >= self.flush_s)

    def flush(self) -> Path | None:
        """Write the buffered requests as one shard; None when there are none."""
        with self._lock:  # swap the buffer under the lock; the I/O runs outside it
            requests = self._requests
            self._reset()
        if not requests:
            return None
        # Sortable by time, unique across replicas and processes.
        name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
        try:
            return _write_atomic(self._table(requests), self.folder / name)
        except BaseException:
            # Not written (disk full, permissions): the rows go back to the buffer for the next
            # flush. A buffer that keeps failing is capped at KEEP_BATCHES batches, the oldest
            # dropped and counted in `dropped`.
            with self._lock:
                self._requests = requests + self._requests
                cap = KEEP_BATCHES * self.flush_rows
                if len(self._requests) > cap:
                    self.dropped += len(self._requests) - cap
                    self._requests = self._requests[-cap:]
                self._oldest = time.monotonic()
            raise

    def close(self) -> Path | None:
        return self.flush()

    def _table(self, requests: list[tuple]):
        import pyarrow as pa

        counts = [r[1] for r in requests]
        cols = {"request_id": pa.array(np.repeat([r[0] for r in requests], counts).tolist(), pa.string()),
                "example": pa.array(np.concatenate([np.arange(n, dtype=np.int32) for n in counts])),
                "at": pa.array(np.repeat([r[2] for r in requests], counts), pa.float64()),
                "version": pa.array(np.repeat([r[3] for r in requests], counts).tolist(), pa.string())}
        for spec in self.inputs:
            x = np.concatenate([np.asarray(r[4][spec["name"]], dtype=spec["dtype"]) for r in requests])
            x = x.reshape(len(x), -1)
            if spec["columns"]:  # one scalar column per feature, as the source holds them
                cols.update({c: pa.array(x[:, j]) for j, c in enumerate(spec["columns"])})
            else:  # one list column of the flattened example
                cols[spec["column"]] = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1]).cast(
                    pa.list_(pa.from_numpy_dtype(x.dtype)))
        kind = _prediction_type(self.task)
        shadows = [(r[6] or {}) for r in requests]
        cols["prediction"] = pa.array([p for r in requests for p in r[5]], kind)
        cols["shadow_version"] = pa.array([s.get("version") for s, n in zip(shadows, counts) for _ in range(n)],
                                          pa.string())
        cols["shadow_prediction"] = pa.array(
            [p for s, n in zip(shadows, counts) for p in (s["prediction"] if s else [None] * n)], kind)
        return pa.table(cols)


def label(pipeline, ws, labels, say: Callable[[str], None] = lambda m: None) -> dict:
    """Join labels with the served requests and write the matched rows into the data source.

    `labels`: a pyarrow Table, or a Parquet or CSV file, with `request_id`, optionally
    `example` (the index within the request; without it, the label is for a request of one
    example), and the pipeline's target column(s). The matched rows become one new shard in
    the data source, holding the inputs as served and the labels in the source's schema.
    Labels whose request is not in the feedback (yet) are kept in
    `<location>/_labels/pending.parquet` and joined by a later call; a (request, example)
    already written is never written again (`_labels/joined.parquet` records them, with their
    labels for live_slice).

    Returns:
        {"labels": rows read, "joined": rows written, "pending": labels kept for later,
         "already_labelled": labels of rows written before, "shards": where the shard went}.

    Raises:
        DataError: a label of the wrong type or range, or for an example the request did not
            serve (naming the row or request; nothing is written).
        ConfigError: the data source is a Delta or Iceberg table.
    """
    import pyarrow as pa

    if pipeline.table_format != "parquet":
        raise ConfigError(f"data.source of '{pipeline.name}' is a {pipeline.table_format} table: `plaster label` "
                          "writes Parquet shards and does not append to lake tables; point a pipeline with a folder "
                          "or bucket data.source at the same feedback.location, or append the labelled rows with "
                          "your table writer")
    target = pipeline.target
    new = _checked(_read_labels(labels), target, "labels" if isinstance(labels, pa.Table) else str(labels))
    home = location(pipeline, ws)
    state = home / LABELS
    state.mkdir(parents=True, exist_ok=True)
    with open(state / ".lock", "w") as lock:  # one `plaster label` per feedback location at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        joined = _read(state / "joined.parquet")
        intent = _read(state / INTENT)
        if intent is not None:  # a call that stopped between writing its shard and recording it
            redo = intent.rename_columns([c[len(_KEPT):] if c.startswith(_KEPT) else c for c in intent.column_names])
            _, _, redone, joined = _write_matched(pipeline, state, home, _rows(redo.drop(["shard"])),
                                                  _done(joined), joined)
            say(f"finished the shard an interrupted `plaster label` was writing: {', '.join(redone)}")
        done = _done(joined)
        fresh = _rows(new)
        already = sum(1 for k in fresh if _written(k, done))
        # A fresh label of a pending example replaces the pending one.
        wanted = {k: v for k, v in {**_rows(_read(state / "pending.parquet")), **fresh}.items() if not _written(k, done)}
        matched, keep, shards, joined = _write_matched(pipeline, state, home, wanted, done, joined)
        _write_atomic(_labels_table(keep, target), state / "pending.parquet")
    say(f"{len(matched)} labelled row(s) written to {', '.join(shards) or 'no shard'}; {len(keep)} label(s) "
        f"pending (their requests are not in {home} yet); {already} already labelled")
    return {"labels": new.num_rows, "joined": len(matched), "pending": len(keep), "already_labelled": already,
            "shards": shards}


def _done(joined) -> set:
    return set(zip(*_columns_of(joined, "request_id", "example"))) if joined is not None else set()


def _write_matched(pipeline, state: Path, home: Path, wanted: dict, done: set, joined):
    """Match `wanted` labels with the served rows and write the matched ones as one shard of
    the data source, recorded in joined.parquet. Returns (matched, still pending, shards, joined).

    The record goes to INTENT before the shard is written and into joined.parquet after: a
    call that stops in between leaves INTENT, and the next call redoes exactly that shard
    (the same rows, so the same name: written again, never a second copy)."""
    import pyarrow as pa

    target = pipeline.target
    served = _served(home, {k[0] for k in wanted})
    matched, keep = _match(wanted, served, done)
    if not matched:
        (state / INTENT).unlink(missing_ok=True)
        return matched, keep, [], joined
    order = sorted(matched)  # the rows in the order they were served
    rows = served.take(pa.array(order, pa.int64()))
    shard = rows.select([c for spec in pipeline.inputs for c in spec.parquet_columns])
    for c in target.columns:
        shard = shard.append_column(c, pa.array([matched[i][c] for i in order], _target_type(target)))
    _check_readable(shard, pipeline)
    by_key = dict(zip(zip(*_columns_of(rows, "request_id", "example")), (matched[i] for i in order)))
    keys = sorted(by_key)
    name = "feedback-" + hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:16] + ".parquet"  # named by its rows
    record = pa.table({"request_id": pa.array([k[0] for k in keys], pa.string()),
                       "example": pa.array([k[1] for k in keys], pa.int64()),
                       "shard": pa.array([name] * len(keys), pa.string()),
                       # the labels too, for live_slice: the shard may be in a bucket, or moved
                       **{_KEPT + c: pa.array([by_key[k][c] for k in keys], _target_type(target))
                          for c in target.columns}})
    _write_atomic(record, state / INTENT)
    shards = [_publish(shard, name, pipeline, state)]
    # A joined.parquet from before labels were kept gets nulls in their columns.
    joined = pa.concat_tables([joined, record], promote_options="default") if joined is not None else record
    _write_atomic(joined, state / "joined.parquet")
    (state / INTENT).unlink()
    return matched, keep, shards, joined


def live_slice(pipeline, ws, version: str) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
    """The labelled requests that `version` answered in a shadow, as a holdout slice for the gate.

    A feedback row counts when its shadow_version is `version` and `label()` has joined a label
    to it; it is the same row label() matched (the last one served under that request id and
    example). Rows labelled by a plaster from before joined.parquet kept the labels are left out.

    Returns:
        (inputs by name as the model takes them, targets), as dataset.read_shard returns them,
        in the order the rows were served; None when no such row exists.

    Raises:
        DataError: a feedback shard cannot be read, or its rows no longer match the pipeline's inputs.
    """
    import pyarrow as pa

    from orchestrator.dataset import ShardInvalid, decode

    home = location(pipeline, ws)
    target = pipeline.target
    kept = [_KEPT + c for c in target.columns]
    joined = _read(home / LABELS / "joined.parquet")
    if joined is None or any(c not in joined.column_names for c in kept):
        return None
    data = joined.select(["request_id", "example", *kept]).to_pydict()
    labels = {(rid, ex): [data[c][j] for c in kept]
              for j, (rid, ex) in enumerate(zip(data["request_id"], data["example"])) if data[kept[0]][j] is not None}
    served = _served(home, {k[0] for k in labels})
    if served is None:
        return None
    # label() joined each label with the last row served under its key (_match): the same row here
    last = {k: j for j, k in enumerate(zip(*_columns_of(served, "request_id", "example")))}
    shadow = served.column("shadow_version").to_pylist()
    take = sorted(j for k, j in last.items() if k in labels and shadow[j] == str(version))
    if not take:
        return None
    rows = served.take(pa.array(take, pa.int64()))
    keys = list(zip(*_columns_of(rows, "request_id", "example")))
    # Only the inputs' columns (a column missing since data.inputs changed: decode names it).
    table = rows.select([c for spec in pipeline.inputs for c in spec.parquet_columns if c in rows.column_names])
    for n, c in enumerate(target.columns):
        table = table.append_column(c, pa.array([labels[k][n] for k in keys], _target_type(target)))
    try:
        return decode(table, pipeline.inputs, target)
    except ShardInvalid as e:
        raise DataError(f"the labelled feedback rows of v{version} in {home} do not read as this pipeline's inputs "
                        f"({e}): move the feedback shards of an older data.inputs out of {home}") from None


def _columns(spec: dict) -> tuple[str, ...]:
    return tuple(spec["columns"]) or (spec["column"],)


def _prediction_type(task: str):
    import pyarrow as pa

    # serving.answer: class ids, [N, targets] values, or [N, labels] 0/1
    return {"classification": pa.int64(), "regression": pa.list_(pa.float64())}.get(task, pa.list_(pa.int64()))


def _target_type(target):
    import pyarrow as pa

    return {"classification": pa.int64(), "regression": pa.float64()}.get(target.task, pa.list_(pa.int64()))


def _write_atomic(table, path: Path) -> Path:
    """Write a Parquet file under a hidden temporary name (listings skip it), flush it to disk,
    then rename it into place: readers see the whole file or none."""
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _read(path: Path):
    import pyarrow.parquet as pq

    return pq.read_table(path) if path.exists() else None


def _columns_of(table, *names) -> list[list]:
    return [table.column(n).to_pylist() for n in names]


def _read_labels(labels):
    import pyarrow as pa

    if isinstance(labels, pa.Table):
        return labels
    path = Path(labels)
    if not path.is_file():
        raise DataError(f"labels file {path} does not exist: pass a Parquet or CSV file with request_id and the target")
    try:
        if path.suffix.lower() == ".csv":
            import pyarrow.csv as pcsv

            # ids stay text: "0042" is not 42
            return pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(column_types={"request_id": pa.string()}))
        import pyarrow.parquet as pq

        return pq.read_table(path)
    except Exception as e:  # pyarrow raises several kinds for a damaged file
        raise DataError(f"labels file {path} cannot be read ({type(e).__name__}: {str(e)[:160]}): pass a Parquet "
                        "file, or a CSV file with a header row") from None


def _checked(table, target, where: str):
    """The labels as (request_id, example, target columns) of the source's types; every row
    checked, the first bad one named. `example` -1: not given (the request's only example)."""
    missing = [c for c in ("request_id", *target.columns) if c not in table.column_names]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; labels need request_id, optionally example, and "
                        f"the pipeline's target {list(target.columns)}")
    ids = table.column("request_id").to_pylist()
    examples = table.column("example").to_pylist() if "example" in table.column_names else [None] * len(ids)
    values = {c: table.column(c).to_pylist() for c in target.columns}
    labels: dict[tuple, dict] = {}
    seen: dict[tuple, int] = {}
    for r, (rid, ex) in enumerate(zip(ids, examples)):
        def refuse(what: str, r=r, rid=rid) -> DataError:
            return DataError(f"{where} row {r} (request_id {rid!r}): {what}; fix that row and run `plaster label` "
                             "again (nothing was written)")

        if rid is None or str(rid) == "":
            raise refuse("no request_id")
        if ex is not None and not (_whole(ex) and ex >= 0):
            raise refuse(f"example={ex!r} is not an example's index within its request (0, 1, ...)")
        key = (str(rid), -1 if ex is None else int(ex))
        if key in seen:
            raise refuse(f"labels the same example as row {seen[key]}: keep one of them")
        seen[key] = r
        labels[key] = {c: _value(values[c][r], c, target, refuse) for c in target.columns}
    return _labels_table(labels, target)


def _whole(v) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())


def _value(v, col: str, target, refuse):
    """One label, in the type the data source holds, or the row refused."""
    if target.task == "classification":
        k = target.num_classes
        if not (_whole(v) and 0 <= v < k):
            raise refuse(f"{col}={v!r} is not a class id in 0..{k - 1} (num_classes={k})")
        return int(v)
    if target.task == "regression":
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and abs(v) < 3.4e38):
            raise refuse(f"{col}={v!r} is not a finite number (a regression target in float32 range)")
        return float(v)
    n = target.outputs
    if isinstance(v, str):  # a CSV cell: "[0, 1, 0, 0, 1]"
        try:
            v = json.loads(v)
        except ValueError:
            pass
    if not (isinstance(v, list) and len(v) == n and all(_whole(x) and x in (0, 1) for x in v)):
        raise refuse(f"{col}={v!r} is not a list of {n} 0/1 labels (num_labels={n})")
    return [int(x) for x in v]


def _labels_table(labels: dict, target):
    import pyarrow as pa

    keys = list(labels)
    return pa.table({"request_id": pa.array([k[0] for k in keys], pa.string()),
                     "example": pa.array([k[1] for k in keys], pa.int64()),
                     **{c: pa.array([labels[k][c] for k in keys], _target_type(target)) for c in target.columns}})


def _rows(table) -> dict:
    """(request_id, example) → {target column: value}; {} for no table."""
    if table is None:
        return {}
    cols = [c for c in table.column_names if c not in ("request_id", "example")]
    data = table.to_pydict()
    return {(i, e): {c: data[c][j] for c in cols} for j, (i, e) in enumerate(zip(data["request_id"], data["example"]))}


def _written(key: tuple, done: set) -> bool:
    return key in done or (key[1] == -1 and (key[0], 0) in done)


def _served(home: Path, ids: set):
    """The feedback rows of these requests, from every shard in the location, oldest first."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = []
    for f in sorted(home.glob("*.parquet")) if ids else ():
        try:
            parts.append(pq.read_table(f, filters=[("request_id", "in", sorted(ids))]))
        except Exception as e:
            raise DataError(f"feedback shard {f} cannot be read ({type(e).__name__}: {str(e)[:160]}): move it out of "
                            f"{home} and run the command again") from None
    parts = [p for p in parts if p.num_rows]
    return pa.concat_tables(parts, promote_options="default") if parts else None


def _match(wanted: dict, served, done: set) -> tuple[dict, dict]:
    """({row of `served`: labels} to write, {key: labels} still pending). A label without an
    example is for a request that served one; a request served twice counts its last answer."""
    rows, count = {}, {}
    if served is not None:
        for j, (rid, ex) in enumerate(zip(*_columns_of(served, "request_id", "example"))):
            rows[(rid, ex)] = j
            count[rid] = max(count.get(rid, 0), ex + 1)
    matched, keep = {}, {}
    for (rid, ex), labels in wanted.items():
        if rid not in count:
            keep[(rid, ex)] = labels
            continue
        if ex == -1:
            if count[rid] != 1:
                raise DataError(f"the label of request {rid!r} has no example, but that request served {count[rid]} "
                                f"examples: give each label an `example` column (0..{count[rid] - 1})")
            ex = 0
        if (rid, ex) not in rows:
            raise DataError(f"the label of request {rid!r} example {ex}: that request served {count[rid]} example(s) "
                            f"(0..{count[rid] - 1}); fix the example column")
        if (rid, ex) not in done:
            matched[rows[(rid, ex)]] = labels
    return matched, keep


def _check_readable(shard, pipeline) -> None:
    """The joined rows as ingest will read them: a shard it would quarantine is not written."""
    from orchestrator.dataset import ShardInvalid, decode

    try:
        decode(shard, pipeline.inputs, pipeline.target)
    except ShardInvalid as e:
        raise DataError(f"the joined rows would not be a valid shard of data.source ({e}); check that "
                        f"feedback.location holds this pipeline's requests") from None


def _publish(shard, name: str, pipeline, state: Path) -> str:
    """The shard into the data source: a folder directly; a bucket by a staged upload."""
    bucket = pipeline.bucket
    if bucket is None:
        return str(_write_atomic(shard, pipeline.source / name))
    staged = _write_atomic(shard, state / "staged" / name)
    bucket.upload(staged)  # one PUT: the object appears whole
    staged.unlink()
    return f"{bucket.describe().rstrip('/')}/{name}"
