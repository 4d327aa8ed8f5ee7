"""TensorRT engine backend: turns one precision-variant ONNX into a serialized plan and runs it.

This is the only module in plaster that imports tensorrt, and it does so inside functions so the
package imports on machines without TensorRT or a GPU. It never picks a precision: TensorRT 11
builds strongly typed networks only, so the variant ONNX (FP32 as exported, FP16 casts, INT8 Q/DQ)
carries every data type and this module must not add builder flags that would change them.
"""

from __future__ import annotations

import collections
import logging
import os
import pathlib
import threading

import numpy as np

from orchestrator.errors import EngineBuildError, PlasterError

log = logging.getLogger(__name__)

# Caps the builder's scratch memory so a build sharing the GPU with a training job cannot take it all.
_WORKSPACE_BYTES = 4 << 30
_MIN_MAJOR = 10  # strongly typed networks and the name-based tensor API both need 10+
_logger = None
_logger_lock = threading.Lock()


def _get_logger():
    """One process-wide logger: TensorRT keeps the first logger it sees and warns on any other."""
    global _logger
    with _logger_lock:
        if _logger is None:
            import tensorrt as trt

            class _Logger(trt.ILogger):
                def __init__(self):
                    trt.ILogger.__init__(self)
                    self.errors: collections.deque[str] = collections.deque(maxlen=50)

                def log(self, severity, msg):
                    sev = trt.ILogger.Severity
                    if severity in (sev.INTERNAL_ERROR, sev.ERROR):
                        # Kept so a failed build can quote TensorRT's own reason in the exception.
                        self.errors.append(msg)
                        log.error("tensorrt: %s", msg)
                    elif severity == sev.WARNING:
                        log.warning("tensorrt: %s", msg)
                    else:
                        log.debug("tensorrt: %s", msg)

            _logger = _Logger()
        return _logger


def _write_atomically(path: pathlib.Path, data) -> None:
    # The engine cache treats an existing file as a hit, so a half-written plan must never appear.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(memoryview(data))
    os.replace(tmp, path)


class TensorRTBackend:
    name = "tensorrt"

    def unavailable_reason(self) -> str | None:
        try:
            import tensorrt
        except ImportError:
            return "tensorrt is not installed (pip install -e '.[gpu]' for CUDA 12, '.[gpu-cu13]' for CUDA 13)"
        except Exception as exc:  # e.g. the wheel is there but libnvinfer cannot load
            return (f"tensorrt failed to import ({type(exc).__name__}: {exc}); reinstall the extra matching your "
                    "torch's CUDA major (pip install -e '.[gpu]' for CUDA 12, '.[gpu-cu13]' for CUDA 13)")
        try:
            if int(str(tensorrt.__version__).split(".")[0]) < _MIN_MAJOR:
                return (f"tensorrt {tensorrt.__version__} is too old; strongly typed builds need 10 or newer "
                        "(pip install -U tensorrt)")
            import torch

            if not torch.cuda.is_available():
                return "no CUDA GPU visible (torch.cuda.is_available() is False)"
        except Exception as exc:
            return f"cannot probe the GPU ({type(exc).__name__}: {exc})"
        return None

    def version(self) -> str:
        import tensorrt

        return str(tensorrt.__version__)

    def device(self) -> str:
        import torch

        index = torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        return f"{torch.cuda.get_device_name(index)} sm_{major}{minor}"

    def build(self, variant: pathlib.Path, out: pathlib.Path, *, inputs: tuple, max_batch: int, opt_batch: int,
              timing_cache: pathlib.Path) -> None:
        import tensorrt as trt

        variant, out, timing_cache = pathlib.Path(variant), pathlib.Path(out), pathlib.Path(timing_cache)
        if not 1 <= opt_batch <= max_batch:
            raise EngineBuildError(f"engine batch sizes must satisfy 1 <= opt_batch ({opt_batch}) <= max_batch "
                                   f"({max_batch}); fix them in the pipeline config")
        logger = _get_logger()
        logger.errors.clear()
        builder = trt.Builder(logger)
        # 11 is strongly typed only and ignores this flag; on 10.x it is what stops TensorRT from
        # choosing precisions itself. EXPLICIT_BATCH is not passed: removed in 11, a no-op in 10.
        flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        network = builder.create_network(0 if flag is None else 1 << int(flag))
        parser = trt.OnnxParser(network, logger)
        if not variant.is_file():
            raise EngineBuildError(f"precision variant {variant} does not exist; re-run the variants stage for this candidate")
        # From the file rather than bytes so external-data weights resolve next to the model.
        if not parser.parse_from_file(str(variant)):
            errors = ([str(parser.get_error(i)) for i in range(parser.num_errors)] or list(logger.errors)
                      or ["(no parser error reported)"])
            raise EngineBuildError(
                f"TensorRT could not parse {variant}:\n  " + "\n  ".join(errors)
                + "\nFix: re-run the export stage for this candidate; if an operator is reported unsupported, "
                "change the model so it exports without it (TensorRT's ONNX operator list)."
            )
        found = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
        for spec in inputs:
            if spec.name not in found:
                raise EngineBuildError(f"{variant} has no input named {spec.name!r} (it has {sorted(found)}); "
                                       "fix data.inputs")
            if found[spec.name].shape[0] != -1 and max_batch > 1:
                raise EngineBuildError(f"{variant}: input {spec.name!r} has a fixed batch axis "
                                       f"{tuple(found[spec.name].shape)}; export it with a dynamic axis 0")

        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, _WORKSPACE_BYTES)
        tf32 = getattr(trt.BuilderFlag, "TF32", None)
        if tf32 is not None:
            # TF32 is on by default and rounds float32 conv/matmul inputs to a 10-bit mantissa;
            # a float32 tensor in the variant means float32, so TensorRT may not lower it.
            config.clear_flag(tf32)
        profile = builder.create_optimization_profile()
        for spec in inputs:  # one profile: every input's batch axis moves together
            tail = tuple(int(d) for d in spec.shape)
            profile.set_shape(spec.name, (1, *tail), (opt_batch, *tail), (max_batch, *tail))
        if config.add_optimization_profile(profile) < 0:
            raise EngineBuildError(f"{variant}: TensorRT rejected the batch profile 1/{opt_batch}/{max_batch} for "
                                   f"inputs {[(i.name, list(i.shape)) for i in inputs]}; check data.inputs and "
                                   "build.max_batch")

        blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(blob)
        if cache is None or config.set_timing_cache(cache, ignore_mismatch=False) is False:
            # A cache from another TensorRT or GPU only costs build time; start a fresh one.
            log.warning("timing cache %s does not match this TensorRT/GPU; starting a new one", timing_cache)
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

        plan = builder.build_serialized_network(network, config)
        if plan is None:
            reason = "\n  ".join(list(logger.errors)[-10:]) or "(TensorRT logged no error)"
            raise EngineBuildError(
                f"TensorRT built no engine from {variant}:\n  {reason}\n"
                "Fix: if a layer has no kernel for its data type on this GPU, drop this precision from the "
                "pipeline; if it ran out of memory, lower max_batch or free the GPU."
            )
        _write_atomically(out, plan)
        _write_atomically(timing_cache, config.get_timing_cache().serialize())

    def load(self, engine: pathlib.Path) -> _Runner:
        import tensorrt as trt

        engine = pathlib.Path(engine)
        runtime = trt.Runtime(_get_logger())
        cuda_engine = runtime.deserialize_cuda_engine(engine.read_bytes())
        if cuda_engine is None:
            raise EngineBuildError(f"TensorRT {trt.__version__} could not load {engine}; it was built by another TensorRT "
                                   "or GPU, or is damaged. Delete it so it is rebuilt.")
        return _Runner(runtime, cuda_engine, engine)


class _Runner:
    """Callable runner: every input by name (float32 or int64, (batch, *shape)) in, float32
    (batch, outputs) out."""

    def __init__(self, runtime, engine, path: pathlib.Path):
        import tensorrt as trt
        import torch

        self._runtime = runtime  # an engine must not outlive the runtime that deserialized it
        self._engine = engine
        self._context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(outputs) != 1:
            raise EngineBuildError(f"{path}: expected one output, found {outputs}; forward must return one tensor")
        self._output = outputs[0]
        dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
                  trt.DataType.INT64: torch.int64, trt.DataType.INT32: torch.int32}
        try:
            self._in_dtypes = {n: dtypes[engine.get_tensor_dtype(n)] for n in self._inputs}
            self._out_dtype = dtypes[engine.get_tensor_dtype(self._output)]
        except KeyError:
            raise EngineBuildError(f"{path}: engine I/O must be float32, float16 or int64; build the variant with "
                                   "keep_io_types") from None
        self._max_batch = int(engine.get_tensor_profile_shape(self._inputs[0], 0)[2][0])
        self._out_tail = tuple(int(d) for d in engine.get_tensor_shape(self._output))[1:]
        # A private stream: on the legacy default stream TensorRT adds synchronizations and warns.
        self._stream = torch.cuda.Stream()
        self._lock = threading.Lock()  # one execution context cannot run two batches at once

    def __call__(self, x: dict[str, np.ndarray]) -> np.ndarray:
        n = len(next(iter(x.values())))
        if n == 0:
            return np.zeros((0, *self._out_tail), dtype=np.float32)
        with self._lock:
            chunks = [self._run({k: np.ascontiguousarray(v[i:i + self._max_batch]) for k, v in x.items()})
                      for i in range(0, n, self._max_batch)]
        return np.concatenate(chunks)

    def _run(self, chunk: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        ctx = self._context
        with torch.cuda.stream(self._stream):
            # Copy-in, the engine and copy-out all go on this one stream, so they are ordered
            # without events; the tensors stay referenced until the synchronize below.
            dev_in = {}
            for name in self._inputs:
                dev_in[name] = torch.from_numpy(chunk[name]).to("cuda", dtype=self._in_dtypes[name])
                if not ctx.set_input_shape(name, tuple(chunk[name].shape)):
                    raise ValueError(f"input shape {chunk[name].shape} does not fit the engine's profile for {name!r}")
                ctx.set_tensor_address(name, dev_in[name].data_ptr())
            dev_out = torch.empty(tuple(ctx.get_tensor_shape(self._output)), dtype=self._out_dtype, device="cuda")
            ctx.set_tensor_address(self._output, dev_out.data_ptr())
            if not ctx.execute_async_v3(torch.cuda.current_stream().cuda_stream):
                raise PlasterError("TensorRT failed to run the engine; see the tensorrt log lines above")
            self._stream.synchronize()
            return dev_out.float().cpu().numpy()
