"""export and build on a real (tiny, untrained) digits model: real torch.onnx, real ONNX Runtime."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from fakes import context

from orchestrator import api
from orchestrator.artifacts import Checkpoint
from orchestrator.engines import backend
from orchestrator.errors import CandidateRejected
from orchestrator.stages import build, export, ingest


@pytest.fixture
def exported(home, digits):
    api.simulate(digits, shards=1)
    ctx = context(home, digits)
    snap = ingest.run(ctx)
    torch.manual_seed(0)
    weights = ctx.path("checkpoint", "weights.pt")
    torch.save(ctx.pipeline.module().build_model().state_dict(), weights)
    ckpt = Checkpoint(str(weights), "x", 1, 1, False, None, ())
    return ctx, snap, ckpt


def test_export_is_one_checked_file_with_dynamic_batch_and_parity(exported):
    ctx, snap, ckpt = exported
    out = export.run(ctx, snap, ckpt)
    model = onnx.load(out.path)
    onnx.checker.check_model(model)
    assert not list(ctx.folder.joinpath("onnx").glob("*.data")), "weights must be inside the one file"
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param, "batch axis must be dynamic"
    assert out.parity_max_abs_diff <= 1e-4


def test_parity_gap_rejects_with_the_figure(exported, monkeypatch):
    ctx, snap, ckpt = exported
    monkeypatch.setattr(export, "parity", lambda *a: 0.25)  # our own function, failing on cue
    with pytest.raises(CandidateRejected, match=r"0.25 > export.parity_atol=0.0001"):
        export.run(ctx, snap, ckpt)


def test_build_makes_variants_and_cached_engines(exported):
    ctx, snap, ckpt = exported
    onnx_model = export.run(ctx, snap, ckpt)
    engines = build.run(ctx, snap, onnx_model)
    by_precision = {v.precision: onnx.load(v.path) for v in engines.variants}
    assert set(by_precision) == {"fp32", "fp16", "int8"}
    ops = {n.op_type for n in by_precision["int8"].graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops, "INT8 must carry explicit Q/DQ nodes"
    fp16 = by_precision["fp16"]
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT, "FP16 keeps FP32 inputs"
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in fp16.graph.initializer)
    # TensorRT cannot run here: skipped with a reason, never faked.
    assert "tensorrt" in engines.skipped_backends and engines.skipped_backends["tensorrt"]
    assert {(e.backend, e.precision) for e in engines.candidate} == {("onnxruntime", p) for p in by_precision}
    assert not any(e.cached for e in engines.candidate)
    x = {"input": np.zeros((3, 1, 8, 8), dtype=np.float32)}
    for e in engines.candidate:
        assert backend(e.backend).load(Path(e.path))(x).shape == (3, 10)
    # A second build of the same variants on the same machine is a cache hit.
    again = build.run(ctx, snap, onnx_model)
    assert all(e.cached for e in again.candidate)
    assert [e.cache_key for e in again.candidate] == [e.cache_key for e in engines.candidate]
