"""What every stage receives besides its input artifacts: where to write, the pipeline,
the registry interface, and a way to say what it is doing.

Stages depend on these small interfaces, never on MLflow or the cycle machinery, so unit
tests can hand them fakes of our own making.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from orchestrator.artifacts import VersionRef
from orchestrator.config import Pipeline
from orchestrator.storage import Storage
from orchestrator.workspace import Workspace


class Registry(Protocol):
    """What the stages need of the model registry (MLflow behind registry.py)."""

    tracking_uri: str

    def experiment_id(self, pipeline: str) -> str: ...
    def start_cycle_run(self, pipeline: str, cycle_id: str, tags: dict[str, str]) -> str: ...
    def reopen_run(self, run_id: str) -> None: ...
    def end_run(self, run_id: str, status: str) -> None: ...
    def log_params(self, run_id: str, params: dict[str, str]) -> None: ...
    def set_tags(self, run_id: str, tags: dict[str, str]) -> None: ...
    def log_file(self, run_id: str, path: Path, artifact_path: str | None = None) -> None: ...
    def champion(self, model: str, download_to: Path) -> VersionRef | None: ...
    def lineage(self, champion: VersionRef) -> list[str]: ...
    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_artifacts(self, run_id: str, folder: Path, artifact_path: str) -> None: ...
    def register(self, model: str, run_id: str, cycle_id: str, onnx_file: Path, files: dict[str, Path],
                 sample: dict[str, np.ndarray], tags: dict[str, str], description: str = "",
                 model_description: str = "") -> str:
        """Register once per cycle id, and only return a version that has been loaded and run
        on `sample` through the registry's own loader (so any alias may point at it)."""
        ...
    def load_test(self, model: str, version: str, sample: np.ndarray) -> np.ndarray: ...
    def alias(self, model: str, alias: str) -> str | None: ...
    def set_alias(self, model: str, alias: str, version: str) -> None: ...
    def delete_alias(self, model: str, alias: str) -> None: ...
    def set_version_tags(self, model: str, version: str, tags: dict[str, str]) -> None: ...
    def append_to_description(self, model: str, version: str, text: str) -> None: ...


def _quiet(msg: str) -> None:
    pass


@dataclass
class StageContext:
    workspace: Workspace
    pipeline: Pipeline
    cycle_id: str
    folder: Path  # this cycle's own folder; stages write only below it (and the engine cache)
    registry: Registry
    run_id: str  # the cycle's parent MLflow run
    say: Callable[[str], None] = _quiet  # a progress line for the user
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("plaster"))
    extras: dict[str, Any] = field(default_factory=dict)
    storage: Storage | None = None  # the durable store; None = PLASTER_HOME only
    stop: threading.Event | None = None  # set by SIGTERM/SIGINT: long stages stop at their next safe point

    def __post_init__(self) -> None:
        if self.storage is None:
            self.storage = Storage(None, self.workspace.home)

    def stop_requested(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def check_stop(self, where: str) -> None:
        """Raise Interrupted when a stop was asked for; call only where stopping loses nothing
        that a resume cannot redo (between epochs after a checkpoint, between builds)."""
        if self.stop_requested():
            from orchestrator.errors import Interrupted

            raise Interrupted(where)

    def path(self, *parts: str) -> Path:
        p = self.folder.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p
