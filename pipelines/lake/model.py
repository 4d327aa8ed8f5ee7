"""The lake reference pipeline learns the tabular stream, so its model is the tabular one
(pipelines/tabular/model.py): one model, two ways of landing its data."""

from pathlib import Path

from orchestrator.config import load_module

_tabular = load_module(Path(__file__).resolve().parents[1] / "tabular" / "model.py")
build_model = _tabular.build_model
