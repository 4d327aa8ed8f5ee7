"""MlflowRegistry must not leak its URI into the environment (MLflow's setters export it),
or the next PLASTER_HOME in the process, and every child process, would use the old store."""

import os

from orchestrator.registry import MlflowRegistry
from orchestrator.workspace import Workspace


def test_a_registry_leaves_the_environment_as_the_user_set_it(home, tmp_path):
    assert "MLFLOW_TRACKING_URI" not in os.environ
    MlflowRegistry(f"sqlite:///{tmp_path / 'a.db'}", tmp_path / "art")
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    assert Workspace.from_env().tracking_uri == f"sqlite:///{home / 'mlflow.db'}"
