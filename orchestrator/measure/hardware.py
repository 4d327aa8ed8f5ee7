"""The hardware fingerprint: what an engine was built for and where a scorecard was measured."""

from __future__ import annotations

import functools
import os
import platform


@functools.lru_cache(maxsize=1)
def fingerprint() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu} x{os.cpu_count()} ({platform.machine()})"
