"""NVML's energy counter on a real GPU: the E row is measured, not estimated."""

import pytest

from orchestrator.measure import energy

pytestmark = pytest.mark.gpu

_METER, _WHY = energy.meter_for("cuda:0")
if _METER is None:
    pytest.skip(f"no GPU energy counter: {_WHY}", allow_module_level=True)


def test_joules_per_1k_inferences_from_the_counter_around_real_gpu_work():
    torch = pytest.importorskip("torch", reason="torch is needed to put load on the GPU")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    a = torch.randn(4096, 4096, device="cuda")

    def batch() -> int:
        (a @ a).sum().item()  # .item() waits for the GPU, so the work lands inside the reads
        return 64

    fig = energy.joules_per_1k(_METER, _WHY, batch, min_seconds=1.0)
    assert fig.value is not None and fig.value > 0, fig.note
    assert "NVML total energy of GPU 0" in fig.note
