"""TensorRT backend on a real GPU: each precision variant builds, loads and agrees with torch."""

import numpy as np
import pytest

from orchestrator.door import InputSpec
from orchestrator.engines.tensorrt import TensorRTBackend
from orchestrator.errors import EngineBuildError

pytestmark = pytest.mark.gpu

_REASON = TensorRTBackend().unavailable_reason()
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)

import onnx  # noqa: E402
import torch  # noqa: E402
from onnxconverter_common import float16  # noqa: E402
from onnxruntime.quantization import (  # noqa: E402
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

SAMPLE_SHAPE = (1, 8, 8)
CLASSES = 10
MAX_BATCH = 64
OPT_BATCH = 16


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


def _inputs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *SAMPLE_SHAPE)).astype(np.float32)


class _Calibration(CalibrationDataReader):
    def __init__(self, input_name: str):
        self._batches = iter([{input_name: _inputs(16, seed)} for seed in range(100, 108)])

    def get_next(self):
        return next(self._batches, None)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TinyCNN().eval()


@pytest.fixture(scope="module")
def variants(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    fp32 = root / "fp32.onnx"
    torch.onnx.export(
        model, (torch.from_numpy(_inputs(4, 0)),), str(fp32), dynamo=True,
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, external_data=False,
    )
    input_name = onnx.load(str(fp32)).graph.input[0].name
    assert input_name == "x", "the runner tests feed the input by this name"

    fp16 = root / "fp16.onnx"
    onnx.save(float16.convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True), str(fp16))

    prepped, int8 = root / "fp32.prep.onnx", root / "int8.onnx"
    quant_pre_process(str(fp32), str(prepped))
    quantize_static(
        str(prepped), str(int8), _Calibration(input_name), quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
        # TensorRT takes symmetric Q/DQ only (zero point 0), and its parser rejects a
        # DequantizeLinear on an INT32 bias, so biases stay float.
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
    )
    return {"input_name": input_name, "fp32": fp32, "fp16": fp16, "int8": int8}


@pytest.fixture(scope="module")
def engines(variants, tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    backend = TensorRTBackend()
    built = {"timing_cache": root / "timing.cache"}
    for precision in ("fp32", "fp16", "int8"):
        built[precision] = root / f"{precision}.plan"
        backend.build(
            variants[precision], built[precision], inputs=_specs(variants["input_name"]),
            max_batch=MAX_BATCH, opt_batch=OPT_BATCH,
            timing_cache=built["timing_cache"],
        )
    return built


def _specs(name: str) -> tuple[InputSpec, ...]:
    return (InputSpec(name, tuple(SAMPLE_SHAPE), "float32"),)


def _torch_logits(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


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


def test_fp16_engine_close_to_torch(model, engines):
    x = _inputs(64, 2)
    got = TensorRTBackend().load(engines["fp16"])({"x": x})
    np.testing.assert_allclose(got, _torch_logits(model, x), atol=5e-2, rtol=0)


def test_int8_engine_agrees_on_argmax(model, engines):
    x = _inputs(256, 3)
    got = TensorRTBackend().load(engines["int8"])({"x": x})
    agreement = float(np.mean(got.argmax(1) == _torch_logits(model, x).argmax(1)))
    assert agreement >= 0.90, f"INT8 engine agrees with torch on only {agreement:.1%} of inputs"


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
