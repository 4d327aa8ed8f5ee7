"""The alias ledger: every move of `champion` (and the other aliases) that plaster makes,
with time, from-version, to-version, actor, kind and reason. MLflow keeps no alias
history; this is how `plaster history`, the report and rollback know what happened.

One JSON line per move in PLASTER_HOME/ledger/<pipeline>.jsonl, appended with O_APPEND so
concurrent writers never interleave a line. Entries are masked (secrets.mask_obj): a reason
pasted with a URI in it keeps the host, not the password.
"""

from __future__ import annotations

import getpass
import json
import os
import time
from pathlib import Path
from typing import Any

from orchestrator import secrets
from orchestrator.workspace import Workspace

# REJECT: the live gate refused a shadowed challenger (the challenger alias goes, the champion stays).
PROMOTE, APPROVE, ROLLBACK, REJECT = "promote", "approve", "rollback", "reject"


def path(ws: Workspace, pipeline: str) -> Path:
    return ws.home / "ledger" / f"{pipeline}.jsonl"


def actor() -> str:
    """Who moved it: PLASTER_ACTOR (a CI job, the scheduler) or the OS user."""
    try:
        return os.environ.get("PLASTER_ACTOR") or getpass.getuser()
    except Exception:  # no user entry in a container
        return "unknown"


def record(ws: Workspace, pipeline: str, alias: str, from_version: str | None, to_version: str | None, kind: str,
           reason: str, cycle_id: str | None = None, who: str | None = None,
           extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Append one move; `extra` adds fields (an automatic rollback's detect_s and restore_s)."""
    entry = secrets.mask_obj({"at": time.time(), "pipeline": pipeline, "alias": alias, "from": from_version,
                              "to": to_version, "kind": kind, "actor": who or actor(), "reason": reason,
                              "cycle_id": cycle_id, **(extra or {})})
    append(path(ws, pipeline), entry)
    return entry


def load(ws: Workspace, pipeline: str) -> list[dict[str, Any]]:
    return read(path(ws, pipeline))


def append(p: Path, entry: dict[str, Any]) -> None:
    """One JSON line appended with O_APPEND: concurrent writers never interleave a line."""
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)


def read(p: Path) -> list[dict[str, Any]]:
    """Every line of a JSON-lines file; a torn last line after a crash is skipped."""
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
