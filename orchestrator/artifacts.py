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
from pathlib import Path
from typing import Any


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
class ChampionRef:
    """The live model a cycle warm-starts from and is judged against."""

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
    champion: ChampionRef | None
    skip_reason: str | None = None

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


@dataclass(frozen=True)
class OnnxModel:
    path: str
    sha256: str
    input_name: str
    parity_max_abs_diff: float


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
    """One measured figure; `ci` is (low, high) when the measurement gives one."""

    value: float | None
    ci: tuple[float, float] | None = None
    note: str = ""


@dataclass(frozen=True)
class EngineScore:
    backend: str
    precision: str
    accuracy: dict[str, Figure]  # slice -> accuracy
    latency_p50_ms: Figure
    latency_p99_ms: Figure
    throughput_per_s: Figure
    size_bytes: int


@dataclass(frozen=True)
class Verdict:
    rule: str
    verdict: str  # PASS | FAIL | NOT_MEASURED
    reason: str


@dataclass(frozen=True)
class Scorecard:
    candidate: tuple[EngineScore, ...]  # every precision built, per backend
    champion: EngineScore | None  # the champion's served engine, measured beside the candidate
    chosen: EngineScore  # the candidate engine that would be served
    chosen_reason: str
    champion_version: str | None
    machine: str
    verdicts: tuple[Verdict, ...]
    decision: str  # PROMOTE | REJECT | HOLD
    param_count: int


@dataclass(frozen=True)
class Promotion:
    decision: str  # PROMOTED | REJECTED | HELD
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
