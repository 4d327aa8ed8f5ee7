"""Precision variants: ONNX-to-ONNX transformations, made once per candidate on any machine.

FP32 is the export as is; FP16 is mixed precision keeping FP32 inputs/outputs; INT8 has
explicit symmetric Q/DQ nodes from static calibration. TensorRT 11 is strongly typed and reads
precision from these files, so this module is the only place precision is decided, and each
variant is one file that both ONNX Runtime and TensorRT take.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np


def fp32(src: Path, out: Path) -> None:
    shutil.copy(src, out)


def fp16(src: Path, out: Path) -> None:
    import onnx
    from onnxconverter_common import float16

    model = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(out))


class _Calibration:
    """onnxruntime's CalibrationDataReader over real training inputs, every input by name."""

    def __init__(self, x: dict[str, np.ndarray], batch: int = 32):
        n = len(next(iter(x.values())))
        self._batches = iter([{k: np.ascontiguousarray(v[i:i + batch]) for k, v in x.items()}
                              for i in range(0, n, batch)])

    def get_next(self):
        return next(self._batches, None)


# What TensorRT 11's ONNX parser takes, so one INT8 file serves ONNX Runtime and TensorRT alike:
# symmetric Q/DQ only (it rejects an INT8 zero point that is not all zeros), and INT8/FP8 Q/DQ
# only, so no DequantizeLinear of an int32 bias: biases stay float. ORT's weights are symmetric
# by default, its activations are not, hence ActivationSymmetric.
INT8_OPTIONS = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
# The ops whose INT8 kernels pay, and Gather for an embedding's table. Quantizing every op also
# put Q/DQ on the scalar operands of Where/Clip/Add, which gains nothing and, on the text model,
# made ORT 30% slower than with this list.
INT8_OPS = ["Conv", "ConvTranspose", "Gemm", "MatMul", "Gather"]


def int8(src: Path, out: Path, calibration: dict[str, np.ndarray]) -> None:
    """Static INT8 with symmetric Q/DQ nodes (every zero point 0) and float biases, a file that
    TensorRT 11 parses as it is and ONNX Runtime runs on CPUs. Only float tensors are quantized:
    int64 inputs (token or category ids) stay int64 and feed their Gather unchanged; the
    embedding table behind that Gather is quantized like any weight."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        prepped = Path(tmp) / "prepped.onnx"
        # Dynamic INT8 was 3x slower than FP32 for conv nets here; static QDQ is the fast one.
        quant_pre_process(str(src), str(prepped), skip_symbolic_shape=False)
        quantize_static(
            str(prepped), str(out), _Calibration(calibration),
            quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            per_channel=True, calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=list(INT8_OPS),
            extra_options=dict(INT8_OPTIONS),
        )


def make(precision: str, src: Path, out: Path, calibration: dict[str, np.ndarray]) -> None:
    if precision == "fp32":
        fp32(src, out)
    elif precision == "fp16":
        fp16(src, out)
    elif precision == "int8":
        int8(src, out, calibration)
    else:  # config validation keeps this unreachable
        raise ValueError(precision)
