"""build: precision variants of the candidate's ONNX, and an engine per variant per backend.

Engines are cached by variant hash + backend + precision + hardware (CPU model, GPU model)
+ library version (ONNX Runtime, TensorRT), in PLASTER_HOME and in storage.uri, so a resumed
cycle, another node of the same hardware, or the champion's engines cost nothing the second
time; a new GPU model or TensorRT release changes the key and rebuilds the champion's engine
too. Builds run as parallel Ray tasks where they are slow (TensorRT), TensorRT on the
serving GPU type (build.serving_gpu). The champion's served precision is rebuilt here too, so validate compares engines
built on this machine. A backend that cannot run here is skipped with its reason.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator import variants as variant_ops
from orchestrator.artifacts import Engine, EngineSet, OnnxModel, Snapshot, Variant, VersionRef, sha256_file
from orchestrator.context import StageContext
from orchestrator.dataset import load_arrays
from orchestrator.engines import ENGINE_SUFFIX, Backend, backend
from orchestrator.errors import EngineBuildError
from orchestrator.measure.hardware import fingerprint
from orchestrator.storage import Storage


def cache_key(b: Backend, variant_sha: str, precision: str) -> str:
    parts = [variant_sha, b.name, precision, fingerprint(), b.device(), b.version()]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class BuildSpec:
    """What every engine build needs besides its variant: picklable, so a Ray task can take it."""

    cache: str  # this machine's engine cache folder
    inputs: tuple  # door.InputSpec of every model input
    max_batch: int
    opt_batch: int


def spec_for(ctx: StageContext) -> BuildSpec:
    cfg = ctx.pipeline.config
    return BuildSpec(str(ctx.workspace.engine_cache), ctx.pipeline.inputs, cfg.build.max_batch,
                     max(cfg.validate_.latency_batches))


def build_engine(spec: BuildSpec, storage: Storage, b: Backend, variant: Variant) -> Engine:
    """The engine for `variant` on this machine: from the local cache, else from storage
    (built by another node of the same hardware), else built now and stored for the others."""
    key = cache_key(b, variant.sha256, variant.precision)
    name = f"{variant.precision}{ENGINE_SUFFIX[b.name]}"
    path = Path(spec.cache) / key[:24] / name
    rel = f"engines/{key[:24]}/{name}"
    if path.exists() or storage.get_file(rel, path):
        return Engine(b.name, variant.precision, str(path), sha256_file(path), variant.sha256, key, True, 0.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    t0 = time.perf_counter()
    try:
        b.build(Path(variant.path), tmp, inputs=spec.inputs,
                max_batch=spec.max_batch, opt_batch=spec.opt_batch,
                timing_cache=Path(spec.cache) / f"{b.name}.timing-cache")
    except EngineBuildError:
        raise
    except Exception as e:
        raise EngineBuildError(f"{b.name} could not build {variant.precision} from {variant.path}: {e}") from None
    tmp.rename(path)  # atomic: a crash mid-build never leaves a half engine in the cache
    seconds = time.perf_counter() - t0
    storage.put_file(path, rel)
    return Engine(b.name, variant.precision, str(path), sha256_file(path), variant.sha256, key, False, seconds)


def _build_task(spec: BuildSpec, storage: Storage, backend_name: str, variant: Variant,
                variant_bytes: bytes) -> tuple[Engine, bytes]:
    """A Ray task: build on whichever node Ray placed it (the serving GPU type for TensorRT).
    The variant arrives as bytes and the engine goes back as bytes, so no disk is shared."""
    import tempfile

    b = backend(backend_name)
    reason = b.unavailable_reason()
    if reason:
        raise EngineBuildError(f"{backend_name} cannot build on node {os.uname().nodename}: {reason}")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / Path(variant.path).name
        local.write_bytes(variant_bytes)
        engine = build_engine(spec, storage, b, Variant(variant.precision, str(local), variant.sha256))
    return engine, Path(engine.path).read_bytes()


def _parallel(ctx: StageContext, backends: list[Backend], jobs: int) -> bool:
    setting = ctx.pipeline.config.build.parallel
    if jobs < 2 or setting is False:
        return False
    # ONNX Runtime's "build" is a sub-second graph optimisation: a Ray task costs more than it saves.
    return setting is True or any(b.name == "tensorrt" for b in backends)


def engines_for(ctx: StageContext, backends: list[Backend], variants: list[Variant]) -> list[Engine]:
    jobs = [(b, v) for b in backends for v in variants]
    spec = spec_for(ctx)
    if not _parallel(ctx, backends, len(jobs)):
        out = []
        for b, v in jobs:
            ctx.say(f"building {b.name} {v.precision} engine")
            out.append(build_engine(spec, ctx.storage, b, v))
        return out

    import ray

    from orchestrator.runtime import ensure_ray

    ensure_ray(ctx.workspace)
    gpu = ctx.pipeline.config.build.serving_gpu
    ctx.say(f"building {len(jobs)} engines as parallel Ray tasks")
    refs = []
    for b, v in jobs:
        options: dict = {"num_cpus": 1}
        if b.name == "tensorrt":  # a plan runs only on the GPU model it was built on
            options = {"num_gpus": 1, **({"accelerator_type": gpu} if gpu else {})}
        refs.append(ray.remote(_build_task).options(**options).remote(spec, ctx.storage, b.name, v,
                                                                         Path(v.path).read_bytes()))
    out = []
    for ref in refs:
        try:
            engine, data = ray.get(ref)
        except Exception as e:
            raise EngineBuildError(f"a parallel engine build failed: {e}; set build.parallel: false to build "
                                   "in this process and see the error directly") from None
        path = Path(engine.path)
        if not path.exists():  # built on another machine: keep a copy in this machine's cache
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        out.append(engine)
    return out


def run(ctx: StageContext, snapshot: Snapshot, onnx_model: OnnxModel) -> EngineSet:
    cfg = ctx.pipeline.config.build
    x_train, _ = load_arrays(snapshot.train_file)
    calibration = {k: v[: cfg.calibration_samples] for k, v in x_train.items()}
    made: list[Variant] = []
    for precision in cfg.precisions:
        out = ctx.path("variants", f"{precision}.onnx")
        if not out.exists():  # variants are deterministic: a resumed build reuses them
            ctx.say(f"making {precision} variant")
            tmp = out.with_suffix(".tmp")
            try:
                variant_ops.make(precision, Path(onnx_model.path), tmp, calibration)
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


def champion_variant(champ: VersionRef) -> Variant:
    """The variant a registered version is served at, from its downloaded bundle."""
    path = Path(champ.folder) / "variants" / f"{champ.precision}.onnx"
    if not path.exists():
        raise EngineBuildError(f"v{champ.version} has no {champ.precision} variant at {path}; "
                               "re-register it or roll back to a version plaster registered")
    return Variant(champ.precision, str(path), sha256_file(path))
