"""The README's pipeline.yaml reference is the schema's, and the schema's defaults load."""

import re
from pathlib import Path

import yaml

from orchestrator import reference
from orchestrator.config import PipelineConfig

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_reference_is_generated_from_the_schema():
    block = re.search(r"<!-- reference:begin -->\n```yaml\n(.*?)```\n<!-- reference:end -->", README.read_text(), re.S)
    assert block, "README.md lost its reference markers"
    assert block.group(1) == reference.text(), "regenerate it: `plaster validate-config --reference`"


def test_the_reference_with_its_required_keys_filled_is_a_valid_pipeline():
    text = reference.text().replace("source: <required>", "source: /data/shards") \
        .replace("features: null", "features: {shape: [1, 8, 8]}").replace("label: null", "label: {num_classes: 10}") \
        .replace("name: <required>", "name: demo")
    assert "<required>" not in "\n".join(line.split("#")[0] for line in text.splitlines()), "only in comments"
    cfg = PipelineConfig.model_validate(yaml.safe_load(text))
    assert cfg == PipelineConfig.model_validate(
        {"name": "demo", "data": {"source": "/data/shards", "features": {"shape": [1, 8, 8]},
                                  "label": {"num_classes": 10}}})
    assert cfg.train.workers == "auto"  # what the README promises a user who leaves it out
