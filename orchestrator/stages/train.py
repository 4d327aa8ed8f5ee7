"""train: the candidate's weights from the snapshot, warm-started from the champion.

Right-sized first: with `train.workers: auto`, a few real steps on a copy of the model
estimate the whole training; under `train.in_process_below_s`, or on a cluster that is one
machine without GPUs (one worker either way), it trains in this process, because Ray
Train's worker group costs ~20 s to start and stop and would add nothing else.
Otherwise Ray Train's TorchTrainer (V2). Workers get the snapshot's arrays, model.py's
source and the warm-start weights through Ray's object store, so nothing has to be on a
worker's disk and the workers can sit on any node (no Ray Data: it starves on 2 CPUs). Each
takes an equal slice so DDP's collectives stay in step. Every `train.checkpoint_every`
epochs rank 0 reports a checkpoint (weights, optimizer, history) to the storage path; when
a worker dies, Ray Train's FailureConfig restarts the group and the loop continues from
that checkpoint. Never touches the registry's aliases or the data source.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

from orchestrator.artifacts import Checkpoint, Snapshot, sha256_file
from orchestrator.context import StageContext
from orchestrator.errors import TrainingError


def _crash_on_cue(rank: int, epoch: int, resumed: bool) -> None:
    """Test hook: PLASTER_TEST_KILL_WORKER=RANK:EPOCH kills that worker's process (SIGKILL, a real
    crash) at that epoch, on the first attempt only."""
    cue = os.environ.get("PLASTER_TEST_KILL_WORKER")
    if cue and not resumed and cue == f"{rank}:{epoch}":
        os.kill(os.getpid(), signal.SIGKILL)


def _save_state(state_file: Path, weights: dict, opt, epoch: int, history: list, restarts: int) -> None:
    """A training checkpoint _resume reads back, written under a temporary name and renamed
    (a crash mid-write leaves the previous one)."""
    import torch

    tmp = state_file.with_suffix(".tmp")
    torch.save({"model": weights, "optimizer": opt.state_dict(), "epoch": epoch, "history": history,
                "restarts": restarts}, tmp)
    tmp.rename(state_file)


def _resume(state_file: Path, model, opt, device) -> tuple[list, int, int]:
    """Load a training checkpoint into `model` and `opt`: (history, the epoch to continue at, restarts)."""
    import torch

    state = torch.load(state_file, map_location=device, weights_only=False)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    return state["history"], state["epoch"] + 1, state["restarts"] + 1


def run_epoch(model, opt, loss_fn, x, y, indices, batch_size: int, device):
    """One pass over `indices` in batches; returns (sum of loss*n, correct, n) as float64."""
    import torch

    model.train()
    sums = torch.zeros(3, dtype=torch.float64)
    for begin in range(0, len(indices), batch_size):
        idx = indices[begin:begin + batch_size]
        xb = torch.from_numpy(x[idx]).to(device)
        yb = torch.from_numpy(y[idx]).to(device)
        opt.zero_grad()
        logits = model(xb)
        loss = loss_fn(logits, yb)
        loss.backward()
        opt.step()
        sums += torch.tensor([loss.item() * len(idx), (logits.argmax(1) == yb).sum().item(), len(idx)],
                             dtype=torch.float64)
    return sums


def train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import numpy as np
    import ray
    import ray.train
    import torch
    import torch.distributed as dist
    from ray.train.torch import get_device, prepare_model

    from orchestrator.config import load_module

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # Ray sets OMP_NUM_THREADS=1 in a 1-CPU worker: share the node's CPUs among its workers
    # instead, as a single process would use them.
    here = ray.get_runtime_context().get_node_id()
    cpus = next((n["Resources"].get("CPU", 1) for n in ray.nodes() if n["NodeID"] == here), 1)
    torch.set_num_threads(max(1, int(cpus) // max(1, ctx.get_local_world_size())))
    with tempfile.TemporaryDirectory() as tmp:  # model.py arrives as source: no shared disk needed
        (Path(tmp) / "model.py").write_text(config["model_source"])
        model = load_module(Path(tmp) / "model.py").build_model()
    torch.manual_seed(config["seed"])
    x, y = (a.copy() for a in ray.get(config["data"]))  # object-store arrays are read-only
    opt = torch.optim.Adam(model.parameters(), lr=config["lr"])
    history: list[dict[str, float]] = []
    start, restarts, resumed_from = 0, 0, None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:  # a restarted group: continue where the last checkpoint left off
        with ckpt.as_directory() as folder:
            history, start, restarts = _resume(Path(folder) / "state.pt", model, opt, "cpu")
        resumed_from = start
    elif config["init_weights"] is not None:
        model.load_state_dict(torch.load(io.BytesIO(ray.get(config["init_weights"])), map_location="cpu",
                                         weights_only=True))
    model = prepare_model(model)
    device = get_device()
    nodes: list[Any] = [ray.get_runtime_context().get_node_id()]  # the Ray node of each rank
    if world > 1:
        nodes = nodes * world
        dist.all_gather_object(nodes, nodes[0])

    per_rank = len(y) // world
    bs = config["batch_size"]
    loss_fn = torch.nn.CrossEntropyLoss()
    last = config["epochs"] - 1
    for epoch in range(start, config["epochs"]):
        _crash_on_cue(rank, epoch, ckpt is not None)
        # Same permutation on every rank, then a disjoint equal slice per rank.
        order = np.random.default_rng(config["seed"] + epoch).permutation(len(y))
        sums = run_epoch(model, opt, loss_fn, x, y, order[rank * per_rank:(rank + 1) * per_rank], bs, device)
        if world > 1:
            dist.all_reduce(sums)
        history.append({"epoch": epoch, "train_loss": float(sums[0] / sums[2]),
                        "train_accuracy": float(sums[1] / sums[2])})
        # Every rank reports together (Ray Train V2 requires it); rank 0 attaches the checkpoint.
        if epoch == last or (epoch + 1) % config["checkpoint_every"] == 0:
            metrics = {"epoch": epoch, **{k: history[-1][k] for k in ("train_loss", "train_accuracy")}}
            if rank == 0:
                with tempfile.TemporaryDirectory() as tmp:
                    inner = model.module if hasattr(model, "module") else model
                    weights = {k: v.cpu() for k, v in inner.state_dict().items()}
                    _save_state(Path(tmp) / "state.pt", weights, opt, epoch, history, restarts)
                    torch.save(weights, Path(tmp) / "weights.pt")
                    (Path(tmp) / "run.json").write_text(json.dumps(
                        {"history": history, "nodes": nodes, "restarts": restarts, "resumed_from_epoch": resumed_from}))
                    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            else:
                ray.train.report(metrics)


def plan_workers(cfg, resources: dict[str, float], cpu_nodes: int) -> tuple[int, bool, str]:
    """How many workers, on GPUs or not, and why (recorded in the checkpoint)."""
    gpus = int(resources.get("GPU", 0))
    use_gpu = gpus > 0 if cfg.use_gpu == "auto" else bool(cfg.use_gpu)
    if cfg.workers != "auto":
        return cfg.workers, use_gpu, f"train.workers: {cfg.workers}"
    if use_gpu:
        if gpus < 1:
            raise TrainingError("train.use_gpu is true but the Ray cluster has no GPUs; set use_gpu: auto or false")
        return gpus, True, f"auto: one per GPU ({gpus} on the cluster)"
    n = max(1, cpu_nodes)
    return n, False, f"auto: no GPUs, one per node ({n})"


def estimate_seconds(model, x, y, batch_size: int, epochs: int, lr: float) -> float:
    """The single-process compute of the whole training, from timing a few real steps on a copy."""
    import copy
    import time

    import torch

    probe = copy.deepcopy(model)
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    idx = list(range(min(batch_size, len(y))))
    steps = []
    for _ in range(6):  # the first step pays for lazy initialisation: drop it
        t0 = time.perf_counter()
        run_epoch(probe, opt, torch.nn.CrossEntropyLoss(), x, y, idx, batch_size, "cpu")
        steps.append(time.perf_counter() - t0)
    # The fastest step: what the work costs; slower ones measured a neighbour's load too.
    return min(steps[1:]) * -(-len(y) // batch_size) * epochs


def recipe(cfg, warm: bool) -> tuple[int, float]:
    """(epochs, learning rate) of a training. Fine-tuning the champion after drift reaches what
    training anew reaches in fewer epochs, so a warm start takes train.warm_start_epochs and
    train.warm_start_lr where they are set (benchmarks/warm_start.py measures both curves)."""
    if not warm:
        return cfg.epochs, cfg.lr
    return cfg.warm_start_epochs or cfg.epochs, cfg.warm_start_lr or cfg.lr


def _train_here(ctx: StageContext, snapshot: Snapshot, model, x, y, init: str | None, why: str, epochs: int,
                lr: float) -> Checkpoint:
    """Train in this process: for tiny compute, Ray Train's worker group costs more to start and
    stop (~20 s here) than the training; on one machine without GPUs it has nothing to
    distribute. Checkpoints every `checkpoint_every` epochs to the cycle's folder, so a crashed
    cycle's `--resume` continues from the last one."""
    import numpy as np
    import torch

    cfg = ctx.pipeline.config.train
    device = "cuda" if cfg.use_gpu is not False and torch.cuda.is_available() else "cpu"
    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    history: list[dict[str, float]] = []
    start, restarts, resumed_from = 0, 0, None
    state_file = ctx.path("checkpoint", "state.pt")
    if state_file.exists():  # a resumed cycle: continue from the last checkpoint
        history, start, restarts = _resume(state_file, model, opt, device)
        resumed_from = start
    for epoch in range(start, epochs):
        if ctx.stop_requested():  # SIGTERM: keep the epochs done, so that --resume continues here
            if epoch > start:
                _save_state(state_file, model.state_dict(), opt, epoch - 1, history, restarts)
            ctx.check_stop(f"train, before epoch {epoch + 1} of {epochs} (epochs done are checkpointed)")
        order = np.random.default_rng(cfg.seed + epoch).permutation(len(y))
        sums = run_epoch(model, opt, loss_fn, x, y, order, cfg.batch_size, device)
        history.append({"epoch": epoch, "train_loss": float(sums[0] / sums[2]),
                        "train_accuracy": float(sums[1] / sums[2])})
        if (epoch + 1) % cfg.checkpoint_every == 0 and epoch != epochs - 1:
            _save_state(state_file, model.state_dict(), opt, epoch, history, restarts)
    weights = ctx.path("checkpoint", "weights.pt")
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, weights)
    return Checkpoint(
        weights_file=str(weights), sha256=sha256_file(weights), epochs=epochs, num_workers=1,
        use_gpu=device == "cuda", warm_started_from=snapshot.champion.version if init else None,
        history=tuple(history), restarts=restarts, resumed_from_epoch=resumed_from, workers_reason=why,
        placement="in_process", lr=lr,
    )


def _one_cpu_machine() -> bool:
    """Is the cluster this training would get one machine without GPUs? Then Ray Train's
    single worker would only add its start-up. Without a running Ray or RAY_ADDRESS, the
    cluster would be a local one on this machine: ask torch rather than start Ray."""
    import ray
    import torch

    from orchestrator.storage import cluster_hosts

    if not os.environ.get("RAY_ADDRESS") and not ray.is_initialized():
        return not torch.cuda.is_available()

    return ray.cluster_resources().get("GPU", 0) == 0 and cluster_hosts() == 1 and \
        sum(1 for n in ray.nodes() if n.get("Alive")) == 1


def run(ctx: StageContext, snapshot: Snapshot) -> Checkpoint:
    import torch

    from orchestrator.dataset import load_arrays

    cfg = ctx.pipeline.config.train
    champion = snapshot.champion
    init = str(Path(champion.folder) / "weights.pt") if cfg.warm_start and champion is not None else None
    torch.manual_seed(cfg.seed)
    model = ctx.pipeline.module().build_model()
    if init:
        model.load_state_dict(torch.load(init, map_location="cpu", weights_only=True))
    x, y = load_arrays(snapshot.train_file)
    epochs, lr = recipe(cfg, init is not None)
    start = f", warm start from v{champion.version}" if init else ", from scratch"
    sized = ""
    if cfg.workers == "auto" and cfg.in_process_below_s:
        est = estimate_seconds(model, x, y, cfg.batch_size, epochs, lr)
        if est < cfg.in_process_below_s:
            why = (f"auto: estimated compute {est:.1f} s < train.in_process_below_s ({cfg.in_process_below_s:g} s), "
                   "so trained in this process without Ray Train's worker start-up")
        elif cfg.use_gpu is not True and _one_cpu_machine():
            why = (f"auto: estimated compute {est:.1f} s, but the cluster is one machine without GPUs: one worker "
                   "either way, so trained in this process without Ray Train's worker start-up")
        else:
            why = ""
        if why:
            ctx.say(f"training in this process ({why}), {epochs} epochs at lr {lr:g}, {snapshot.train_rows} rows{start}")
            out = _train_here(ctx, snapshot, model, x, y, init, why, epochs, lr)
            _log_history(ctx, out.history)
            return out
        sized = f"; estimated compute {est:.1f} s >= train.in_process_below_s ({cfg.in_process_below_s:g} s)"
    return _train_on_ray(ctx, snapshot, model, x, y, init, start, epochs, lr, sized)


def _log_history(ctx: StageContext, history) -> None:
    for row in history:
        ctx.registry.log_metrics(ctx.run_id, {"train_loss": row["train_loss"], "train_accuracy": row["train_accuracy"]},
                                 step=row["epoch"])


def _train_on_ray(ctx: StageContext, snapshot: Snapshot, model, x, y, init: str | None, start: str, epochs: int,
                  lr: float, sized: str = "") -> Checkpoint:
    import ray
    import torch
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from orchestrator.runtime import ensure_ray
    from orchestrator.storage import cluster_hosts

    cfg = ctx.pipeline.config.train
    ensure_ray(ctx.workspace)
    ctx.storage.check_reachable(cluster_hosts())
    cpu_nodes = sum(1 for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= 1)
    workers, use_gpu, why = plan_workers(cfg, ray.cluster_resources(), cpu_nodes)
    why += sized
    if use_gpu and cfg.workers == "auto":
        from orchestrator.runtime import gpu_inventory

        seen = [f"{ip}: {', '.join(names)}" for ip, names in gpu_inventory().items() if names]
        why += f"; NVML: {'; '.join(seen) or 'no GPU visible to NVML'}"
    init_ref = None
    if init:
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        init_ref = ray.put(buf.getvalue())
    ctx.say(f"training on {workers} {'GPU' if use_gpu else 'CPU'} worker(s) ({why}), {epochs} epochs at lr {lr:g}, "
            f"{snapshot.train_rows} rows{start}")
    storage_path, storage_fs = ctx.storage.ray_train_storage()
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "model_source": ctx.pipeline.model_file.read_text(), "data": ray.put((x, y)),
            "init_weights": init_ref, "epochs": epochs, "batch_size": cfg.batch_size, "lr": lr,
            "seed": cfg.seed, "checkpoint_every": cfg.checkpoint_every,
        },
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
        torch_config=_torch_config("nccl" if use_gpu else "gloo"),
        run_config=RunConfig(
            name=f"{ctx.pipeline.name}-{ctx.cycle_id}",
            storage_path=storage_path, storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    try:
        result = _fit_unless_stopped(ctx, trainer)
    except Exception as e:  # Ray wraps worker errors; keep the root cause in the message
        raise TrainingError(f"Ray Train failed: {e}. Worker logs: {ctx.workspace.ray_log.parent} and Ray's session "
                            f"logs; train.max_failures ({cfg.max_failures}) restarts were allowed") from None
    if result.checkpoint is None:
        raise TrainingError("Ray Train finished without a checkpoint; check model.py's build_model()")
    with result.checkpoint.as_directory() as folder:
        weights = ctx.path("checkpoint", "weights.pt")
        shutil.copy(Path(folder) / "weights.pt", weights)
        run_info = json.loads((Path(folder) / "run.json").read_text())
    history = run_info["history"]
    _log_history(ctx, history)
    return Checkpoint(
        weights_file=str(weights), sha256=sha256_file(weights), epochs=epochs, num_workers=workers,
        use_gpu=use_gpu, warm_started_from=snapshot.champion.version if init else None, history=tuple(history),
        nodes=tuple(run_info["nodes"]), restarts=run_info["restarts"], resumed_from_epoch=run_info["resumed_from_epoch"],
        workers_reason=why, lr=lr,
    )


def _fit_unless_stopped(ctx: StageContext, trainer):
    """trainer.fit(), but a stop request does not wait for it: fit runs in a thread and this
    one returns Interrupted at once. The workers' last checkpoint stays in storage; the
    run's actors end with this driver (`plaster run`, the scheduler) or its local Ray."""
    import threading

    if ctx.stop is None:
        return trainer.fit()
    out: dict[str, Any] = {}

    def fit() -> None:
        try:
            out["result"] = trainer.fit()
        except BaseException as e:  # handed to the stage's thread below
            out["error"] = e

    t = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    t.start()
    while t.is_alive():
        t.join(0.2)
        ctx.check_stop("train, during Ray Train's fit (the workers' checkpoints are kept)")
    if "error" in out:
        raise out["error"]
    return out["result"]


def _torch_config(backend: str):
    """Ray Train's TorchConfig; on plaster's loopback-only local Ray, one whose rank 0 serves
    torch's rendezvous store on 127.0.0.1. torch binds that store on every interface (`::`)
    whatever host it is given; handing it a socket already bound to loopback
    (`master_listen_fd`) is torch's own way to choose."""
    from ray.train.torch import TorchConfig
    from ray.train.torch.config import _TorchBackend

    from orchestrator.runtime import local_only

    if not local_only():
        return TorchConfig(backend=backend)

    class LoopbackBackend(_TorchBackend):
        def on_start(self, worker_group, backend_config):
            worker_group.execute(_rendezvous_store_on_loopback)
            super().on_start(worker_group, backend_config)

    class LoopbackTorchConfig(TorchConfig):
        @property
        def backend_cls(self):
            return LoopbackBackend

    return LoopbackTorchConfig(backend=backend)


def _rendezvous_store_on_loopback() -> None:
    """In a Ray Train worker, before the process group starts: rank 0's TCPStore listens on
    a socket bound to 127.0.0.1 when the rendezvous host is loopback."""
    import importlib
    import socket

    from torch.distributed import TCPStore

    # the module, not `torch.distributed.rendezvous`, which that package rebinds to a function
    rendezvous = importlib.import_module("torch.distributed.rendezvous")

    make = rendezvous._create_c10d_store
    if getattr(make, "plaster_loopback", False):
        return

    def on_loopback(hostname, port, rank, world_size, timeout, use_libuv=True):
        if rank != 0 or hostname not in ("127.0.0.1", "localhost") or rendezvous._torchelastic_use_agent_store():
            return make(hostname, port, rank, world_size, timeout, use_libuv)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
        sock.set_inheritable(True)
        store = TCPStore(host_name=hostname, port=port, world_size=world_size, is_master=True, timeout=timeout,
                         multi_tenant=True, master_listen_fd=sock.detach(), use_libuv=use_libuv)
        return store

    on_loopback.plaster_loopback = True
    rendezvous._create_c10d_store = on_loopback
