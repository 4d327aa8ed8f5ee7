"""Stop requests (SIGTERM to plaster run / schedule): what stops where."""

import threading

import pytest

from orchestrator import record as records
from orchestrator.errors import CycleLockedError, Interrupted
from orchestrator.workspace import Workspace


def test_waiting_for_the_lock_ends_when_a_stop_is_asked_for(tmp_path):
    ws = Workspace(tmp_path)
    holder = records.PipelineLock(ws, "digits")
    holder.acquire(holder="the cycle running")
    try:
        with pytest.raises(CycleLockedError, match="--wait"):
            records.PipelineLock(ws, "digits").acquire(wait=False)
        stop = threading.Event()
        threading.Timer(0.5, stop.set).start()
        with pytest.raises(Interrupted, match="waiting for the lock of 'digits'"):
            records.PipelineLock(ws, "digits").acquire(wait=True, stop=stop)
    finally:
        holder.release()
    waiter = records.PipelineLock(ws, "digits")
    waiter.acquire(wait=True, stop=threading.Event())  # free now: taken at once
    waiter.release()


def test_interrupted_passes_through_except_exception():
    # Stage code reports its own failures with `except Exception`; a stop must not be one.
    with pytest.raises(Interrupted):
        try:
            raise Interrupted("train, before epoch 3")
        except Exception:  # noqa: BLE001 - the point of the test
            pytest.fail("Interrupted was caught as an ordinary error")
