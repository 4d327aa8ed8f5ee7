"""Cycle records on disk: one JSON per cycle under PLASTER_HOME/cycles/<pipeline>/<id>/,
written atomically after every stage, plus the per-pipeline lock.

The record is the source of truth for resume and status; the MLflow run mirrors it. What
is written is masked (secrets.mask_obj): a record on disk never holds a password or token.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from orchestrator import secrets
from orchestrator.errors import CycleLockedError, Interrupted, StorageError
from orchestrator.workspace import Workspace

RUNNING, DECIDED, FAILED, ABANDONED = "running", "decided", "failed", "abandoned"
INTERRUPTED = "interrupted"  # stopped between stages on request (SIGTERM to the scheduler): resumable


def new_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def path(ws: Workspace, pipeline: str, cycle_id: str) -> Path:
    return ws.cycle_dir(pipeline, cycle_id) / "record.json"


def save(ws: Workspace, record: dict[str, Any]) -> Path:
    p = path(ws, record["pipeline"], record["id"])
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    # Only the written copy is masked: the cycle in memory keeps what it connects with.
    tmp.write_text(json.dumps(secrets.mask_obj(record), indent=2, default=lambda o: secrets.mask(str(o))))
    os.replace(tmp, p)  # a crash mid-write leaves the previous record intact
    return p


def load_all(ws: Workspace, pipeline: str) -> list[dict[str, Any]]:
    """Every cycle record of a pipeline, oldest first."""
    folder = ws.cycles_dir(pipeline)
    if not folder.is_dir():
        return []
    out = []
    for p in folder.glob("*/record.json"):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return sorted(out, key=lambda r: r["started_at"])


def unfinished(ws: Workspace, pipeline: str) -> dict[str, Any] | None:
    """The newest cycle that neither reached a decision nor was abandoned."""
    for r in reversed(load_all(ws, pipeline)):
        if r["state"] in (RUNNING, FAILED, INTERRUPTED):
            return r
    return None


class PipelineLock:
    """One cycle per pipeline at a time, across processes (an flock the kernel releases
    when the holder dies, so a crashed run never leaves a stale lock)."""

    def __init__(self, ws: Workspace, pipeline: str):
        self.file = ws.lock_file(pipeline)
        self.pipeline = pipeline
        self._fd: int | None = None

    def acquire(self, wait: bool = False, holder: str = "", stop=None) -> None:
        """Take the lock, or raise CycleLockedError; with `wait`, poll until it is free, or
        until `stop` (a threading.Event) is set: then raise Interrupted."""
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # the first write of a cycle: say which setting points there
            raise StorageError(f"cannot write {self.file} ({e.strerror}): PLASTER_HOME "
                                    f"({self.file.parents[1]}) must be writable; fix its permissions or mount, "
                                    "or point PLASTER_HOME elsewhere") from None
        try:
            # Polled rather than a blocking flock: SIGTERM must be able to end the wait.
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not wait:
                        raise
                    if stop is not None and stop.is_set():
                        os.close(fd)
                        raise Interrupted(f"waiting for the lock of '{self.pipeline}'") from None
                    time.sleep(0.2)
        except BlockingIOError:
            os.close(fd)
            try:
                who = self.file.read_text().strip() or "unknown"
            except OSError:
                who = "unknown"
            raise CycleLockedError(
                f"another cycle of '{self.pipeline}' is running ({who}); wait for it to finish, "
                f"or run again with --wait to queue behind it"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} since {time.strftime('%H:%M:%S')} {holder}".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "PipelineLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
