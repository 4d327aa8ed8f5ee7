"""ingest: find the data the champion has not learned from, check it, and freeze a snapshot.

Finding is the source's (found.py): a folder or bucket of Parquet files (folder_source.py),
where new data is new files, or a lake table (table_source.py), where it is the rows of the
versions after the champion's. Whatever the source, a bad file is set aside with its reason
and never blocks the good ones, and the snapshot materializes train / new-holdout / golden
arrays in the cycle folder, so later stages (and a resume) never re-read the source. New
data too large to hold streams instead (stream.py): the snapshot then names its files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from orchestrator import drift, folder_source, stream, table_source
from orchestrator.artifacts import Shard, Snapshot
from orchestrator.context import StageContext
from orchestrator.dataset import ShardInvalid, concat, read_shard, save_arrays, take
from orchestrator.errors import DataError
from orchestrator.found import VANISHED, Found, Old


def find(ctx: StageContext, champion) -> Found:
    pipeline = ctx.pipeline
    if pipeline.table_format != "parquet":
        return table_source.find(pipeline, champion, ctx.say)
    learned = set(ctx.registry.lineage(champion)) if champion else set()
    return folder_source.find(pipeline, ctx.workspace.home, learned, ctx.say)


def run(ctx: StageContext) -> Snapshot:
    cfg = ctx.pipeline.config
    inputs = ctx.pipeline.inputs
    champion = ctx.registry.champion(ctx.pipeline.name, ctx.workspace.home / "champions" / ctx.pipeline.name)
    learned = set(ctx.registry.lineage(champion)) if champion else set()
    reference = drift.champion_profile(champion)
    found = find(ctx, champion)

    # Large new data streams: only the capped holdout, validation and sample bands stay in memory.
    new_rows, new_bytes = sum(f.rows for f in found.fresh), sum(f.size for f in found.fresh)
    streaming = stream.should_stream(cfg, new_rows, new_bytes)
    widths = stream.split_bands(cfg, new_rows) if streaming else None
    new: list[Shard] = []
    bands: list[np.ndarray] = []
    streamed_rows = 0
    xs, ys = [], []
    origins: list[tuple[dict, int]] = []  # each kept file's partition values and rows, in the order of x_new
    for f in found.fresh:
        try:
            x, y = f.read()
        except FileNotFoundError:
            found.skipped.append((f.name, VANISHED))
            continue
        except ShardInvalid as e:
            f.set_aside(str(e))
            continue
        why = drift.impossible(reference, x, inputs)
        if why:
            f.set_aside(why)
            continue
        new.append(Shard(f.name, f.location, f.sha256, len(y), f.arrived_at))
        if streaming:
            b = stream.bands(x, y)
            streamed_rows += int((b >= widths[0] + widths[1]).sum())  # exact: what training will read
            kept = b < sum(widths)
            x, y = take(x, kept), y[kept]
            bands.append(b[kept])
        xs.append(x)
        ys.append(y)
        origins.append((f.partitions, len(y)))

    rows = sum(s.rows for s in new)
    common = dict(new_shards=tuple(new), quarantined=tuple(found.quarantined), champion=champion,
                  skipped=_capped(found.skipped), table=found.table)
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
        partitions = {f.location: f.partitions for f in found.fresh} | {o.location: o.partitions for o in found.old}
        return _streamed(ctx, common, x_new, y_new, np.concatenate(bands), widths, streamed_rows, found.old, rng,
                         partitions, origins)
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
    if want and found.old:
        x_old, y_old, replay_from, lost = found.draw(want, rng)
        common["skipped"] = _capped(found.skipped + lost)
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
        **_slices(ctx, _partition_slices(ctx, origins, x_new, y_new, hold)),
        replay_rows=replay_rows,
        train_file=str(ctx.path("snapshot", "train.npz")),
        holdout_new_file=str(ctx.path("snapshot", "holdout_new.npz")),
        train_rows=len(y_train),
        holdout_new_rows=n_hold,
        validation_file=val_file,
        replay_from=replay_from,
        profile_file=str(profile_file),
    )


def _partition_slices(ctx: StageContext, origins: list[tuple[dict, int]], x, y, hold: np.ndarray) -> dict[str, str]:
    """The data.slices cut by partition value from this cycle's new holdout rows (`hold`:
    their indices in x, whose rows came from the files in `origins`, in order), each saved
    as npz. `newest` is the greatest value among the new data (numbers compared as numbers)."""
    out: dict[str, str] = {}
    for name, cut in ctx.pipeline.partition_slices.items():
        values = np.concatenate([np.full(n, str(p.get(cut.partition)), dtype=object) for p, n in origins])
        present = {str(p[cut.partition]) for p, _ in origins if p.get(cut.partition) is not None}
        want = max(present, key=_ordered, default=None) if cut.value == "newest" else cut.value
        idx = hold[values[hold] == want] if want is not None else hold[:0]
        if not len(idx):
            ctx.say(f"slice '{name}': no new holdout rows with {cut.partition}={want} (data.slices.{name}); not judged")
            continue
        out[name] = str(ctx.path("snapshot", f"{name}.npz"))
        save_arrays(Path(out[name]), take(x, idx), y[idx])
        ctx.say(f"slice '{name}': {len(idx)} new holdout rows with {cut.partition}={want}")
    return out


def _ordered(value: str):
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)  # dates in ISO form order as text


def _slices(ctx: StageContext, cut: dict[str, str] | None = None) -> dict:
    """The fixed holdout slices (golden, data.slices files), read whole: they are small by
    design; and the slices already `cut` from the new holdout by partition value."""
    inputs, target = ctx.pipeline.inputs, ctx.pipeline.target
    slices: dict[str, str] = dict(cut or {})
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




def _capped(skipped: list[tuple[str, str]], keep: int = 200) -> tuple[tuple[str, str], ...]:
    """The record names every entry up to `keep`: a Spark dataset's .crc and _SUCCESS files
    are listed again every cycle and must not grow each record with the history."""
    if len(skipped) <= keep:
        return tuple(skipped)
    return (*skipped[:keep], ("…", f"{len(skipped) - keep} more entries left in place, not listed here"))




def _streamed(ctx: StageContext, common: dict, x, y, b, widths, new_train: int, old: list[Old],
              rng: np.random.Generator, partitions: dict[str, dict], origins: list[tuple[dict, int]]) -> Snapshot:
    """A snapshot whose training rows stay in their files (stream.py): the holdout and
    validation bands and a training sample (for INT8 calibration and the profile) are saved;
    replay draws whole learned files, chosen by their row counts (footers, or a table's log),
    until the wanted rows are covered, and reads none of them here."""
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
    replay: list[Old] = []
    replay_rows = 0
    sizes = np.array([o.rows() for o in old] if want else [], dtype=np.float64)
    if want and sizes.sum() > 0:
        order = rng.choice(len(old), size=len(old), replace=False, p=sizes / sizes.sum())
        covered = np.cumsum(sizes[order])
        chosen = order[: int(np.searchsorted(covered, want)) + 1]
        replay = [old[i] for i in sorted(chosen)]
        replay_rows = int(sizes[chosen].sum())
    plan = stream.manifest([s.path for s in common["new_shards"]], [o.location for o in replay], hold, val,
                           new_train + replay_rows, partitions)
    ctx.say(f"streaming {plan['train_rows']:,} training rows from {len(plan['new']) + len(replay)} shard(s) through "
            f"Ray Data (new data above ingest.stream_above_rows/bytes); holdout {int(in_hold.sum()):,} rows kept")
    return Snapshot(
        **common,
        **_slices(ctx, _partition_slices(ctx, origins, x, y, np.flatnonzero(in_hold))),
        replay_rows=replay_rows,
        train_file=str(ctx.path("snapshot", "train.npz")),
        holdout_new_file=str(ctx.path("snapshot", "holdout_new.npz")),
        train_rows=plan["train_rows"],
        holdout_new_rows=int(in_hold.sum()),
        validation_file=val_file,
        replay_from=tuple(o.name for o in replay),
        profile_file=str(profile_file),
        train_manifest=plan,
    )


def _compact(moved: dict | None, keep: int = 10) -> dict | None:
    # The record keeps the worst features only: a 64-pixel input need not list all 64.
    if not moved:
        return None
    return {**{k: v for k, v in moved.items() if k != "features"}, "top": [[n, f] for n, f in drift.top(moved, keep)]}


@dataclass(frozen=True)
class Pending:
    """What the scheduler's poll finds waiting in a pipeline's data source: new rows, the
    oldest one's arrival, and drift(), which reads the waiting rows to measure their drift
    against the champion's training data (called only when the drift trigger needs it)."""

    rows: int
    oldest: float | None
    drift: Callable[[], dict | None]


def pending_of(pipeline, learned: set[str], champion=None) -> Pending:
    """The scheduler's poll of a pipeline's data source: listings and footers, or one read of
    a table's log, which drift() then reuses."""
    if pipeline.table_format != "parquet":
        return Pending(*table_source.pending(pipeline, champion))
    rows, oldest = folder_source.pending_of(pipeline, learned)
    return Pending(rows, oldest, lambda: folder_source.pending_drift(pipeline, learned, champion))
