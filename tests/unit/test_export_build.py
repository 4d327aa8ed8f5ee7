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
    assert not _nonzero_zero_points(by_precision["int8"]), "TensorRT takes symmetric Q/DQ only"
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


def _zero_points(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Each Q/DQ node's zero point, by node name (a missing zero point is 0)."""
    init = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.name: init[n.input[2]] if len(n.input) > 2 and n.input[2] else np.zeros(1, np.int8)
            for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}


def _nonzero_zero_points(model: onnx.ModelProto) -> list[str]:
    return [f"{name}: {zp.dtype}" for name, zp in _zero_points(model).items() if zp.dtype != np.int8 or np.any(zp != 0)]


class _TokensAndDense(torch.nn.Module):
    """A small two-input classifier: int64 token ids (embedded, mean-pooled) and float columns."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(40, 16)
        self.head = torch.nn.Sequential(torch.nn.Linear(18, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))

    def forward(self, tokens, dense):
        return self.head(torch.cat([self.embed(tokens).mean(1), dense], 1))


def _tokens_task(n: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The class is the commonest group (id % 3) among 8 tokens, moved on by one where dense[:, 0] > 1."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 40, size=(n, 8)).astype(np.int64)
    dense = rng.normal(size=(n, 2)).astype(np.float32)
    counts = np.stack([(tokens % 3 == g).sum(1) + 0.1 * g for g in range(3)], 1)
    label = (counts.argmax(1) + (dense[:, 0] > 1.0)) % 3
    return {"tokens": tokens, "dense": dense}, label.astype(np.int64)


def test_int8_variant_is_symmetric_leaves_int64_inputs_alone_and_keeps_accuracy(tmp_path):
    import onnxruntime as ort

    from orchestrator import variants
    from orchestrator.stages.export import export_onnx

    torch.manual_seed(0)
    model = _TokensAndDense()
    x, y = _tokens_task(2048, 0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    xt, yt = {k: torch.from_numpy(v) for k, v in x.items()}, torch.from_numpy(y)
    for _ in range(6):
        for idx in torch.randperm(len(y), generator=torch.Generator().manual_seed(1)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(**{k: v[idx] for k, v in xt.items()}), yt[idx]).backward()
            opt.step()
    model.eval()

    src, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    export_onnx(model, {k: v[:4] for k, v in x.items()}, src)
    variants.int8(src, int8, {k: v[:256] for k, v in x.items()})
    q = onnx.load(str(int8))

    assert {i.name: i.type.tensor_type.elem_type for i in q.graph.input} == {
        "tokens": onnx.TensorProto.INT64, "dense": onnx.TensorProto.FLOAT}
    qdq = [n for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq, "INT8 must carry explicit Q/DQ nodes"
    assert not [n.name for n in qdq if n.op_type == "QuantizeLinear" and n.input[0] == "tokens"], \
        "int64 token ids must reach their Gather unquantized"
    assert not _nonzero_zero_points(q), "TensorRT takes symmetric Q/DQ only (zero point 0, int8)"
    init = {i.name: i for i in q.graph.initializer}
    dq_of = {n.output[0]: n for n in qdq if n.op_type == "DequantizeLinear"}
    gather = next(n for n in q.graph.node if n.op_type == "Gather" and n.input[1] == "tokens")
    table = dq_of[gather.input[0]].input[0]
    assert init[table].data_type == onnx.TensorProto.INT8, "the embedding table is quantized like any weight"
    # No int32 DequantizeLinear (a quantized bias): TensorRT's parser takes INT8/FP8 Q/DQ only.
    assert all(init[n.input[0]].data_type == onnx.TensorProto.INT8 for n in dq_of.values() if n.input[0] in init)

    xe, ye = _tokens_task(1024, 2)

    def accuracy(path):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return float(np.mean(sess.run(None, xe)[0].argmax(1) == ye))

    fp32_acc, int8_acc = accuracy(src), accuracy(int8)
    assert fp32_acc >= 0.85, f"the fixture model did not learn its task ({fp32_acc:.3f})"
    assert int8_acc >= fp32_acc - 0.03, f"INT8 accuracy {int8_acc:.3f} vs FP32 {fp32_acc:.3f}"
