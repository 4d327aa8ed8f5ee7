"""Size from the ONNX graph and energy counters, on inputs with known answers."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from orchestrator.measure import energy, size


def tiny_onnx(path):
    """Conv 1->2 (3x3, pad 1) on 8x8, Flatten, Gemm 128->10."""
    w = numpy_helper.from_array(np.zeros((2, 1, 3, 3), np.float32), "w")
    b = numpy_helper.from_array(np.zeros(2, np.float32), "b")
    fw = numpy_helper.from_array(np.zeros((10, 128), np.float32), "fw")
    fb = numpy_helper.from_array(np.zeros(10, np.float32), "fb")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["c"], ["f"]),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])], [w, b, fw, fb])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_params_and_flops_of_a_known_graph(tmp_path):
    tiny_onnx(tmp_path / "m.onnx")
    s = size.measure(tmp_path / "m.onnx", {"x": (1, 8, 8)})
    assert s.param_count == 2 * 9 + 2 + 10 * 128 + 10
    # Conv: 2 x (2 x 8 x 8 outputs) x (1 x 3 x 3 MACs each); Gemm: 2 x 10 x 128
    assert s.flops_per_sample == 2 * 128 * 9 + 2 * 10 * 128
    assert "Conv/Gemm/MatMul" in s.note


def test_energy_on_this_machine_is_measured_or_says_why_not():
    meter, why = energy.meter_for("cpu")
    fig = energy.joules_per_1k(meter, why, lambda: 1, min_seconds=0.05)
    if meter is None:  # this kind of VM exposes no RAPL: the row says so instead of guessing
        assert fig.value is None and fig.note.startswith("not measured:") and "RAPL" in fig.note
    else:
        assert fig.value is not None and fig.value > 0


def test_gpu_counter_is_read_or_its_absence_explained():
    meter, why = energy.meter_for("cuda:0")
    if meter is None:
        assert "NVML" in why or "pynvml" in why
    else:
        assert meter.read_j() > 0 and "NVML total energy" in meter.note


def test_rapl_counters_sum_packages_and_survive_a_wrap(tmp_path):
    for pkg, start in (("intel-rapl:0", 990), ("intel-rapl:1", 100)):
        d = tmp_path / pkg
        d.mkdir()
        (d / "max_energy_range_uj").write_text("1000")
        (d / "energy_uj").write_text(str(start))
    (tmp_path / "intel-rapl:0:0").mkdir()  # a sub-domain (core): not counted twice
    m = energy.RaplMeter(tmp_path)
    assert len(m.zones) == 2 and m.read_j() == 0
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("10")  # wrapped: 990 -> 1000 -> 10
    (tmp_path / "intel-rapl:1" / "energy_uj").write_text("150")
    assert m.read_j() == (20 + 50) / 1e6
