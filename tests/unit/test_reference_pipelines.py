"""The reference pipelines keep their word: simulate.py writes the columns pipeline.yaml
declares, and build_model() maps a zero batch of the declared inputs to the task's output.

pipeline.yaml is read as plain YAML here, so these checks hold the pipelines to their own
declarations whatever the schema does.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
import yaml

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"
NAMES = ["tabular", "text", "regression", "weighted"]


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(f"ref_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config(name: str) -> dict:
    return yaml.safe_load((PIPELINES / name / "pipeline.yaml").read_text())


def _simulate(name: str, folder: Path, shards: int, **kw) -> tuple[list[Path], Path]:
    golden = folder / "golden.parquet"
    paths = _module(PIPELINES / name / "simulate.py").simulate(folder / "shards", golden, shards, **kw)
    return paths, golden


def _check_table(table: pa.Table, cfg: dict) -> None:
    data = cfg["data"]
    for name, spec in data["inputs"].items():
        if "columns" in spec:
            for c in spec["columns"]:
                assert c in table.column_names, f"input {name}: column {c} missing"
                t = table.schema.field(c).type
                assert pa.types.is_floating(t) or pa.types.is_integer(t), f"{c} is {t}, not numeric"
                assert table.column(c).null_count == 0
        else:
            col, width = spec["column"], int(np.prod(spec["shape"]))
            t = table.schema.field(col).type
            assert pa.types.is_list(t), f"{col} is {t}, expected a list column"
            want = spec.get("dtype", "float32")
            assert t.value_type == pa.from_numpy_dtype(np.dtype(want)), f"{col} holds {t.value_type}, not {want}"
            lengths = pc.list_value_length(table.column(col)).to_numpy()
            assert np.all(lengths == width), f"{col}: rows of {set(lengths)} values, expected {width}"
            if "vocab_size" in spec:
                ids = pc.list_flatten(table.column(col)).to_numpy()
                assert ids.min() >= 0 and ids.max() < spec["vocab_size"]

    target, task = data["target"], cfg.get("task", "classification")
    t = table.schema.field(target["column"]).type
    y = table.column(target["column"])
    if task == "classification":
        assert pa.types.is_integer(t)
        values = y.to_numpy()
        assert values.min() >= 0 and values.max() < target["num_classes"]
    elif task == "multilabel":
        assert pa.types.is_list(t) and pa.types.is_integer(t.value_type)
        assert np.all(pc.list_value_length(y).to_numpy() == target["num_labels"])
        assert set(np.unique(pc.list_flatten(y).to_numpy())) <= {0, 1}
    else:
        assert pa.types.is_floating(t)
        assert np.all(np.isfinite(y.to_numpy()))


@pytest.mark.parametrize("name", NAMES)
def test_simulate_writes_the_declared_columns_and_appends(name, tmp_path):
    cfg = _config(name)
    for key in ("name", "description", "task"):
        assert cfg.get(key), f"{name}/pipeline.yaml: {key} missing"
    assert cfg["data"]["source"] == f"${{PLASTER_HOME}}/data/{name}/shards"
    assert cfg["data"]["golden"] == f"${{PLASTER_HOME}}/data/{name}/golden.parquet"

    paths, golden = _simulate(name, tmp_path, 2)
    assert [p.name for p in paths] == ["shard-00000.parquet", "shard-00001.parquet"]
    for p in [*paths, golden]:
        table = pq.read_table(p)
        assert table.num_rows > 0
        _check_table(table, cfg)

    # The next call appends after the existing shards and leaves the golden holdout alone.
    before = golden.stat().st_mtime_ns
    more, _ = _simulate(name, tmp_path, 1)
    assert [p.name for p in more] == ["shard-00002.parquet"]
    assert golden.stat().st_mtime_ns == before


@pytest.mark.parametrize("name", NAMES)
def test_simulate_is_deterministic_and_shuffling_changes_only_what_it_says(name, tmp_path):
    (a,), _ = _simulate(name, tmp_path / "a", 1)
    (b,), _ = _simulate(name, tmp_path / "b", 1)
    assert pq.read_table(a).equals(pq.read_table(b)), "shard 0 must be a function of its index"
    (bad,), _ = _simulate(name, tmp_path / "bad", 1, shuffle_labels=True)
    column = _config(name)["data"]["target"]["column"]
    good_y, bad_y = pq.read_table(a).column(column), pq.read_table(bad).column(column)
    assert not good_y.equals(bad_y)
    _check_table(pq.read_table(bad), _config(name))


@pytest.mark.parametrize("name", NAMES)
def test_model_maps_a_zero_batch_to_the_tasks_output(name):
    cfg = _config(name)
    data, task = cfg["data"], cfg.get("task", "classification")
    target = data["target"]
    outputs = {"classification": target.get("num_classes"), "multilabel": target.get("num_labels"),
               "regression": len(target.get("columns") or [target.get("column")])}[task]
    batch = {}
    for input_name, spec in data["inputs"].items():
        if "columns" in spec:
            batch[input_name] = torch.zeros(2, len(spec["columns"]))
        else:
            dtype = torch.int64 if spec.get("dtype") == "int64" else torch.float32
            batch[input_name] = torch.zeros(2, *spec["shape"], dtype=dtype)
    model = _module(PIPELINES / name / "model.py").build_model().eval()
    with torch.no_grad():
        out = model(*batch.values()) if len(batch) == 1 else model(**batch)
    assert out.shape == (2, outputs) and out.is_floating_point()


def test_weighted_hooks_keep_their_contract():
    from orchestrator.door import Batch, TrainSettings

    mod = _module(PIPELINES / "weighted" / "model.py")
    model = mod.build_model()
    x = torch.rand(16, 1, 8, 8)
    y = torch.arange(16) % 10
    batch = Batch(inputs={"image": x}, target=y)

    augmented = mod.augment(batch, torch.Generator().manual_seed(0))
    again = mod.augment(batch, torch.Generator().manual_seed(0))
    img = augmented.inputs["image"]
    assert img.shape == x.shape and img.dtype == x.dtype and torch.equal(augmented.target, y)
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    assert torch.equal(img, again.inputs["image"]), "augment must draw only from the generator"
    assert not torch.equal(img, x)

    loss = mod.loss(model(x), batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()

    settings = TrainSettings(lr=0.003, epochs=2, steps_per_epoch=3, batch_size=64)
    opt, sched = mod.build_optimizer(model.parameters(), settings)
    for _ in range(settings.epochs * settings.steps_per_epoch + 2):  # past its length: must not raise
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] <= settings.lr


def test_tabular_boundary_drifts_mildly_and_the_golden_rule_stays_close(monkeypatch):
    """Concept drift, not only covariate shift: the same point can change class from shard to
    shard, yet the rule never strays far from shard 0's, which labels the golden holdout."""
    sim = _module(PIPELINES / "tabular" / "simulate.py")
    golden_population = sim._factors(0, 20_000, np.random.default_rng(0))
    golden_rule = sim.labels_of(golden_population)
    turns = [sim.boundary_turn(k) for k in range(40)]
    assert turns[0] == 0.0
    assert all(a != b for a, b in zip(turns, turns[1:])), "the boundary moves at every shard"
    relabelled = [float(np.mean(sim.labels_of(golden_population, t) != golden_rule)) for t in turns]
    assert max(relabelled) <= 0.10, f"the rule strays too far from the golden one ({max(relabelled):.1%} of its rows)"
    assert min(relabelled[4:8]) >= 0.03, "the second cycle's shards must see a moved boundary"

    # The shards' labels follow the turned rule: the same draws without the turn label differently.
    turned = sim._rows(5, 4000, np.random.default_rng(5), False)["label"]
    monkeypatch.setattr(sim, "BOUNDARY_TURN_PER_SHARD", 0.0)
    fixed = sim._rows(5, 4000, np.random.default_rng(5), False)["label"]
    assert 0.02 <= float(np.mean(turned != fixed)) <= 0.12
