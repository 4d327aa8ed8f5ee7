"""Fakes of plaster's own interfaces (never of MLflow, Ray or ONNX Runtime)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from orchestrator.artifacts import VersionRef


class FakeRegistry:
    """An in-memory Registry: versions, aliases and logged metrics, with scripted surprises."""

    tracking_uri = "fake://registry"

    def __init__(self):
        self.versions: dict[str, dict] = {}
        self.aliases: dict[str, str] = {}
        self.metrics: list[tuple[str, dict, int | None]] = []
        self.champion_ref: VersionRef | None = None
        self.learned: list[str] = []
        self.move_champion_on_read: str | None = None  # simulate another process promoting meanwhile
        self.runs: dict[str, str] = {}

    def experiment_id(self, pipeline):
        return "1"

    def start_cycle_run(self, pipeline, cycle_id, tags):
        run_id = f"run-{len(self.runs) + 1}"
        self.runs[run_id] = "RUNNING"
        return run_id

    def reopen_run(self, run_id):
        self.runs[run_id] = "RUNNING"

    def end_run(self, run_id, status):
        self.runs[run_id] = status

    def log_params(self, run_id, params):
        pass

    def set_tags(self, run_id, tags):
        pass

    def log_file(self, run_id, path, artifact_path=None):
        pass

    def log_artifacts(self, run_id, folder, artifact_path):
        pass

    def log_metrics(self, run_id, metrics, step=None):
        self.metrics.append((run_id, metrics, step))

    def champion(self, model, download_to):
        return self.champion_ref

    def lineage(self, champion):
        return list(self.learned)

    def register(self, model, run_id, cycle_id, onnx_file, files, sample, tags, description="", model_description=""):
        for v, info in self.versions.items():
            if info["cycle_id"] == cycle_id:
                return v
        v = str(len(self.versions) + 1)
        self.versions[v] = {"cycle_id": cycle_id, "tags": dict(tags), "files": files, "description": description}
        return v

    def load_test(self, model, version, sample):
        return np.zeros((len(sample), 10), dtype=np.float32)

    def alias(self, model, alias):
        if alias == "champion" and self.move_champion_on_read:
            self.aliases["champion"], self.move_champion_on_read = self.move_champion_on_read, None
        return self.aliases.get(alias)

    def set_alias(self, model, alias, version):
        self.aliases[alias] = str(version)

    def delete_alias(self, model, alias):
        self.aliases.pop(alias, None)

    def _version(self, version) -> dict:
        # Scripted promote stages report versions they never registered here: give them a page.
        return self.versions.setdefault(str(version), {"cycle_id": None, "tags": {}, "files": {}})

    def set_version_tags(self, model, version, tags):
        self._version(version)["tags"].update(tags)

    def append_to_description(self, model, version, text):
        v = self._version(version)
        v["description"] = f"{v.get('description', '')}\n\n{text}".strip()

    def version_tags(self, model, version):
        return dict(self.versions[str(version)]["tags"])

    def fetch(self, model, version, download_to):
        if str(version) not in self.versions:
            from orchestrator.errors import RegistryError

            raise RegistryError(f"{model} has no version {version}")
        return VersionRef(str(version), "run", str(download_to), "fp32", "onnxruntime")


def write_champion_folder(folder: Path, learned: list[str], precision: str = "fp32") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"precision": precision, "backend": "onnxruntime"}))
    (folder / "lineage.json").write_text(json.dumps({"learned": learned}))


def context(home: Path, pipeline_folder: Path, registry=None, cycle_id: str = "c1"):
    from orchestrator.config import load_pipeline
    from orchestrator.context import StageContext
    from orchestrator.workspace import Workspace

    ws = Workspace.from_env()
    p = load_pipeline(pipeline_folder)
    return StageContext(ws, p, cycle_id, ws.cycle_dir(p.name, cycle_id), registry or FakeRegistry(), "run-1")
