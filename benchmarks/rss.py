"""Peak memory of a process tree, sampled: every `interval` seconds the RSS of a root process
and the sum of RSS over it and all its descendants, keeping the maxima.

The sum counts shared pages (libraries, Ray's shared-memory object store) once per process
that maps them, so it overstates what the tree holds together: read it as an upper bound that
is comparable between paths measured the same way. Descendants cover a local Ray that the
root started (GCS, raylet, dashboard, workers: Ray starts them as children); the workers of
a Ray cluster this process only joined (RAY_ADDRESS) are not reachable this way and are not
counted. A 0.1 s sampler misses spikes shorter than that.
"""

from __future__ import annotations

import os
import threading

try:
    import psutil
except ImportError:  # not a plaster dependency; Ray vendors it and `import ray` puts it on sys.path
    import psutil
    import ray  # noqa: F401  (imported for its side effect)

MIB = 1024 * 1024


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
    except psutil.Error:
        return []
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return [root]


def rss(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:  # exited (or a zombie) between listing and reading
            pass
    return total


def sample(pid: int | None = None) -> tuple[int, int, int]:
    """(RSS of the process, RSS summed over its tree, number of processes in the tree) now."""
    procs = tree(pid or os.getpid())
    return (rss(procs[:1]), rss(procs), len(procs))


class PeakRSS:
    """with PeakRSS(pid) as m: ...  then m.peak_mib (tree), m.peak_self_mib, m.max_procs."""

    def __init__(self, pid: int | None = None, interval: float = 0.1):
        self.pid, self.interval = pid or os.getpid(), interval
        self.peak_self = self.peak_tree = self.max_procs = self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)

    def _take(self) -> None:
        own, total, n = sample(self.pid)
        self.peak_self, self.peak_tree = max(self.peak_self, own), max(self.peak_tree, total)
        self.max_procs = max(self.max_procs, n)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._take()
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mib(self) -> float:
        return self.peak_tree / MIB

    @property
    def peak_self_mib(self) -> float:
        return self.peak_self / MIB
