"""Scale-out decisions that need no cluster: how many workers, where state may live, what a
submitted job carries."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator.errors import ConfigError, TrainingError
from orchestrator.stages.train import plan_workers
from orchestrator.storage import Storage
from orchestrator.submit import job_spec

ROOT = Path(__file__).resolve().parents[2]


def _train(workers=2, use_gpu="auto"):
    return SimpleNamespace(workers=workers, use_gpu=use_gpu)


@pytest.mark.parametrize("cfg, resources, cpu_nodes, expected", [
    (_train("auto"), {"CPU": 16, "GPU": 4}, 2, (4, True)),     # one per GPU, NCCL
    (_train("auto"), {"CPU": 2}, 1, (1, False)),               # no GPU: one per node
    (_train("auto"), {"CPU": 2}, 3, (3, False)),
    (_train(3), {"CPU": 8, "GPU": 2}, 2, (3, True)),           # a count is taken as given
    (_train(2, use_gpu=False), {"CPU": 8, "GPU": 2}, 2, (2, False)),
])
def test_workers_plan_and_its_reason(cfg, resources, cpu_nodes, expected):
    n, gpu, why = plan_workers(cfg, resources, cpu_nodes)
    assert (n, gpu) == expected and why


def test_gpu_forced_on_a_cluster_without_gpus_names_the_fix():
    with pytest.raises(TrainingError, match="use_gpu: auto"):
        plan_workers(_train("auto", use_gpu=True), {"CPU": 4}, 1)


def test_a_node_local_store_is_refused_on_a_multi_machine_cluster(tmp_path):
    Storage(None, tmp_path).check_reachable(hosts=1)  # one machine: its disk is everyone's
    with pytest.raises(ConfigError, match=r"s3://.*storage.shared: true"):
        Storage(None, tmp_path).check_reachable(hosts=3)
    with pytest.raises(ConfigError, match="node-local"):
        Storage(str(tmp_path / "store"), tmp_path).check_reachable(hosts=2)
    Storage(str(tmp_path / "nfs"), tmp_path, shared=True).check_reachable(hosts=2)
    Storage("s3://bucket/prefix", tmp_path).check_reachable(hosts=5)


def test_a_path_store_mirrors_files_once_and_gives_them_back(tmp_path):
    store = Storage(str(tmp_path / "store"), tmp_path / "home")
    src = tmp_path / "cycle"
    (src / "checkpoint").mkdir(parents=True)
    (src / "checkpoint" / "weights.pt").write_bytes(b"w" * 10)
    (src / "record.json").write_text("{}")
    assert store.put_tree(src, "cycles/p/1") == 2
    assert store.put_tree(src, "cycles/p/1") == 0, "unchanged files are not copied again"
    assert store.list("cycles") == ["cycles/p/1/checkpoint/weights.pt", "cycles/p/1/record.json"]
    back = tmp_path / "back" / "weights.pt"
    assert store.get_file("cycles/p/1/checkpoint/weights.pt", back) and back.read_bytes() == b"w" * 10
    assert not store.get_file("cycles/p/1/missing", tmp_path / "missing")


def test_the_default_store_is_plaster_home_and_copies_nothing(tmp_path):
    store = Storage(None, tmp_path)
    f = tmp_path / "x"
    f.write_text("x")
    assert store.local and not store.put_file(f, "x") and store.ray_train_storage() == (str(tmp_path / "ray"), None)


def test_job_spec_ships_the_pipeline_and_the_package_and_forwards_where_results_go(digits, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never-forwarded")
    spec = job_spec(digits, {"EXTRA": "1"})
    env = spec["runtime_env"]
    assert env["working_dir"] == str(digits.resolve()) and env["py_modules"][0].endswith("orchestrator")
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000" and env["env_vars"]["EXTRA"] == "1"
    assert "AWS_SECRET_ACCESS_KEY" not in env["env_vars"], "credentials belong to the cluster, not the job spec"
    assert spec["entrypoint"].startswith("python -m orchestrator.cli run . --json")
    assert "entrypoint_resources" not in spec

    yaml_file = digits / "pipeline.yaml"
    yaml_file.write_text(yaml_file.read_text().replace("build:\n", "build:\n  serving_gpu: H100\n"))
    assert job_spec(digits)["entrypoint_resources"] == {"accelerator_type:H100": 0.001}


@pytest.mark.parametrize("name", ["lake", "iceberg"])
def test_the_working_dir_a_lake_pipeline_ships_is_the_whole_pipeline(name, home, tmp_path):
    """The lake pipelines learn the tabular model: what Ray uploads as the job's working_dir (its
    own packaging of the folder) must hold it, and so must model.py's source alone, which is what
    Ray Train workers get."""
    import zipfile

    import torch
    from ray._private.runtime_env.packaging import create_package

    from orchestrator.config import load_module, load_pipeline

    env = job_spec(ROOT / "pipelines" / name)["runtime_env"]
    create_package(env["working_dir"], tmp_path / "job.zip", include_gitignore=True, excludes=env["excludes"])
    shipped = tmp_path / "cluster" / "working_dir"  # no sibling pipelines beside it on the cluster
    zipfile.ZipFile(tmp_path / "job.zip").extractall(shipped)
    assert sorted(p.name for p in shipped.iterdir()) == ["model.py", "pipeline.yaml", "simulate.py"]
    pipeline = load_pipeline(shipped)  # check_model: builds the model from the shipped model.py
    (tmp_path / "worker").mkdir()
    (tmp_path / "worker" / "model.py").write_text(pipeline.model_file.read_text())
    assert load_module(tmp_path / "worker" / "model.py").build_model()(torch.zeros(2, 24)).shape == (2, 3)


def test_submit_refuses_a_bad_pipeline_and_a_bad_env_before_contacting_anyone(digits, tmp_path):
    def submit(*args):
        out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "submit", *args,
                              "--address", "http://127.0.0.1:9"], capture_output=True, text=True, timeout=60)
        out.stderr = " ".join(out.stderr.split())  # rich wraps long lines
        return out

    bad_env = submit(str(digits), "--env", "NOEQUALS")
    assert bad_env.returncode == 2 and "KEY=VALUE" in bad_env.stderr
    missing = submit(str(tmp_path / "nope"))
    assert missing.returncode != 0 and "not found: a pipeline is a folder" in missing.stderr
    unreachable = submit(str(digits))
    assert unreachable.returncode == 2 and "http://HEAD:8265" in unreachable.stderr, unreachable.stderr


def test_submit_waits_for_a_just_started_heads_job_agent_then_names_the_fix(digits, monkeypatch):
    """Ray's job server says "No available agent ... try again later" until the head's agent is up."""
    from orchestrator import submit as jobs

    class JobServer:  # stands in for our client() seam: what Ray's JobSubmissionClient raises
        def __init__(self, busy: int):
            self.busy, self.calls = busy, 0

        def submit_job(self, **spec):
            self.calls += 1
            if self.calls <= self.busy:
                raise RuntimeError("Request failed with status code 500: No available agent to submit job, "
                                   "please try again later.")
            return "raysubmit_1"

    monkeypatch.setattr(jobs.time, "sleep", lambda s: None)
    server, said = JobServer(busy=2), []
    monkeypatch.setattr(jobs, "client", lambda address, token=None: server)
    assert jobs.submit(digits, "http://head:8265", say=said.append) == "raysubmit_1"
    assert server.calls == 3 and len(said) == 2 and "not up yet" in said[0]

    monkeypatch.setattr(jobs, "client", lambda address, token=None: JobServer(busy=10**6))
    with pytest.raises(jobs.SubmitError, match="dashboard_agent.log"):
        jobs.submit(digits, "http://head:8265", agent_wait_s=0)


def test_engine_cache_key_changes_with_the_gpu_model_and_the_library_version():
    """A TensorRT plan runs only on the GPU model and TensorRT release it was built with: either
    changing gives a new key, so the champion's engine is rebuilt (and validated again)."""
    from orchestrator.stages.build import cache_key

    def backend(device, version):
        return SimpleNamespace(name="tensorrt", device=lambda: device, version=lambda: version)

    base = cache_key(backend("NVIDIA H100 sm_90", "11.4.0"), "abc", "fp16")
    assert base == cache_key(backend("NVIDIA H100 sm_90", "11.4.0"), "abc", "fp16")
    assert base != cache_key(backend("NVIDIA L4 sm_89", "11.4.0"), "abc", "fp16")
    assert base != cache_key(backend("NVIDIA H100 sm_90", "11.5.0"), "abc", "fp16")


def test_tiny_compute_trains_in_this_process_and_says_why(home, digits):
    """workers: auto + an estimate under train.in_process_below_s: no Ray Train worker group."""
    from fakes import context

    from orchestrator import api
    from orchestrator.stages import ingest, train

    yaml_file = digits / "pipeline.yaml"
    yaml_file.write_text(yaml_file.read_text().replace("epochs: 30", "epochs: 3\n  checkpoint_every: 1"))
    api.simulate(digits, shards=1)
    ctx = context(home, digits)
    snapshot = ingest.run(ctx)
    ckpt = train.run(ctx, snapshot)
    assert ckpt.placement == "in_process" and ckpt.num_workers == 1
    assert "estimated compute" in ckpt.workers_reason and "in_process_below_s" in ckpt.workers_reason
    assert [h["epoch"] for h in ckpt.history] == [0, 1, 2] and ckpt.history[-1]["train_loss"] > 0
    import torch

    weights = torch.load(ckpt.weights_file, weights_only=True)
    ctx.pipeline.module().build_model().load_state_dict(weights)  # a complete state dict of the model
    assert [step for _, m, step in ctx.registry.metrics if "train_loss" in m] == [0, 1, 2], "history went to MLflow"
    assert ckpt.restarts == 0 and ckpt.resumed_from_epoch is None

    # The stage run again in the same cycle folder (what `plaster run --resume` does after a
    # crash) continues from the last checkpoint (epoch 1) instead of training again.
    again = train.run(ctx, snapshot)
    assert again.restarts == 1 and again.resumed_from_epoch == 2
    assert [h["epoch"] for h in again.history] == [0, 1, 2] and again.history[:2] == ckpt.history[:2]
