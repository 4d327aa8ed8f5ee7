"""train: Ray Train TorchTrainer (V2) on the snapshot, warm-started from the champion.

Workers read the snapshot's arrays themselves (no Ray Data: it starves on 2 CPUs), each
taking an equal slice so DDP's collectives stay in step. Rank 0 reports one checkpoint
with the per-epoch history; the driver logs that history to MLflow. Never touches the
registry's aliases or the data source.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from orchestrator.artifacts import Checkpoint, Snapshot, sha256_file
from orchestrator.context import StageContext
from orchestrator.errors import TrainingError


def train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import numpy as np
    import ray.train
    import torch
    import torch.distributed as dist
    from ray.train.torch import get_device, prepare_model

    from orchestrator.config import load_module
    from orchestrator.dataset import load_arrays

    torch.manual_seed(config["seed"])
    model = load_module(Path(config["model_file"])).build_model()
    if config["init_weights"]:
        model.load_state_dict(torch.load(config["init_weights"], map_location="cpu", weights_only=True))
    model = prepare_model(model)
    device = get_device()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()

    x, y = load_arrays(config["train_file"])
    per_rank = len(y) // world
    bs = config["batch_size"]
    opt = torch.optim.Adam(model.parameters(), lr=config["lr"])
    loss_fn = torch.nn.CrossEntropyLoss()
    history = []
    for epoch in range(config["epochs"]):
        # Same permutation on every rank, then a disjoint equal slice per rank.
        order = np.random.default_rng(config["seed"] + epoch).permutation(len(y))
        mine = order[rank * per_rank:(rank + 1) * per_rank]
        model.train()
        sums = torch.zeros(3, dtype=torch.float64)  # loss*n, correct, n
        for start in range(0, per_rank, bs):
            idx = mine[start:start + bs]
            xb = torch.from_numpy(x[idx]).to(device)
            yb = torch.from_numpy(y[idx]).to(device)
            opt.zero_grad()
            logits = model(xb)
            loss = loss_fn(logits, yb)
            loss.backward()
            opt.step()
            sums += torch.tensor([loss.item() * len(idx), (logits.argmax(1) == yb).sum().item(), len(idx)], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(sums)
        history.append({"epoch": epoch, "train_loss": float(sums[0] / sums[2]), "train_accuracy": float(sums[1] / sums[2])})

    metrics = {"train_loss": history[-1]["train_loss"], "train_accuracy": history[-1]["train_accuracy"]}
    if rank == 0:
        with tempfile.TemporaryDirectory() as tmp:
            inner = model.module if hasattr(model, "module") else model
            torch.save({k: v.cpu() for k, v in inner.state_dict().items()}, Path(tmp) / "weights.pt")
            (Path(tmp) / "history.json").write_text(json.dumps(history))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    else:
        ray.train.report(metrics)


def run(ctx: StageContext, snapshot: Snapshot) -> Checkpoint:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from orchestrator.runtime import cluster_gpus, ensure_ray

    cfg = ctx.pipeline.config.train
    ensure_ray(ctx.workspace)
    use_gpu = cluster_gpus() > 0 if cfg.use_gpu == "auto" else bool(cfg.use_gpu)
    champion = snapshot.champion
    init = None
    if cfg.warm_start and champion is not None:
        init = str(Path(champion.folder) / "weights.pt")
    ctx.say(f"training on {cfg.num_workers} {'GPU' if use_gpu else 'CPU'} worker(s), {cfg.epochs} epochs, "
            f"{snapshot.train_rows} rows" + (f", warm start from v{champion.version}" if init else ", from scratch"))
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "model_file": str(ctx.pipeline.model_file), "train_file": snapshot.train_file, "init_weights": init,
            "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed,
        },
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(
            name=f"{ctx.pipeline.name}-{ctx.cycle_id}",
            storage_path=str(ctx.workspace.ray_storage),
            failure_config=FailureConfig(max_failures=1),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as e:  # Ray wraps worker errors; keep the root cause in the message
        raise TrainingError(f"Ray Train failed: {e}. Worker logs: {ctx.workspace.ray_log.parent} and Ray's session logs") from None
    if result.checkpoint is None:
        raise TrainingError("Ray Train finished without a checkpoint; check model.py's build_model()")
    with result.checkpoint.as_directory() as folder:
        weights = ctx.path("checkpoint", "weights.pt")
        shutil.copy(Path(folder) / "weights.pt", weights)
        history = json.loads((Path(folder) / "history.json").read_text())
    for row in history:
        ctx.registry.log_metrics(ctx.run_id, {"train_loss": row["train_loss"], "train_accuracy": row["train_accuracy"]},
                                 step=row["epoch"])
    return Checkpoint(
        weights_file=str(weights), sha256=sha256_file(weights), epochs=cfg.epochs, num_workers=cfg.num_workers,
        use_gpu=use_gpu, warm_started_from=champion.version if init else None, history=tuple(history),
    )
