"""ingest: find the shards the champion has not learned from, check them, and freeze a snapshot.

The source is read as a Parquet dataset (listing.scan): nested folders, Hive partitions,
writer debris left alone. A bad shard or entry is moved to `<source>/_quarantine/<its
relative path>` with a reason file beside it: never deleted, never blocking the good shards;
one that cannot be moved, a file still being written or one that vanished is named with its
reason in `Snapshot.skipped`. The snapshot materializes train / new-holdout / golden arrays in
the cycle folder so later stages (and a resume) never re-read the data source.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from orchestrator import drift, listing, stream
from orchestrator.artifacts import QuarantinedShard, Shard, Snapshot, sha256_file
from orchestrator.context import StageContext
from orchestrator.dataset import ShardInvalid, concat, read_row_groups, read_shard, save_arrays, take
from orchestrator.errors import DataError

QUARANTINE = listing.QUARANTINE
VANISHED = "vanished: moved or deleted while the cycle ran; a shard that comes back is read next cycle"


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


def run(ctx: StageContext) -> Snapshot:
    cfg = ctx.pipeline.config
    source = ctx.pipeline.source
    inputs, target = ctx.pipeline.inputs, ctx.pipeline.target
    bucket = ctx.pipeline.bucket
    remote: list[tuple[str, str]] = []
    if bucket is not None:
        ctx.say(f"mirroring new shards from {bucket.describe()}")
        remote = bucket.mirror(source)  # the objects it left out (writer debris), with why
    if not source.is_dir():
        raise DataError(
            f"data source {source} does not exist: set data.source in {ctx.pipeline.folder / 'pipeline.yaml'}"
            f" or, for a reference pipeline, run `plaster simulate {ctx.pipeline.folder}`"
        )
    champion = ctx.registry.champion(ctx.pipeline.name, ctx.workspace.home / "champions" / ctx.pipeline.name)
    learned = set(ctx.registry.lineage(champion)) if champion else set()
    reference = champion_profile(champion)

    new: list[Shard] = []
    quarantined: list[QuarantinedShard] = []
    found = scan(ctx.pipeline)
    # Left in place and named in the record: nothing here is data of this cycle, nor a defect to move.
    skipped = remote + [(e.name, e.reason) for e in (*found.waiting, *found.vanished, *found.skipped)]
    if found.pruned:
        ctx.say(f"{found.pruned} file(s) outside data.partitions.filter: not read")

    def aside(path: Path, sha: str, reason: str) -> None:
        """Quarantine one bad entry; one that cannot be moved stays, named with its reason."""
        name = path.relative_to(source).as_posix()
        try:
            quarantined.append(quarantine(path, sha, reason, bucket, source))
            ctx.say(f"quarantined {name}: {reason}")
        except FileNotFoundError:
            skipped.append((name, VANISHED))
        except OSError as e:
            skipped.append((name, f"{reason}; left in place: it could not be moved to {QUARANTINE}/ "
                                  f"({e.strerror or e}): move or fix it by hand"))

    for entry in found.bad:
        aside(entry.path, "", entry.reason)
    files = {f.path: f for f in found.files}
    shas, gone = _hashes(ctx.workspace.home / "cache" / f"sha256-{ctx.pipeline.name}.json", found.files)
    skipped += [(f.name, VANISHED) for f in gone]
    first = _originals(shas, files)
    old: list[listing.DataFile] = []
    fresh: list[tuple[listing.DataFile, str]] = []
    for path, sha in shas.items():
        if first[sha] != path:
            # The same bytes under a second name: learning them again would count those rows
            # twice (in min_new_rows, the holdout and replay). The first arrival stays.
            reason = (f"duplicate: the same bytes as {files[first[sha]].name} (sha256 {sha[:12]}…), which "
                      + ("is already learned" if sha in learned else "this cycle learns") + "; a shard is learned once")
            aside(path, sha, reason)
            continue
        if sha in learned:
            old.append(files[path])
            continue
        fresh.append((files[path], sha))

    # Large new data streams: only the capped holdout, validation and sample bands stay in memory.
    streaming = stream.should_stream(cfg, *_footprint([f for f, _ in fresh]))
    widths = stream.split_bands(cfg, _footprint([f for f, _ in fresh])[0]) if streaming else None
    bands: list[np.ndarray] = []
    streamed_rows = 0
    xs, ys = [], []
    for f, sha in fresh:
        try:
            x, y = read_shard(f.path, inputs, target, f.partitions)
        except FileNotFoundError:
            skipped.append((f.name, VANISHED))
            continue
        except ShardInvalid as e:
            aside(f.path, sha, str(e))
            continue
        why = drift.impossible(reference, x, inputs)
        if why:
            aside(f.path, sha, why)
            continue
        new.append(Shard(f.name, str(f.path), sha, len(y), f.mtime_ns / 1e9))
        if streaming:
            b = stream.bands(x, y)
            streamed_rows += int((b >= widths[0] + widths[1]).sum())  # exact: what training will read
            kept = b < sum(widths)
            x, y = take(x, kept), y[kept]
            bands.append(b[kept])
        xs.append(x)
        ys.append(y)

    rows = sum(s.rows for s in new)
    common = dict(new_shards=tuple(new), quarantined=tuple(quarantined), champion=champion,
                  skipped=_capped(skipped))
    # A staleness or drift trigger learns whatever has arrived: old or moved data waiting is the worse risk.
    min_rows = 1 if ctx.extras.get("trigger") in ("staleness", "drift") else cfg.ingest.min_new_rows
    if rows < min_rows:
        reason = f"{rows} new row(s) in {len(new)} shard(s) < ingest.min_new_rows={cfg.ingest.min_new_rows}"
        return Snapshot(**common, replay_rows=0, train_file="", holdout_new_file="", golden_file=None,
                        train_rows=0, holdout_new_rows=0, golden_rows=0, learned=tuple(sorted(learned)),
                        skip_reason=reason)

    rng = np.random.default_rng(cfg.ingest.seed)
    x_new, y_new = concat(xs), np.concatenate(ys)
    moved = drift.measure(reference, x_new, inputs) if reference else None
    if moved and moved["worst"]:
        ctx.say(f"drift vs the champion's training data: {moved['metric']} {moved['score']:.3f} on {moved['worst']}")
    common.update(learned=tuple(sorted(learned | {s.sha256 for s in new})), drift=_compact(moved))
    if streaming:
        return _streamed(ctx, common, x_new, y_new, np.concatenate(bands), widths, streamed_rows, old, rng, files)
    order = rng.permutation(len(y_new))
    n_hold = max(1, int(round(len(y_new) * cfg.ingest.holdout_fraction)))
    hold, train = order[:n_hold], order[n_hold:]
    # Early stopping watches its own split of the new training rows: the gate's holdout stays
    # unseen by every decision before validate.
    val_file = None
    if cfg.train.early_stopping_patience:
        n_val = max(1, int(round(len(train) * cfg.train.validation_fraction)))
        val, train = train[:n_val], train[n_val:]
        val_file = str(ctx.path("snapshot", "validation.npz"))
        save_arrays(Path(val_file), take(x_new, val), y_new[val])
    x_train, y_train = take(x_new, train), y_new[train]

    # Replay: older rows mixed into training so the candidate does not forget the past.
    replay_rows = 0
    want = int(len(train) * cfg.ingest.replay_fraction)
    replay_from: tuple[str, ...] = ()
    if want and old:
        x_old, y_old, replay_from, lost = _draw_replay(old, want, rng, inputs, target)
        common["skipped"] = _capped(skipped + lost)
        if x_old is not None:
            pick = rng.choice(len(y_old), size=min(want, len(y_old)), replace=False)
            x_train, y_train = concat([x_train, take(x_old, pick)]), np.concatenate([y_train, y_old[pick]])
            replay_rows = len(pick)

    save_arrays(ctx.path("snapshot", "train.npz"), x_train, y_train)
    profile_file = ctx.path("snapshot", "profile.json")
    profile_file.write_text(json.dumps(drift.profile(x_train, inputs)))
    save_arrays(ctx.path("snapshot", "holdout_new.npz"), take(x_new, hold), y_new[hold])
    return Snapshot(
        **common,
        **_slices(ctx),
        replay_rows=replay_rows,
        train_file=str(ctx.path("snapshot", "train.npz")),
        holdout_new_file=str(ctx.path("snapshot", "holdout_new.npz")),
        train_rows=len(y_train),
        holdout_new_rows=n_hold,
        validation_file=val_file,
        replay_from=replay_from,
        profile_file=str(profile_file),
    )


def _slices(ctx: StageContext) -> dict:
    """The fixed holdout slices (golden, data.slices), read whole: they are small by design."""
    inputs, target = ctx.pipeline.inputs, ctx.pipeline.target
    slices: dict[str, str] = {}
    golden_rows = 0
    for name, path in ctx.pipeline.slice_files.items():
        try:
            sx, sy = read_shard(path, inputs, target)
        except (ShardInvalid, FileNotFoundError) as e:
            key = "data.golden" if name == "golden" else f"data.slices.{name}"
            raise DataError(f"holdout slice '{name}' at {path} is unusable ({e}): fix {key}") from None
        slices[name] = str(ctx.path("snapshot", f"{name}.npz"))
        save_arrays(Path(slices[name]), sx, sy)
        golden_rows = len(sy) if name == "golden" else golden_rows
    return {"slices": slices, "golden_file": slices.get("golden"), "golden_rows": golden_rows}


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


def _capped(skipped: list[tuple[str, str]], keep: int = 200) -> tuple[tuple[str, str], ...]:
    """The record names every entry up to `keep`: a Spark dataset's .crc and _SUCCESS files
    are listed again every cycle and must not grow each record with the history."""
    if len(skipped) <= keep:
        return tuple(skipped)
    return (*skipped[:keep], ("…", f"{len(skipped) - keep} more entries left in place, not listed here"))


def _streamed(ctx: StageContext, common: dict, x, y, b, widths, new_train: int, old_paths: list[listing.DataFile],
              rng: np.random.Generator, files: dict[Path, listing.DataFile]) -> Snapshot:
    """A snapshot whose training rows stay in their files (stream.py): the holdout and
    validation bands and a training sample (for INT8 calibration and the profile) are saved;
    replay draws whole learned shards, chosen by their footers' row counts, until the wanted
    rows are covered, and reads none of them here."""
    cfg, inputs = ctx.pipeline.config, ctx.pipeline.inputs
    hold, val, _ = widths
    in_hold, in_val = b < hold, (b >= hold) & (b < hold + val)
    in_sample = b >= hold + val
    save_arrays(ctx.path("snapshot", "holdout_new.npz"), take(x, in_hold), y[in_hold])
    val_file = None
    if val:
        val_file = str(ctx.path("snapshot", "validation.npz"))
        save_arrays(Path(val_file), take(x, in_val), y[in_val])
    save_arrays(ctx.path("snapshot", "train.npz"), take(x, in_sample), y[in_sample])  # a sample: see Snapshot
    profile_file = ctx.path("snapshot", "profile.json")
    profile_file.write_text(json.dumps(drift.profile(take(x, in_sample), inputs)))

    want = int(new_train * cfg.ingest.replay_fraction)
    replay: list[listing.DataFile] = []
    replay_rows = 0
    sizes = np.array([_footprint([f])[0] for f in old_paths] if want else [], dtype=np.float64)
    if want and sizes.sum() > 0:
        order = rng.choice(len(old_paths), size=len(old_paths), replace=False, p=sizes / sizes.sum())
        covered = np.cumsum(sizes[order])
        chosen = order[: int(np.searchsorted(covered, want)) + 1]
        replay = [old_paths[i] for i in sorted(chosen)]
        replay_rows = int(sizes[chosen].sum())
    plan = stream.manifest([s.path for s in common["new_shards"]], [str(f.path) for f in replay], hold, val,
                           new_train + replay_rows, {str(p): f.partitions for p, f in files.items()})
    ctx.say(f"streaming {plan['train_rows']:,} training rows from {len(plan['new']) + len(replay)} shard(s) through "
            f"Ray Data (new data above ingest.stream_above_rows/bytes); holdout {int(in_hold.sum()):,} rows kept")
    return Snapshot(
        **common,
        **_slices(ctx),
        replay_rows=replay_rows,
        train_file=str(ctx.path("snapshot", "train.npz")),
        holdout_new_file=str(ctx.path("snapshot", "holdout_new.npz")),
        train_rows=plan["train_rows"],
        holdout_new_rows=int(in_hold.sum()),
        validation_file=val_file,
        replay_from=tuple(f.name for f in replay),
        profile_file=str(profile_file),
        train_manifest=plan,
    )


def champion_profile(champion) -> dict | None:
    """The champion's training-data profile from its bundle; None for versions older than it."""
    f = Path(champion.folder) / "profile.json" if champion else None
    return json.loads(f.read_text()) if f and f.is_file() else None


def _compact(moved: dict | None, keep: int = 10) -> dict | None:
    # The record keeps the worst features only: a 64-pixel input need not list all 64.
    if not moved:
        return None
    return {**{k: v for k, v in moved.items() if k != "features"}, "top": [[n, f] for n, f in drift.top(moved, keep)]}


def _draw_replay(old: list[listing.DataFile], want: int, rng: np.random.Generator, inputs, target):
    """Rows for replay, reading only what is drawn: the learned shards' row groups (from
    their Parquet footers) are drawn with probability proportional to their rows until `want`
    rows are covered, and only those groups are read. The cost follows `want`, which follows
    the new data, not the number of shards already learned. Rows of one group come together
    (a group is a contiguous stretch of one shard); over cycles every group gets drawn.
    A learned shard gone or damaged since it was learned is left out of replay and named in
    `lost` with why: the history is not this cycle's to judge. Returns (x, y, drawn, lost);
    x is None when nothing could be drawn."""
    import pyarrow.parquet as pq

    units = []  # (file, row group, rows)
    lost: list[tuple[str, str]] = []
    for f in old:
        try:
            meta = pq.ParquetFile(f.path).metadata
        except FileNotFoundError:
            lost.append((f.name, VANISHED))
            continue
        except Exception as e:
            lost.append((f.name, f"a learned shard no longer readable ({type(e).__name__}): left out of replay"))
            continue
        units += [(f, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
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
    reference = champion_profile(champion)
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
