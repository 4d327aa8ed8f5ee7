"""What a data source folder holds, read as a Parquet dataset: data files (nested folders and
Hive `key=value` partitions included), writer debris, entries that are not readable data,
and files still being written. Only stats and a few bytes of each data file are read.

The rules are pyarrow.dataset's and Spark's: a name starting with `_` or `.` is not data
(`_SUCCESS`, `_temporary/`, `_committed_*`, `.crc` checksums, hidden in-progress files), a
data file is `*.parquet` or an extension-less `part-*` whose bytes are Parquet, and a
`key=value` folder gives each file under it a partition value. Nothing here moves a file:
ingest decides what to do with each entry.
"""

from __future__ import annotations

import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from orchestrator.errors import DataError

QUARANTINE = "_quarantine"
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"  # what Hive and Spark write for a null value
MAGIC = b"PAR1"

_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")


@dataclass(frozen=True)
class DataFile:
    name: str  # path relative to the source, `/`-separated: unique, so it names the shard
    path: Path
    partitions: dict[str, str | None]  # Hive folder values, unquoted; None for the null partition
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Entry:
    name: str
    path: Path
    reason: str


@dataclass
class Scan:
    files: list[DataFile] = field(default_factory=list)
    skipped: list[Entry] = field(default_factory=list)  # writer debris and other non-data: left in place
    bad: list[Entry] = field(default_factory=list)  # not readable data: ingest quarantines them
    waiting: list[Entry] = field(default_factory=list)  # still being written: the next cycle looks again
    vanished: list[Entry] = field(default_factory=list)  # gone between two looks of this scan
    pruned: int = 0  # data files outside data.partitions.filter

    @property
    def partitions(self) -> dict[str, dict[str, str | None]]:
        return {f.name: f.partitions for f in self.files}


def debris(name: str, is_dir: bool) -> str | None:
    """Why an entry's name says it is not data (None: it may be). Shared with the bucket listing."""
    if name == "_SUCCESS":
        return "writer debris: a job's success marker"
    if name == "_temporary" and is_dir:
        return "writer debris: a job's uncommitted output (Spark/Hadoop _temporary/)"
    if name.startswith(("_committed_", "_started_")):
        return "writer debris: a commit protocol marker"
    if name.endswith(".crc"):
        return "writer debris: a checksum file"
    if name.startswith("."):
        return "hidden: a writer's in-progress or system file (names starting with '.' are not data)"
    if name.startswith("_"):
        return "metadata, not data (names starting with '_' are not data, as in pyarrow and Spark)"
    return None


def data_name(name: str) -> bool:
    """`*.parquet`, or an extension-less Spark/Hadoop part file (its bytes decide)."""
    return name.endswith(".parquet") or (name.startswith("part-") and "." not in name)


def typed(value: str | None):
    """A partition value as its column holds it: int64-looking as int, float-looking as float, else str."""
    if value is None:
        return None
    if _INT.fullmatch(value):  # past int64 it is an id, not a number: kept as written
        return int(value) if -(2**63) <= int(value) < 2**63 else value
    if _FLOAT.fullmatch(value):
        return float(value)
    return value


def partitions_of(name: str) -> dict[str, str | None]:
    """Hive partition values of a relative name `k1=v1/k2=v2/file`: each value URL-unquoted, as
    Spark writes them; the null partition as None."""
    out: dict[str, str | None] = {}
    for part in name.split("/")[:-1]:
        if "=" in part:
            k, v = part.split("=", 1)
            out[unquote(k)] = None if v == NULL_PARTITION else unquote(v)
    return out


def matches(partitions: dict[str, str | None], dnf: list[list[tuple]]) -> bool:
    """pyarrow's `filters` on a file's partition values: OR of ANDs of (key, op, value). A file
    without the key, or in its null partition, fails the comparison, as a null does in pyarrow."""
    return not dnf or any(all(_holds(typed(partitions.get(k)), op, v) for k, op, v in conj) for conj in dnf)


def _holds(have, op: str, want) -> bool:
    if have is None:
        return False
    if op in ("in", "not in"):
        found = any(_cmp(have, w) == 0 for w in want)
        return found if op == "in" else not found
    c = _cmp(have, want)
    return {"=": c == 0, "==": c == 0, "!=": c != 0, "<": c < 0, "<=": c <= 0, ">": c > 0, ">=": c >= 0}[op]


def _cmp(a, b) -> int:
    num = (int, float)
    if not (isinstance(a, num) and isinstance(b, num)) or isinstance(a, bool) or isinstance(b, bool):
        a, b = str(a), str(b)  # a date is compared as written: ISO dates sort as text
    return (a > b) - (a < b)


def scan(source: Path, dnf: list[list[tuple]] | None = None, settle_s: float = 0.0, recheck_s: float = 0.0) -> Scan:
    """List `source` recursively (skipping `_quarantine/`), in a stable order.

    A data file is `waiting` when its modification time is within `settle_s` of now, or its
    size or mtime changed between the listing's stat and a second one after its bytes were
    checked (and `recheck_s` later, for writers slower than that)."""
    out = Scan()
    found: list[tuple[DataFile, bytes]] = []
    _walk(source, source, out, found, dnf or [])
    if recheck_s and found:
        time.sleep(recheck_s)
    now = time.time()
    for f, head in found:
        try:
            st = f.path.stat()
        except FileNotFoundError:
            out.vanished.append(Entry(f.name, f.path, "vanished while the source was listed"))
            continue
        changed = (st.st_size, st.st_mtime_ns) != (f.size, f.mtime_ns)
        if changed or now - st.st_mtime < settle_s:
            why = ("its size or modification time changed while it was listed" if changed
                   else f"modified {max(now - st.st_mtime, 0):.1f}s ago, within ingest.settle_s={settle_s:g}")
            out.waiting.append(Entry(f.name, f.path, f"still being written ({why}): the next cycle looks again"))
        elif f.size == 0:
            out.bad.append(Entry(f.name, f.path, "not a readable Parquet file: zero bytes (an interrupted or failed "
                                                 "write); write it again"))
        elif not f.name.endswith(".parquet") and head != MAGIC:
            out.skipped.append(Entry(f.name, f.path, "a part file that is not Parquet (no PAR1 magic): not data"))
        else:
            out.files.append(f)
    return out


def _walk(root: Path, folder: Path, out: Scan, found: list, dnf: list) -> bool:
    """Add `folder`'s entries to `out`; True when it holds any data-file candidate."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        if folder == root:  # not an entry to set aside: the whole source is unreadable
            raise DataError(f"data source {root} cannot be listed ({e.strerror}): fix its permissions, or data.source") from None
        out.bad.append(Entry(_rel(root, folder), folder, f"unreadable folder ({e.strerror})"))
        return False
    any_data = False
    for e in entries:
        path, rel = Path(e.path), _rel(root, Path(e.path))
        parts = partitions_of(rel)
        if folder == root and e.name == QUARANTINE:
            continue
        try:
            is_dir = e.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        why = debris(e.name, is_dir)
        if why:
            out.skipped.append(Entry(rel + ("/" if is_dir else ""), path, why))
            continue
        if e.is_symlink():
            try:
                target = os.stat(path)
            except OSError as err:  # dangling, or a loop: nothing behind it to read
                what = (f"a dangling symlink (to {os.readlink(path)}, which does not exist)"
                        if isinstance(err, FileNotFoundError) else f"a symlink that cannot be followed ({err.strerror})")
                if not data_name(e.name):
                    out.skipped.append(Entry(rel, path, f"not a data file ({what})"))
                elif matches(parts, dnf):
                    out.bad.append(Entry(rel, path, f"{what}: not readable data; point it at a shard or remove it"))
                    any_data = True
                continue
            if stat.S_ISDIR(target.st_mode):
                out.skipped.append(Entry(rel + "/", path, "a link to a folder: not followed (it could loop); link "
                                                          "the files instead, or point data.source at it"))
                continue
        if is_dir:
            before = len(out.skipped)
            if _walk(root, path, out, found, dnf):
                any_data = True
            elif e.name.endswith(".parquet") and matches(partitions_of(rel + "/"), dnf):
                del out.skipped[before:]  # its debris goes aside with it
                out.bad.append(Entry(rel, path, "a folder named *.parquet that holds no data files (*.parquet or "
                                                "part-*): an empty or failed dataset write"))
            continue
        if not data_name(e.name):
            out.skipped.append(Entry(rel, path, "not a data file (data is *.parquet, or a Spark part-* file)"))
            continue
        any_data = True
        if not matches(parts, dnf):
            out.pruned += 1
            continue
        _check(rel, path, parts, out, found)
    return any_data


def _check(rel: str, path: Path, parts: dict, out: Scan, found: list) -> None:
    """The listing's look at one data-file candidate: its stat, its readability, and for an
    extension-less part file its first four bytes (is it Parquet?). A `*.parquet` file is not
    opened: every cycle lists the whole history, so a listing must cost stats, not opens."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            out.bad.append(Entry(rel, path, "not a regular file (a pipe, socket or device named like a shard)"))
            return
        if rel.endswith(".parquet"):
            head = MAGIC
            if not os.access(path, os.R_OK):
                raise PermissionError(13, "Permission denied")
        else:
            with open(path, "rb") as f:
                head = f.read(4)
    except FileNotFoundError:
        out.vanished.append(Entry(rel, path, "vanished while the source was listed"))
        return
    except OSError as e:
        out.bad.append(Entry(rel, path, f"unreadable ({e.strerror}): fix its permissions so plaster can read it"))
        return
    found.append((DataFile(rel, path, dict(parts), st.st_size, st.st_mtime_ns), head))


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()
