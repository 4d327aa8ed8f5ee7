"""TensorRT backend on a real GPU: each of the product's precision variants (orchestrator.variants,
the very files the build stage makes) builds, loads and agrees with torch, for a one-input CNN and
for a model with several named inputs, one of them int64 token ids."""

import numpy as np
import pytest

from orchestrator.door import InputSpec
from orchestrator.engines.tensorrt import TensorRTBackend, _get_logger
from orchestrator.errors import EngineBuildError

pytestmark = pytest.mark.gpu

_REASON = TensorRTBackend().unavailable_reason()
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import tensorrt as trt  # noqa: E402
import torch  # noqa: E402

from orchestrator import variants as variant_ops  # noqa: E402
from orchestrator.stages.export import export_onnx  # noqa: E402

SAMPLE_SHAPE = (1, 8, 8)
CLASSES = 10
MAX_BATCH = 64
OPT_BATCH = 16
PRECISIONS = ("fp32", "fp16", "int8")
VOCAB, TOKENS, META = 100, 12, 3


class TinyCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
        )
        self.head = torch.nn.Linear(32 * 4 * 4, CLASSES)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


class ThreeInputs(torch.nn.Module):
    """int64 token ids (embedded, mean-pooled), float metadata and a small image, by name."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, 16)
        self.image = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                         torch.nn.Flatten())
        self.head = torch.nn.Sequential(torch.nn.Linear(16 + META + 8 * 4 * 4, 32), torch.nn.ReLU(),
                                        torch.nn.Linear(32, CLASSES))

    def forward(self, tokens, meta, image):
        return self.head(torch.cat([self.embed(tokens).mean(1), meta, self.image(image)], 1))


def _inputs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *SAMPLE_SHAPE)).astype(np.float32)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (no download), shuffled once."""
    from sklearn.datasets import load_digits

    d = load_digits()
    order = np.random.default_rng(0).permutation(len(d.target))
    return (d.images / 16.0).astype(np.float32)[order, None], d.target.astype(np.int64)[order]


def _three(n: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Three named inputs and a 3-class label that needs each: the class with the highest score,
    where a class scores for its share of the tokens (id % 3), its metadata column and a bright
    band of image rows."""
    rng = np.random.default_rng(seed)
    x = {"tokens": rng.integers(0, VOCAB, size=(n, TOKENS)).astype(np.int64),
         "meta": rng.standard_normal((n, META)).astype(np.float32),
         "image": rng.standard_normal((n, *SAMPLE_SHAPE)).astype(np.float32)}
    band = rng.integers(0, 3, size=n)
    for g in range(3):
        x["image"][band == g, 0, 2 * g:2 * g + 2, :] += 1.5
    score = np.stack([(x["tokens"] % 3 == g).sum(1) / 2.0 for g in range(3)], 1) + x["meta"]
    score[np.arange(n), band] += 1.5
    return x, score.argmax(1).astype(np.int64)


def _trained(model: torch.nn.Module, x: dict[str, np.ndarray], y: np.ndarray, epochs: int) -> torch.nn.Module:
    """A few epochs of Adam on the CPU: INT8 is judged on a model with real margins, not a random one."""
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    xt, yt = {k: torch.from_numpy(v) for k, v in x.items()}, torch.from_numpy(y)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=torch.Generator().manual_seed(0)).split(64):
            opt.zero_grad()
            batch = {k: v[idx] for k, v in xt.items()}
            out = model(*batch.values()) if len(batch) == 1 else model(**batch)
            torch.nn.functional.cross_entropy(out, yt[idx]).backward()
            opt.step()
    return model.eval()


THREE_SPECS = (InputSpec("tokens", (TOKENS,), "int64"), InputSpec("meta", (META,), "float32"),
               InputSpec("image", SAMPLE_SHAPE, "float32"))


def _specs(name: str) -> tuple[InputSpec, ...]:
    return (InputSpec(name, tuple(SAMPLE_SHAPE), "float32"),)


def _make_variants(model, example: dict[str, np.ndarray], calibration: dict[str, np.ndarray], root) -> dict:
    """The product's own path: export as the export stage does, then orchestrator.variants.make."""
    fp32 = root / "exported.onnx"
    export_onnx(model, example, fp32)
    made = {}
    for precision in PRECISIONS:
        made[precision] = root / f"{precision}.onnx"
        variant_ops.make(precision, fp32, made[precision], calibration)
    return made


def _build_all(made: dict, specs, root) -> dict:
    backend = TensorRTBackend()
    built = {"timing_cache": root / "timing.cache"}
    for precision in PRECISIONS:
        built[precision] = root / f"{precision}.plan"
        backend.build(made[precision], built[precision], inputs=specs, max_batch=MAX_BATCH, opt_batch=OPT_BATCH,
                      timing_cache=built["timing_cache"])
    return built


@pytest.fixture(scope="module")
def digits():
    x, y = _digits()
    return {"train": ({"x": x[:1400]}, y[:1400]), "test": ({"x": x[1400:]}, y[1400:])}


@pytest.fixture(scope="module")
def model(digits):
    torch.manual_seed(0)
    return _trained(TinyCNN(), *digits["train"], epochs=5)


@pytest.fixture(scope="module")
def variants(model, digits, tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    train = digits["train"][0]["x"]
    made = _make_variants(model, {"x": train[:4]}, {"x": train[:256]}, root)
    assert onnx.load(str(made["fp32"])).graph.input[0].name == "x", "the runner tests feed the input by this name"
    return {"input_name": "x", **made}


@pytest.fixture(scope="module")
def engines(variants, tmp_path_factory):
    return _build_all(variants, _specs(variants["input_name"]), tmp_path_factory.mktemp("engines"))


@pytest.fixture(scope="module")
def three_model():
    torch.manual_seed(1)
    return _trained(ThreeInputs(), *_three(2048, 0), epochs=8)


@pytest.fixture(scope="module")
def three_variants(three_model, tmp_path_factory):
    x, _ = _three(256, 100)
    return _make_variants(three_model, {k: v[:4] for k, v in x.items()}, x, tmp_path_factory.mktemp("three-variants"))


@pytest.fixture(scope="module")
def three_engines(three_variants, tmp_path_factory):
    return _build_all(three_variants, THREE_SPECS, tmp_path_factory.mktemp("three-engines"))


def _torch_logits(model, x) -> np.ndarray:
    with torch.no_grad():
        if isinstance(x, dict):
            return model(**{k: torch.from_numpy(v) for k, v in x.items()}).numpy()
        return model(torch.from_numpy(x)).numpy()


def _ort_logits(variant, x: dict[str, np.ndarray]) -> np.ndarray:
    return ort.InferenceSession(str(variant), providers=["CPUExecutionProvider"]).run(None, x)[0]


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a.argmax(1) == b.argmax(1)))


def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(logits.argmax(1) == y))


def test_backend_describes_itself():
    backend = TensorRTBackend()
    assert backend.version()[0].isdigit()
    assert "sm_" in backend.device()


def test_fp32_engine_matches_torch(model, engines):
    # 100 is not a multiple of MAX_BATCH, so the runner's chunking is exercised too.
    x = _inputs(100, 1)
    got = TensorRTBackend().load(engines["fp32"])({"x": x})
    assert got.shape == (100, CLASSES) and got.dtype == np.float32
    np.testing.assert_allclose(got, _torch_logits(model, x), atol=1e-3, rtol=0)


def test_fp16_engine_close_to_torch(model, digits, engines):
    x = digits["test"][0]["x"][:64]
    got = TensorRTBackend().load(engines["fp16"])({"x": x})
    np.testing.assert_allclose(got, _torch_logits(model, x), atol=5e-2, rtol=1e-2)


def test_int8_engine_keeps_accuracy_and_agrees_with_onnxruntime(model, digits, variants, engines):
    (x, y) = digits["test"]
    got = TensorRTBackend().load(engines["int8"])(x)
    fp32_acc, int8_acc = _accuracy(_torch_logits(model, x["x"]), y), _accuracy(got, y)
    assert int8_acc >= fp32_acc - 0.03, f"INT8 engine accuracy {int8_acc:.3f} vs torch FP32 {fp32_acc:.3f}"
    # The same Q/DQ file on ONNX Runtime's CPU: both read one set of scales, so they agree closely.
    on_cpu = _agreement(got, _ort_logits(variants["int8"], x))
    assert on_cpu >= 0.95, f"INT8 engine agrees with ONNX Runtime on the same variant on only {on_cpu:.1%}"


def test_named_inputs_with_int64_tokens_build_for_every_precision(three_model, three_variants, three_engines):
    # TensorRT keeps the token ids int64 (the variant leaves them unquantized) and every input by name.
    engine = trt.Runtime(_get_logger()).deserialize_cuda_engine(three_engines["int8"].read_bytes())
    io = {engine.get_tensor_name(i): engine.get_tensor_dtype(engine.get_tensor_name(i))
          for i in range(engine.num_io_tensors)}
    assert io["tokens"] == trt.DataType.INT64
    assert io["meta"] == io["image"] == trt.DataType.FLOAT

    x, y = _three(500, 5)  # 500: several chunks at MAX_BATCH, every input sliced alike
    expected = _torch_logits(three_model, x)
    got = {p: TensorRTBackend().load(three_engines[p])(x) for p in PRECISIONS}
    assert all(g.shape == (500, CLASSES) and g.dtype == np.float32 for g in got.values())
    np.testing.assert_allclose(got["fp32"], expected, atol=1e-3, rtol=0)
    np.testing.assert_allclose(got["fp16"], expected, atol=5e-2, rtol=1e-2)
    fp32_acc, int8_acc = _accuracy(expected, y), _accuracy(got["int8"], y)
    assert fp32_acc >= 0.8, f"the fixture model did not learn its task ({fp32_acc:.3f})"
    assert int8_acc >= fp32_acc - 0.03, f"INT8 engine accuracy {int8_acc:.3f} vs torch FP32 {fp32_acc:.3f}"
    on_cpu = _agreement(got["int8"], _ort_logits(three_variants["int8"], x))
    assert on_cpu >= 0.95, f"INT8 engine agrees with ONNX Runtime on the same variant on only {on_cpu:.1%}"


def test_timing_cache_is_written_and_reused(model, variants, engines, tmp_path):
    cache = engines["timing_cache"]
    assert cache.is_file() and cache.stat().st_size > 0
    again = tmp_path / "fp32-again.plan"
    TensorRTBackend().build(
        variants["fp32"], again, inputs=_specs(variants["input_name"]),
        max_batch=MAX_BATCH, opt_batch=OPT_BATCH, timing_cache=cache,
    )
    assert cache.stat().st_size > 0
    x = _inputs(8, 4)
    np.testing.assert_allclose(TensorRTBackend().load(again)({"x": x}), _torch_logits(model, x), atol=1e-3, rtol=0)


def test_corrupt_onnx_raises_engine_build_error(tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not an ONNX protobuf")
    with pytest.raises(EngineBuildError) as raised:
        TensorRTBackend().build(
            corrupt, tmp_path / "corrupt.plan", inputs=_specs("x"),
            max_batch=MAX_BATCH, opt_batch=OPT_BATCH, timing_cache=tmp_path / "timing.cache",
        )
    assert str(corrupt) in str(raised.value)
    assert not (tmp_path / "corrupt.plan").exists()
