"""What ingest finds in a data source, whatever its kind: the new data to read, the learned
data replay may draw from, and every entry left out with its reason.

A folder or bucket of Parquet files (folder_source.py) and a lake table (table_source.py)
answer in this shape, so the ingest stage splits, checks, streams and replays the same way
for both, and only the finding differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

VANISHED = "vanished: moved or deleted while the cycle ran; a shard that comes back is read next cycle"


@dataclass
class Fresh:
    """One file of new data: read() decodes its rows (raises dataset.ShardInvalid for bad data,
    FileNotFoundError when it is gone); set_aside(reason) quarantines it (a folder source) or
    reports it in place (a table: its files are not ours to move)."""

    name: str  # shown in records: the path below the source, or the file's path in the table
    location: str  # what training streams from: a local path or an object URI
    sha256: str  # lineage: the content hash (folders) or the file's identity in the table
    rows: int  # from the Parquet footer or the table's log (0 when unreadable: read() says why)
    size: int
    arrived_at: float
    partitions: dict[str, str | None]
    read: Callable[[], tuple[dict[str, np.ndarray], np.ndarray]]
    set_aside: Callable[[str], None]


@dataclass
class Old:
    """A learned file replay may draw from; rows() reads only its footer (or the log's count)."""

    name: str
    location: str
    partitions: dict[str, str | None]
    rows: Callable[[], int]


@dataclass
class Found:
    fresh: list[Fresh]
    old: list[Old]
    # draw(want, rng) -> (x or None, y, drawn names, lost [(name, why)]): replay rows, reading only what it draws
    draw: Callable[[int, np.random.Generator], tuple]
    quarantined: list = field(default_factory=list)  # QuarantinedShard, moved aside (or reported, in a table)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # left in place and named, with why
    table: dict[str, Any] | None = None  # a lake table: format, address, version read, since, what changed
