import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh PLASTER_HOME with the embedded defaults (MLflow on SQLite inside it)."""
    h = tmp_path / "plaster-home"
    monkeypatch.setenv("PLASTER_HOME", str(h))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("PLASTER_CRASH_AFTER", raising=False)
    return h


@pytest.fixture
def digits(tmp_path):
    """A copy of the reference pipeline folder the test may edit."""
    dst = tmp_path / "pipelines" / "digits"
    shutil.copytree(ROOT / "pipelines" / "digits", dst)
    return dst
