"""Energy (the E of PLASTER): joules per 1,000 inferences from a real counter, or the reason
there is none. Never an estimate dressed as a measurement.

- GPU: NVML's total energy counter (`nvmlDeviceGetTotalEnergyConsumption`, millijoules since
  the driver loaded; Volta and newer) read around the run.
- CPU: Linux RAPL package counters under /sys/class/powercap (microjoules, wrapping at
  `max_energy_range_uj`). They count the whole package, so other load on the machine is in
  the figure; the note says so.

The only module that imports pynvml (the GPU inventory is here for that reason).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Protocol

from orchestrator.artifacts import Figure

RAPL_ROOT = Path("/sys/class/powercap")


class Meter(Protocol):
    note: str

    def read_j(self) -> float: ...


class NvmlMeter:
    def __init__(self, index: int = 0):
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(self._handle)
        self.note = f"NVML total energy of GPU {index} ({name.decode() if isinstance(name, bytes) else name})"
        self.read_j()  # raises NVMLError_NotSupported on GPUs without the counter

    def read_j(self) -> float:
        return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1e3


class RaplMeter:
    """Sum of the top-level RAPL package domains (intel-rapl:N / amd-rapl:N), wrap-aware."""

    def __init__(self, root: Path = RAPL_ROOT):
        self.zones = sorted(p for p in root.glob("*-rapl:*") if p.name.count(":") == 1)
        if not self.zones:
            raise FileNotFoundError(f"no RAPL package domains under {root}")
        self._max = [int((z / "max_energy_range_uj").read_text()) for z in self.zones]
        self._last = [self._raw(z) for z in self.zones]  # PermissionError when not readable
        self._total_uj = 0
        self.note = f"RAPL package energy ({len(self.zones)} package(s); includes all load on the CPU)"

    @staticmethod
    def _raw(zone: Path) -> int:
        return int((zone / "energy_uj").read_text())

    def read_j(self) -> float:
        for i, z in enumerate(self.zones):
            now = self._raw(z)
            delta = now - self._last[i]
            if delta < 0:  # the counter wrapped
                delta += self._max[i]
            self._total_uj += delta
            self._last[i] = now
        return self._total_uj / 1e6


def meter_for(device: str, rapl_root: Path = RAPL_ROOT) -> tuple[Meter | None, str]:
    """A meter for the device an engine runs on ("cpu" or "cuda:N"), or None and why not."""
    if device.startswith("cuda"):
        try:
            return NvmlMeter(int(device.split(":")[1]) if ":" in device else 0), ""
        except ImportError:
            return None, "pynvml is not installed (pip install nvidia-ml-py)"
        except Exception as e:  # NVMLError_NotSupported, _LibraryNotFound, ...
            return None, f"NVML has no energy counter here ({type(e).__name__}: {e})"
    try:
        return RaplMeter(rapl_root), ""
    except FileNotFoundError:
        return None, (f"no RAPL energy counters under {rapl_root} on this machine (a VM or container "
                      "without powercap); run on bare metal or a GPU to measure energy")
    except PermissionError:
        return None, (f"RAPL counters under {rapl_root} are readable only by root (Linux >= 5.10); "
                      "`sudo chmod o+r /sys/class/powercap/*/energy_uj` to measure energy")


def joules_per_1k(meter: Meter | None, why_not: str, run_batch: Callable[[], int],
                  min_seconds: float = 1.0) -> Figure:
    """Run `run_batch` (returns how many inferences it did) for at least `min_seconds`
    between two counter reads; joules per 1,000 inferences."""
    if meter is None:
        return Figure(None, note=f"not measured: {why_not}")
    e0, t0, done = meter.read_j(), time.perf_counter(), 0
    while time.perf_counter() - t0 < min_seconds:
        done += run_batch()
    joules = meter.read_j() - e0
    if joules <= 0:
        return Figure(None, note=f"not measured: the counter did not advance in {min_seconds:g}s ({meter.note})")
    return Figure(1000 * joules / done, note=f"{meter.note}; {done} inferences in {time.perf_counter() - t0:.1f}s")


def gpu_inventory() -> list[str]:
    """The names of this machine's NVIDIA GPUs, read through NVML; [] where there is no driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # not installed, NVMLError_LibraryNotFound, _DriverNotLoaded: no GPU here
        return []
    try:
        return [str(pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i)))
                for i in range(pynvml.nvmlDeviceGetCount())]
    finally:
        pynvml.nvmlShutdown()
