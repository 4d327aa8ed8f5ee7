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
        # An optional section (data.inputs, data.target, ...): its keys as comments under it.
        shown = _optional_model(field.annotation)
        if shown is not None:
            model, by_name = shown
            pad = " " * (indent + 2)
            inner = _lines(model, indent + (4 if by_name else 2))
            out.extend([pad + "# <name>:"] if by_name else [])
            out.extend(line[:len(pad)] + "# " + line[len(pad):] for line in inner)
    return out


def _optional_model(annotation: Any) -> tuple[type[BaseModel], bool] | None:
    """(the model, keyed by name) inside `Model | None` or `dict[str, Model] | None`."""
    import typing

    for arg in typing.get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg, False
        inner = typing.get_args(arg)
        if typing.get_origin(arg) is dict and inner and isinstance(inner[1], type) and issubclass(inner[1], BaseModel):
            return inner[1], True
    return None


def text() -> str:
    """pipeline.yaml with every key at its default; `<required>` where there is none."""
    from orchestrator.config import PipelineConfig

    return "\n".join(_lines(PipelineConfig, 0)) + "\n"
