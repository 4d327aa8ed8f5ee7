"""build: precision variants of the candidate's ONNX, and an engine per variant per backend.

Engines are cached by variant hash + backend + precision + hardware + library version, so
a resumed cycle, or the champion's engines on the same machine, cost nothing the second
time. The champion's served precision is rebuilt here too, so validate compares engines
built on this machine. A backend that cannot run here is skipped with its reason.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from orchestrator.artifacts import Engine, EngineSet, OnnxModel, Snapshot, Variant, VersionRef, sha256_file
from orchestrator.context import StageContext
from orchestrator.dataset import load_arrays
from orchestrator.engines import ENGINE_SUFFIX, Backend, backend
from orchestrator.errors import EngineBuildError
from orchestrator.measure.hardware import fingerprint
from orchestrator import variants as variant_ops


def cache_key(b: Backend, variant_sha: str, precision: str) -> str:
    parts = [variant_sha, b.name, precision, fingerprint(), b.device(), b.version()]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _input_name(path: str) -> str:
    import onnx

    return onnx.load(path, load_external_data=False).graph.input[0].name


def build_engine(ctx: StageContext, b: Backend, variant: Variant) -> Engine:
    cfg = ctx.pipeline.config
    key = cache_key(b, variant.sha256, variant.precision)
    folder = ctx.workspace.engine_cache / key[:24]
    path = folder / f"{variant.precision}{ENGINE_SUFFIX[b.name]}"
    if path.exists():
        return Engine(b.name, variant.precision, str(path), sha256_file(path), variant.sha256, key, True, 0.0)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    t0 = time.perf_counter()
    try:
        b.build(Path(variant.path), tmp, input_name=_input_name(variant.path), sample_shape=tuple(cfg.data.features.shape),
                max_batch=cfg.build.max_batch, opt_batch=max(cfg.validate_.latency_batches),
                timing_cache=ctx.workspace.engine_cache / f"{b.name}.timing-cache")
    except EngineBuildError:
        raise
    except Exception as e:
        raise EngineBuildError(f"{b.name} could not build {variant.precision} from {variant.path}: {e}") from None
    tmp.rename(path)  # atomic: a crash mid-build never leaves a half engine in the cache
    seconds = time.perf_counter() - t0
    return Engine(b.name, variant.precision, str(path), sha256_file(path), variant.sha256, key, False, seconds)


def run(ctx: StageContext, snapshot: Snapshot, onnx_model: OnnxModel) -> EngineSet:
    cfg = ctx.pipeline.config.build
    x_train, _ = load_arrays(snapshot.train_file)
    calibration = x_train[: cfg.calibration_samples]
    made: list[Variant] = []
    for precision in cfg.precisions:
        out = ctx.path("variants", f"{precision}.onnx")
        if not out.exists():  # variants are deterministic: a resumed build reuses them
            ctx.say(f"making {precision} variant")
            tmp = out.with_suffix(".tmp")
            try:
                variant_ops.make(precision, Path(onnx_model.path), tmp, onnx_model.input_name, calibration)
            except Exception as e:
                raise EngineBuildError(f"could not make the {precision} variant: {e}; "
                                       f"drop '{precision}' from build.precisions to continue without it") from None
            tmp.rename(out)
        made.append(Variant(precision, str(out), sha256_file(out)))

    backends, skipped = available_backends(ctx.pipeline.config.build.backends)
    candidate = engines_for(ctx, backends, made)
    champion = engines_for(ctx, backends, [champion_variant(snapshot.champion)]) if snapshot.champion else []
    return EngineSet(variants=tuple(made), candidate=tuple(candidate), champion=tuple(champion), skipped_backends=skipped)


def available_backends(names: tuple[str, ...]) -> tuple[list[Backend], dict[str, str]]:
    """The configured backends that can run here, and why the others cannot."""
    backends, skipped = [], {}
    for name in names:
        b = backend(name)
        reason = b.unavailable_reason()
        if reason:
            skipped[name] = reason
        else:
            backends.append(b)
    if not backends:
        raise EngineBuildError(f"no engine backend can run here ({skipped}); add onnxruntime to build.backends")
    return backends, skipped


def engines_for(ctx: StageContext, backends: list[Backend], variants: list[Variant]) -> list[Engine]:
    out = []
    for b in backends:
        for v in variants:
            ctx.say(f"building {b.name} {v.precision} engine")
            out.append(build_engine(ctx, b, v))
    return out


def champion_variant(champ: VersionRef) -> Variant:
    """The variant a registered version is served at, from its downloaded bundle."""
    path = Path(champ.folder) / "variants" / f"{champ.precision}.onnx"
    if not path.exists():
        raise EngineBuildError(f"v{champ.version} has no {champ.precision} variant at {path}; "
                               "re-register it or roll back to a version plaster registered")
    return Variant(champ.precision, str(path), sha256_file(path))
