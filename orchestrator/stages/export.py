"""export: the checkpoint to one self-contained ONNX file with a dynamic batch axis,
checked by onnx.checker and for numerical parity with torch on holdout inputs.

A parity gap over export.parity_atol rejects the candidate with the figure; it is not a
crash. Never builds engines or quantizes: that is build's job.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from orchestrator.artifacts import Checkpoint, OnnxModel, Snapshot, sha256_file
from orchestrator.context import StageContext
from orchestrator.dataset import load_arrays
from orchestrator.errors import CandidateRejected, ExportError

PARITY_ROWS = 256


def load_torch_model(model_file, weights_file):
    import torch

    from orchestrator.config import load_module

    model = load_module(model_file).build_model()
    model.load_state_dict(torch.load(weights_file, map_location="cpu", weights_only=True))
    return model.eval()


def export_onnx(model, example: np.ndarray, path, opset: int | None = None) -> str:
    """Write `model` to `path` as one file; return the ONNX input name."""
    import onnx
    import torch

    kwargs = {"opset_version": opset} if opset else {}
    # The exporter logs a warning per torchvision op it cannot register; not ours to fix.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.from_numpy(example),), str(path), dynamo=True, external_data=False,
            dynamic_shapes=({0: torch.export.Dim("batch")},), input_names=["input"], output_names=["logits"],
            verbose=False, **kwargs,
        )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    return proto.graph.input[0].name


def parity(model, onnx_path, input_name: str, x: np.ndarray) -> float:
    import onnxruntime as ort
    import torch

    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {input_name: x})[0]
    return float(np.max(np.abs(expected - got)))


def run(ctx: StageContext, snapshot: Snapshot, checkpoint: Checkpoint) -> OnnxModel:
    cfg = ctx.pipeline.config.export
    model = load_torch_model(ctx.pipeline.model_file, checkpoint.weights_file)
    x, _ = load_arrays(snapshot.holdout_new_file)
    x = np.ascontiguousarray(x[:PARITY_ROWS])
    path = ctx.path("onnx", "model.onnx")
    try:
        input_name = export_onnx(model, x[:2], path, cfg.opset)
    except Exception as e:
        raise ExportError(f"torch.onnx.export failed for {ctx.pipeline.model_file}: {e}. "
                          "Make build_model() traceable by torch.export (no data-dependent Python control flow).") from None
    diff = parity(model, path, input_name, x)
    ctx.say(f"ONNX parity vs torch: max abs diff {diff:.2e} (tolerance {cfg.parity_atol:g})")
    if not diff <= cfg.parity_atol:
        raise CandidateRejected(f"ONNX parity: max abs diff {diff:.3g} > export.parity_atol={cfg.parity_atol:g}")
    return OnnxModel(path=str(path), sha256=sha256_file(path), input_name=input_name, parity_max_abs_diff=diff)
