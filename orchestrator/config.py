"""The pipeline definition: pipeline.yaml validated up front, plus its model.py.

Every error is reported at once, each naming the key to fix. This module never touches
data, Ray or MLflow; it only reads the two files a user writes.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from types import ModuleType
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.errors import ConfigError

Precision = Literal["fp32", "fp16", "int8"]


class _Strict(BaseModel):
    # A misspelt key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeaturesConfig(_Strict):
    column: str = Field("features", description="a list<float> column, one example per row")
    shape: tuple[int, ...] = Field(description="shape of one example, e.g. [1, 8, 8]")
    dtype: Literal["float32"] = "float32"

    @field_validator("shape")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(d <= 0 for d in v):
            raise ValueError("every dimension must be a positive integer, e.g. [1, 8, 8]")
        return v


class LabelConfig(_Strict):
    column: str = Field("label", description="integer class ids 0 .. num_classes-1")
    num_classes: int = Field(ge=2, description="the model's outputs: one logit per class")


class InputConfig(_Strict):
    """One named model input: scalar columns stacked into a float vector, or one list column."""

    columns: tuple[str, ...] | None = Field(None, min_length=1, description="numeric columns stacked into a "
                                                                           "float32 vector (tabular data)")
    column: str | None = Field(None, description="a list column holding one example per row")
    shape: tuple[int, ...] | None = Field(None, description="with column: the shape of one example, e.g. [32]")
    dtype: Literal["float32", "int64"] = Field("float32", description="with column: int64 for token or category ids")
    vocab_size: int | None = Field(None, ge=1, description="int64 ids must lie in 0 .. vocab_size-1")
    range: tuple[float, float] | None = Field(
        None, description="float inputs: [low, high] the values are declared to lie in; a shard where a feature lies "
                          "entirely outside it is quarantined (a unit or scale gone wrong upstream)")

    @model_validator(mode="after")
    def _one_form(self) -> "InputConfig":
        if self.range is not None and (self.dtype == "int64" or self.range[0] >= self.range[1]):
            raise ValueError("range: [low, high] with low < high, for float inputs (int64 ids have vocab_size)")
        if (self.columns is None) == (self.column is None):
            raise ValueError("give either columns: [a, b, ...] (scalar columns) or column: + shape: (a list column)")
        if self.columns is not None and (self.shape is not None or self.dtype != "float32" or self.vocab_size):
            raise ValueError("columns: stacks numeric columns into a float32 vector; shape, dtype and vocab_size "
                             "belong to a list column (column:)")
        if self.column is not None:
            if not self.shape or any(d <= 0 for d in self.shape):
                raise ValueError("column: needs shape:, every dimension a positive integer, e.g. [32]")
            if self.dtype == "int64" and self.vocab_size is None:
                raise ValueError("an int64 input needs vocab_size: ids outside 0 .. vocab_size-1 are refused")
            if self.dtype == "float32" and self.vocab_size is not None:
                raise ValueError("vocab_size is for int64 ids; drop it or set dtype: int64")
        return self


class TargetConfig(_Strict):
    """What the model learns to predict; its form follows `task`."""

    column: str | None = Field(None, description="classification: integer class ids; regression: one float column; "
                                                 "multilabel: a list of 0/1 per row")
    columns: tuple[str, ...] | None = Field(None, min_length=1, description="regression: several float targets")
    num_classes: int | None = Field(None, ge=2, description="classification: one logit per class")
    num_labels: int | None = Field(None, ge=1, description="multilabel: the width of each row's 0/1 list")


_FILTER_OPS = ("=", "==", "!=", "<", "<=", ">", ">=", "in", "not in")


class PartitionsConfig(_Strict):
    """Hive partitions (`key=value` folders, as Spark and pyarrow write them) of data.source."""

    filter: list = Field(
        default_factory=list, description="prune files by partition value when the source is listed, in pyarrow's "
        "`filters` form: [[key, op, value], ...] (all must hold) or a list of such lists (any may hold); op is one "
        "of = != < <= > >= in, not in; e.g. [[day, '>=', '2026-12-01']]. A pruned file is neither learned nor "
        "reported; a file without the key is pruned")

    @field_validator("filter")
    @classmethod
    def _dnf(cls, v: list) -> list:
        import datetime

        def term(t) -> tuple:
            if not (isinstance(t, (list, tuple)) and len(t) == 3 and isinstance(t[0], str) and t[1] in _FILTER_OPS):
                raise ValueError(f"{t!r} is not [key, op, value] with op one of {', '.join(_FILTER_OPS)}")
            key, op, value = t
            many = op in ("in", "not in")
            if many != isinstance(value, (list, tuple)):
                raise ValueError(f"{t!r}: 'in' and 'not in' take a list of values, the other ops one value")
            as_text = (lambda x: x.isoformat() if isinstance(x, (datetime.date, datetime.datetime)) else x)
            value = tuple(as_text(x) for x in value) if many else as_text(value)  # YAML reads 2026-12-01 as a date
            return key, op, value

        if v and all(isinstance(c, (list, tuple)) and c and isinstance(c[0], (list, tuple)) for c in v):
            return [[term(t) for t in conj] for conj in v]
        return [[term(t) for t in v]] if v else []


class PartitionSlice(_Strict):
    """A holdout slice cut from the new data by partition value, not a file."""

    partition: str = Field(description="the partition key (a Hive key=value folder, or a table's partition column)")
    value: str = Field("newest", description="the value, or newest: the greatest among this cycle's new data")


class DataConfig(_Strict):
    source: str = Field(description="folder of Parquet shards, or a bucket (s3://bucket/prefix, gs://...); "
                        "${PLASTER_HOME} and env vars expand")
    format: Literal["auto", "parquet", "delta", "iceberg"] = Field(
        "auto", description="how data.source is read: parquet (a folder or bucket of Parquet files), delta (a Delta Lake "
                            "table's folder or bucket prefix; auto when it holds _delta_log/) or iceberg (data.source is "
                            "then namespace.table in data.catalog); in a table, new data is what versions after the "
                            "champion's added")
    catalog: dict[str, str] | None = Field(
        None, description="iceberg: pyiceberg catalog properties (type, uri, warehouse, s3.endpoint, ...); default a SQL "
                          "catalog on SQLite under ${PLASTER_HOME}/iceberg; values expand env vars")
    golden: str | None = Field(None, description="Parquet file: fixed holdout of the original distribution")
    slices: dict[str, str | PartitionSlice] = Field(
        default_factory=dict, description="more named holdout slices to judge on: a Parquet file, or {partition: KEY, "
        "value: V} for the new holdout rows whose Hive partition (or table partition column) KEY is V (newest: the "
        "greatest value among this cycle's new data, e.g. the newest day)")
    partitions: PartitionsConfig = Field(
        default_factory=PartitionsConfig, description="data.source is read as a Parquet dataset: nested folders, and "
        "Hive key=value folders whose values become columns (int64, float64 or string) a pipeline may name")
    inputs: dict[str, InputConfig] | None = Field(None, min_length=1, description="named model inputs, in the order "
                                                                                 "the ONNX graph takes them")
    target: TargetConfig | None = Field(None, description="what to predict (with task)")
    features: FeaturesConfig | None = Field(None, description="one unnamed input (the short form of inputs)")
    label: LabelConfig | None = Field(None, description="class ids (the short form of target, for classification)")

    @model_validator(mode="after")
    def _one_form(self) -> "DataConfig":
        if (self.inputs is None) == (self.features is None):
            raise ValueError("give either inputs: {name: {...}} or features: {column, shape} (one unnamed input)")
        if (self.target is None) == (self.label is None):
            raise ValueError("give either target: {column, ...} or label: {column, num_classes} (class ids)")
        for name in self.inputs or {}:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"input name {name!r}: use a Python identifier (forward takes it by name)")
        return self


class IngestConfig(_Strict):
    min_new_rows: int = Field(200, ge=1, description="fewer new rows: the cycle is SKIPPED with the reason")
    holdout_fraction: float = Field(0.2, gt=0, lt=1, description="of the new rows, held out of training to judge on "
                                                                  "(the 'new' slice)")
    replay_fraction: float = Field(0.5, ge=0, description="older rows replayed into training, as a fraction of the "
                                                          "new training rows")
    seed: int = Field(0, description="of the holdout split and the replay draw")
    stream_above_rows: int | None = Field(
        1_000_000, ge=1, description="more new rows than this: training streams the shards through Ray Data instead of "
                                     "holding them in memory (null: never by rows)")
    stream_above_bytes: int | None = Field(
        256 * 2**20, ge=1, description="more bytes of new Parquet than this: stream too (null: never by size)")
    settle_s: float = Field(
        0.0, ge=0, description="a data file modified less than this many seconds ago is left for the next cycle (a "
                               "writer that writes in place, not by rename); a file whose size or modification time "
                               "changes while the source is listed always is")
    holdout_max_rows: int = Field(
        50_000, ge=100, description="when streaming: the holdout, the validation split and the training sample kept "
                                    "in memory are each capped near this many rows, whatever the data's size")


class TrainConfig(_Strict):
    workers: int | Literal["auto"] = Field(
        "auto", description="Ray Train workers (gloo on CPU, NCCL on GPU); auto = one per GPU, else one per node, "
                            "and small compute or one machine without GPUs trains in this process "
                            "(train.in_process_below_s)")
    use_gpu: bool | Literal["auto"] = Field("auto", description="auto = if the Ray cluster has GPUs")
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1, description="per worker")
    lr: float = Field(1e-3, gt=0, description="Adam's learning rate")
    warm_start: bool = Field(True, description="start from the champion's weights")
    warm_start_epochs: int | None = Field(
        None, ge=1, description="epochs of a cycle that warm-starts from the champion: fine-tuning needs fewer than "
                                "training anew (benchmarks/warm_start.py measures how many); null: train.epochs")
    warm_start_lr: float | None = Field(None, gt=0, description="learning rate of a warm-started cycle; null: train.lr")
    seed: int = 0
    checkpoint_every: int = Field(10, ge=1, description="epochs between checkpoints; a lost worker restarts from the last")
    max_failures: int = Field(2, ge=0, description="worker-group restarts Ray Train may make before the stage fails")
    in_process_below_s: float | None = Field(
        30.0, ge=0, description="with workers: auto, train in the driver process when the estimated compute is "
                                "below this many seconds (Ray Train's worker group costs ~20 s to start and stop); "
                                "null: always Ray Train")

    early_stopping_patience: int | None = Field(
        None, ge=1, description="stop after this many epochs without a lower validation loss and keep the best "
                                "epoch's weights; null: train every epoch")
    validation_fraction: float = Field(0.1, gt=0, lt=1, description="with early stopping: of the new training rows "
                                                                   "(never the gate's holdout), held out to stop on")
    grad_clip_norm: float | None = Field(None, gt=0, description="clip the gradients' total norm to this; null: off")
    mixed_precision: Literal["auto", "off", "bf16", "fp16"] = Field(
        "auto", description="autocast on a GPU (auto: bf16 where the GPU supports it, else fp16); on a CPU always off")

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("use a positive count, or auto (one per GPU)")
        return v


class ExportConfig(_Strict):
    opset: int | None = Field(None, description="ONNX opset; null: the exporter's default")
    parity_atol: float = Field(1e-4, gt=0, description="max |torch - ONNX| on holdout inputs, else REJECTED with "
                                                      "the figure")


class BuildConfig(_Strict):
    precisions: tuple[Precision, ...] = Field(("fp32", "fp16", "int8"), description="ONNX variants: as exported, "
                                                                                   "mixed FP16, INT8 Q/DQ")
    backends: tuple[Literal["onnxruntime", "tensorrt"], ...] = Field(
        ("onnxruntime", "tensorrt"), description="a backend that cannot run here is skipped with its reason")
    calibration_samples: int = Field(256, ge=8, description="training rows that calibrate INT8")
    max_batch: int = Field(256, ge=1, description="largest batch an engine is built for and serving accepts")
    parallel: bool | Literal["auto"] = Field(
        "auto", description="build engines as parallel Ray tasks; auto = for backends whose builds are slow (TensorRT)")
    serving_gpu: str | None = Field(
        None, description="Ray accelerator type of the serving GPU (e.g. H100, L4): TensorRT plans are built there, "
                          "because a plan runs only on the GPU model it was built for")

    @field_validator("precisions")
    @classmethod
    def _fp32_first(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if "fp32" not in v:
            raise ValueError("must include fp32: other precisions are judged against it")
        return v


class ValidateConfig(_Strict):
    latency_batches: tuple[int, ...] = Field((1, 64), min_length=1, description="p50/p95/p99 at each batch size")
    throughput_batches: tuple[int, ...] = Field((1, 8, 32, 128, 512), min_length=1,
                                                description="the batch-size sweep for throughput within the SLA")
    rounds: int = Field(30, ge=6, description="interleaved A/B rounds per engine (>= 6 for a 95% CI of the ratio)")
    calls_per_round: int = Field(10, ge=1, description="timed calls per engine in each round")
    warmup: int = Field(20, ge=0, description="untimed calls per engine first")
    energy_seconds: float = Field(1.0, gt=0, description="length of the energy run where a counter exists")
    max_precision_drop: float = Field(
        0.01, ge=0, description="how much of the task's primary metric a lower precision may lose vs FP32, in the "
                                "metric's units (accuracy, micro_f1: a fraction; mae, rmse: the target's units)")

    @field_validator("latency_batches", "throughput_batches")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(b < 1 for b in v):
            raise ValueError("batch sizes must be positive integers")
        return v


# Rules a gate can apply; `required` names them (the part before any '.' or '@').
RULES = ("accuracy_min", "metric_min", "metric_max", "non_inferiority", "superiority", "latency_p99_ms_max",
         "latency_ratio_max", "throughput_min", "size_bytes_max", "energy_j_per_1k_max")


class GateConfig(_Strict):
    """Each rule's semantics is fixed and documented; the gate never guesses. Metrics are the
    task's: accuracy (classification), mae and rmse (regression), micro_f1 (multilabel)."""

    confidence: float = Field(0.95, gt=0.5, lt=1, description="two-sided confidence of every interval")
    accuracy_min: dict[str, float] | None = Field(
        None, description="slice -> the candidate's accuracy (point estimate) >= this; classification only; "
                          "null: {golden: 0.8, new: 0.8} for classification")
    metric_min: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="slice -> {metric: bound}: a higher-is-better metric (accuracy, "
                                          "micro_f1) of the candidate >= bound")
    metric_max: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="slice -> {metric: bound}: a lower-is-better metric (mae, rmse) of the "
                                          "candidate <= bound")
    non_inferiority: dict[str, float | dict[str, float]] | None = Field(
        None, description="slice -> margin in the task's main metric (or slice -> {metric: margin}): the CI of "
                          "candidate - champion may not be worse than the margin; null: {golden: 0.05, new: 0.02} "
                          "for classification and multilabel, none for regression (its units are the data's)")
    superiority: tuple[str, ...] | dict[str, tuple[str, ...]] = Field(
        (), description="slices (or slice -> [metrics]) where the whole CI of candidate - champion is better")
    latency_p99_ms_max: float | None = Field(10.0, gt=0, description="the SLA: p99 at every latency batch <= this")
    latency_ratio_max: float | None = Field(
        1.10, gt=0, description="candidate/champion p50 at every latency batch: FAIL when the CI's lower bound > this",
    )
    throughput_min: float | None = Field(None, gt=0, description="samples/s within the SLA >= this")
    size_bytes_max: int | None = Field(None, gt=0, description="served engine bytes <= this")
    energy_j_per_1k_max: float | None = Field(None, gt=0, description="joules per 1,000 inferences <= this")
    required: tuple[str, ...] = Field((), description="rules that HOLD the candidate when NOT_MEASURED")

    @field_validator("required")
    @classmethod
    def _known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for r in v:
            if r not in RULES:
                raise ValueError(f"unknown rule {r!r}; use one of {', '.join(RULES)}")
        return v


class ScheduleConfig(_Strict):
    """When `plaster schedule` starts a cycle without anyone calling `run`."""

    cron: str | None = Field(None, description="crontab in UTC: 5 fields, or 6 with seconds first")
    poll_seconds: float | None = Field(30.0, gt=0, description="data-arrival trigger: look at the data source this often")
    max_staleness: float | None = Field(
        None, gt=0, description="seconds: also start when the oldest unlearned shard is older than this, "
                                "even below ingest.min_new_rows")
    drift_threshold: float | None = Field(
        None, gt=0, description="also start, even below ingest.min_new_rows, when the unlearned shards have drifted "
                                "this far from the champion's training data: PSI of a numeric feature (0.1 moderate, "
                                "0.25 large) or Jensen-Shannon distance of an id input")

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from orchestrator.cron import trigger

        try:
            trigger(v)
        except ValueError as e:
            raise ValueError(f"{e}; e.g. '0 3 * * *' (03:00 UTC daily) or '*/30 * * * * *' (every 30 s)") from None
        return v


class StorageConfig(_Strict):
    """Where checkpoints, engines and cycle records are kept durably (PLASTER_HOME holds a working copy)."""

    uri: str | None = Field(None, description="s3://bucket/prefix, gs://bucket/prefix or a path; default: "
                                              "PLASTER_STORAGE_URI, else PLASTER_HOME on this machine")
    shared: bool = Field(False, description="the path is a mount every node sees (NFS): allowed on a multi-node cluster")


class SloConfig(_Strict):
    """Service-level objectives of the pipeline's rate of learning: shown against, never enforced."""

    data_to_live_s: float | None = Field(
        None, gt=0, description="seconds from the arrival of the oldest new shard to the champion alias moving "
                                "(and a canary or linear rollout completing), for promoted cycles; history, report "
                                "and the daemon's metrics show the lag's p50/p95, the share within it and the budget "
                                "left (this - p95); null: no objective")


class RolloutConfig(_Strict):
    """How `plaster serve` moves traffic to a new champion, and the live gate that watches it.
    The live gate compares the new model with the one it replaces on the same requests (both
    engines answer each watched request; the client gets one answer) and rolls back by itself
    only on evidence: a latency ratio whose CI lies above the bound, an error rate above the
    bound by an exact binomial test, an output agreement whose CI lies below the bound."""

    strategy: Literal["all_at_once", "canary", "linear", "shadow"] = Field(
        "all_at_once", description="all_at_once: every request moves when the alias moves; canary: `fraction` of "
                                   "requests for `bake_s`, then all; linear: steps of `fraction`, each baked; "
                                   "shadow: a promoted cycle leaves the version challenger, the server runs it on a "
                                   "copy of every request (answers discarded) for `bake_s`, then the live gate moves "
                                   "the champion alias")
    fraction: float = Field(0.1, gt=0, le=1, description="canary: share of requests the new champion answers; "
                                                         "linear: the step")
    bake_s: float = Field(300.0, gt=0, description="seconds each step (or the shadow) is watched before it completes")
    min_requests: int = Field(200, ge=1, description="requests the new model answers in a step before it can complete")
    max_latency_ratio: float | None = Field(
        1.5, gt=0, description="new/old engine seconds on the same requests: roll back when the CI's lower bound > this")
    max_error_rate: float | None = Field(
        0.001, ge=0, lt=1, description="roll back when the new model's errors are above this rate (exact binomial test "
                                       "at 1 - confidence)")
    # Low by default: a model retrained after drift may rightly disagree with the stale one on
    # half the requests (measured: 44% agreement for pipelines/weighted's v2 vs v1 on new data),
    # while a broken one (constant or scrambled answers) agrees about at chance.
    min_agreement: float | None = Field(
        0.25, gt=0, le=1, description="share of examples where both models answer the same (class, label set, or a "
                                      "value within `agree_within`): roll back when the CI's upper bound < this")
    agree_within: float = Field(0.1, ge=0, description="regression: answers agree when they differ by at most this "
                                                       "fraction of the old model's (absolute below 1)")
    confidence: float = Field(0.99, gt=0.5, lt=1, description="of the live gate over a step: each look (every check_s) "
                                                              "tests at (1 - this) / (bake_s / check_s)")
    check_s: float = Field(1.0, gt=0, description="how often the live gate looks")


class FeedbackConfig(_Strict):
    """Served traffic kept as future training data (`plaster label` joins labels that arrive later)."""

    enabled: bool = Field(False, description="the server writes each answered request (id, inputs, answer, version, "
                                             "time) to Parquet shards in `location`")
    location: str | None = Field(None, description="a folder; default PLASTER_HOME/feedback/<pipeline>")
    flush_rows: int = Field(1000, ge=1, description="a shard is written when this many requests are buffered")
    flush_s: float = Field(5.0, gt=0, description="... or when the oldest buffered request is this old: a crash loses "
                                                  "at most this window (or flush_rows requests)")


class PipelineConfig(_Strict):
    name: str = Field(description="also the registered model's name in MLflow")
    description: str = Field("", description="shown with the registered model")
    task: Literal["classification", "regression", "multilabel"] = Field(
        "classification", description="what the model predicts; it brings the metrics, loss and paired statistics")
    data: DataConfig
    ingest: IngestConfig = IngestConfig()
    train: TrainConfig = TrainConfig()
    export: ExportConfig = ExportConfig()
    build: BuildConfig = BuildConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    gate: GateConfig = GateConfig()
    promotion: Literal["auto", "manual"] = Field(
        "auto", description="manual: a passing candidate is HELD as challenger; `plaster approve` promotes it")
    schedule: ScheduleConfig = ScheduleConfig()
    storage: StorageConfig = StorageConfig()
    slo: SloConfig = SloConfig()
    rollout: RolloutConfig = RolloutConfig()
    feedback: FeedbackConfig = FeedbackConfig()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
            raise ValueError("use letters, digits, '.', '_' or '-' (it names the registered model)")
        return v


class Pipeline:
    """A loaded pipeline folder: its validated config and its model factory."""

    def __init__(self, folder: Path, config: PipelineConfig):
        self.folder = folder
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def inputs(self):
        """The model inputs, resolved (door.InputSpec): data.inputs, or features as one named "input"."""
        from orchestrator.door import inputs_of

        return inputs_of(self.config.data)

    @property
    def target(self):
        from orchestrator.door import target_of

        return target_of(self.config.data, self.config.task)

    @property
    def task(self):
        from orchestrator.tasks import task_for

        return task_for(self.config.task)

    def hooks(self):
        """model.py's training hooks (door.Hooks), checked."""
        from orchestrator.door import check_model

        return check_model(self)

    @property
    def model_file(self) -> Path:
        return self.folder / "model.py"

    @property
    def source_uri(self) -> str:
        return _expand(self.config.data.source, "data.source")

    @property
    def bucket(self):
        """The data source's bucket (sources.Bucket), or None for a folder or a lake table."""
        from orchestrator.sources import Bucket, is_bucket

        return Bucket(self.source_uri) if is_bucket(self.source_uri) and self.table_format == "parquet" else None

    @property
    def table_format(self) -> str:
        """parquet, delta or iceberg: data.format, with auto resolved (a source holding _delta_log/ is a Delta table)."""
        fmt = self.config.data.format
        if fmt != "auto":
            return fmt
        if self.source_uri not in _DETECTED:  # a bucket listing per poll would be wasted: tables do not change kind
            from orchestrator import lake

            _DETECTED[self.source_uri] = lake.detect(self.source_uri)
        return _DETECTED[self.source_uri]

    def table(self):
        """The lake table data.source names (lake.Table); only for data.format delta or iceberg."""
        from orchestrator import lake
        from orchestrator.workspace import Workspace

        return lake.open_table(self.table_format, self.source_uri, home=Workspace.from_env().home, catalog=self.catalog)

    @property
    def catalog(self) -> dict[str, str] | None:
        """data.catalog with env vars expanded (None: the embedded SQL catalog)."""
        return {k: _expand(v, f"data.catalog.{k}") for k, v in (self.config.data.catalog or {}).items()} or None

    @property
    def source(self) -> Path:
        """The folder ingest reads: data.source itself, or a bucket's mirror in PLASTER_HOME."""
        from orchestrator.sources import is_bucket, mirror_folder

        if is_bucket(self.source_uri):
            from orchestrator.workspace import Workspace

            return mirror_folder(Workspace.from_env().home, self.name)
        return Path(self.source_uri)

    @property
    def golden(self) -> Path | None:
        g = self.config.data.golden
        return Path(_expand(g, "data.golden")) if g else None

    @property
    def slice_files(self) -> dict[str, Path]:
        """The fixed holdout slices by name: golden (if set) and data.slices."""
        out = {"golden": self.golden} if self.golden else {}
        out.update({k: Path(_expand(v, f"data.slices.{k}")) for k, v in self.config.data.slices.items()
                    if isinstance(v, str)})
        return out

    @property
    def partition_slices(self) -> dict[str, PartitionSlice]:
        """The slices cut from the new holdout by partition value, by name."""
        return {k: v for k, v in self.config.data.slices.items() if isinstance(v, PartitionSlice)}

    @property
    def storage_uri(self) -> str | None:
        """storage.uri, else PLASTER_STORAGE_URI (a deployment's default, as in docker-compose.yml)."""
        u = self.config.storage.uri
        return _expand(u, "storage.uri") if u else (os.environ.get("PLASTER_STORAGE_URI") or None)

    def module(self, filename: str = "model.py") -> ModuleType:
        return load_module(self.folder / filename)


_DETECTED: dict[str, str] = {}


def _expand(value: str, key: str) -> str:
    out = os.path.expanduser(os.path.expandvars(value))
    if "$" in out:
        raise ConfigError(f"{key}: {value!r} names an environment variable that is not set; set it or write the path out")
    return out


def load_module(path: Path) -> ModuleType:
    """Import a pipeline's python file by path (workers call this too)."""
    spec = importlib.util.spec_from_file_location(f"plaster_pipeline_{abs(hash(str(path)))}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import {path}: it must be a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _slice_errors(raw: dict) -> list[str]:
    """Gate rules naming a slice that does not exist. Checked on the raw YAML so these are
    reported together with every other error."""
    data, gate = raw.get("data") or {}, raw.get("gate") or {}
    if not isinstance(data, dict) or not isinstance(gate, dict):
        return []
    known = {"new", "golden", *(data.get("slices") or {})}
    feedback = raw.get("feedback")
    if isinstance(feedback, dict) and feedback.get("enabled") is True:
        # labelled shadow traffic (feedback.live_slice): `plaster gate` measures it; a cycle,
        # which has none, reports the rule NOT_MEASURED
        known.add("live")
    out = []
    for key in ("accuracy_min", "metric_min", "metric_max", "non_inferiority", "superiority"):
        for name in gate.get(key) or ():
            if name not in known:
                out.append(f"  - gate.{key}: unknown slice {name!r}; use one of {', '.join(sorted(known))} "
                           "(name more slices under data.slices" + ("" if "live" in known or name != "live" else
                                                                   "; 'live' needs feedback.enabled: true") + ")")
    return out


_TASKS = ("classification", "regression", "multilabel")
_GATE_METRIC_KEYS = ("accuracy_min", "metric_min", "metric_max", "non_inferiority", "superiority")


def _valid(cls: type[BaseModel], value) -> BaseModel | None:
    """`value` as a `cls`, or None where it is invalid: its errors are already reported from
    the whole file, and the checks that need it are skipped rather than reported twice."""
    try:
        return cls.model_validate(value)
    except ValidationError:
        return None


def _parts(raw: dict) -> tuple[str | None, TargetConfig | None, bool, GateConfig]:
    """What the cross-checks (_task_errors) read, taken from the raw YAML piece by piece, so a
    mistake elsewhere in the file does not hide them: (task, data.target, whether data.label is
    given, the gate's metric rules that are valid on their own)."""
    task = raw.get("task", "classification")
    task = task if task in _TASKS else None
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    target = _valid(TargetConfig, data["target"]) if data.get("target") is not None else None
    gate_raw = raw.get("gate") if isinstance(raw.get("gate"), dict) else {}
    fields = {}
    for k in _GATE_METRIC_KEYS:
        if k in gate_raw:
            one = _valid(GateConfig, {k: gate_raw[k]})
            if one is not None:
                fields[k] = getattr(one, k)
    return task, target, data.get("label") is not None, GateConfig.model_construct(**fields)


def _task_errors(task_name: str, target: TargetConfig | None, has_label: bool, gate: GateConfig) -> list[str]:
    """The target's form and the gate's metrics against the task, every error at once."""
    from orchestrator.tasks import task_for

    task = task_for(task_name)
    out = []
    t = target
    if has_label and task_name != "classification":
        out.append(f"  - data.label: is for class ids; task {task_name} needs data.target")
    if t is not None:
        need = {"classification": ("column", "num_classes"), "multilabel": ("column", "num_labels"),
                "regression": ()}[task_name]
        for k in need:
            if getattr(t, k) is None:
                out.append(f"  - data.target.{k}: task {task_name} needs it")
        extra = {"classification": ("columns", "num_labels"), "multilabel": ("columns", "num_classes"),
                 "regression": ("num_classes", "num_labels")}[task_name]
        for k in extra:
            if getattr(t, k) is not None:
                out.append(f"  - data.target.{k}: not used by task {task_name}; remove it")
        if task_name == "regression" and (t.column is None) == (t.columns is None):
            out.append("  - data.target: task regression needs column: (one float target) or columns: [...] "
                       "(several), not both")
    for key, want_higher in (("metric_min", True), ("metric_max", False)):
        for sl, metrics in getattr(gate, key).items():
            for m in metrics:
                if m not in task.metrics:
                    out.append(f"  - gate.{key}.{sl}.{m}: task {task_name} measures {', '.join(task.metrics)}")
                elif task.metrics[m] != want_higher:
                    other = "metric_max" if want_higher else "metric_min"
                    out.append(f"  - gate.{key}.{sl}.{m}: {m} is {'lower' if want_higher else 'higher'}-is-better; "
                               f"bound it with gate.{other}")
    margins = gate.non_inferiority or {}
    for sl, v in margins.items():
        for m in (v if isinstance(v, dict) else {}):
            if m not in task.metrics:
                out.append(f"  - gate.non_inferiority.{sl}.{m}: task {task_name} measures {', '.join(task.metrics)}")
    if isinstance(gate.superiority, dict):
        for sl, ms in gate.superiority.items():
            for m in ms:
                if m not in task.metrics:
                    out.append(f"  - gate.superiority.{sl}: {m!r}: task {task_name} measures "
                               f"{', '.join(task.metrics)}")
    if gate.accuracy_min and task_name != "classification":
        out.append(f"  - gate.accuracy_min: accuracy is a classification metric; use gate.metric_min or "
                   f"gate.metric_max with {', '.join(task.metrics)}")
    return out


def _format(errors: list[str], yaml_path: Path) -> str:
    return "\n".join([f"{yaml_path}: {len(errors)} error(s); fix these keys:", *errors])


def _field_errors(err: ValidationError) -> list[str]:
    out = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        unknown = "unknown key (check the spelling against the README's pipeline format)"
        msg = unknown if e["type"] == "extra_forbidden" else e["msg"]
        if e["type"] != "extra_forbidden" and isinstance(e.get("input"), (str, int, float, bool)):
            msg += f" (got {e['input']!r})"  # which value is wrong, in a list or a typo'd word
        out.append(f"  - {key}: {msg}")
    return out


def _unset_variables(raw: dict) -> list[str]:
    """Paths naming an environment variable that is not set, found at load time instead of
    at the stage that reads them. PLASTER_HOME always expands: the workspace defaults it.
    Read from the raw YAML, so they are reported beside any other error."""
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    storage = raw.get("storage") if isinstance(raw.get("storage"), dict) else {}
    slices = data.get("slices") if isinstance(data.get("slices"), dict) else {}
    paths = {"data.source": data.get("source"), "data.golden": data.get("golden"), "storage.uri": storage.get("uri"),
             **{f"data.slices.{k}": v for k, v in slices.items() if isinstance(v, str)}}
    env = {"PLASTER_HOME", *os.environ}
    out = []
    for key, value in paths.items():
        if not isinstance(value, str):
            continue  # a wrong type is the schema's error
        names = re.findall(r"\$(?:\{(\w+)\}|(\w+))", value)
        unset = sorted({a or b for a, b in names} - env)
        if unset:
            out.append(f"  - {key}: {value!r} names the environment variable(s) {', '.join(unset)}, which are not set; "
                       "set them or write the path out")
    return out


def check_model(pipeline: Pipeline) -> None:
    """model.py against the door's contract (door.check_model)."""
    from orchestrator.door import check_model as check

    check(pipeline)


def load_pipeline(folder: str | Path, check: bool = True) -> Pipeline:
    """Read and validate `<folder>/pipeline.yaml` and, with `check`, its model.py (check_model).

    Raises:
        ConfigError: listing every invalid key at once; or naming what model.py must fix.
    """
    folder = Path(folder)
    yaml_path = folder / "pipeline.yaml"
    if not yaml_path.is_file():
        raise ConfigError(f"{yaml_path} not found: a pipeline is a folder with pipeline.yaml and model.py")
    try:
        raw = yaml.safe_load(yaml_path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{yaml_path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{yaml_path}: the top level must be a mapping of keys (name, data, train, ...)")
    # Every check runs, whatever another one found: the schema, the slices the gate names, the
    # task against the target and the gate's metrics, the paths' variables, and model.py.
    config: PipelineConfig | None = None
    errors = _slice_errors(raw)
    try:
        config = PipelineConfig.model_validate(raw)
    except ValidationError as e:
        errors = _field_errors(e) + errors
    task, target, has_label, gate = _parts(raw)
    if task is not None:
        errors += _task_errors(task, target, has_label, gate)
    errors += _unset_variables(raw)
    model_file = folder.resolve() / "model.py"
    if not model_file.is_file():
        model_error = f"{model_file} not found: define build_model() -> torch.nn.Module there"
    else:
        # model.py is checked against the declared inputs and the target, so it needs a valid
        # data section and task, and a target of the task's form (else the outputs it must have
        # are unknown). Given those it is checked even when other keys (train, gate, ...) are
        # wrong; without them its check waits for the YAML to be fixed.
        model_error = _model_error(folder, raw, config, errors) if check else None
    if model_error:
        if not errors:
            raise ConfigError(model_error)  # model.py alone: its message as it is
        errors.append("  - " + model_error.replace("\n", "\n    "))
    if errors:
        raise ConfigError(_format(errors, yaml_path))
    return Pipeline(folder.resolve(), config)


def _model_error(folder: Path, raw: dict, config: PipelineConfig | None, errors: list[str]) -> str | None:
    """check_model's message, or None when model.py passes or cannot be checked yet."""
    if config is None:
        data = _valid(DataConfig, raw.get("data"))
        task = raw.get("task", "classification")
        if data is None or task not in _TASKS:
            return None
        name = raw.get("name") if isinstance(raw.get("name"), str) else folder.name
        config = PipelineConfig.model_construct(name=name, task=task, data=data)
    if any(e.startswith(("  - data.target", "  - data.label")) for e in errors):
        return None  # the target's form is wrong: what the model must output is not known
    try:
        check_model(Pipeline(folder.resolve(), config))
    except ConfigError as e:
        return str(e)
    return None
