"""Bad input, per the declared schema, gets a clear error in each place it can arrive: a shard
(ShardInvalid: the quarantine reason), a request to the server (BadInput: a 4xx) and the
pipeline itself (ConfigError from `plaster validate-config`). Every message names the column,
input or key and what was expected. The reference pipelines' own schemas are used: tabular
(scalar column groups), text (int64 tokens with a vocab_size, a dense side input, a multilabel
target), regression (a float target) and digits (one list input)."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.config import load_pipeline
from orchestrator.dataset import ShardInvalid, example_columns, read_shard, write_columns
from orchestrator.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("tabular", "text", "regression", "digits")


@pytest.fixture(scope="module")
def pipelines():
    return {n: load_pipeline(ROOT / "pipelines" / n, check=False) for n in NAMES}


def good_columns(p, n: int = 3) -> dict:
    return example_columns(p, n, fill=0)


def shard(tmp_path, p, **replace) -> Path:
    """A shard of good rows written by write_columns, with some columns replaced by Arrow arrays."""
    path = tmp_path / f"{p.name}.parquet"
    write_columns(path, good_columns(p))
    table = pq.read_table(path)
    for name, array in replace.items():
        table = table.set_column(table.column_names.index(name), name, array)
    pq.write_table(table, path)
    return path


def reason(tmp_path, p, **replace) -> str:
    with pytest.raises(ShardInvalid) as e:
        read_shard(shard(tmp_path, p, **replace), p.inputs, p.target)
    return str(e.value)


def test_good_shards_of_every_reference_pipeline_read(tmp_path, pipelines):
    for p in pipelines.values():
        x, y = read_shard(shard(tmp_path, p), p.inputs, p.target)
        assert set(x) == {i.name for i in p.inputs} and len(y) == 3


F64, I64 = pa.float64(), pa.int64()
TOKENS = pa.list_(pa.int64())
ROWS32 = [[1] * 32, [2] * 32, [3] * 32]

# (pipeline, kind, replaced columns, words the reason must hold)
SHARDS = [
    ("tabular", "string in a numeric column", {"f03": pa.array(["a", "b", "c"])},
     ["'f03'", "string", "a number", "input 'dense'"]),
    ("tabular", "null in a numeric column", {"f03": pa.array([1.0, None, 2.0])},
     ["null", "'f03'", "row 1", "input 'dense'"]),
    ("tabular", "NaN in a numeric column", {"f07": pa.array([1.0, float("nan"), 2.0])},
     ["NaN", "input 'dense'", "'f07'"]),
    ("tabular", "null class id", {"label": pa.array([0, None, 1], type=I64)},
     ["missing label", "'label'", "row 1", "0..2"]),
    ("tabular", "class id out of range", {"label": pa.array([0, 3, 1], type=I64)},
     ["'label'", "outside 0..2", "num_classes=3"]),
    ("tabular", "float class ids", {"label": pa.array([0.0, 1.0, 2.0])}, ["'label'", "double", "integer class ids"]),
    ("text", "token id >= vocab_size", {"tokens": pa.array([[1] * 31 + [1000], [2] * 32, [3] * 32], type=TOKENS)},
     ["'tokens'", "outside 0..999", "vocab_size=1000", "input 'tokens'"]),
    ("text", "negative token id", {"tokens": pa.array([[1] * 32, [-1] * 32, [3] * 32], type=TOKENS)},
     ["'tokens'", "-1", "outside 0..999"]),
    ("text", "null token row", {"tokens": pa.array([[1] * 32, None, [3] * 32], type=TOKENS)},
     ["'tokens'", "null", "row 1", "32 int64 ids in 0..999"]),
    ("text", "null inside the token list", {"tokens": pa.array([[1] * 32, [1] * 31 + [None], [3] * 32], type=TOKENS)},
     ["null value", "'tokens'", "row 1", "int64 ids in 0..999"]),
    ("text", "float token ids", {"tokens": pa.array([[1.0] * 32] * 3, type=pa.list_(F64))},
     ["'tokens'", "double", "int64 ids", "input 'tokens'"]),
    ("text", "tokens as a string", {"tokens": pa.array(["a b", "c", "d"])},
     ["'tokens'", "string", "a list of 32 int64 ids"]),
    ("text", "string in the dense input", {"hour": pa.array(["1", "2", "3"])}, ["'hour'", "string", "input 'meta'"]),
    ("text", "null in the dense input", {"links": pa.array([1, None, 2], type=I64)}, ["'links'", "null", "input 'meta'"]),
    ("text", "multilabel row too short", {"topics": pa.array([[0, 1, 0, 0, 1], [1, 0, 0, 0], [0] * 5], type=TOKENS)},
     ["'topics'", "row 1", "4 values", "expected 5", "num_labels=5"]),
    ("text", "multilabel row too long", {"topics": pa.array([[0] * 6] * 3, type=TOKENS)},
     ["'topics'", "6 values", "expected 5"]),
    ("text", "multilabel value not 0/1", {"topics": pa.array([[0, 1, 0, 0, 1], [2, 0, 0, 0, 0], [0] * 5], type=TOKENS)},
     ["'topics'", "other than 0 and 1", "row 1", "found 2"]),
    ("text", "multilabel NaN", {"topics": pa.array([[0.0] * 5, [float("nan")] + [0.0] * 4, [0.0] * 5],
                                                   type=pa.list_(F64))},
     ["'topics'", "other than 0 and 1", "nan"]),
    ("text", "null multilabel row", {"topics": pa.array([[0] * 5, None, [0] * 5], type=TOKENS)},
     ["'topics'", "null", "row 1", "0/1 labels"]),
    ("regression", "NaN target", {"progression": pa.array([1.0, float("nan"), 2.0])},
     ["'progression'", "NaN/inf", "row 1", "finite"]),
    ("regression", "infinite target", {"progression": pa.array([float("-inf"), 1.0, 2.0])},
     ["'progression'", "NaN/inf", "row 0", "finite"]),
    ("regression", "target beyond float32", {"progression": pa.array([1.0, 2.0, 1e300])},
     ["'progression'", "beyond float32", "row 2"]),
    ("regression", "null target", {"progression": pa.array([1.0, None, 2.0])},
     ["'progression'", "null", "row 1", "float target"]),
    ("regression", "string target", {"progression": pa.array(["1", "2", "3"])},
     ["'progression'", "string", "float target"]),
    ("regression", "string in a numeric column", {"bmi": pa.array(["x", "y", "z"])},
     ["'bmi'", "string", "input 'measurements'"]),
    ("digits", "string in the list input", {"pixels": pa.array([["a"] * 64] * 3)},
     ["'pixels'", "string", "float32", "input 'input'"]),
    ("digits", "null inside the list input", {"pixels": pa.array([[0.0] * 64, [0.0] * 64, [None] * 64],
                                                                 type=pa.list_(pa.float32()))},
     ["null value", "'pixels'", "row 2", "float32"]),
    ("digits", "wrong shape", {"pixels": pa.array([[0.0] * 60] * 3, type=pa.list_(pa.float32()))},
     ["'pixels'", "60 values", "expected 64", "[1, 8, 8]"]),
    ("digits", "infinite feature", {"pixels": pa.array([[0.0] * 64, [float("inf")] * 64, [0.0] * 64],
                                                       type=pa.list_(pa.float32()))},
     ["'pixels'", "NaN/inf", "row 1", "input 'input'"]),
]


@pytest.mark.parametrize("name, kind, replace, words", SHARDS, ids=[f"{s[0]}-{s[1]}" for s in SHARDS])
def test_a_bad_shard_is_invalid_naming_the_column_and_the_expectation(tmp_path, pipelines, name, kind, replace, words):
    msg = reason(tmp_path, pipelines[name], **replace)
    for w in words:
        assert w in msg, (kind, w, msg)


@pytest.mark.parametrize("name", NAMES)
def test_a_missing_column_names_it_and_what_is_expected(tmp_path, pipelines, name):
    p = pipelines[name]
    path = shard(tmp_path, p)
    gone = p.inputs[-1].parquet_columns[0]
    pq.write_table(pq.read_table(path).drop_columns([gone]), path)
    with pytest.raises(ShardInvalid, match=f"missing column.*{gone}.*expected"):
        read_shard(path, p.inputs, p.target)


def test_multilabel_targets_may_be_0_1_floats_or_booleans(tmp_path, pipelines):
    """A 0/1 list stored as floats or booleans is a 0/1 list; it was refused as 'integer ids'."""
    p = pipelines["text"]
    want = np.eye(5, dtype=np.float32)[[0, 1, 2]]
    for array in (pa.array(want.tolist(), type=pa.list_(pa.float32())), pa.array((want > 0).tolist())):
        _, y = read_shard(shard(tmp_path, p, topics=array), p.inputs, p.target)
        assert y.dtype == np.float32 and (y == want).all()


@pytest.mark.parametrize("name, bad, words", [
    ("text", {"tokens": pa.array([[5] * 31 + [1000]] * 3, type=TOKENS)}, ["outside 0..999", "vocab_size=1000"]),
    ("regression", {"progression": pa.array([1.0, float("nan"), 2.0])}, ["NaN/inf", "'progression'"]),
    ("tabular", {"f03": pa.array(["a", "b", "c"])}, ["'f03'", "string"]),
])
def test_ingest_quarantines_the_bad_shard_with_its_reason_and_keeps_the_good_ones(home, tmp_path, name, bad, words):
    """Each kind through the real ingest stage: the bad shard moves aside byte for byte with a
    reason file, and the good shards still make the snapshot."""
    from fakes import context

    from orchestrator import api
    from orchestrator.stages import ingest

    folder = tmp_path / "pipelines" / name
    shutil.copytree(ROOT / "pipelines" / name, folder, ignore=shutil.ignore_patterns("__pycache__"))
    good = api.simulate(folder, shards=2)
    p = load_pipeline(folder, check=False)
    src = good[0].parent
    table = pq.read_table(good[0]).slice(0, 3)
    for col, array in bad.items():
        table = table.set_column(table.column_names.index(col), col, array)
    pq.write_table(table, src / "bad.parquet")
    before = (src / "bad.parquet").read_bytes()

    snap = ingest.run(context(home, folder))

    (q,) = snap.quarantined
    assert q.name == "bad.parquet"
    for w in words:
        assert w in q.reason, (w, q.reason)
    assert (src / "_quarantine" / "bad.parquet").read_bytes() == before
    assert json.loads((src / "_quarantine" / "bad.parquet.reason.json").read_text())["reason"] == q.reason
    assert [s.name for s in snap.new_shards] == [g.name for g in good] and p.name == name


# --- serving: the request parser -------------------------------------------------------------


def parse(p, body):
    from orchestrator import serving

    specs = [dataclasses.asdict(i) for i in p.inputs]
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return serving.parse_inputs(raw, specs, p.config.build.max_batch)


def refused(p, body) -> tuple[int, str]:
    from orchestrator import serving

    with pytest.raises(serving.BadInput) as e:
        parse(p, body)
    return e.value.status, str(e.value)


def text_body(**change):
    body = {"tokens": [[1] * 32, [2] * 32], "meta": [[10.0, 1, 3], [20.0, 0, 4]]}
    body.update(change)
    return {"inputs": {k: v for k, v in body.items() if v is not ...}}


REQUESTS = [
    ("text", "null in an input", text_body(meta=[[10.0, None, 3], [20.0, 0, 4]]), 422,
     ['"inputs"."meta"', "found null", "[0][1]", "numbers", "shape [3]"]),
    ("text", "an input that is null", text_body(tokens=None), 422,
     ['"inputs"."tokens"', "must be a list of int64 ids in 0..999", "got null"]),
    ("text", "a string in an input", text_body(meta=[[10.0, "x", 3], [20.0, 0, 4]]), 422,
     ['"inputs"."meta"', "found strings", '"x"', "numbers"]),
    ("text", "token id >= vocab_size", text_body(tokens=[[1] * 31 + [1000], [2] * 32]), 422,
     ['"inputs"."tokens"', "outside 0..999", "vocab_size 1000"]),
    ("text", "negative token id", text_body(tokens=[[1] * 32, [-3] * 32]), 422, ['"inputs"."tokens"', "-3..", "0..999"]),
    ("text", "float token ids", text_body(tokens=[[1.5] * 32, [2] * 32]), 422,
     ['"inputs"."tokens"', "integer ids", "found floats", "1.5"]),
    ("text", "wrong shape", text_body(tokens=[[1] * 30, [2] * 30]), 422,
     ['"inputs"."tokens"', "shape [2, 30]", "[N, 32]"]),
    ("text", "a missing input", text_body(meta=...), 422, ['missing "meta"', "shape [3]", '"tokens": ..., "meta"']),
    ("text", "an unknown input", {"inputs": {**text_body()["inputs"], "extra": [1]}}, 422,
     ['unknown "extra"', "tokens, meta"]),
    ("text", "different batch sizes", text_body(meta=[[10.0, 1, 3]]), 422, ["different numbers of examples"]),
    ("text", "one input for two", {"inputs": [[1] * 32]}, 422, ["object by input name", '"tokens"', '"meta"']),
    ("tabular", "null in the dense input", {"inputs": {"dense": [[0.0] * 23 + [None]]}}, 422,
     ['"inputs"."dense"', "found null", "[0][23]", "shape [24]"]),
    ("tabular", "a boolean", {"inputs": {"dense": [[True] * 24]}}, 422, ['"inputs"."dense"', "found booleans"]),
    ("regression", "NaN", b'{"inputs": {"measurements": [[NaN, 0, 0, 0, 0, 0, 0, 0, 0, 0]]}}', 400,
     ["NaN", "not JSON", "finite numbers"]),
    ("regression", "beyond float32", {"inputs": {"measurements": [[1e300] * 10]}}, 422,
     ['"inputs"."measurements"', "beyond float32"]),
    ("digits", "null in the one input", {"inputs": [[[0.0] * 8] * 7 + [[0.0] * 7 + [None]]]}, 422,
     ['"inputs"', "found null", "[0][7][7]", "[1, 8, 8]"]),
    ("digits", "a string in the one input", {"inputs": [[["x"] * 8] * 8]}, 422, ["only numbers, found str"]),
    ("digits", "wrong shape", {"inputs": [0.0] * 60}, 422, ["shape [60]", "[1, 8, 8]"]),
    ("digits", "an unknown input name", {"inputs": {"pixels": [[[0.0] * 8] * 8]}}, 422,
     ['missing "input"', 'unknown "pixels"', "[1, 8, 8]"]),
    ("digits", "too many examples", {"inputs": np.zeros((257, 1, 8, 8)).tolist()}, 413, ["at most 256"]),
]


@pytest.mark.parametrize("name, kind, body, status, words", REQUESTS, ids=[f"{r[0]}-{r[1]}" for r in REQUESTS])
def test_a_bad_request_is_a_4xx_naming_the_input_and_the_expectation(pipelines, name, kind, body, status, words):
    got, msg = refused(pipelines[name], body)
    assert got == status, (kind, got, msg)
    for w in words:
        assert w in msg, (kind, w, msg)


def test_good_requests_parse_to_the_declared_dtypes(pipelines):
    x = parse(pipelines["text"], text_body())
    assert x["tokens"].dtype == np.int64 and x["tokens"].shape == (2, 32) and x["meta"].shape == (2, 3)
    assert parse(pipelines["digits"], {"inputs": [[[0.5] * 8] * 8]})["input"].shape == (1, 1, 8, 8)


# --- validate-config: the model and the gate ------------------------------------------------


@pytest.fixture
def copy_of(tmp_path):
    def copy(name: str) -> Path:
        dst = tmp_path / "pipelines" / name
        shutil.copytree(ROOT / "pipelines" / name, dst, ignore=shutil.ignore_patterns("__pycache__"))
        return dst
    return copy


def config_error(folder: Path) -> str:
    with pytest.raises(ConfigError) as e:
        load_pipeline(folder)
    return str(e.value)


def with_model(folder: Path, extra: str = "", replace: tuple[str, str] | None = None) -> Path:
    text = (folder / "model.py").read_text()
    if replace:
        assert replace[0] in text
        text = text.replace(*replace)
    (folder / "model.py").write_text(text + extra)
    return folder


@pytest.mark.parametrize("name, extra, words", [
    ("tabular", "\ndef build_model():\n    return nn.Sequential(nn.Linear(24, 2))\n",
     ["shaped [2, 2]", "task classification", "data.target.num_classes=3", "output 3 values"]),
    ("regression", "\ndef build_model():\n    return nn.Sequential(nn.Linear(10, 3))\n",
     ["shaped [2, 3]", "task regression", "data.target.column='progression'", "output 1 value,",
      "fix data.target.column"]),
    ("text", "\nimport torch\n\ndef build_model():\n    return _Six()\n\nclass _Six(nn.Module):\n"
             "    def forward(self, tokens, meta):\n        return torch.zeros(len(tokens), 6)\n",
     ["shaped [2, 6]", "task multilabel", "data.target.num_labels=5", "output 5 values"]),
])
def test_a_model_whose_outputs_do_not_fit_the_task_is_a_config_error(copy_of, name, extra, words):
    msg = config_error(with_model(copy_of(name), extra))
    for w in words:
        assert w in msg, (w, msg)


LOSS = "\nimport torch\nimport torch.nn.functional as _F\n"


@pytest.mark.parametrize("extra, words", [
    ("\ndef los(outputs, batch):\n    return outputs.sum()\n", ["los() is not a hook", "did you mean loss()"]),
    ("\ndef augmnet(batch, generator):\n    return batch\n", ["augmnet()", "did you mean augment()"]),
    ("\ndef loss(x):\n    return x.sum()\n", ["hook loss(x)", "2 positional arguments", "loss(outputs, batch)"]),
    ("\ndef train_step(model, batch):\n    return {}\n", ["train_step(model, batch)", "4 positional arguments"]),
    (LOSS + "loss = torch.nn.CrossEntropyLoss()\n", ["loss (a CrossEntropyLoss object)", "batch.target",
                                                      "F.cross_entropy(outputs, batch.target)"]),
    ("\nfrom torch.nn.functional import cross_entropy as loss\n", ["hook loss", "not Batch", "batch.target"]),
    ("\nloss = 0.5\n", ["loss is float (0.5)", "not a function", "loss(outputs, batch)"]),
    (LOSS + "\ndef loss(outputs, batch):\n    return outputs\n", ["returned Tensor", "scalar float tensor"]),
    (LOSS + "build_optimizer = torch.optim.Adam\n", ["build_optimizer", "torch.optim.Optimizer"]),
    (LOSS + "\ndef build_optimizer(params, settings):\n    return 'adam'\n", ["build_optimizer", "returned str"]),
    (LOSS + "\ndef augment(batch, generator):\n    return batch.inputs\n", ["augment", "returned dict", "Batch"]),
])
def test_a_bad_hook_is_a_config_error_naming_it(copy_of, extra, words):
    msg = config_error(with_model(copy_of("digits"), extra))
    for w in words:
        assert w in msg, (w, msg)
    assert "model.py" in msg


def test_every_hook_error_in_model_py_is_reported_at_once(copy_of):
    msg = config_error(with_model(copy_of("digits"), "\ndef los(outputs, batch):\n    return 0\n\n"
                                                      "def augment(batch):\n    return batch\n"))
    assert "2 errors" in msg and "los()" in msg and "augment(batch)" in msg


def test_a_hook_that_is_an_imported_or_callable_object_is_used_when_it_keeps_the_contract(copy_of):
    """A hook is whatever model.py binds to the hook's name: a callable object or a partial
    works if it takes (outputs, batch); it used to be ignored silently, training the default."""
    extra = ("\nimport functools\nimport torch.nn.functional as _F\n\n"
             "class _Smoothed:\n    def __call__(self, outputs, batch):\n"
             "        return _F.cross_entropy(outputs, batch.target, label_smoothing=0.1)\n\n"
             "loss = _Smoothed()\n\n"
             "def _adam(params, settings, betas):\n    return torch.optim.Adam(params, lr=settings.lr, betas=betas)\n\n"
             "build_optimizer = functools.partial(_adam, betas=(0.8, 0.9))\n")
    folder = with_model(copy_of("digits"), "\nimport torch\n" + extra)
    hooks = load_pipeline(folder).hooks()
    assert hooks.names() == ["loss", "build_optimizer"] and type(hooks.loss).__name__ == "_Smoothed"


def test_the_reference_weighted_hooks_still_pass(copy_of):
    assert load_pipeline(copy_of("weighted")).hooks().names() == ["loss", "build_optimizer", "augment"]


@pytest.mark.parametrize("name, old, new, words", [
    ("regression", "metric_max: {golden: {mae: 55.0}, new: {mae: 55.0, rmse: 68.0}}",
     "metric_min: {golden: {mae: 55.0}}", ["gate.metric_min.golden.mae", "lower-is-better", "gate.metric_max"]),
    ("text", "metric_min: {golden: {micro_f1: 0.80}, new: {micro_f1: 0.75}}",
     "metric_max: {golden: {micro_f1: 0.80}}", ["gate.metric_max.golden.micro_f1", "higher-is-better", "metric_min"]),
    ("regression", "non_inferiority: {golden: {mae: 4.0}, new: {mae: 4.0}}",
     "non_inferiority: {golden: {accuracy: 0.05}}", ["gate.non_inferiority.golden.accuracy", "mae, rmse"]),
])
def test_a_gate_rule_using_a_metric_the_wrong_way_round_is_a_config_error(copy_of, name, old, new, words):
    folder = copy_of(name)
    text = (folder / "pipeline.yaml").read_text()
    assert old in text
    (folder / "pipeline.yaml").write_text(text.replace(old, new))
    msg = config_error(folder)
    for w in words:
        assert w in msg, (w, msg)
