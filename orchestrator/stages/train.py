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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from orchestrator.artifacts import Checkpoint, Snapshot, sha256_file
from orchestrator.context import StageContext
from orchestrator.door import Batch, Hooks, TrainSettings, forward, load_hooks
from orchestrator.errors import DataError, TrainingError
from orchestrator.stream import InMemory, Streamed


def _crash_on_cue(rank: int, epoch: int, resumed: bool) -> None:
    """Test hook: PLASTER_TEST_KILL_WORKER=RANK:EPOCH kills that worker's process (SIGKILL, a real
    crash) at that epoch, on the first attempt only."""
    cue = os.environ.get("PLASTER_TEST_KILL_WORKER")
    if cue and not resumed and cue == f"{rank}:{epoch}":
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class Recipe:
    """Everything the loop needs besides the model and the data; picklable, so the same
    recipe reaches Ray Train workers."""

    task: str
    epochs: int
    batch_size: int
    lr: float
    seed: int
    checkpoint_every: int
    patience: int | None = None
    grad_clip_norm: float | None = None
    mixed_precision: str = "off"  # off | bf16 | fp16, already resolved for the device


def recipe_for(cfg, task: str, epochs: int, lr: float, device: str) -> tuple[Recipe, str]:
    """The recipe and, for the record, why mixed precision is on or off."""
    import torch

    amp, why = "off", "off: train.mixed_precision: off"
    if cfg.mixed_precision != "off":
        if not device.startswith("cuda"):
            why = "off: training on CPU (autocast pays on GPUs; on CPUs it is slower and changes the numbers)"
        else:
            amp = cfg.mixed_precision
            if amp == "auto":
                amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            why = f"{amp} autocast on {device} (train.mixed_precision: {cfg.mixed_precision})"
    return Recipe(task, epochs, cfg.batch_size, lr, cfg.seed, cfg.checkpoint_every, cfg.early_stopping_patience,
                  cfg.grad_clip_norm, amp), why


class Loop:
    """One training loop for both placements: the optimizer, the step, the loss, the history
    row, early stopping and the checkpoint state are built here and only here. The hooks of
    model.py replace pieces of it (door.Hooks)."""

    def __init__(self, model, hooks: Hooks, recipe: Recipe, device, steps_per_epoch: int):
        import torch

        from orchestrator.tasks import task_for

        self.model, self.hooks, self.recipe, self.device = model, hooks, recipe, device
        self.task = task_for(recipe.task)
        settings = TrainSettings(lr=recipe.lr, epochs=recipe.epochs, steps_per_epoch=max(1, steps_per_epoch),
                                 batch_size=recipe.batch_size)
        made = hooks.build_optimizer(model.parameters(), settings) if hooks.build_optimizer else \
            torch.optim.Adam(model.parameters(), lr=recipe.lr)
        self.opt, self.sched = made if isinstance(made, tuple) else (made, None)
        if not isinstance(self.opt, torch.optim.Optimizer):
            raise TrainingError(f"build_optimizer() returned {type(self.opt).__name__}: return a torch.optim.Optimizer "
                                "or (optimizer, lr_scheduler)")
        self.amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(recipe.mixed_precision)
        self.scaler = torch.amp.GradScaler("cuda") if recipe.mixed_precision == "fp16" else None
        self.history: list[dict[str, float]] = []
        self.best: tuple[float, int, dict] | None = None  # (validation loss, epoch, weights)
        self.generator = torch.Generator().manual_seed(recipe.seed)

    def loss(self, outputs, batch: Batch):
        if self.hooks.loss:
            return self.hooks.loss(outputs, batch)
        return self.task.loss(outputs.float(), batch.target)

    def batch(self, x, y) -> Batch:
        import torch

        return Batch(inputs={k: torch.from_numpy(v).to(self.device) for k, v in x.items()},
                     target=torch.from_numpy(y).to(self.device))

    def step(self, batch: Batch) -> dict:
        import contextlib

        import torch

        if self.hooks.augment:
            batch = self.hooks.augment(batch, self.generator)
        if self.hooks.train_step:
            out = self.hooks.train_step(self.model, batch, self.opt, self.loss)
        else:
            self.opt.zero_grad()
            autocast = torch.autocast("cuda", dtype=self.amp) if self.amp else contextlib.nullcontext()
            with autocast:
                outputs = forward(self.model, batch.inputs)
                loss = self.loss(outputs, batch)
            if self.scaler:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.opt)
            else:
                loss.backward()
            if self.recipe.grad_clip_norm:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.grad_clip_norm)
            if self.scaler:
                self.scaler.step(self.opt)
                self.scaler.update()
            else:
                self.opt.step()
            out = {"loss": loss, "outputs": outputs}
        if self.sched is not None:
            self.sched.step()
        return out

    def epoch(self, batches):
        """One pass over `batches` of (inputs by name, targets) numpy arrays: sums of (loss*n,
        n, the task's per-example statistics), float64."""
        import torch

        self.model.train()
        sums = None
        for xb, yb in batches:
            b = self.batch(xb, yb)
            out = self.step(b)
            loss = float(out["loss"].detach() if hasattr(out["loss"], "detach") else out["loss"])
            part = [loss * len(yb), len(yb)]
            if out.get("outputs") is not None:
                part += list(self.task.per_example(out["outputs"].detach().float().cpu().numpy(), yb).sum(0))
            row = torch.tensor(part, dtype=torch.float64)
            sums = row if sums is None else sums + (row if len(row) == len(sums) else torch.nn.functional.pad(
                row, (0, len(sums) - len(row))))
        return sums if sums is not None else torch.zeros(2, dtype=torch.float64)

    def validation_loss(self, val) -> float:
        import torch

        x, y = val
        self.model.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for begin in range(0, len(y), 256):
                b = self.batch({k: v[begin:begin + 256] for k, v in x.items()}, y[begin:begin + 256])
                total += float(self.loss(forward(self.model, b.inputs), b)) * len(b.target)
                n += len(b.target)
        return total / max(n, 1)

    def record(self, epoch: int, sums, val_loss: float | None) -> bool:
        """Append the epoch's history row; True when early stopping says stop."""
        n = float(sums[1]) or 1.0
        row = {"epoch": epoch, "train_loss": float(sums[0] / n)}
        if len(sums) > 2:
            row[f"train_{self.task.primary}"] = float(self.task.from_sums(self.task.primary, sums[2:].numpy(), n))
        if self.sched is not None:
            row["lr"] = float(self.opt.param_groups[0]["lr"])
        self.history.append(row)
        if val_loss is None:
            return False
        row["val_loss"] = val_loss
        if self.best is None or val_loss < self.best[0]:
            inner = self.model.module if hasattr(self.model, "module") else self.model
            self.best = (val_loss, epoch, {k: v.detach().cpu().clone() for k, v in inner.state_dict().items()})
            return False
        return epoch - self.best[1] >= self.recipe.patience

    def final_weights(self) -> dict:
        """The weights to keep: with early stopping, those of the best validation epoch."""
        if self.best is not None:
            return self.best[2]
        inner = self.model.module if hasattr(self.model, "module") else self.model
        return {k: v.detach().cpu() for k, v in inner.state_dict().items()}

    def state(self, epoch: int, restarts: int) -> dict:
        inner = self.model.module if hasattr(self.model, "module") else self.model
        return {"model": {k: v.cpu() for k, v in inner.state_dict().items()}, "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict() if self.sched is not None else None, "epoch": epoch,
                "history": self.history, "restarts": restarts, "best": self.best}

    def load(self, state: dict) -> tuple[int, int]:
        """A checkpoint's state back into the loop: (the epoch to continue at, restarts)."""
        inner = self.model.module if hasattr(self.model, "module") else self.model
        inner.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        if self.sched is not None and state.get("scheduler"):
            self.sched.load_state_dict(state["scheduler"])
        self.history, self.best = state["history"], state.get("best")
        return state["epoch"] + 1, state["restarts"] + 1


def fit(loop: Loop, data, val, *, rank: int, world: int, start: int, checkpoint: Callable[[int, bool], None],
        before_epoch: Callable[[int], None] = lambda e: None) -> int:
    """Train from epoch `start` on `data` (stream.InMemory or stream.Streamed: both give every
    rank an equal share, so DDP's collectives stay in step). `checkpoint(epoch, last)` is
    called every train.checkpoint_every epochs and at the end, on every rank (Ray Train V2
    needs all ranks to report together). Returns the last epoch trained."""
    import torch.distributed as dist

    r = loop.recipe
    epoch = start - 1
    for epoch in range(start, r.epochs):
        before_epoch(epoch)
        sums = loop.epoch(data.batches(epoch, rank, world, r.batch_size, r.seed))
        val_loss = None
        if world > 1:
            dist.all_reduce(sums)
        if val is not None and r.patience:
            val_loss = loop.validation_loss(val)  # identical weights and rows on every rank: the same figure
        stop = loop.record(epoch, sums, val_loss)
        last = stop or epoch == r.epochs - 1
        if last or (epoch + 1) % r.checkpoint_every == 0:
            checkpoint(epoch, last)
        if stop:
            break
    return epoch


def _save_state(state_file: Path, state: dict) -> None:
    """A training checkpoint, written under a temporary name and renamed (a crash mid-write
    leaves the previous one)."""
    import torch

    tmp = state_file.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.rename(state_file)


def train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
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
        path = Path(tmp) / "model.py"
        path.write_text(config["model_source"])
        module = load_module(path)
        model, hooks = module.build_model(), load_hooks(module, path)
    torch.manual_seed(config["seed"])
    recipe: Recipe = config["recipe"]
    if config.get("streamed_rows"):  # Ray Data: this worker's equal shard of the training rows
        data, val = Streamed(ray.train.get_dataset_shard("train"), config["streamed_rows"] // world), \
            ray.get(config["data"])
    else:
        x, y, val = ray.get(config["data"])
        # object-store arrays are read-only
        data = InMemory({k: v.copy() for k, v in x.items()}, y.copy())
    ckpt = ray.train.get_checkpoint()
    if ckpt is None and config["init_weights"] is not None:
        model.load_state_dict(torch.load(io.BytesIO(ray.get(config["init_weights"])), map_location="cpu",
                                         weights_only=True))
    model = prepare_model(model)
    device = get_device()
    rows = data.rows if isinstance(data, Streamed) else data.rows // world
    loop = Loop(model, hooks, recipe, device, -(-rows // recipe.batch_size))
    start, restarts, resumed_from = 0, 0, None
    if ckpt is not None:  # a restarted group: continue where the last checkpoint left off
        with ckpt.as_directory() as folder:
            start, restarts = loop.load(torch.load(Path(folder) / "state.pt", map_location="cpu", weights_only=False))
        resumed_from = start
    nodes: list[Any] = [ray.get_runtime_context().get_node_id()]  # the Ray node of each rank
    if world > 1:
        nodes = nodes * world
        dist.all_gather_object(nodes, nodes[0])

    def checkpoint(epoch: int, last: bool) -> None:
        metrics = {k: v for k, v in loop.history[-1].items()}
        if rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            _save_state(Path(tmp) / "state.pt", loop.state(epoch, restarts))
            torch.save(loop.final_weights(), Path(tmp) / "weights.pt")
            (Path(tmp) / "run.json").write_text(json.dumps(
                {"history": loop.history, "nodes": nodes, "restarts": restarts, "resumed_from_epoch": resumed_from,
                 "stopped_early": last and epoch < recipe.epochs - 1,
                 "best_epoch": loop.best[1] if loop.best else None}))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    fit(loop, data, val, rank=rank, world=world, start=start, checkpoint=checkpoint,
        before_epoch=lambda e: _crash_on_cue(rank, e, ckpt is not None))


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


def estimate_seconds(model, hooks: Hooks, recipe: Recipe, x, y) -> float:
    """The single-process compute of the whole training, from timing a few real steps of
    the real loop (the pipeline's hooks included) on a copy of the model."""
    import copy
    import time

    probe = Loop(copy.deepcopy(model), hooks, recipe, "cpu", 1)
    n = min(recipe.batch_size, len(y))
    one = [({k: v[:n] for k, v in x.items()}, y[:n])]
    steps = []
    for _ in range(6):  # the first step pays for lazy initialisation: drop it
        t0 = time.perf_counter()
        probe.epoch(one)
        steps.append(time.perf_counter() - t0)
    # The fastest step: what the work costs; slower ones measured a neighbour's load too.
    return min(steps[1:]) * -(-len(y) // recipe.batch_size) * recipe.epochs


def recipe(cfg, warm: bool) -> tuple[int, float]:
    """(epochs, learning rate) of a training. Fine-tuning the champion after drift reaches what
    training anew reaches in fewer epochs, so a warm start takes train.warm_start_epochs and
    train.warm_start_lr where they are set (benchmarks/warm_start.py measures both curves)."""
    if not warm:
        return cfg.epochs, cfg.lr
    return cfg.warm_start_epochs or cfg.epochs, cfg.warm_start_lr or cfg.lr


def _train_here(ctx: StageContext, snapshot: Snapshot, model, hooks: Hooks, data, init: str | None, why: str,
                recipe: Recipe, amp_why: str, device: str) -> Checkpoint:
    """Train in this process: for tiny compute, Ray Train's worker group costs more to start and
    stop (~20 s here) than the training; on one machine without GPUs it has nothing to
    distribute. Checkpoints every `checkpoint_every` epochs to the cycle's folder, so a crashed
    cycle's `--resume` continues from the last one."""
    import torch

    data, val = data
    model = model.to(device)
    loop = Loop(model, hooks, recipe, device, -(-data.rows // recipe.batch_size))
    start, restarts, resumed_from = 0, 0, None
    state_file = ctx.path("checkpoint", "state.pt")
    if state_file.exists():  # a resumed cycle: continue from the last checkpoint
        start, restarts = loop.load(torch.load(state_file, map_location=device, weights_only=False))
        resumed_from = start

    def before_epoch(epoch: int) -> None:
        if ctx.stop_requested():  # SIGTERM: keep the epochs done, so that --resume continues here
            if epoch > start:
                _save_state(state_file, loop.state(epoch - 1, restarts))
            ctx.check_stop(f"train, before epoch {epoch + 1} of {recipe.epochs} (epochs done are checkpointed)")

    def checkpoint(epoch: int, last: bool) -> None:
        if not last:
            _save_state(state_file, loop.state(epoch, restarts))

    last = fit(loop, data, val, rank=0, world=1, start=start, checkpoint=checkpoint, before_epoch=before_epoch)
    weights = ctx.path("checkpoint", "weights.pt")
    torch.save(loop.final_weights(), weights)
    return Checkpoint(
        weights_file=str(weights), sha256=sha256_file(weights), epochs=len(loop.history), num_workers=1,
        use_gpu=device == "cuda", warm_started_from=snapshot.champion.version if init else None,
        history=tuple(loop.history), restarts=restarts, resumed_from_epoch=resumed_from, workers_reason=why,
        placement="in_process_streamed" if isinstance(data, Streamed) else "in_process",
        lr=recipe.lr, mixed_precision=amp_why, hooks=tuple(hooks.names()),
        stopped_early=last < recipe.epochs - 1, best_epoch=loop.best[1] if loop.best else None,
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
    hooks = ctx.pipeline.hooks()
    model = ctx.pipeline.module().build_model()
    if init:
        model.load_state_dict(torch.load(init, map_location="cpu", weights_only=True))
    # Streaming: train_file is only a sample of the training rows, enough to time a few steps.
    x, y = load_arrays(snapshot.train_file)
    val = load_arrays(snapshot.validation_file) if snapshot.validation_file else None
    plan = snapshot.train_manifest
    epochs, lr = recipe(cfg, init is not None)
    start = f", warm start from v{champion.version}" if init else ", from scratch"
    if hooks.names():
        start += f"; model.py hooks: {', '.join(hooks.names())}"
    sized = ""
    if cfg.workers == "auto" and cfg.in_process_below_s:
        probe, _ = recipe_for(cfg, ctx.pipeline.config.task, epochs, lr, "cpu")
        est = estimate_seconds(model, hooks, probe, x, y) * (snapshot.train_rows / max(len(y), 1))
        if est < cfg.in_process_below_s:
            why = (f"auto: estimated compute {est:.1f} s < train.in_process_below_s ({cfg.in_process_below_s:g} s), "
                   "so trained in this process without Ray Train's worker start-up")
        elif cfg.use_gpu is not True and _one_cpu_machine():
            why = (f"auto: estimated compute {est:.1f} s, but the cluster is one machine without GPUs: one worker "
                   "either way, so trained in this process without Ray Train's worker start-up")
        else:
            why = ""
        if why:
            device = "cuda" if cfg.use_gpu is not False and torch.cuda.is_available() else "cpu"
            rec, amp_why = recipe_for(cfg, ctx.pipeline.config.task, epochs, lr, device)
            ctx.say(f"training in this process ({why}), {epochs} epochs at lr {lr:g}, {snapshot.train_rows} rows{start}")
            data = InMemory(x, y) if plan is None else Streamed(_streamed_rows(ctx, plan, snapshot.table), plan["train_rows"])
            out = _train_here(ctx, snapshot, model, hooks, (data, val), init, why, rec, amp_why, device)
            _log_history(ctx, out.history)
            return out
        sized = f"; estimated compute {est:.1f} s >= train.in_process_below_s ({cfg.in_process_below_s:g} s)"
    return _train_on_ray(ctx, snapshot, model, hooks, (x, y, val), init, start, epochs, lr, sized)


def _streamed_rows(ctx: StageContext, plan: dict, table: dict | None = None):
    """The training rows of a streaming snapshot as a Ray Data dataset (on the cycle's Ray);
    `table`: the lake table version the snapshot was taken at, if any."""
    from orchestrator.runtime import ensure_ray
    from orchestrator.stream import dataset, gone_message, located, missing

    ensure_ray(ctx.workspace)
    plan = located(plan, ctx.pipeline.bucket, ctx.pipeline.source)
    gone = missing(plan)
    if gone:  # found here, not deep inside a Ray Data task half-way through an epoch
        raise DataError(gone_message(gone, len(plan["new"]) + len(plan["replay"]), table))
    return dataset(plan, ctx.pipeline.inputs, ctx.pipeline.target)


def _log_history(ctx: StageContext, history) -> None:
    for row in history:
        ctx.registry.log_metrics(ctx.run_id, {k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])


def _train_on_ray(ctx: StageContext, snapshot: Snapshot, model, hooks: Hooks, data, init: str | None, start: str,
                  epochs: int, lr: float, sized: str = "") -> Checkpoint:
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
    rec, amp_why = recipe_for(cfg, ctx.pipeline.config.task, epochs, lr, "cuda" if use_gpu else "cpu")
    init_ref = None
    if init:
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        init_ref = ray.put(buf.getvalue())
    ctx.say(f"training on {workers} {'GPU' if use_gpu else 'CPU'} worker(s) ({why}), {epochs} epochs at lr {lr:g}, "
            f"{snapshot.train_rows} rows{start}")
    storage_path, storage_fs = ctx.storage.ray_train_storage()
    plan = snapshot.train_manifest
    streamed = {}
    if plan is not None:  # the workers read their shards of the files; only the validation rows travel
        streamed = {"datasets": {"train": _streamed_rows(ctx, plan, snapshot.table)}}
        data = data[2]
        why += "; training rows streamed through Ray Data (ingest.stream_above_rows/bytes)"
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"model_source": ctx.pipeline.model_file.read_text(), "data": ray.put(data),
                           "init_weights": init_ref, "recipe": rec, "seed": cfg.seed,
                           "streamed_rows": plan["train_rows"] if plan else 0},
        # Streaming: a worker takes half a CPU, so Ray Data's read tasks find CPUs beside it, and
        # the workers spread over the nodes (half-CPU workers would otherwise pack onto one).
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": 0.5} if plan and not use_gpu else None,
                                     placement_strategy="SPREAD" if plan else "PACK"),
        **streamed,
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
        weights_file=str(weights), sha256=sha256_file(weights), epochs=len(history), num_workers=workers,
        use_gpu=use_gpu, warm_started_from=snapshot.champion.version if init else None, history=tuple(history),
        nodes=tuple(run_info["nodes"]), restarts=run_info["restarts"], resumed_from_epoch=run_info["resumed_from_epoch"],
        workers_reason=why, lr=lr, mixed_precision=amp_why, hooks=tuple(hooks.names()),
        stopped_early=run_info["stopped_early"], best_epoch=run_info["best_epoch"],
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
