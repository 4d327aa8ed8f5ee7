"""Inference engines behind one small interface, one module per backend.

A backend builds an engine file from a precision variant and loads it as a Runner. It
never decides precision (the variant carries it) and never measures (measure/ does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

import numpy as np

Runner = Callable[[dict[str, np.ndarray]], np.ndarray]  # a batch of every input by name in, float32 outputs out


class Backend(Protocol):
    name: str

    def unavailable_reason(self) -> str | None: ...
    def version(self) -> str: ...
    def device(self) -> str: ...
    def build(self, variant: Path, out: Path, *, inputs: tuple, max_batch: int, opt_batch: int,
              timing_cache: Path) -> None: ...  # inputs: door.InputSpec of every model input
    def load(self, engine: Path) -> Runner: ...


ENGINE_SUFFIX = {"onnxruntime": ".ort.onnx", "tensorrt": ".plan"}


def backend(name: str) -> Backend:
    if name == "onnxruntime":
        from orchestrator.engines.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend()
    if name == "tensorrt":
        from orchestrator.engines.tensorrt import TensorRTBackend

        return TensorRTBackend()
    raise ValueError(f"unknown backend {name!r}")


def load_runner(name: str, engine: Path) -> Runner:
    return backend(name).load(engine)
