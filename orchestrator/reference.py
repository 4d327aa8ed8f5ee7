"""The pipeline.yaml reference, generated from the schema in config.py: every key with its
default and description, so the README's reference is the schema's and cannot drift from it.

Reads only the pydantic models; never loads a pipeline.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

REQUIRED = "<required>"


def _value(v: Any) -> str:
    if isinstance(v, tuple):
        v = list(v)
    return yaml.safe_dump(v, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def _lines(model: type[BaseModel], indent: int) -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        sub = field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) \
            else None
        note = f"  # {field.description}" if field.description else ""
        if sub is not None:
            out.append(" " * indent + f"{key}:{note}")
            out.extend(_lines(sub, indent + 2))
            continue
        value = REQUIRED if field.is_required() else _value(field.get_default(call_default_factory=True))
        out.append(" " * indent + f"{key}: {value}{note}")
    return out


def text() -> str:
    """pipeline.yaml with every key at its default; `<required>` where there is none."""
    from orchestrator.config import PipelineConfig

    return "\n".join(_lines(PipelineConfig, 0)) + "\n"
