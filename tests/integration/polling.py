"""Waiting on what a daemon does by itself: its cycles show up in the records."""

import time

from orchestrator import record as records


def wait_for(pred, timeout: float, what: str):
    """pred()'s first truthy answer, polled every 0.5 s; an AssertionError naming `what` after `timeout`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def decided(ws, trigger: str, pipeline: str = "digits"):
    """The first decided cycle of `pipeline` that `trigger` started, or None."""
    return next((r for r in records.load_all(ws, pipeline) if r["trigger"] == trigger and r["state"] == "decided"), None)
