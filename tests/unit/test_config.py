import pytest

from orchestrator.config import load_pipeline
from orchestrator.errors import ConfigError


def test_reference_pipeline_is_valid(digits):
    p = load_pipeline(digits)
    assert p.name == "digits"
    assert p.config.data.features.shape == (1, 8, 8)
    assert p.config.validate_.latency_batches == (1, 64) and p.config.gate.latency_ratio_max == 1.10


def test_every_error_reported_at_once_naming_the_key(digits):
    text = (digits / "pipeline.yaml").read_text()
    text = text.replace("workers: auto", "wrkers: auto").replace("epochs: 30", "epochs: -1")
    text = text.replace("holdout_fraction: 0.2", "holdout_fraction: 1.5")
    (digits / "pipeline.yaml").write_text(text)
    with pytest.raises(ConfigError) as e:
        load_pipeline(digits)
    msg = str(e.value)
    assert "3 error(s)" in msg
    assert "train.wrkers: unknown key" in msg
    assert "train.epochs" in msg and "ingest.holdout_fraction" in msg


def test_missing_model_file_names_the_fix(digits):
    (digits / "model.py").unlink()
    with pytest.raises(ConfigError, match="build_model"):
        load_pipeline(digits)


def test_bad_yaml_and_missing_folder(tmp_path, digits):
    with pytest.raises(ConfigError, match="pipeline.yaml and model.py"):
        load_pipeline(tmp_path / "nope")
    (digits / "pipeline.yaml").write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pipeline(digits)


def config_errors(digits, **edits) -> str:
    """The ConfigError message after replacing each `old` with `new` in pipeline.yaml."""
    text = (digits / "pipeline.yaml").read_text()
    for old, new in edits.values():
        assert old in text, old
        text = text.replace(old, new)
    (digits / "pipeline.yaml").write_text(text)
    with pytest.raises(ConfigError) as e:
        load_pipeline(digits)
    return str(e.value)


def test_gate_slice_and_precision_checks(digits):
    msg = config_errors(digits, slice=("accuracy_min: {golden: 0.85, new: 0.70}", "accuracy_min: {golde: 0.85}"),
                        precision=("precisions: [fp32, fp16, int8]", "precisions: [fp16, int4]"))
    assert "gate" in msg and "golde" in msg
    assert "build.precisions" in msg


def test_gate_rules_must_name_known_slices_and_rules(digits):
    msg = config_errors(digits, slice=("non_inferiority: {golden: 0.05, new: 0.02}",
                                       "non_inferiority: {golden: 0.05, hard: 0.02}"),
                        rule=("required: []", "required: [energy]"))
    assert "gate.non_inferiority: unknown slice 'hard'" in msg and "data.slices" in msg
    assert "gate.required" in msg and "energy_j_per_1k_max" in msg


def test_a_warm_start_takes_its_own_epochs_and_learning_rate():
    """Fine-tuning the champion needs fewer epochs than training anew; unset, it trains as anew."""
    from orchestrator.config import TrainConfig
    from orchestrator.stages.train import recipe

    cfg = TrainConfig(epochs=30, lr=0.002, warm_start_epochs=10, warm_start_lr=0.001)
    assert recipe(cfg, warm=False) == (30, 0.002) and recipe(cfg, warm=True) == (10, 0.001)
    assert recipe(TrainConfig(epochs=30, lr=0.002), warm=True) == (30, 0.002)
    with pytest.raises(ValueError):
        TrainConfig(warm_start_epochs=0)


GOOD_MODEL = "from torch import nn\n\ndef build_model():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, {k}))\n"


@pytest.mark.parametrize("source, words", [
    ("def build_model(:\n", ["model.py:1", "SyntaxError"]),
    ("import plaster_no_such_package\n", ["failed to import", "ModuleNotFoundError", "plaster_no_such_package"]),
    ("def make_model():\n    pass\n", ["defines no build_model()"]),
    ("def build_model(width):\n    pass\n", ["build_model(width)", "no required arguments"]),
    ("def build_model():\n    raise RuntimeError('no weights file')\n",
     ["build_model()", "RuntimeError: no weights file"]),
    ("def build_model():\n    return 42\n", ["returned int (42)", "not a torch.nn.Module"]),
    (GOOD_MODEL.format(k=5), ["shaped [2, 5]", "label.num_classes=10", "output 10 values"]),
    ("from torch import nn\n\ndef build_model():\n    return nn.Sequential(nn.Flatten(), nn.Linear(48, 10))\n",
     ["data.features.shape [1, 8, 8]", "first layer"]),
    ("import torch\nfrom torch import nn\n\nclass M(nn.Module):\n    def forward(self, x):\n"
     "        return {'logits': torch.zeros(len(x), 10)}\n\ndef build_model():\n    return M()\n",
     ["returned dict", "one tensor of logits"]),
])
def test_model_contract_is_checked_at_load_time_naming_the_fix(digits, source, words):
    """DESIGN: the door is checked at load time. These used to fail minutes later in training
    (`IndexError: Target 7 is out of bounds`, `'int' object has no attribute ...`)."""
    (digits / "model.py").write_text(source)
    with pytest.raises(ConfigError) as e:
        load_pipeline(digits)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    assert "model.py" in str(e.value)
    load_pipeline(digits, check=False)  # status, history, rollback never need the model


def test_model_check_follows_the_declared_classes_and_runs_once_per_file(digits):
    (digits / "model.py").write_text(GOOD_MODEL.format(k=10))
    assert load_pipeline(digits).name == "digits"
    (digits / "model.py").write_text(GOOD_MODEL.format(k=3))  # edited: checked again
    with pytest.raises(ConfigError, match=r"shaped \[2, 3\]"):
        load_pipeline(digits)


def test_an_unset_environment_variable_in_a_path_is_a_load_time_error(digits, monkeypatch):
    monkeypatch.delenv("PLASTER_FAULT_NOPE", raising=False)
    monkeypatch.delenv("PLASTER_HOME", raising=False)  # always expandable: the workspace defaults it
    text = (digits / "pipeline.yaml").read_text().replace("${PLASTER_HOME}/data/digits/shards",
                                                          "${PLASTER_FAULT_NOPE}/shards")
    (digits / "pipeline.yaml").write_text(text)
    with pytest.raises(ConfigError, match="data.source: .*PLASTER_FAULT_NOPE, which are not set"):
        load_pipeline(digits)


def test_every_kind_of_error_is_reported_together_schema_slices_task_paths_and_model(digits, monkeypatch):
    """The task, path and model checks used to wait for the schema to pass (and the model for
    all of pipeline.yaml): fixing one error only revealed the next."""
    monkeypatch.delenv("PLASTER_FAULT_NOPE", raising=False)
    (digits / "model.py").write_text(GOOD_MODEL.format(k=5) + "\ndef los(outputs, batch):\n    return 0\n")
    msg = config_errors(digits, epochs=("epochs: 30", "epochs: -1"),
                        slice=("accuracy_min: {golden: 0.85, new: 0.70}",
                               "accuracy_min: {golde: 0.85}\n  metric_max: {golden: {accuracy: 0.99}}"),
                        path=("${PLASTER_HOME}/data/digits/golden.parquet", "${PLASTER_FAULT_NOPE}/golden.parquet"))
    assert "5 error(s)" in msg, msg
    assert "train.epochs" in msg
    assert "gate.accuracy_min: unknown slice 'golde'" in msg
    assert "gate.metric_max.golden.accuracy: accuracy is higher-is-better" in msg
    assert "data.golden" in msg and "PLASTER_FAULT_NOPE" in msg
    assert "los() is not a hook" in msg and "shaped [2, 5]" in msg and "label.num_classes=10" in msg


def test_the_model_is_checked_only_once_the_keys_it_depends_on_are_valid(digits):
    """model.py is checked against data.* and the task: with those wrong, what it must output is
    unknown, so only the YAML's errors are reported."""
    (digits / "model.py").write_text(GOOD_MODEL.format(k=5))
    msg = config_errors(digits, classes=("num_classes: 10", "num_classes: 1"))
    assert "data.label.num_classes" in msg and "1 error(s)" in msg and "shaped" not in msg
    text = (digits / "pipeline.yaml").read_text().replace("num_classes: 1", "num_classes: 10")
    (digits / "pipeline.yaml").write_text(text.replace("epochs: 30", "epochs: 0"))
    msg = str(pytest.raises(ConfigError, load_pipeline, digits).value)
    assert "2 error(s)" in msg and "train.epochs" in msg and "shaped [2, 5]" in msg


def test_a_task_check_runs_beside_a_schema_error_in_another_section(digits):
    msg = config_errors(digits, task=("name: digits", "name: digits\ntask: regression"),
                        lr=("lr: 0.002", "lr: -1"))
    assert "train.lr" in msg
    assert "data.label: is for class ids; task regression needs data.target" in msg
    assert "gate.accuracy_min: accuracy is a classification metric" in msg


def test_a_gate_rule_may_name_the_live_slice_when_feedback_is_on(digits):
    from orchestrator.config import load_pipeline

    live = ("non_inferiority: {golden: 0.05, new: 0.02}", "non_inferiority: {golden: 0.05, new: 0.02, live: 0.03}")
    msg = config_errors(digits, slice=live)
    assert "unknown slice 'live'" in msg and "'live' needs feedback.enabled: true" in msg
    y = digits / "pipeline.yaml"
    y.write_text(y.read_text().replace(*live) + "\nfeedback: {enabled: true}\n")
    assert load_pipeline(digits).config.gate.non_inferiority["live"] == 0.03
