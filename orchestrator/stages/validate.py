"""validate: every candidate engine and the champion's engine on the same examples, on the
same machine, interleaved; the precision choice; the gate's verdicts.

Only measures and judges. Never registers or moves an alias.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from orchestrator import gate
from orchestrator.artifacts import Engine, EngineScore, EngineSet, Figure, Scorecard, Snapshot
from orchestrator.context import StageContext
from orchestrator.dataset import load_arrays
from orchestrator.engines import load_runner
from orchestrator.measure import accuracy, latency
from orchestrator.measure.hardware import fingerprint

BACKEND_PREFERENCE = ("tensorrt", "onnxruntime")  # serve on the GPU when one built


def _slices(snapshot: Snapshot) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {"new": load_arrays(snapshot.holdout_new_file)}
    if snapshot.golden_file:
        out["golden"] = load_arrays(snapshot.golden_file)
    return out


def _key(e: Engine, who: str) -> str:
    return f"{who}:{e.backend}:{e.precision}"


def measure(ctx: StageContext, engines: dict[str, Engine], slices) -> dict[str, EngineScore]:
    cfg = ctx.pipeline.config.validate_
    runners = {k: load_runner(e.backend, Path(e.path)) for k, e in engines.items()}
    acc = {k: {s: Figure(float(accuracy.correct(r, x, y).mean())) for s, (x, y) in slices.items()}
           for k, r in runners.items()}
    x_any = next(iter(slices.values()))[0]
    single = x_any[: cfg.latency_batch]
    ctx.say(f"timing {len(runners)} engines interleaved, {cfg.rounds} rounds")
    lat = latency.interleaved(runners, single, rounds=cfg.rounds)
    batch = np.resize(x_any, (cfg.throughput_batch, *x_any.shape[1:]))
    thr = latency.interleaved(runners, batch, rounds=max(3, cfg.rounds // 3), calls_per_round=3)
    return {
        k: EngineScore(
            backend=e.backend, precision=e.precision, accuracy=acc[k],
            latency_p50_ms=Figure(latency.percentile_ms(lat[k], 50)),
            latency_p99_ms=Figure(latency.percentile_ms(lat[k], 99)),
            throughput_per_s=Figure(latency.throughput(thr[k], cfg.throughput_batch), note=f"batch {cfg.throughput_batch}"),
            size_bytes=os.path.getsize(e.path),
        )
        for k, e in engines.items()
    }


def choose(scores: list[EngineScore], max_drop: float) -> tuple[EngineScore, str]:
    """The fastest engine of the preferred backend whose accuracy stays within `max_drop`
    of that backend's FP32 engine on every slice."""
    backends = {s.backend for s in scores}
    name = next(b for b in BACKEND_PREFERENCE if b in backends)
    mine = [s for s in scores if s.backend == name]
    ref = next(s for s in mine if s.precision == "fp32")
    ok = [s for s in mine if all(s.accuracy[k].value >= ref.accuracy[k].value - max_drop for k in ref.accuracy)]
    best = min(ok, key=lambda s: s.latency_p50_ms.value)
    dropped = sorted({s.precision for s in mine} - {s.precision for s in ok})
    reason = f"{name} {best.precision}: fastest p50 ({best.latency_p50_ms.value:.3f} ms) within {max_drop:g} accuracy of fp32"
    if dropped:
        reason += f"; {', '.join(dropped)} lost more accuracy than that"
    return best, reason


def param_count(ctx: StageContext) -> int:
    from orchestrator.config import load_module

    return sum(p.numel() for p in load_module(ctx.pipeline.model_file).build_model().parameters())


def run(ctx: StageContext, snapshot: Snapshot, engines: EngineSet) -> Scorecard:
    cfg = ctx.pipeline.config
    slices = _slices(snapshot)
    todo = {_key(e, "candidate"): e for e in engines.candidate}
    todo.update({_key(e, "champion"): e for e in engines.champion})
    scores = measure(ctx, todo, slices)
    cand_scores = [scores[_key(e, "candidate")] for e in engines.candidate]
    chosen, why = choose(cand_scores, cfg.validate_.max_precision_drop)
    champ = next((scores[_key(e, "champion")] for e in engines.champion if e.backend == chosen.backend), None)
    verdicts = gate.evaluate(chosen, champ, cfg.gate)
    return Scorecard(
        candidate=tuple(cand_scores), champion=champ, chosen=chosen, chosen_reason=why,
        champion_version=snapshot.champion.version if snapshot.champion else None,
        machine=fingerprint(), verdicts=tuple(verdicts), decision=gate.decide(verdicts, cfg.promotion),
        param_count=param_count(ctx),
    )
