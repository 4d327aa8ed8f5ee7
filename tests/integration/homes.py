"""A PLASTER_HOME for module-scoped fixtures that share real cycles between tests."""

import pytest


def module_home(tmp_path_factory, name: str):
    """For module-scoped fixtures that share real cycles between tests: a fresh PLASTER_HOME
    (embedded MLflow) and a copy of the reference pipeline. Returns (monkeypatch, digits);
    call `monkeypatch.undo()` at teardown."""
    import shutil
    from pathlib import Path

    mp = pytest.MonkeyPatch()
    tmp = tmp_path_factory.mktemp(name)
    mp.setenv("PLASTER_HOME", str(tmp / "plaster-home"))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("PLASTER_CRASH_AFTER", raising=False)
    digits = tmp / "pipelines" / "digits"
    shutil.copytree(Path(__file__).resolve().parents[2] / "pipelines" / "digits", digits)
    return mp, digits
