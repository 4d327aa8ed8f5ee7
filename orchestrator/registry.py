"""The only module that talks to MLflow: cycle runs, the Model Registry and its aliases.

Versions come back as strings whatever the store (SQLite gives ints, REST strings). Every
ONNX model is loaded fresh from disk before logging, because mlflow.onnx.log_model mutates
the proto it is given.

Nothing reaches MLflow unmasked: params, tags and the text files plaster logs go through
secrets.mask, so a password in a URI or a secret environment variable's value is `***` there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from orchestrator.artifacts import VersionRef
from orchestrator.errors import RegistryError
from orchestrator.secrets import mask, mask_obj

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _not_found(e: Exception) -> bool:
    return "RESOURCE_DOES_NOT_EXIST" in str(getattr(e, "error_code", "")) or "not found" in str(e).lower() \
        or "does not exist" in str(e).lower()


# Files plaster writes as text (records, scorecards, the report); binaries are weights and arrays.
_TEXT = (".json", ".jsonl", ".md", ".txt", ".html", ".yaml", ".yml", ".csv", ".log")
_BYTES = "surrogateescape"  # read and write back any bytes unchanged, UTF-8 or not


def _holds_secret(path: Path) -> bool:
    if path.suffix.lower() not in _TEXT or path.stat().st_size > 64 << 20:
        return False
    text = path.read_text(errors=_BYTES)
    return mask(text) != text


@contextlib.contextmanager
def _masked(path: Path):
    """`path` itself when none of its text files holds a secret, else a masked copy of it
    (same names) to upload instead: the files on disk stay as their writers left them."""
    files = [path] if path.is_file() else [p for p in sorted(path.rglob("*")) if p.is_file()]
    dirty = [p for p in files if _holds_secret(p)]
    if not dirty:
        yield path
        return
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / path.name
        if path.is_file():
            shutil.copy2(path, copy)
        else:
            shutil.copytree(path, copy)
        for p in dirty:
            q = copy if path.is_file() else copy / p.relative_to(path)
            q.write_text(mask(q.read_text(errors=_BYTES)), errors=_BYTES)
        yield copy


class MlflowRegistry:
    def __init__(self, tracking_uri: str, artifact_root: Path | None = None):
        import mlflow
        from mlflow import MlflowClient

        # MLflow narrates table creation and migrations at INFO; the user asked for a cycle.
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        self.tracking_uri = tracking_uri  # the real one, to connect with; PlasterError masks it in messages
        self._artifact_root = artifact_root
        if mask(tracking_uri) != tracking_uri:
            # MLflow prints "View run <name> at: <tracking URI>/#/..." when a run ends: with the password in it.
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        mlflow.set_tracking_uri(tracking_uri)  # for mlflow.pyfunc's models:/ resolution
        mlflow.set_registry_uri(tracking_uri)
        # MLflow also exports these to the environment, where they would outrank PLASTER_HOME
        # for every later Workspace in this process and every child process: undo that.
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    # --- cycle runs -----------------------------------------------------------------------

    def experiment_id(self, pipeline: str) -> str:
        name = f"plaster/{pipeline}"
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        # A file store keeps artifacts beside the db; a server decides its own location.
        if self._artifact_root is not None and not self.tracking_uri.startswith("http"):
            location = (self._artifact_root / pipeline).as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    def start_cycle_run(self, pipeline: str, cycle_id: str, tags: dict[str, str]) -> str:
        return self.start_run(pipeline, cycle_id, {"plaster.cycle_id": cycle_id, **tags})

    def start_run(self, pipeline: str, run_name: str, tags: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id(pipeline), run_name=run_name,
                                     tags=mask_obj({"plaster.pipeline": pipeline, **tags}))
        return run.info.run_id

    def reopen_run(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    def end_run(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status=status)

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step or 0) for k, v in metrics.items()])

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        # Masked before the cut, so a truncated URI cannot keep half a password.
        params = mask_obj({k: str(v) for k, v in params.items()})
        self.client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in params.items()])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for k, v in mask_obj(tags).items():
            self.client.set_tag(run_id, k, v)

    def log_artifacts(self, run_id: str, folder: Path, artifact_path: str) -> None:
        with _masked(Path(folder)) as clean:
            self.client.log_artifacts(run_id, str(clean), artifact_path)

    def log_file(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        with _masked(Path(path)) as clean:
            self.client.log_artifact(run_id, str(clean), artifact_path)

    # --- registry ---------------------------------------------------------------------------

    def alias(self, model: str, alias: str) -> str | None:
        try:
            return str(self.client.get_model_version_by_alias(model, alias).version)
        except Exception as e:
            if _not_found(e):
                return None
            raise RegistryError(f"MLflow at {self.tracking_uri} failed to read alias {model}@{alias}: {e}") from None

    def set_alias(self, model: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(model, alias, str(version))

    def delete_alias(self, model: str, alias: str) -> None:
        try:
            self.client.delete_registered_model_alias(model, alias)
        except Exception as e:
            if not _not_found(e):
                raise

    def version_tags(self, model: str, version: str) -> dict[str, str]:
        try:
            return dict(self.client.get_model_version(model, str(version)).tags or {})
        except Exception as e:
            if _not_found(e):
                raise RegistryError(f"{model} has no version {version} in MLflow at {self.tracking_uri}; "
                                    f"`plaster history` lists the versions") from None
            raise RegistryError(f"MLflow at {self.tracking_uri} failed to read {model} v{version}: {e}") from None

    def append_to_description(self, model: str, version: str, text: str) -> None:
        """Add a paragraph to a version's description (its MLflow page), keeping what was there."""
        current = self.client.get_model_version(model, str(version)).description or ""
        self.client.update_model_version(model, str(version), description=mask(f"{current}\n\n{text}".strip()))

    def set_version_tags(self, model: str, version: str, tags: dict[str, str]) -> None:
        for k, v in mask_obj(tags).items():
            self.client.set_model_version_tag(model, str(version), k, v)

    def champion(self, model: str, download_to: Path) -> VersionRef | None:
        version = self.alias(model, "champion")
        return None if version is None else self.fetch(model, version, download_to)

    def latest_version(self, model: str) -> str | None:
        try:
            versions = self.client.search_model_versions(f"name='{model}'")
        except Exception as e:
            if _not_found(e):
                return None
            raise RegistryError(f"MLflow at {self.tracking_uri} failed to list versions of {model}: {e}") from None
        return max((str(mv.version) for mv in versions), key=int, default=None)

    def fetch(self, model: str, version: str, download_to: Path) -> VersionRef:
        """Download a version's plaster bundle (weights, variants, engine, manifest) once."""
        try:
            mv = self.client.get_model_version(model, str(version))
        except Exception as e:
            if _not_found(e):
                raise RegistryError(f"{model} has no version {version} in MLflow at {self.tracking_uri}; "
                                    f"`plaster status` lists the versions cycles registered") from None
            raise RegistryError(f"MLflow at {self.tracking_uri} failed to read {model} v{version}: {e}") from None
        folder = download_to / f"v{version}"
        if not (folder / "manifest.json").exists():
            tmp = download_to / f".v{version}.download"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            try:
                self.client.download_artifacts(mv.run_id, "plaster", str(tmp))
            except Exception as e:
                raise RegistryError(f"cannot download the artifacts of {model} v{version} (run {mv.run_id}): {e}; "
                                    f"it may not have been registered by plaster (its run has no plaster/ bundle)") from None
            shutil.rmtree(folder, ignore_errors=True)
            (tmp / "plaster").rename(folder)
            shutil.rmtree(tmp, ignore_errors=True)
        manifest = json.loads((folder / "manifest.json").read_text())
        return VersionRef(version=version, run_id=mv.run_id, folder=str(folder),
                           precision=manifest["precision"], backend=manifest["backend"])

    def lineage(self, champion: VersionRef) -> list[str]:
        return json.loads((Path(champion.folder) / "lineage.json").read_text())["learned"]

    def _version_of_cycle(self, model: str, cycle_id: str) -> str | None:
        try:
            versions = self.client.search_model_versions(f"name='{model}'")
        except Exception:
            return None
        for mv in versions:
            if (mv.tags or {}).get("plaster.cycle_id") == cycle_id:
                return str(mv.version)
        return None

    def register(self, model: str, run_id: str, cycle_id: str, onnx_file: Path, files: dict[str, Path],
                 sample: dict[str, np.ndarray], tags: dict[str, str], description: str = "",
                 model_description: str = "") -> str:
        """Log the ONNX model and `files` on the cycle run and register a version, once per cycle."""
        import mlflow
        import onnx
        from mlflow.models import infer_signature

        existing = self._version_of_cycle(model, cycle_id)
        if existing is not None:
            return existing
        for artifact_path, folder in files.items():
            self.log_artifacts(run_id, Path(folder), artifact_path)
        proto = onnx.load(str(onnx_file))  # fresh: log_model mutates what it is given
        logits = self._onnx_predict(onnx_file, sample)
        # save_model + log_artifacts keeps the fluent API (and its global active run) out of it.
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.onnx.save_model(
                proto, f"{tmp}/model", onnx_execution_providers=["CPUExecutionProvider"],
                save_as_external_data=False, signature=infer_signature(sample, logits),
            )
            self.client.log_artifacts(run_id, f"{tmp}/model", "model")
        try:
            self.client.get_registered_model(model)
        except Exception as e:
            if not _not_found(e):
                raise
            self.client.create_registered_model(model, description=mask(model_description) or "Registered by plaster")
        else:
            if model_description:  # pipeline.yaml's description may have changed since the last version
                self.client.update_registered_model(model, description=mask(model_description))
        mv = self.client.create_model_version(model, f"runs:/{run_id}/model", run_id=run_id,
                                              tags=mask_obj({"plaster.cycle_id": cycle_id, **tags}),
                                              description=mask(description) or None)
        version = str(mv.version)
        got = self.load_test(model, version, sample)
        if not np.allclose(got, logits, atol=1e-4):
            raise RegistryError(f"{model} v{version} loaded through MLflow answers differently from the ONNX file "
                                f"(max diff {np.max(np.abs(got - logits)):.3g}); it gets no alias")
        return version

    @staticmethod
    def _onnx_predict(onnx_file: Path, sample: dict[str, np.ndarray]) -> np.ndarray:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
        return sess.run(None, sample)[0]

    def load_test(self, model: str, version: str, sample: dict[str, np.ndarray]) -> np.ndarray:
        """Load `models:/model/version` with MLflow's own pyfunc loader and run it once."""
        import mlflow.pyfunc

        try:
            out = mlflow.pyfunc.load_model(f"models:/{model}/{version}").predict(sample)
        except Exception as e:
            raise RegistryError(f"{model} v{version} does not load or run through MLflow ({e}); it gets no alias") from None
        return np.asarray(next(iter(out.values())) if isinstance(out, dict) else out)


def read_aliases(tracking_uri: str, model: str) -> dict[str, str] | None:
    """alias -> version of a registered model, read without importing mlflow (which costs
    ~3 s): `plaster status` must answer at once. SQLite stores are read-only queried,
    servers through the REST API; None means "ask MlflowClient" (another store type)."""
    if tracking_uri.startswith("sqlite:///"):
        import sqlite3

        db = tracking_uri[len("sqlite:///"):]
        if not os.path.exists(db):
            return {}
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT alias, version FROM registered_model_aliases WHERE name = ?", (model,)).fetchall()
        except sqlite3.OperationalError:  # no registry tables yet
            return {}
        finally:
            con.close()
        return {a: str(v) for a, v in rows}
    if tracking_uri.startswith(("http://", "https://")):
        import base64
        import urllib.error
        import urllib.parse
        import urllib.request

        url = urllib.parse.urlsplit(tracking_uri)
        # urllib reads no user:password@ in a URL (requests, under MlflowClient, does): send it as basic auth.
        user, password = urllib.parse.unquote(url.username or ""), urllib.parse.unquote(url.password or "")
        base = url._replace(netloc=url.netloc.rsplit("@", 1)[-1]).geturl()
        req = urllib.request.Request(f"{base.rstrip('/')}/api/2.0/mlflow/registered-models/get?"
                                     + urllib.parse.urlencode({"name": model}))
        if user or password:
            req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
        elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
            req.add_header("Authorization", f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}")
        elif os.environ.get("MLFLOW_TRACKING_USERNAME"):
            return None  # basic auth and friends: let MlflowClient handle them
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return {}
            raise RegistryError(f"MLflow at {tracking_uri} answered {e.code} reading {model}: {e.reason}") from None
        except OSError as e:
            raise RegistryError(f"MLflow at {tracking_uri} is unreachable ({e}); is the server up? "
                                "(MLFLOW_TRACKING_URI)") from None
        return {a["alias"]: str(a["version"]) for a in body.get("registered_model", {}).get("aliases", [])}
    return None
