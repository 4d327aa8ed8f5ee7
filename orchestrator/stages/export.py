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


def export_onnx(model, example: dict[str, np.ndarray], path, opset: int | None = None) -> tuple[str, ...]:
    """Write `model` to `path` as one file with a dynamic batch axis on every input; return the
    ONNX input names (the names of data.inputs, in their order)."""
    import onnx
    import torch

    kwargs = {"opset_version": opset} if opset else {}
    names = list(example)
    batch = torch.export.Dim("batch")
    tensors = {k: torch.from_numpy(v) for k, v in example.items()}
    if len(names) == 1:  # one input reaches forward positionally (door.forward)
        args, kw, dynamic = (tensors[names[0]],), None, ({0: batch},)
    else:
        args, kw, dynamic = (), tensors, {k: {0: batch} for k in names}
    # The exporter logs a warning per torchvision op it cannot register; not ours to fix.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, args, str(path), kwargs=kw, dynamo=True, external_data=False, dynamic_shapes=dynamic,
            input_names=names if len(names) == 1 else None, output_names=["outputs" if len(names) > 1 else "logits"],
            verbose=False, **kwargs,
        )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    got = tuple(i.name for i in proto.graph.input)
    if set(got) != set(names):
        raise ExportError(f"the ONNX graph takes inputs {list(got)}, not the declared {names}: every input in "
                          "data.inputs must be used by forward")
    return got


def parity(model, onnx_path, x: dict[str, np.ndarray]) -> float:
    import onnxruntime as ort
    import torch

    from orchestrator.door import forward

    with torch.no_grad():
        expected = forward(model, {k: torch.from_numpy(v) for k, v in x.items()}).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, x)[0]
    return float(np.max(np.abs(expected - got)))


def run(ctx: StageContext, snapshot: Snapshot, checkpoint: Checkpoint) -> OnnxModel:
    cfg = ctx.pipeline.config.export
    model = load_torch_model(ctx.pipeline.model_file, checkpoint.weights_file)
    x, _ = load_arrays(snapshot.holdout_new_file)
    x = {k: np.ascontiguousarray(v[:PARITY_ROWS]) for k, v in x.items()}
    path = ctx.path("onnx", "model.onnx")
    try:
        input_names = export_onnx(model, {k: v[:2] for k, v in x.items()}, path, cfg.opset)
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"torch.onnx.export failed for {ctx.pipeline.model_file}: {e}. "
                          "Make build_model() traceable by torch.export (no data-dependent Python control flow).") from None
    diff = parity(model, path, x)
    ctx.say(f"ONNX parity vs torch: max abs diff {diff:.2e} (tolerance {cfg.parity_atol:g})")
    if not diff <= cfg.parity_atol:
        raise CandidateRejected(f"ONNX parity: max abs diff {diff:.3g} > export.parity_atol={cfg.parity_atol:g}")
    return OnnxModel(path=str(path), sha256=sha256_file(path), input_name=input_names[0], parity_max_abs_diff=diff,
                     input_names=input_names)
