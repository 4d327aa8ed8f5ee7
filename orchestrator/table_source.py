"""A lake table (Delta Lake, Apache Iceberg: lake.py) as a data source.

New data is the rows the table's versions after the champion's added (lake.Table.changes):
the champion's lineage keeps the table version it learned up to, so a compaction, which adds
files but no rows, adds nothing new, and a delete is recorded, not learned. Each data file of
the table is read whole, with its partition values as columns. A bad file is reported with its
reason and left where it is: the table is not ours to change. The snapshot keeps the version
it read; its rows are saved in the cycle folder, so a resume or `plaster gate` never reads the
table again, however it has moved on.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np

from orchestrator import drift, lake
from orchestrator.artifacts import QuarantinedShard
from orchestrator.dataset import ShardInvalid, concat, decode
from orchestrator.errors import DataError
from orchestrator.found import Found, Fresh, Old


def learned_version(champion, address: str) -> int | None:
    """The table version the champion learned up to; None when it learned no version of this
    table (no champion, or one trained from another source): then the whole table is new."""
    f = Path(champion.folder) / "lineage.json" if champion else None
    table = json.loads(f.read_text()).get("table") if f and f.is_file() else None
    return table["version"] if table and table.get("table") == address else None


def _columns(pipeline) -> list[str]:
    return [c for i in pipeline.inputs for c in i.parquet_columns] + list(pipeline.target.columns)


def _identity(address: str, f: lake.TableFile) -> str:
    # A table never rewrites a data file in place (a change writes a new file), so the file's
    # address names its content: lineage without reading the bytes twice.
    return hashlib.sha256(f"{address}|{f.uri}".encode()).hexdigest()


def _arrivals(files) -> dict[str, float]:
    """Each file's modification time (one listing call per filesystem): when its rows landed."""
    out: dict[str, float] = {}
    if not files:
        return out
    fs, _ = lake.filesystem(files[0].uri)
    for f, info in zip(files, fs.get_file_info([lake.fs_path(f.uri) for f in files])):
        out[f.uri] = info.mtime.timestamp() if info.mtime else 0.0
    return out


def _schema_check(table, pipeline, champion) -> dict[str, str]:
    """The declared columns' types now, checked against the table: a column an input or the
    target needs that was dropped, or changed type since the champion learned, stops the cycle
    with the column and both types named. A column added to the table is fine."""
    schema = table.schema()
    now = {c: str(schema.field(c).type) for c in _columns(pipeline) if c in schema.names}
    missing = [c for c in _columns(pipeline) if c not in schema.names]
    f = Path(champion.folder) / "lineage.json" if champion else None
    before = (json.loads(f.read_text()).get("table") or {}).get("schema", {}) if f and f.is_file() else {}
    changed = [f"'{c}' was {before[c]}, is now {t}" for c, t in now.items() if c in before and before[c] != t]
    if missing or changed:
        what = "; ".join([f"'{c}' is not in the table" + (f" (it was {before[c]})" if c in before else "")
                          for c in missing] + changed)
        raise DataError(f"{table.format} table {table.address}: {what}. An input or the target reads these columns: "
                        f"restore them in the table, or change data.inputs/data.target in "
                        f"{pipeline.folder / 'pipeline.yaml'} (a new type may need a new model)")
    return now


def find(pipeline, champion, say) -> Found:
    table = pipeline.table()
    since = learned_version(champion, table.address)
    schema = _schema_check(table, pipeline, champion)
    ch = table.changes(since)
    wanted = _columns(pipeline)
    inputs, target = pipeline.inputs, pipeline.target
    say(f"{table.format} table {table.address}: version {ch.version}, "
        + (f"{len(ch.added)} file(s) with {ch.added_rows:,} new rows since version {since}" if since is not None
           else f"{len(ch.added)} file(s), {ch.added_rows:,} rows: all new (the champion learned no version of it)"))
    for note in ch.notes:
        say(note)
    out = Found(fresh=[], old=[], draw=lambda want, rng: _draw(table, ch.old, want, rng, wanted, inputs, target))
    out.table = {"format": table.format, "table": table.address, "version": ch.version, "since": since,
                 "added_files": len(ch.added), "added_rows": ch.added_rows, "deleted_rows": ch.deleted_rows,
                 "rewritten_files": ch.rewritten_files, "notes": list(ch.notes), "schema": schema}
    arrived = _arrivals(ch.added)

    def report(f: lake.TableFile, sha: str, reason: str) -> None:
        out.quarantined.append(QuarantinedShard(_name(table, f), f"left in {table.address}: a table's files are not "
                                                "moved; fix or delete the rows in the table", sha, reason))
        say(f"bad file {_name(table, f)} (version {f.added_in}): {reason}")

    for f in ch.added:
        sha = _identity(table.address, f)
        out.fresh.append(Fresh(_name(table, f), f.uri, sha, f.rows, f.size, arrived.get(f.uri, 0.0), dict(f.partition),
                               read=lambda f=f: decode(table.read(f, wanted), inputs, target),
                               set_aside=lambda reason, f=f, sha=sha: report(f, sha, reason)))
    out.old = [Old(_name(table, f), f.uri, dict(f.partition), lambda f=f: f.rows) for f in ch.old]
    return out


def _name(table, f: lake.TableFile) -> str:
    """A file's path inside its table, for records (the table's address is said once)."""
    root = table.address.rstrip("/") + "/"
    uri = f.uri.removeprefix("file://")
    return uri[len(root):] if uri.startswith(root) else uri.rsplit("/", 1)[-1]


def _draw(table, old, want: int, rng: np.random.Generator, wanted, inputs, target):
    """Replay rows from the table's learned files, reading only what is drawn: whole files,
    drawn with probability proportional to their rows (from the log) until `want` rows are
    covered. Returns (x or None, y, drawn names, lost [(name, why)])."""
    rows = np.array([f.rows for f in old], dtype=np.float64)
    if not len(old) or rows.sum() == 0:
        return None, np.empty(0), (), []
    order = rng.choice(len(old), size=len(old), replace=False, p=rows / rows.sum())
    drawn = order[: int(np.searchsorted(np.cumsum(rows[order]), want)) + 1]
    parts, names, lost = [], [], []
    for i in sorted(drawn):
        try:
            parts.append(decode(table.read(old[i], wanted), inputs, target))
            names.append(_name(table, old[i]))
        except ShardInvalid as e:
            lost.append((_name(table, old[i]), f"a learned file no longer passes its checks ({e}): left out of replay"))
    if not parts:
        return None, np.empty(0), (), lost
    return concat([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), tuple(names), lost


def pending(pipeline, champion) -> tuple[int, float | None, Callable[[], dict | None]]:
    """New rows in the table since the champion's version, when the oldest landed, and a
    function that measures their drift against the champion's profile (the scheduler's poll).
    One look at the table's log answers all three: the drift trigger reads the rows of the
    files counted here, not of a later version the log moved on to between two reads."""
    table = pipeline.table()
    ch = table.changes(learned_version(champion, table.address))
    arrived = _arrivals(ch.added)
    return ch.added_rows, min(arrived.values(), default=None), lambda: _drift(pipeline, champion, table, ch)


_DRIFTS: dict[tuple, dict | None] = {}


def _drift(pipeline, champion, table, ch: lake.Changes) -> dict | None:
    """Drift of the table's new rows against the champion's profile; read once per table version."""
    reference = drift.champion_profile(champion)
    if reference is None:
        return None
    key = (pipeline.name, champion.version, table.address, ch.version)
    if key not in _DRIFTS:
        xs = []
        for f in ch.added:
            try:
                xs.append(decode(table.read(f, _columns(pipeline)), pipeline.inputs, pipeline.target)[0])
            except ShardInvalid:
                continue  # ingest will report it
        _DRIFTS[key] = drift.measure(reference, concat(xs), pipeline.inputs) if xs else None
    return _DRIFTS[key]
