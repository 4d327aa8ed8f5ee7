"""Where a run writes: everything under PLASTER_HOME (default ./.plaster).

Only this module decides paths; it never creates anything it is not asked to. Every command
passes through Workspace.from_env, so it is also where log masking (secrets.install) starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from orchestrator import secrets


@dataclass(frozen=True)
class Workspace:
    home: Path

    @classmethod
    def from_env(cls) -> "Workspace":
        home = Path(os.environ.get("PLASTER_HOME", ".plaster")).expanduser().resolve()
        try:
            home.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            from orchestrator.errors import ConfigError

            raise ConfigError(f"PLASTER_HOME {home} cannot be created ({e.strerror}): point PLASTER_HOME at a "
                              "folder plaster may write, or create it") from None
        # Pipelines refer to ${PLASTER_HOME}; make it expand to the same place in every process.
        os.environ["PLASTER_HOME"] = str(home)
        secrets.install()  # from here on no log record of this process carries a password (idempotent)
        return cls(home)

    @property
    def tracking_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.home / "mlartifacts"

    @property
    def ray_storage(self) -> Path:
        return self.home / "ray"

    @property
    def ray_log(self) -> Path:
        return self.home / "logs" / "ray.log"

    @property
    def engine_cache(self) -> Path:
        return self.home / "engines"

    def cycles_dir(self, pipeline: str) -> Path:
        return self.home / "cycles" / pipeline

    def cycle_dir(self, pipeline: str, cycle_id: str) -> Path:
        return self.cycles_dir(pipeline) / cycle_id

    def lock_file(self, pipeline: str) -> Path:
        return self.home / "locks" / f"{pipeline}.lock"
