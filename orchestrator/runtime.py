"""The Ray runtime a cycle runs on: the one at RAY_ADDRESS, or a local one started here.

A local Ray is closed to the network: every one of its services (GCS, raylet, object
manager, dashboard and its agent, the runtime-env agent, workers' gRPC) listens on
127.0.0.1 only, because anyone who reaches Ray can run code on this machine. A user who
wants a Ray others can join starts one (`ray start --head`) and sets RAY_ADDRESS.
Ray's own log noise goes to PLASTER_HOME/logs/ray.log, never the user's terminal.
Nothing here knows about stages.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading

from orchestrator.workspace import Workspace

# Ray Train V2 paces report() by this interval (default 2 s); a tiny cycle would spend most
# of its time waiting on it. Users can still set their own.
TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "RAY_USAGE_STATS_ENABLED": "0"}


def local_store_bytes() -> int | None:
    """The object store of a local Ray: PLASTER_OBJECT_STORE_MIB (default 2048; 0 = Ray's own
    default, 30% of RAM). Streaming keeps only a few blocks in flight, but the store's pages,
    once touched, stay resident in every process that mapped them: with Ray's default the
    process tree grew with the rows streamed until the store was full (benchmarks/scale.py:
    3.3 GB at 10M rows, 4.0 GB at 20M); a bounded store bounds that. Larger objects spill."""
    mib = int(os.environ.get("PLASTER_OBJECT_STORE_MIB", "2048"))
    return mib * 2**20 if mib > 0 else None


def ensure_ray(ws: Workspace) -> None:
    """Start or join Ray once per process; later calls are free (the warm path)."""
    import ray

    if ray.is_initialized():
        return
    for key, value in TRAIN_ENV.items():
        os.environ.setdefault(key, value)
    ws.ray_log.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(ws.ray_log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for name in ("ray", "ray.train", "ray.data", "ray.tune", "ray.serve"):
        lg = logging.getLogger(name)
        lg.handlers = [handler]
        lg.propagate = False
    address = os.environ.get("RAY_ADDRESS")
    # Inside a Ray Job (`plaster submit`) the job's runtime_env already carries these; passing
    # another one here would replace it, and Ray then deletes the job's working_dir under us.
    in_job = bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))
    # ray.init replaces the SIGTERM handler, first thing, with one that exits at once (even
    # while it starts the node); keep the CLI's, which lets the cycle in flight stop at a safe
    # point and be recorded.
    ours = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    with _stderr_to(ws.ray_log), (contextlib.nullcontext() if address or in_job else loopback_only()), \
            (_keep_sigterm_handler() if callable(ours) else contextlib.nullcontext()):
        ray.init(
            address=address or None,
            log_to_driver=False,  # worker prints stay in Ray's session logs
            logging_level=logging.WARNING,
            configure_logging=False,
            include_dashboard=True,  # Ray Train/Serve state and the job API need it; on 127.0.0.1 below
            dashboard_host="127.0.0.1",
            runtime_env=None if in_job else {"env_vars": {k: os.environ[k] for k in TRAIN_ENV}},
            object_store_memory=None if address or in_job else local_store_bytes(),
        )
    if callable(ours):
        signal.signal(signal.SIGTERM, ours)
    # ray.init may have attached its own stderr handler; keep our file the only one.
    for name in ("ray", "ray.train"):
        logging.getLogger(name).handlers = [handler]


# Ray's one switch for a node that serves only itself: with it off, the node's IP is the
# loopback address and Ray binds each service there (passing `_node_ip_address="127.0.0.1"`
# does not work: Ray swaps a loopback address for the host's). Ray reads it at import, so
# the driver's copy is set too; the processes ray.init starts inherit the variable.
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def loopback_only():
    """While a local Ray starts: every service it starts binds 127.0.0.1.

    Undone afterwards, so that this process can still start or join real clusters
    (`ray start --address` refuses to add a node while the switch is off)."""
    from ray._private import ray_constants

    saved_env, saved_flag = os.environ.get(LOCAL_ONLY_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOCAL_ONLY_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(LOCAL_ONLY_ENV, None)
        else:
            os.environ[LOCAL_ONLY_ENV] = saved_env


def local_only() -> bool:
    """Whether the Ray this process is connected to listens on loopback only."""
    import ray

    return ray.is_initialized() and ray.util.get_node_ip_address() in ("127.0.0.1", "::1")


@contextlib.contextmanager
def _keep_sigterm_handler():
    from ray._private import utils

    install = utils.set_sigterm_handler
    utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        utils.set_sigterm_handler = install


@contextlib.contextmanager
def _stderr_to(path):
    """Point fd 2 at `path` for a while: ray.init prints banners the user has no use for."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "a") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def gpu_inventory() -> dict[str, list[str]]:
    """NVML's GPUs on every alive node of the cluster, by node IP: one zero-resource task
    pinned to each node (Ray's GPU resource says how many; NVML says which)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from orchestrator.measure.energy import gpu_inventory as local

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    task = ray.remote(num_cpus=0)(local)
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
            for n in nodes]
    out: dict[str, list[str]] = {}
    for n, names in zip(nodes, ray.get(refs, timeout=60)):
        out.setdefault(n["NodeManagerAddress"], []).extend(names)
    return out
