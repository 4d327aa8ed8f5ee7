"""ONNX Runtime engines for CPUs: the variant, graph-optimized for this machine and saved.

ORT_ENABLE_ALL writes hardware-specific kernels into the saved model, which is why the
engine cache key carries the hardware fingerprint. Never imports tensorrt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def unavailable_reason(self) -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:
            return f"onnxruntime cannot be imported ({e}); run `make setup`"
        return None

    def version(self) -> str:
        import onnxruntime as ort

        return ort.__version__

    def device(self) -> str:
        return "cpu"

    def build(self, variant: Path, out: Path, *, inputs: tuple, max_batch: int, opt_batch: int,
              timing_cache: Path) -> None:
        import onnxruntime as ort

        # ORT warns that ENABLE_ALL output is hardware-specific: known, and in the cache key.
        ort.set_default_logger_severity(3)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(out)
        ort.InferenceSession(str(variant), opts, providers=["CPUExecutionProvider"])
        # The optimized model must answer before it counts as an engine.
        runner = self.load(out)
        runner({i.name: np.zeros((1, *i.shape), dtype=i.dtype) for i in inputs})

    def load(self, engine: Path):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # Already optimized at build time: do not pay for it again at every load.
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        # Idle intra-op threads spin by default, taking the cores from whichever engine runs
        # next: measured here, two sessions of one model then differ by ±20% for whole
        # stretches of interleaved rounds (CI of the A/A ratio [0.80, 1.25]); without
        # spinning, [0.98, 1.02]. Spinning also burns a shared machine's CPU while idle.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(str(engine), opts, providers=["CPUExecutionProvider"])

        def run(x: dict[str, np.ndarray]) -> np.ndarray:
            return sess.run(None, x)[0]

        return run
