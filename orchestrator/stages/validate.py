"""validate: every candidate engine and the champion's engine on the same examples, on the
same machine, interleaved; the paired statistics; the precision choice; the gate's verdicts.

Only measures and judges. Never registers or moves an alias. The raw samples (per-call
latencies, per-example correctness) are saved beside the scorecard for its plots.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from orchestrator import gate
from orchestrator.artifacts import (
    Checkpoint,
    Comparison,
    Engine,
    EngineScore,
    EngineSet,
    Figure,
    LatencyAt,
    LatencyRatio,
    ModelSize,
    Scorecard,
    Snapshot,
)
from orchestrator.config import PipelineConfig, ValidateConfig
from orchestrator.context import StageContext
from orchestrator.dataset import load_arrays
from orchestrator.door import inputs_of
from orchestrator.engines import Runner, load_runner
from orchestrator.measure import accuracy, energy, latency, size, stats
from orchestrator.measure.hardware import fingerprint
from orchestrator.tasks import TASKS, Task, task_for

BACKEND_PREFERENCE = ("tensorrt", "onnxruntime")  # serve on the GPU when one built
DEVICE = {"onnxruntime": "cpu", "tensorrt": "cuda:0"}  # where each backend's engines run (energy meter)

Slices = dict[str, tuple[dict[str, np.ndarray], np.ndarray]]  # slice -> (inputs by name, targets)


@dataclass
class Raw:
    """What the figures were computed from: latency[key][batch] is (rounds, calls) seconds,
    examples[key][slice] the task's per-example statistics ([N, k]: correct; absolute and
    squared error; true/false positives and false negatives)."""

    latency: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    examples: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        arrays = {f"lat|{k}|{b}": a for k, d in self.latency.items() for b, a in d.items()}
        arrays.update({f"ex|{k}|{s}": a for k, d in self.examples.items() for s, a in d.items()})
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: Path) -> "Raw":
        raw = cls()
        with np.load(path) as z:
            for name in z.files:
                kind, key, sub = name.split("|")
                if kind == "lat":
                    raw.latency.setdefault(key, {})[int(sub)] = z[name]
                elif kind == "ok":  # a record from before tasks: per-example correctness
                    raw.examples.setdefault(key, {})[sub] = z[name].astype(np.float64)[:, None]
                else:
                    raw.examples.setdefault(key, {})[sub] = z[name]
        return raw


def slices_of(snapshot: Snapshot) -> Slices:
    out = {"new": load_arrays(snapshot.holdout_new_file)}
    for name, path in snapshot.slices.items():
        out[name] = load_arrays(path)
    return out


def key(e: Engine, who: str) -> str:
    return f"{who}:{e.backend}:{e.precision}"


def timings(runners: dict[str, Runner], pool: dict[str, np.ndarray], cfg: ValidateConfig,
            say: Callable[[str], None] = lambda m: None) -> dict[str, dict[int, np.ndarray]]:
    """Per-call seconds of every runner at each latency batch, interleaved round by round."""
    out: dict[str, dict[int, np.ndarray]] = {k: {} for k in runners}
    for b in cfg.latency_batches:
        say(f"timing {len(runners)} engines at batch {b}: {cfg.rounds} interleaved rounds")
        x = latency.batch_of(pool, b)
        for k, s in latency.interleaved(runners, x, cfg.rounds, cfg.calls_per_round, cfg.warmup).items():
            out[k][b] = s
    return out


def scores(runners: dict[str, Runner], raw: Raw, pool: dict[str, np.ndarray], cfg: ValidateConfig, *,
           sla_ms: float | None, confidence: float, sizes: dict[str, int], devices: dict[str, str], task: Task,
           say: Callable[[str], None] = lambda m: None) -> dict[str, EngineScore]:
    """Each engine's figures from the raw samples, plus the throughput sweep and energy runs."""
    say(f"throughput sweep over batch sizes {list(cfg.throughput_batches)}")
    sweep = latency.sweep(runners, pool, cfg.throughput_batches, sla_ms)
    meters = {d: energy.meter_for(d) for d in set(devices.values())}  # one NVML init / RAPL scan per device
    out = {}
    for k, r in runners.items():
        best = latency.best_within_sla(sweep[k])
        if best is None:
            thr = Figure(None, note=f"no batch size in {list(cfg.throughput_batches)} met p99 <= {sla_ms} ms")
        else:
            thr = Figure(best.samples_per_s, note=f"batch {best.batch}, p99 {best.p99_ms:.3f} ms"
                         + (f" <= {sla_ms:g} ms" if sla_ms is not None else " (no SLA set)"))
        meter, why = meters[devices[k]]
        n_batch = best.batch if best else 1
        batch_x = latency.batch_of(pool, n_batch)
        joules = energy.joules_per_1k(meter, why, lambda r=r, x=batch_x, n=n_batch: (r(x), n)[1], cfg.energy_seconds)
        metrics = {m: {s: task.figure(m, rows, confidence) for s, rows in raw.examples[k].items()}
                   for m in task.metrics}
        acc = metrics[task.primary]
        out[k] = EngineScore(
            backend=k.split(":")[1], precision=k.split(":")[2], accuracy=acc,
            latency=tuple(LatencyAt(b, latency.percentile_ms(a, 50), latency.percentile_ms(a, 95),
                                    latency.percentile_ms(a, 99), a.size,
                                    tuple(1e3 * v for v in stats.quantile_ci(a, 0.99, confidence)))
                          for b, a in raw.latency[k].items()),
            throughput=thr, sweep=tuple(sweep[k]), energy_j_per_1k=joules, size_bytes=sizes[k],
            metric=task.primary, metrics=metrics,
        )
    return out


def measure(runners: dict[str, Runner], slices: Slices, cfg: ValidateConfig, *, sla_ms: float | None,
            confidence: float, sizes: dict[str, int], devices: dict[str, str], task: Task,
            say: Callable[[str], None] = lambda m: None) -> tuple[dict[str, EngineScore], Raw]:
    """Score every runner on the same slices and the same machine, interleaved."""
    pool = next(iter(slices.values()))[0]
    raw = Raw(latency=timings(runners, pool, cfg, say),
              examples={k: {s: accuracy.per_example(r, x, y, task) for s, (x, y) in slices.items()}
                        for k, r in runners.items()})
    return scores(runners, raw, pool, cfg, sla_ms=sla_ms, confidence=confidence, sizes=sizes, devices=devices,
                  task=task, say=say), raw


def compare(cand: str, champ: str, raw: Raw, confidence: float, task: Task) -> Comparison:
    """The chosen candidate engine vs the champion's, paired example by example and round by
    round: every metric of the task on every slice."""
    acc = tuple(task.paired(m, raw.examples[cand][s], raw.examples[champ][s], confidence, s)
                for m in task.metrics for s in raw.examples[cand] if s in raw.examples[champ])
    lat = tuple(stats.latency_ratio(raw.latency[cand][b], raw.latency[champ][b], confidence, batch=b)
                for b in raw.latency[cand])
    return Comparison(acc, lat)


def choose(scores: list[EngineScore], max_drop: float,
           vs_fp32: dict[tuple[str, str], LatencyRatio] | None = None,
           task: Task = TASKS["classification"]) -> tuple[EngineScore, str]:
    """The engine to serve: of the preferred backend, the fastest precision whose main metric
    (accuracy, MAE, micro-F1: the task's) stays within `max_drop` of that backend's FP32
    engine on every slice. With `vs_fp32`
    (each engine's latency ratio to FP32 from the same interleaved rounds), a lower precision
    counts as faster only when its whole interval is below 1: noise never swaps precisions."""
    backends = {s.backend for s in scores}
    name = next(b for b in BACKEND_PREFERENCE if b in backends)
    mine = [s for s in scores if s.backend == name]
    ref = next(s for s in mine if s.precision == "fp32")
    sign = 1.0 if task.metrics[ref.metric] else -1.0  # a drop: less accuracy or F1, more error

    def drop(s: EngineScore, k: str) -> float:
        return sign * (ref.accuracy[k].value - s.accuracy[k].value)

    ok = [s for s in mine if all(drop(s, k) <= max_drop for k in ref.accuracy)]
    if vs_fp32 is not None:
        ok = [s for s in ok if s is ref or vs_fp32[(s.backend, s.precision)].ci[1] < 1.0]
    best = min(ok, key=lambda s: s.p50_ms)

    def why(s: EngineScore) -> str:
        r = (vs_fp32 or {}).get((s.backend, s.precision))
        text = f"{s.precision} {s.p50_ms:.3f} ms"
        return text + (f" ({r.ratio:.2f}x fp32 [{r.ci[0]:.2f}, {r.ci[1]:.2f}])" if r and s is not ref else "")

    pct = ref.metric in ("accuracy", "micro_f1")
    amount = (lambda v: f"{100 * v:.2f} pp") if pct else (lambda v: f"{v:.4g}")
    reason = (f"{name} {best.precision}: fastest p50 at batch {best.latency[0].batch} within "
              f"{amount(max_drop)} {ref.metric} of fp32 on every slice" + (", faster beyond its CI" if vs_fp32 else "")
              + "; " + ", ".join(why(s) for s in mine))
    lost = [s for s in mine if any(drop(s, k) > max_drop for k in ref.accuracy)]
    if lost:
        reason += "; " + ", ".join(f"{s.precision} lost {amount(max(drop(s, k) for k in ref.accuracy))} {ref.metric}"
                                   for s in lost)
    return best, reason


def judge(cfg: PipelineConfig, slices: Slices, candidate: list[Engine], champion: list[Engine],
          champion_version: str | None, sizes: tuple[ModelSize, ModelSize | None], rate: dict[str, Any],
          say: Callable[[str], None] = lambda m: None) -> tuple[Scorecard, Raw]:
    """Measure candidate engines beside the champion's, choose the served precision, apply the gate."""
    engines = {key(e, "candidate"): e for e in candidate}
    engines.update({key(e, "champion"): e for e in champion})
    runners = {k: load_runner(e.backend, Path(e.path)) for k, e in engines.items()}
    task = task_for(cfg.task)
    scores, raw = measure(runners, slices, cfg.validate_, sla_ms=cfg.gate.latency_p99_ms_max,
                          confidence=cfg.gate.confidence, sizes={k: Path(e.path).stat().st_size for k, e in engines.items()},
                          devices={k: DEVICE.get(e.backend, "cpu") for k, e in engines.items()}, task=task, say=say)
    cand_scores = [scores[key(e, "candidate")] for e in candidate]
    b0 = cfg.validate_.latency_batches[0]
    vs_fp32 = {(e.backend, e.precision): stats.latency_ratio(raw.latency[key(e, "candidate")][b0],
                                                             raw.latency[f"candidate:{e.backend}:fp32"][b0],
                                                             cfg.gate.confidence, batch=b0) for e in candidate}
    chosen, why = choose(cand_scores, cfg.validate_.max_precision_drop, vs_fp32, task)
    champ_key = next((key(e, "champion") for e in champion if e.backend == chosen.backend), None)
    champ = scores[champ_key] if champ_key else None
    comparison = compare(f"candidate:{chosen.backend}:{chosen.precision}", champ_key, raw,
                         cfg.gate.confidence, task) if champ_key else None
    verdicts = gate.evaluate(chosen, champ, comparison, cfg.gate, task)
    return Scorecard(
        candidate=tuple(cand_scores), champion=champ, chosen=chosen, chosen_reason=why, comparison=comparison,
        champion_version=champion_version, machine=fingerprint(), confidence=cfg.gate.confidence,
        verdicts=tuple(verdicts), decision=gate.decide(verdicts, cfg.promotion), size=sizes[0],
        champion_size=sizes[1], rate=rate,
    ), raw


def model_sizes(cfg: PipelineConfig, fp32_candidate: str, champion_folder: str | None) -> tuple[ModelSize, ModelSize | None]:
    shape = {i.name: i.shape for i in inputs_of(cfg.data)}
    champ = Path(champion_folder) / "variants" / "fp32.onnx" if champion_folder else None
    return size.measure(fp32_candidate, shape), (size.measure(champ, shape) if champ and champ.exists() else None)


def run(ctx: StageContext, snapshot: Snapshot, checkpoint: Checkpoint, engines: EngineSet) -> Scorecard:
    cfg = ctx.pipeline.config
    fp32 = next(v.path for v in engines.variants if v.precision == "fp32")
    rate = {
        "epochs": checkpoint.epochs, "train_rows": snapshot.train_rows,
        "samples_trained": checkpoint.epochs * snapshot.train_rows, "replay_rows": snapshot.replay_rows,
        "new_rows": sum(s.rows for s in snapshot.new_shards), "workers": checkpoint.num_workers,
        "warm_started_from": checkpoint.warm_started_from,
    }
    scorecard, raw = judge(cfg, slices_of(snapshot), list(engines.candidate), list(engines.champion),
                           snapshot.champion.version if snapshot.champion else None,
                           model_sizes(cfg, fp32, snapshot.champion.folder if snapshot.champion else None), rate, ctx.say)
    raw.save(ctx.path("validate", "raw.npz"))
    return dataclasses.replace(scorecard, drift=snapshot.drift)
