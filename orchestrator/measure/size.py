"""Size of a model (the S of PLASTER) read from its ONNX graph: parameter count and an
estimate of FLOPs per sample. Reading the graph (not torch) means any registered version
can be sized, and the figure is the same whatever framework trained it.

FLOPs count multiply-adds of Conv, Gemm and MatMul as 2 each (the usual convention);
element-wise ops are ignored, so this is an estimate and says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from orchestrator.artifacts import ModelSize

NOTE = "FLOPs: 2 x multiply-adds of Conv/Gemm/MatMul at batch 1 (element-wise ops not counted)"


def _dims(value_info) -> list[int] | None:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    out = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            out.append(d.dim_value)
        else:
            return None
    return out


def measure(onnx_path: str | Path, shapes: dict[str, tuple[int, ...]]) -> ModelSize:
    """Parameters and FLOPs per sample of an FP32 ONNX model whose inputs are (batch, *shape)."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(str(onnx_path))
    params = sum(int(np.prod(numpy_helper.to_array(t).shape)) for t in model.graph.initializer)
    # Pin the batch to 1 so inferred shapes are concrete.
    for graph_input in model.graph.input:
        shape = shapes.get(graph_input.name)
        if shape is None:
            continue
        for d, size in zip(graph_input.type.tensor_type.shape.dim, (1, *shape)):
            d.ClearField("dim_param")
            d.dim_value = size
    model = shape_inference.infer_shapes(model)
    shapes = {vi.name: _dims(vi) for vi in (*model.graph.value_info, *model.graph.input, *model.graph.output)}
    shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
    flops = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            w, y = shapes.get(node.input[1]), shapes.get(node.output[0])
            if w and y:  # w: (Cout, Cin/groups, k...), y: (1, Cout, spatial...)
                flops += 2 * int(np.prod(y)) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            a, y = shapes.get(node.input[0]), shapes.get(node.output[0])
            if a and y:
                trans_a = any(att.name == "transA" and att.i for att in node.attribute)
                k = a[-2] if trans_a else a[-1]
                flops += 2 * int(np.prod(y)) * int(k)
    return ModelSize(params, flops, NOTE)
