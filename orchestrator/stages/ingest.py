"""ingest: find the shards the champion has not learned from, check them, and freeze a snapshot.

A bad shard is moved to `<source>/_quarantine/` with a reason file beside it: never deleted,
never blocking the good shards. The snapshot materializes train / new-holdout / golden
arrays in the cycle folder so later stages (and a resume) never re-read the data source.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from orchestrator import drift, stream
from orchestrator.artifacts import QuarantinedShard, Shard, Snapshot, sha256_file
from orchestrator.context import StageContext
from orchestrator.dataset import ShardInvalid, concat, read_row_groups, read_shard, save_arrays, take
from orchestrator.errors import DataError

QUARANTINE = "_quarantine"


def quarantine(path: Path, sha: str, reason: str, bucket=None) -> QuarantinedShard:
    """Move a bad shard aside with its reason; for a bucket source, the object too."""
    if bucket is not None:
        where = bucket.quarantine(path.name, {"shard": path.name, "sha256": sha, "reason": reason,
                                              "quarantined_at": time.time()})
        _quarantine_local(path, sha, reason)  # the mirror's copy goes aside too
        return QuarantinedShard(path.name, f"{bucket.describe().split('://')[0]}://{where}", sha, reason)
    return _quarantine_local(path, sha, reason)


def _quarantine_local(path: Path, sha: str, reason: str) -> QuarantinedShard:
    folder = path.parent / QUARANTINE
    folder.mkdir(exist_ok=True)
    target = folder / path.name
    if target.exists():  # keep both: a later bad shard of the same name must not overwrite evidence
        target = folder / f"{path.stem}-{sha[:12]}{path.suffix}"
    # The reason first: a crash between the two leaves the shard in place (quarantined again
    # next cycle), never a quarantined shard without its reason.
    target.with_name(target.name + ".reason.json").write_text(
        json.dumps({"shard": path.name, "sha256": sha, "reason": reason, "quarantined_at": time.time()}, indent=2)
    )
    shutil.move(str(path), target)
    return QuarantinedShard(path.name, str(target), sha, reason)


def _hashes(cache: Path, paths: list[Path]) -> dict[Path, str]:
    """Each shard's sha256, hashing only shards not seen before: shards are written once
    (atomically, then never changed), so (name, mtime, size) names the content. Without this
    every cycle would read every byte of the history just to recognise it as learned."""
    known = json.loads(cache.read_text()) if cache.exists() else {}
    out, keep = {}, {}
    for p in paths:
        st = p.stat()
        key = f"{p.name}|{st.st_mtime_ns}|{st.st_size}"
        out[p] = keep[key] = known.get(key) or sha256_file(p)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(keep))
    tmp.replace(cache)
    return out


def _originals(shas: dict[Path, str]) -> dict[str, Path]:
    """For each content the shard that arrived first (then by name): a copy of it under
    another name is a duplicate, however the names sort."""
    paths = list(shas)
    first: dict[str, Path] = {}
    for p in sorted(paths, key=lambda p: (p.stat().st_mtime_ns, p.name)):
        first.setdefault(shas[p], p)
    return first


def run(ctx: StageContext) -> Snapshot:
    cfg = ctx.pipeline.config
    source = ctx.pipeline.source
    inputs, target = ctx.pipeline.inputs, ctx.pipeline.target
    bucket = ctx.pipeline.bucket
    if bucket is not None:
        ctx.say(f"mirroring new shards from {bucket.describe()}")
        bucket.mirror(source)
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
    old_paths: list[Path] = []
    fresh: list[tuple[Path, str]] = []
    xs, ys = [], []
    found = sorted(source.glob("*.parquet"))
    for path in found:
        if not path.is_file():  # e.g. a partitioned dataset's folder: nothing to hash or read as one shard
            reason = "not a file: a folder named *.parquet; put each shard in data.source as one Parquet file"
            quarantined.append(quarantine(path, "", reason, bucket))
            ctx.say(f"quarantined {path.name}: {reason}")
    shas = _hashes(ctx.workspace.home / "cache" / f"sha256-{ctx.pipeline.name}.json", [p for p in found if p.is_file()])
    first = _originals(shas)
    for path, sha in shas.items():
        if first[sha] != path:
            # The same bytes under a second name: learning them again would count those rows
            # twice (in min_new_rows, the holdout and replay). The first arrival stays.
            reason = (f"duplicate: the same bytes as {first[sha].name} (sha256 {sha[:12]}…), which "
                      + ("is already learned" if sha in learned else "this cycle learns") + "; a shard is learned once")
            quarantined.append(quarantine(path, sha, reason, bucket))
            ctx.say(f"quarantined {path.name}: {reason}")
            continue
        if sha in learned:
            old_paths.append(path)
            continue
        fresh.append((path, sha))

    # Large new data streams: only the capped holdout, validation and sample bands stay in memory.
    streaming = stream.should_stream(cfg, *_footprint([p for p, _ in fresh]))
    widths = stream.split_bands(cfg, _footprint([p for p, _ in fresh])[0]) if streaming else None
    bands: list[np.ndarray] = []
    streamed_rows = 0
    for path, sha in fresh:
        try:
            x, y = read_shard(path, inputs, target)
        except ShardInvalid as e:
            quarantined.append(quarantine(path, sha, str(e), bucket))
            ctx.say(f"quarantined {path.name}: {e}")
            continue
        why = drift.impossible(reference, x, inputs)
        if why:
            quarantined.append(quarantine(path, sha, why, bucket))
            ctx.say(f"quarantined {path.name}: {why}")
            continue
        new.append(Shard(path.name, str(path), sha, len(y), path.stat().st_mtime))
        if streaming:
            b = stream.bands(x, y)
            streamed_rows += int((b >= widths[0] + widths[1]).sum())  # exact: what training will read
            kept = b < sum(widths)
            x, y = take(x, kept), y[kept]
            bands.append(b[kept])
        xs.append(x)
        ys.append(y)

    rows = sum(s.rows for s in new)
    common = dict(new_shards=tuple(new), quarantined=tuple(quarantined), champion=champion)
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
        return _streamed(ctx, common, x_new, y_new, np.concatenate(bands), widths, streamed_rows, old_paths, rng)
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
    if want and old_paths:
        x_old, y_old, replay_from = _draw_replay(old_paths, want, rng, inputs, target)
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


def _footprint(paths: list[Path]) -> tuple[int, int]:
    """(rows, bytes) of shards from their footers and sizes: nothing but the footers is read."""
    import pyarrow.parquet as pq

    rows = 0
    for p in paths:
        try:
            rows += pq.read_metadata(p).num_rows
        except Exception:
            pass  # unreadable: quarantined when it is read
    return rows, sum(p.stat().st_size for p in paths)


def _streamed(ctx: StageContext, common: dict, x, y, b, widths, new_train: int, old_paths: list[Path],
              rng: np.random.Generator) -> Snapshot:
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
    replay: list[Path] = []
    replay_rows = 0
    if want and old_paths:
        sizes = np.array([_footprint([p])[0] for p in old_paths], dtype=np.float64)
        order = rng.choice(len(old_paths), size=len(old_paths), replace=False, p=sizes / sizes.sum())
        covered = np.cumsum(sizes[order])
        chosen = order[: int(np.searchsorted(covered, want)) + 1]
        replay = [old_paths[i] for i in sorted(chosen)]
        replay_rows = int(sizes[chosen].sum())
    plan = stream.manifest([s.path for s in common["new_shards"]], [str(p) for p in replay], hold, val,
                           new_train + replay_rows)
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
        replay_from=tuple(p.name for p in replay),
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


def _draw_replay(old_paths: list[Path], want: int, rng: np.random.Generator, inputs, target):
    """Rows for replay, reading only what is drawn: the learned shards' row groups (from
    their Parquet footers) are drawn with probability proportional to their rows until `want`
    rows are covered, and only those groups are read. The cost follows `want`, which follows
    the new data, not the number of shards already learned. Rows of one group come together
    (a group is a contiguous stretch of one shard); over cycles every group gets drawn."""
    import pyarrow.parquet as pq

    units = []  # (path, row group, rows)
    for p in old_paths:
        meta = pq.ParquetFile(p).metadata
        units += [(p, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
    rows = np.array([u[2] for u in units], dtype=np.float64)
    order = rng.choice(len(units), size=len(units), replace=False, p=rows / rows.sum())
    covered = np.cumsum(rows[order])
    drawn = order[: int(np.searchsorted(covered, want)) + 1]
    by_shard: dict[Path, list[int]] = {}
    for i in sorted(drawn, key=lambda i: (units[i][0].name, units[i][1])):
        by_shard.setdefault(units[i][0], []).append(units[i][1])
    parts = [read_row_groups(p, groups, inputs, target) for p, groups in by_shard.items()]
    x, y = concat([q[0] for q in parts]), np.concatenate([q[1] for q in parts])
    return x, y, tuple(f"{p.name}#{g}" for p, groups in by_shard.items() for g in groups)


def pending_of(pipeline, learned: set[str]) -> tuple[int, float | None]:
    """pending() for a pipeline's data source, a folder or a bucket (listings and footers)."""
    bucket = pipeline.bucket
    if bucket is None:
        return pending(pipeline.source, learned)
    return bucket.pending(pipeline.source, learned, lambda p: _hash_cached(p, p.stat().st_mtime_ns, p.stat().st_size))


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
    paths = [p for p in sorted(source.glob("*.parquet")) if p.is_file()] if source.is_dir() else []
    shas = {p: _hash_cached(p, p.stat().st_mtime_ns, p.stat().st_size) for p in paths}
    todo = sorted({sha: p for p, sha in shas.items() if sha not in learned}.items())
    key = (pipeline.name, champion.version, tuple(sha for sha, _ in todo))
    if key not in _DRIFTS:
        xs = []
        for _, path in todo:
            try:
                xs.append(read_shard(path, pipeline.inputs, pipeline.target)[0])
            except ShardInvalid:
                continue  # ingest will quarantine it
        _DRIFTS[key] = drift.measure(reference, concat(xs), pipeline.inputs) if xs else None
    return _DRIFTS[key]


def pending(source: Path, learned: set[str]) -> tuple[int, float | None]:
    """New rows waiting in the data source and the arrival time of the oldest unlearned
    shard, without reading, moving or quarantining anything (the scheduler's poll). Row
    counts come from Parquet footers; an unreadable shard counts no rows (ingest will
    quarantine it) but still ages."""
    import pyarrow.parquet as pq

    rows, oldest = 0, None
    if not source.is_dir():
        return 0, None
    seen: set[str] = set()
    for path in sorted(source.glob("*.parquet")):
        if not path.is_file():
            continue
        st = path.stat()
        sha = _hash_cached(path, st.st_mtime_ns, st.st_size)
        if sha in learned or sha in seen:  # a duplicate adds no rows: ingest learns one copy
            continue
        seen.add(sha)
        try:
            rows += pq.read_metadata(path).num_rows
        except Exception:
            pass
        oldest = st.st_mtime if oldest is None else min(oldest, st.st_mtime)
    return rows, oldest


_HASHES: dict[tuple[str, int, int], str] = {}


def _hash_cached(path: Path, mtime_ns: int, size: int) -> str:
    # A poll every few seconds must not re-hash every shard: shards are append-only files.
    key = (str(path), mtime_ns, size)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]
