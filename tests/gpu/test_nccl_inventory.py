"""GPU paths of scale-out on a real GPU: NVML's inventory, NCCL collectives, and Ray Train on
one worker per GPU. Skipped, with the reason, where there is no NVIDIA GPU (or no Ray)."""

import os

import pytest

from orchestrator.measure.energy import gpu_inventory

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device visible to torch: the NCCL and GPU-training paths need an NVIDIA GPU",
                allow_module_level=True)


def test_nvml_lists_the_gpus_torch_sees():
    names = gpu_inventory()
    assert len(names) == torch.cuda.device_count(), names
    assert torch.cuda.get_device_name(0) in names[0] or names[0] in torch.cuda.get_device_name(0)


def _all_reduce(rank: int, world: int, port: int, out) -> None:
    import torch.distributed as dist

    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.cuda.set_device(rank)
    t = torch.full((4,), float(rank + 1), device=f"cuda:{rank}")
    dist.all_reduce(t)
    out.put((rank, t.cpu().tolist()))
    dist.destroy_process_group()


def test_nccl_all_reduce_across_every_gpu():
    import socket

    import torch.multiprocessing as mp

    world = torch.cuda.device_count()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_all_reduce, args=(r, world, port, q)) for r in range(world)]
    for p in procs:
        p.start()
    results = dict(q.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    expected = float(sum(range(1, world + 1)))
    assert all(v == [expected] * 4 for v in results.values()), results


def test_ray_train_auto_uses_one_nccl_worker_per_gpu(tmp_path, monkeypatch):
    pytest.importorskip("ray", reason="Ray is not installed on this GPU machine")
    from types import SimpleNamespace

    import ray

    from orchestrator.stages.train import plan_workers

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_gpus=torch.cuda.device_count(), include_dashboard=False)
    try:
        n, use_gpu, why = plan_workers(SimpleNamespace(workers="auto", use_gpu="auto"), ray.cluster_resources(), 1)
        assert (n, use_gpu) == (torch.cuda.device_count(), True), why
        from orchestrator.runtime import gpu_inventory

        assert sum(len(v) for v in gpu_inventory().values()) == n
    finally:
        ray.shutdown()
        os.environ.pop("RAY_ADDRESS", None)
