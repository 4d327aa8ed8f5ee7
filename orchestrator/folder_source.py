"""A folder or bucket of Parquet files as a data source: what is new in it, what is learned,
and what is bad (moved to `<source>/_quarantine/<its relative path>` with a reason file
beside it: never deleted, never blocking the good shards).

The source is read as a Parquet dataset (listing.scan): nested folders, Hive partitions,
writer debris left alone. Lineage is by content hash; a shard is learned once. The
scheduler's poll (pending, pending_of, pending_drift) reads listings and footers only,
except the drift trigger, which reads the unlearned shards.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from orchestrator import drift, listing
from orchestrator.artifacts import QuarantinedShard, sha256_file
from orchestrator.dataset import ShardInvalid, concat, read_row_groups, read_shard
from orchestrator.errors import DataError
from orchestrator.found import VANISHED, Found, Fresh, Old

QUARANTINE = listing.QUARANTINE


def quarantine(path: Path, sha: str, reason: str, bucket=None, source: Path | None = None) -> QuarantinedShard:
    """Move a bad shard (or entry: a dangling link moves as the link, an empty dataset folder
    as the folder) aside with its reason, to `<source>/_quarantine/<its path below source>`:
    two part-00000.parquet of different partitions do not collide. For a bucket source, the
    object too. `source` defaults to the shard's folder."""
    source = source or path.parent
    name = path.relative_to(source).as_posix()
    if bucket is not None and not path.is_dir():
        where = bucket.quarantine(name, {"shard": name, "sha256": sha, "reason": reason, "quarantined_at": time.time()})
        _quarantine_local(path, sha, reason, source)  # the mirror's copy goes aside too
        return QuarantinedShard(name, f"{bucket.describe().split('://')[0]}://{where}", sha, reason)
    return _quarantine_local(path, sha, reason, source)


def _quarantine_local(path: Path, sha: str, reason: str, source: Path) -> QuarantinedShard:
    name = path.relative_to(source).as_posix()
    target = source / QUARANTINE / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(target):  # keep both: a later bad shard of the same name must not overwrite evidence
        target = target.with_name(f"{target.stem}-{(sha or uuid.uuid4().hex)[:12]}{target.suffix}")
    # The reason first: a crash between the two leaves the shard in place (quarantined again
    # next cycle), never a quarantined shard without its reason.
    target.with_name(target.name + ".reason.json").write_text(
        json.dumps({"shard": name, "sha256": sha, "reason": reason, "quarantined_at": time.time()}, indent=2)
    )
    shutil.move(str(path), target)
    return QuarantinedShard(name, str(target), sha, reason)


def scan(pipeline) -> listing.Scan:
    """The pipeline's data source as listing.scan sees it, with data.partitions.filter and ingest.settle_s."""
    cfg = pipeline.config
    return listing.scan(pipeline.source, cfg.data.partitions.filter, cfg.ingest.settle_s)


def _hashes(cache: Path, files: list[listing.DataFile]) -> tuple[dict[Path, str], list[listing.DataFile]]:
    """Each shard's sha256, hashing only shards not seen before: shards are written once
    (atomically, then never changed), so (name, mtime, size) names the content. Without this
    every cycle would read every byte of the history just to recognise it as learned. Also
    the files that vanished before they could be hashed."""
    known = json.loads(cache.read_text()) if cache.exists() else {}
    out, keep, gone = {}, {}, []
    for f in files:
        key = f"{f.name}|{f.mtime_ns}|{f.size}"
        try:
            out[f.path] = keep[key] = known.get(key) or sha256_file(f.path)
        except FileNotFoundError:
            gone.append(f)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(keep))
    tmp.replace(cache)
    return out, gone


def _originals(shas: dict[Path, str], files: dict[Path, listing.DataFile]) -> dict[str, Path]:
    """For each content the shard that arrived first (then by name): a copy of it under
    another name is a duplicate, however the names sort."""
    first: dict[str, Path] = {}
    for p in sorted(shas, key=lambda p: (files[p].mtime_ns, files[p].name)):
        first.setdefault(shas[p], p)
    return first


def _footprint(files: list[listing.DataFile]) -> tuple[int, int]:
    """(rows, bytes) of shards from their footers and listed sizes: nothing but the footers is read."""
    import pyarrow.parquet as pq

    rows = 0
    for f in files:
        try:
            rows += pq.read_metadata(f.path).num_rows
        except Exception:
            pass  # unreadable or gone: quarantined or named when it is read
    return rows, sum(f.size for f in files)


def _draw_replay(old: list[listing.DataFile], want: int, rng: np.random.Generator, inputs, target):
    """Rows for replay, reading only what is drawn: learned shards are visited in a random
    order weighted by their size (from the listing: no file is opened to order them), and
    each visited shard's row groups (from its footer) join the pool until the pool holds
    twice `want` rows; row groups are then drawn from the pool with probability proportional
    to their rows until `want` rows are covered, and only those groups are read. The cost
    follows `want`, which follows the new data, not the number of shards already learned.
    Rows of one group come together (a contiguous stretch of one shard); over cycles every
    group gets drawn. A learned shard gone or damaged since it was learned is left out of
    replay and named in `lost` with why: the history is not this cycle's to judge. Returns
    (x, y, drawn, lost); x is None when nothing could be drawn."""
    import pyarrow.parquet as pq

    units = []  # (file, row group, rows)
    lost: list[tuple[str, str]] = []
    sizes = np.array([max(f.size, 1) for f in old], dtype=np.float64)
    pooled = 0
    for i in rng.choice(len(old), size=len(old), replace=False, p=sizes / sizes.sum()) if old else []:
        f = old[i]
        try:
            meta = pq.ParquetFile(f.path).metadata
        except FileNotFoundError:
            lost.append((f.name, VANISHED))
            continue
        except Exception as e:
            lost.append((f.name, f"a learned shard no longer readable ({type(e).__name__}): left out of replay"))
            continue
        units += [(f, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
        pooled += meta.num_rows
        if pooled >= 2 * want:
            break
    rows = np.array([u[2] for u in units], dtype=np.float64)
    if not units or rows.sum() == 0:
        return None, np.empty(0), (), lost
    order = rng.choice(len(units), size=len(units), replace=False, p=rows / rows.sum())
    covered = np.cumsum(rows[order])
    drawn = order[: int(np.searchsorted(covered, want)) + 1]
    by_shard: dict[Path, list[int]] = {}
    for i in sorted(drawn, key=lambda i: (units[i][0].name, units[i][1])):
        by_shard.setdefault(units[i][0].path, []).append(units[i][1])
    named = {u[0].path: u[0] for u in units}
    parts, read = [], []
    for p, groups in by_shard.items():
        try:
            parts.append(read_row_groups(p, groups, inputs, target, named[p].partitions))
            read += [f"{named[p].name}#{g}" for g in groups]
        except FileNotFoundError:
            lost.append((named[p].name, VANISHED))
        except ShardInvalid as e:
            lost.append((named[p].name, f"a learned shard no longer passes its checks ({e}): left out of replay"))
    if not parts:
        return None, np.empty(0), (), lost
    x, y = concat([q[0] for q in parts]), np.concatenate([q[1] for q in parts])
    return x, y, tuple(read), lost


def pending_of(pipeline, learned: set[str]) -> tuple[int, float | None]:
    """pending() for a pipeline's data source, a folder or a bucket (listings and footers)."""
    bucket, cfg = pipeline.bucket, pipeline.config
    if bucket is None:
        return pending(pipeline.source, learned, cfg.data.partitions.filter, cfg.ingest.settle_s)
    return bucket.pending(pipeline.source, learned, _hash_of, cfg.data.partitions.filter)


_DRIFTS: dict[tuple, dict | None] = {}


def pending_drift(pipeline, learned: set[str], champion) -> dict | None:
    """Drift of the unlearned shards' rows against the champion's profile (the scheduler's
    drift trigger); None without a profile or unlearned rows. Unlike pending(), it reads the
    shards (a bucket's are mirrored, as ingest would); the answer is kept per set of shards,
    so a poll re-reads only when one arrives."""
    reference = drift.champion_profile(champion)
    if reference is None:
        return None
    source = pipeline.source
    if pipeline.bucket is not None:
        pipeline.bucket.mirror(source)
    files = scan(pipeline).files if source.is_dir() else []
    shas = {f.path: _hash_of(f.path, f.mtime_ns, f.size) for f in files}
    by_path = {f.path: f for f in files}
    todo = sorted({sha: p for p, sha in shas.items() if sha is not None and sha not in learned}.items())
    key = (pipeline.name, champion.version, tuple(sha for sha, _ in todo))
    if key not in _DRIFTS:
        xs = []
        for _, path in todo:
            try:
                xs.append(read_shard(path, pipeline.inputs, pipeline.target, by_path[path].partitions)[0])
            except (ShardInvalid, FileNotFoundError):
                continue  # ingest will quarantine it, or it is gone
        _DRIFTS[key] = drift.measure(reference, concat(xs), pipeline.inputs) if xs else None
    return _DRIFTS[key]


def pending(source: Path, learned: set[str], dnf: list | None = None, settle_s: float = 0.0) -> tuple[int, float | None]:
    """New rows waiting in the data source and the arrival time of the oldest unlearned
    shard, without reading, moving or quarantining anything (the scheduler's poll). Row
    counts come from Parquet footers; an unreadable shard counts no rows (ingest will
    quarantine it) but still ages. Files still being written wait, as in ingest."""
    import pyarrow.parquet as pq

    rows, oldest = 0, None
    if not source.is_dir():
        return 0, None
    seen: set[str] = set()
    for f in listing.scan(source, dnf, settle_s).files:
        sha = _hash_of(f.path, f.mtime_ns, f.size)
        if sha is None or sha in learned or sha in seen:  # a duplicate adds no rows: ingest learns one copy
            continue
        seen.add(sha)
        try:
            rows += pq.read_metadata(f.path).num_rows
        except Exception:
            pass
        arrived = f.mtime_ns / 1e9
        oldest = arrived if oldest is None else min(oldest, arrived)
    return rows, oldest


_HASHES: dict[tuple[str, int, int], str] = {}


def _hash_of(path: Path, mtime_ns: int | None = None, size: int | None = None) -> str | None:
    """The shard's sha256, None when it vanished. A poll every few seconds must not re-hash
    every shard: shards are append-only files, so (path, mtime, size) names the content."""
    try:
        if mtime_ns is None or size is None:
            st = path.stat()
            mtime_ns, size = st.st_mtime_ns, st.st_size
        key = (str(path), mtime_ns, size)
        if key not in _HASHES:
            _HASHES[key] = sha256_file(path)
        return _HASHES[key]
    except FileNotFoundError:
        return None


def find(pipeline, home: Path, learned: set[str], say) -> Found:
    """The new shards of a folder (or a bucket's mirror), the learned ones replay may draw
    from, and every bad, duplicate, waiting or vanished entry with its reason."""
    source, bucket = pipeline.source, pipeline.bucket
    inputs, target = pipeline.inputs, pipeline.target
    remote: list[tuple[str, str]] = []
    if bucket is not None:
        say(f"mirroring new shards from {bucket.describe()}")
        remote = bucket.mirror(source)  # the objects it left out (writer debris), with why
    if not source.is_dir():
        raise DataError(
            f"data source {source} does not exist: set data.source in {pipeline.folder / 'pipeline.yaml'}"
            f" or, for a reference pipeline, run `plaster simulate {pipeline.folder}`"
        )
    found = scan(pipeline)
    # Left in place and named in the record: nothing here is data of this cycle, nor a defect to move.
    out = Found(fresh=[], old=[], draw=lambda want, rng: _draw_replay(old, want, rng, inputs, target),
                skipped=remote + [(e.name, e.reason) for e in (*found.waiting, *found.vanished, *found.skipped)])
    if found.pruned:
        say(f"{found.pruned} file(s) outside data.partitions.filter: not read")

    def aside(path: Path, sha: str, reason: str) -> None:
        """Quarantine one bad entry; one that cannot be moved stays, named with its reason."""
        name = path.relative_to(source).as_posix()
        try:
            out.quarantined.append(quarantine(path, sha, reason, bucket, source))
            say(f"quarantined {name}: {reason}")
        except FileNotFoundError:
            out.skipped.append((name, VANISHED))
        except OSError as e:
            out.skipped.append((name, f"{reason}; left in place: it could not be moved to {QUARANTINE}/ "
                                      f"({e.strerror or e}): move or fix it by hand"))

    for entry in found.bad:
        aside(entry.path, "", entry.reason)
    files = {f.path: f for f in found.files}
    shas, gone = _hashes(Path(home) / "cache" / f"sha256-{pipeline.name}.json", found.files)
    out.skipped += [(f.name, VANISHED) for f in gone]
    first = _originals(shas, files)
    old: list[listing.DataFile] = []
    for path, sha in shas.items():
        f = files[path]
        if first[sha] != path:
            # The same bytes under a second name: learning them again would count those rows
            # twice (in min_new_rows, the holdout and replay). The first arrival stays.
            reason = (f"duplicate: the same bytes as {files[first[sha]].name} (sha256 {sha[:12]}…), which "
                      + ("is already learned" if sha in learned else "this cycle learns") + "; a shard is learned once")
            aside(path, sha, reason)
        elif sha in learned:
            old.append(f)
            out.old.append(Old(f.name, str(f.path), f.partitions, lambda f=f: _footprint([f])[0]))
        else:
            # The rows from the footer, though read() reads the whole file later: ingest sums the
            # new rows before it reads any file, to choose streaming and its band widths
            # (stream.should_stream, stream.split_bands), so the count cannot wait for the read.
            # The footer is the file's metadata at its end, not its rows.
            out.fresh.append(Fresh(f.name, str(f.path), sha, _footprint([f])[0], f.size, f.mtime_ns / 1e9, f.partitions,
                                   read=lambda f=f: read_shard(f.path, inputs, target, f.partitions),
                                   set_aside=lambda reason, f=f, sha=sha: aside(f.path, sha, reason)))
    return out
