"""The typed, immutable artifacts that flow between stages.

Each names its files by content hash so a resumed or repeated cycle can tell what it
already has. They serialize to plain JSON (the cycle record) and back; nothing here does
work beyond that.
"""

from __future__ import annotations

import dataclasses
import hashlib
import types
import typing
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any


class GateDecision(StrEnum):
    """What the gate says of a scorecard."""

    PROMOTE = "PROMOTE"
    REJECT = "REJECT"
    HOLD = "HOLD"  # passing, but a required figure was not measured or promotion is manual


class Decision(StrEnum):
    """How a cycle ended. Strings underneath, so records and JSON stay plain text."""

    PROMOTED = "PROMOTED"
    REJECTED = "REJECTED"
    HELD = "HELD"  # the challenger waits for `plaster approve`
    SKIPPED = "SKIPPED"  # too little new data: nothing trained


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Shard:
    name: str
    path: str
    sha256: str
    rows: int
    arrived_at: float  # the file's mtime: when it landed in the data source


@dataclass(frozen=True)
class QuarantinedShard:
    name: str
    moved_to: str
    sha256: str
    reason: str


@dataclass(frozen=True)
class VersionRef:
    """A registered version downloaded to this machine: the champion a cycle warm-starts
    from and is judged against, or a version `plaster gate` re-validates."""

    version: str
    run_id: str
    folder: str  # local copy of its weights, variants and manifest
    precision: str  # the engine precision it is served with
    backend: str


@dataclass(frozen=True)
class Snapshot:
    new_shards: tuple[Shard, ...]
    quarantined: tuple[QuarantinedShard, ...]
    replay_rows: int
    train_file: str  # npz: x, y (new rows minus holdout, plus replay)
    holdout_new_file: str  # npz: held-out rows of the new shards
    golden_file: str | None  # npz: the fixed holdout of the original distribution
    train_rows: int
    holdout_new_rows: int
    golden_rows: int
    learned: tuple[str, ...]  # shard hashes the candidate will have learned from (cumulative lineage)
    champion: VersionRef | None
    skip_reason: str | None = None
    slices: dict[str, str] = field(default_factory=dict)  # fixed holdout slices (golden, data.slices) -> npz
    validation_file: str | None = None  # npz: new training rows set aside for early stopping
    # Where the replayed rows came from, "<shard>#<row group>": replay reads only these.
    replay_from: tuple[str, ...] = ()
    # The training rows' per-feature statistics (drift.profile), kept with the version.
    profile_file: str | None = None
    # The new rows against the champion's training data (drift.measure), before training.
    drift: dict[str, Any] | None = None
    # Set when the new data is too large to hold (stream.py): the files Ray Data streams to
    # training. train_file then holds a capped sample of the training rows, not all of them.
    train_manifest: dict[str, Any] | None = None
    # (name, reason) of the source's entries left in place and not learned: writer debris,
    # files still being written, files that vanished mid-cycle, bad entries that could not be moved.
    skipped: tuple[tuple[str, str], ...] = ()
    # A lake table source (table_source.py): its format, address, the version read and the
    # champion's (since), what the versions between added, deleted and rewrote; the declared
    # columns' types. Lineage keeps it, so the next cycle learns only later versions.
    table: dict[str, Any] | None = None

    @property
    def oldest_arrival(self) -> float | None:
        return min((s.arrived_at for s in self.new_shards), default=None)


@dataclass(frozen=True)
class Checkpoint:
    weights_file: str
    sha256: str
    epochs: int
    num_workers: int
    use_gpu: bool
    warm_started_from: str | None
    history: tuple[dict[str, float], ...]
    # Where the workers ran and how often the group restarted from a checkpoint.
    nodes: tuple[str, ...] = ()
    restarts: int = 0
    resumed_from_epoch: int | None = None
    workers_reason: str = ""
    placement: str = "ray_train"  # or "in_process": see train.in_process_below_s
    lr: float | None = None  # the learning rate trained with (train.warm_start_lr when warm-started)
    mixed_precision: str = "off"  # what autocast did, and why
    hooks: tuple[str, ...] = ()  # model.py hooks the loop called
    stopped_early: bool = False  # early stopping ended training before train.epochs
    best_epoch: int | None = None  # with early stopping: the epoch whose weights were kept


@dataclass(frozen=True)
class OnnxModel:
    path: str
    sha256: str
    input_name: str  # the first input's (the only one, for one input)
    parity_max_abs_diff: float
    input_names: tuple[str, ...] = ()  # every ONNX input, in the graph's order


@dataclass(frozen=True)
class Variant:
    precision: str
    path: str
    sha256: str


@dataclass(frozen=True)
class Engine:
    backend: str
    precision: str
    path: str
    sha256: str
    variant_sha256: str
    cache_key: str
    cached: bool
    build_seconds: float


@dataclass(frozen=True)
class EngineSet:
    variants: tuple[Variant, ...]
    candidate: tuple[Engine, ...]
    champion: tuple[Engine, ...]  # the champion's engines rebuilt (or cached) on this machine
    skipped_backends: dict[str, str] = field(default_factory=dict)  # backend -> why not built


@dataclass(frozen=True)
class Figure:
    """One measured figure; `ci` is (low, high) when the measurement gives one. A figure
    that could not be measured has value None and says why in `note`."""

    value: float | None
    ci: tuple[float, float] | None = None
    note: str = ""


@dataclass(frozen=True)
class LatencyAt:
    batch: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    calls: int
    p99_ci: tuple[float, float] | None = None  # distribution-free (binomial order statistics)


@dataclass(frozen=True)
class ThroughputAt:
    batch: int
    p99_ms: float
    samples_per_s: float  # batch / mean seconds per call: what a saturated server sustains
    within_sla: bool


@dataclass(frozen=True)
class EngineScore:
    backend: str
    precision: str
    accuracy: dict[str, Figure]  # slice -> the task's main metric (`metric`; accuracy has a Wilson interval)
    latency: tuple[LatencyAt, ...]  # one per validate.latency_batches
    throughput: Figure  # PLASTER's T: the most samples/s whose p99 meets the SLA
    sweep: tuple[ThroughputAt, ...]  # the batch-size sweep it came from
    energy_j_per_1k: Figure  # value None when there is no counter; note says why
    size_bytes: int
    metric: str = "accuracy"  # what `accuracy` holds: the task's main metric
    metrics: dict[str, dict[str, Figure]] = field(default_factory=dict)  # every metric of the task -> slice -> figure

    @property
    def p50_ms(self) -> float:
        """p50 at the first latency batch: what 'fastest' means in the precision choice."""
        return self.latency[0].p50_ms


@dataclass(frozen=True)
class AccuracyDiff:
    """Candidate minus champion on one slice and one of the task's metrics (accuracy, mae,
    rmse, micro_f1), paired on identical examples."""

    slice: str
    n: int
    candidate: float
    champion: float
    diff: float
    ci: tuple[float, float]  # paired bootstrap
    candidate_only: int | None = None  # accuracy: McNemar's b, examples only the candidate gets right
    champion_only: int | None = None  # McNemar's c
    mcnemar_p: float | None = None  # exact, two-sided
    metric: str = "accuracy"
    higher_is_better: bool = True


@dataclass(frozen=True)
class LatencyRatio:
    """Candidate/champion latency at one batch size from interleaved rounds."""

    batch: int
    ratio: float  # median of per-round ratios of medians
    ci: tuple[float, float]  # distribution-free (binomial order statistics)
    rounds: int


@dataclass(frozen=True)
class Comparison:
    accuracy: tuple[AccuracyDiff, ...]
    latency: tuple[LatencyRatio, ...]


@dataclass(frozen=True)
class ModelSize:
    param_count: int
    flops_per_sample: int
    note: str = ""


@dataclass(frozen=True)
class Verdict:
    rule: str
    verdict: str  # PASS | FAIL | NOT_MEASURED
    reason: str
    required: bool = False  # NOT_MEASURED on a required rule holds the candidate


@dataclass(frozen=True)
class Scorecard:
    candidate: tuple[EngineScore, ...]  # every precision built, per backend
    champion: EngineScore | None  # the champion's served engine, measured beside the candidate
    chosen: EngineScore  # the candidate engine that would be served
    chosen_reason: str
    comparison: Comparison | None  # chosen vs champion, paired; None without a champion
    champion_version: str | None
    machine: str
    confidence: float
    verdicts: tuple[Verdict, ...]
    decision: str  # a GateDecision
    size: ModelSize  # of the candidate's FP32 model
    champion_size: ModelSize | None
    rate: dict[str, Any]  # P and R: epochs, samples trained, seconds per stage so far
    candidate_version: str | None = None  # set when `plaster gate` re-validates a registered version
    drift: dict[str, Any] | None = None  # the new data vs the champion's training data (drift.measure)


@dataclass(frozen=True)
class Promotion:
    decision: str  # a Decision: PROMOTED | REJECTED | HELD
    version: str | None
    champion_before: str | None
    champion_after: str | None
    decided_at: float
    reasons: tuple[str, ...]


# --- JSON round trip -------------------------------------------------------------------

def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def from_dict(tp: Any, data: Any) -> Any:
    """Rebuild `tp` (a dataclass or a typing form of them) from `to_dict` output."""
    if data is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return from_dict(inner[0], data)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_dict(args[0], x) for x in data)
        return tuple(from_dict(a, x) for a, x in zip(args, data))
    if origin is dict:
        _, vt = typing.get_args(tp)
        return {k: from_dict(vt, v) for k, v in data.items()}
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return tp(**{f.name: from_dict(hints[f.name], data[f.name]) for f in dataclasses.fields(tp) if f.name in data})
    return data
