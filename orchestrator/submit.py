"""`plaster submit`: one cycle as a Ray Job on a cluster, through Ray's Job Submission API.

The pipeline folder becomes the job's working_dir and the orchestrator package a py_module,
so every node gets both through runtime_env whether or not plaster is installed there (its
dependencies must be). The job runs `python -m orchestrator.cli run . --json`; the record it
prints last is how `--follow` learns the cycle's outcome. Nothing beside the folder ships, so
a model.py shared by pipelines is a link in each folder (Ray packs the file it points to),
never an import of a sibling folder's file.

Token auth: Ray's client reads RAY_AUTH_MODE=token and the token from RAY_AUTH_TOKEN,
RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token; `token` here overrides them.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import orchestrator
from orchestrator.config import load_pipeline
from orchestrator.errors import PlasterError

# Where a cycle's results go: the job must use the same MLflow and home as the submitter.
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PLASTER_HOME", "PLASTER_ACTOR")
OUTCOME_PREFIX = "PLASTER_RECORD "
EXCLUDES = ["__pycache__", "*.pyc", ".venv", ".plaster", "mlruns", ".git"]


class SubmitError(PlasterError):
    """The cluster refused the job, or the job ended without a decision."""

    exit_code = 2


def job_spec(folder: str | Path, env: dict[str, str] | None = None, trigger: str = "submit") -> dict[str, Any]:
    """The arguments of JobSubmissionClient.submit_job for one cycle of `folder`."""
    pipeline = load_pipeline(folder)  # refuse a bad pipeline here, not on the cluster
    from orchestrator.runtime import TRAIN_ENV

    env_vars = {**TRAIN_ENV, **{k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}, **(env or {})}
    runtime_env = {
        "working_dir": str(pipeline.folder),
        "py_modules": [str(Path(orchestrator.__file__).parent)],
        "env_vars": env_vars,
        "excludes": EXCLUDES,
    }
    spec: dict[str, Any] = {
        "entrypoint": f"python -m orchestrator.cli run . --json --trigger {trigger}",
        "runtime_env": runtime_env,
        "metadata": {"plaster.pipeline": pipeline.name},
        "submission_id": f"plaster-{pipeline.name}-{time.strftime('%Y%m%dT%H%M%S')}-{os.urandom(2).hex()}",
    }
    gpu = pipeline.config.build.serving_gpu
    if gpu:  # the driver builds and measures engines: put it on the serving GPU type
        spec["entrypoint_resources"] = {f"accelerator_type:{gpu}": 0.001}
    return spec


def client(address: str, token: str | None = None):
    from ray.job_submission import JobSubmissionClient

    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(address, headers=headers)
    except Exception as e:
        msg = str(e)
        hint = ("set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or pass --token)"
                if "401" in msg or "nauthori" in msg or "token" in msg.lower()
                else "check the address is the head's dashboard, http://HEAD:8265")
        raise SubmitError(f"cannot reach the Ray job server at {address}: {msg.splitlines()[0] if msg else e}; "
                          f"{hint}") from None


# A head that has just started answers before its job agent has registered; Ray's job server
# then waits 10 s per request and answers "No available agent to submit job, please try again later".
AGENT_WAIT_S = 120.0


def submit(folder: str | Path, address: str, env: dict[str, str] | None = None, token: str | None = None,
           say: Callable[[str], None] = lambda _: None, agent_wait_s: float = AGENT_WAIT_S) -> str:
    spec = job_spec(folder, env)  # a bad pipeline fails here, before the cluster is contacted
    c = client(address, token)
    deadline = time.monotonic() + agent_wait_s
    while True:
        try:
            return c.submit_job(**spec)
        except Exception as e:
            if "No available agent" not in str(e):
                raise SubmitError(f"the job server at {address} refused the job: {e}") from None
            if time.monotonic() >= deadline:
                raise SubmitError(f"the job server at {address} found no job agent on the head for {agent_wait_s:.0f} s; "
                                  "check `ray status` and the head's dashboard_agent.log (in its Ray session's "
                                  "logs folder, /tmp/ray/session_latest/logs by default), then submit again") from None
            say("the head's job agent is not up yet (a cluster that has just started): trying again…")
            time.sleep(2)


def follow(address: str, job_id: str, out: Callable[[str], None], token: str | None = None,
           poll_s: float = 1.0) -> dict[str, Any]:
    """Stream the job's logs to `out` until it ends; return its cycle record.

    Raises:
        SubmitError: the job failed or stopped before the cycle printed its record.
    """
    c = client(address, token)
    record: dict[str, Any] | None = None

    async def stream() -> None:
        nonlocal record
        async for chunk in c.tail_job_logs(job_id):
            for line in chunk.splitlines():
                if line.startswith(OUTCOME_PREFIX):
                    record = json.loads(line[len(OUTCOME_PREFIX):])
                else:
                    out(line)

    asyncio.run(stream())
    status = c.get_job_status(job_id)
    while not status.is_terminal():  # the log stream can close a moment before the status turns
        time.sleep(poll_s)
        status = c.get_job_status(job_id)
    if record is None:
        info = c.get_job_info(job_id)
        raise SubmitError(f"job {job_id} ended {status.value} without a decision: {info.message or 'see its logs'}; "
                          f"`ray job logs {job_id} --address {address}` shows everything")
    return record
