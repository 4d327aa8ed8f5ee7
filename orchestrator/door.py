"""The user's door: what a pipeline's model.py may define, with types, and its check.

This is the one place that reads model.py. The stages receive resolved inputs, a target and
hooks, never the raw module. The contract (also in docs/architecture.md):

- `build_model() -> torch.nn.Module`. With one input, `forward` gets it positionally; with
  several, by keyword, named as in `data.inputs`. It returns one float tensor: class logits
  `[N, num_classes]` (classification), values `[N, targets]` (regression), label logits
  `[N, num_labels]` (multilabel). Preprocessing serving must repeat belongs inside the model,
  so that it is in the ONNX.
- Optional hooks, each replacing one piece of plaster's loop (defaults: Adam at train.lr; the
  task's loss; no augmentation; plaster's step):

  - `loss(outputs: Tensor, batch: Batch) -> Tensor`: a scalar to minimise.
  - `build_optimizer(params, settings: TrainSettings) -> Optimizer | (Optimizer, LRScheduler)`:
    a scheduler is stepped after every optimizer step.
  - `augment(batch: Batch, generator: torch.Generator) -> Batch`: training batches only.
  - `train_step(model, batch: Batch, optimizer, loss) -> dict`: one whole step (backward and
    optimizer.step included); returns `{"loss": Tensor | float}` and may add `"outputs"`.

Never trains, exports or measures: it states and checks the contract.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from orchestrator.errors import ConfigError

if TYPE_CHECKING:
    from orchestrator.config import Pipeline

HOOKS = ("loss", "build_optimizer", "augment", "train_step")
_SIGNATURES = {"loss": 2, "build_optimizer": 2, "augment": 2, "train_step": 4}
_NOT_HOOKS = {"build_model"}


@dataclass(frozen=True)
class InputSpec:
    """One model input as ingest reads it, the ONNX graph takes it and serving accepts it."""

    name: str
    shape: tuple[int, ...]  # of one example
    dtype: str  # float32 | int64
    columns: tuple[str, ...] = ()  # scalar columns stacked into a vector, or
    column: str | None = None  # one list column
    vocab_size: int | None = None  # int64 ids lie in 0 .. vocab_size-1

    @property
    def parquet_columns(self) -> tuple[str, ...]:
        return self.columns or (self.column,)


@dataclass(frozen=True)
class TargetSpec:
    task: str  # classification | regression | multilabel
    columns: tuple[str, ...]  # one column, or several float columns (regression)
    outputs: int  # what the model's last dimension must be
    num_classes: int | None = None


@dataclass(frozen=True)
class Batch:
    """What a hook sees: the model inputs by name and the target (int64 `[N]` class ids,
    float32 `[N, targets]` values or float32 `[N, num_labels]` 0/1)."""

    inputs: dict[str, Any]
    target: Any


@dataclass(frozen=True)
class TrainSettings:
    """What `build_optimizer` may read."""

    lr: float
    epochs: int
    steps_per_epoch: int
    batch_size: int


@dataclass(frozen=True)
class Hooks:
    """model.py's hooks; None where it does not define one (plaster's default runs)."""

    loss: Callable | None = None
    build_optimizer: Callable | None = None
    augment: Callable | None = None
    train_step: Callable | None = None

    def names(self) -> list[str]:
        return [h for h in HOOKS if getattr(self, h) is not None]


def inputs_of(data) -> tuple[InputSpec, ...]:
    """data.inputs resolved, or the legacy `features:` as one input named "input"."""
    if data.features is not None:
        f = data.features
        return (InputSpec("input", tuple(f.shape), f.dtype, column=f.column),)
    out = []
    for name, i in data.inputs.items():
        if i.columns:
            out.append(InputSpec(name, (len(i.columns),), "float32", columns=tuple(i.columns)))
        else:
            out.append(InputSpec(name, tuple(i.shape), i.dtype, column=i.column, vocab_size=i.vocab_size))
    return tuple(out)


def target_of(data, task: str) -> TargetSpec:
    if data.label is not None:
        return TargetSpec("classification", (data.label.column,), data.label.num_classes, data.label.num_classes)
    t = data.target
    if task == "classification":
        return TargetSpec(task, (t.column,), t.num_classes, t.num_classes)
    if task == "multilabel":
        return TargetSpec(task, (t.column,), t.num_labels)
    cols = tuple(t.columns) if t.columns else (t.column,)
    return TargetSpec(task, cols, len(cols))


def zero_inputs(inputs: tuple[InputSpec, ...], n: int = 1) -> dict[str, np.ndarray]:
    return {i.name: np.zeros((n, *i.shape), dtype=i.dtype) for i in inputs}


def forward(model, inputs: dict[str, Any]):
    """The model on a batch: one input positionally, several by name."""
    if len(inputs) == 1:
        return model(next(iter(inputs.values())))
    return model(**inputs)


def load_hooks(module, path: Path) -> Hooks:
    """The hooks model.py defines, each checked against its signature. A public function whose
    name is close to a hook's (`los`, `augmnet`) is an error, not silently ignored.

    Raises:
        ConfigError: naming the hook, its expected signature and model.py.
    """
    found: dict[str, Callable] = {}
    for name, obj in vars(module).items():
        if name.startswith("_") or not inspect.isfunction(obj) or obj.__module__ != module.__name__:
            continue
        if name in HOOKS:
            try:
                inspect.signature(obj).bind(*range(_SIGNATURES[name]))
            except TypeError:
                raise ConfigError(f"{path}: hook {name}{inspect.signature(obj)} must take {_SIGNATURES[name]} "
                                  f"positional arguments: {_expected(name)}") from None
            found[name] = obj
        elif name not in _NOT_HOOKS:
            near = difflib.get_close_matches(name, (*HOOKS, "build_model"), n=1, cutoff=0.75)
            if near:
                raise ConfigError(f"{path}: {name}() is not a hook plaster knows; did you mean {near[0]}()? "
                                  f"Hooks: {', '.join(HOOKS)} (rename a helper with a leading '_' to keep it)")
    return Hooks(**found)


def _expected(name: str) -> str:
    return {"loss": "loss(outputs, batch) -> Tensor",
            "build_optimizer": "build_optimizer(params, settings) -> Optimizer | (Optimizer, LRScheduler)",
            "augment": "augment(batch, generator) -> Batch",
            "train_step": "train_step(model, batch, optimizer, loss) -> dict"}[name]


_CHECKED: dict[tuple, Hooks] = {}  # model files whose contract already held, by content and declared inputs


def check_model(pipeline: "Pipeline") -> Hooks:
    """The door, checked at load time: model.py imports, `build_model()` takes no arguments and
    returns a torch.nn.Module that maps a zero batch of the declared inputs to the output the
    task needs, and the hooks it defines have the right signatures. Without this a wrong model
    fails minutes later, inside training, with an IndexError or an AttributeError.

    Raises:
        ConfigError: naming model.py, build_model(), the hook or the pipeline.yaml key to fix.
    """
    from orchestrator.config import load_module

    path = pipeline.model_file
    inputs, target = pipeline.inputs, pipeline.target
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size, inputs, target)
    if key in _CHECKED:
        return _CHECKED[key]
    try:
        module = load_module(path)
    except SyntaxError as e:
        raise ConfigError(f"{path}:{e.lineno}: SyntaxError: {e.msg}; fix model.py") from None
    except ConfigError:
        raise
    except (Exception, SystemExit) as e:  # ImportError, NameError, sys.exit(): the user's file, reported as such
        raise ConfigError(f"{path} failed to import: {type(e).__name__}: {e}; fix model.py") from None
    hooks = load_hooks(module, path)
    build = getattr(module, "build_model", None)
    if not callable(build):
        raise ConfigError(f"{path} defines no build_model(): add `def build_model() -> torch.nn.Module`")
    try:
        inspect.signature(build).bind()
    except TypeError:
        raise ConfigError(f"build_model{inspect.signature(build)} in {path} must take no required arguments: "
                          "plaster calls build_model()") from None
    except ValueError:  # a builtin without a signature: find out by calling it
        pass
    import torch

    try:
        model = build()
    except Exception as e:
        raise ConfigError(f"build_model() in {path} raised {type(e).__name__}: {e}; fix model.py") from None
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"build_model() in {path} returned {type(model).__name__} ({repr(model)[:60]}), not a "
                          "torch.nn.Module: return the model, e.g. nn.Sequential(...)")
    model.eval()
    batch = {k: torch.from_numpy(v) for k, v in zero_inputs(inputs, 2).items()}
    declared = (f"data.features.shape {list(inputs[0].shape)}" if pipeline.config.data.features is not None
                else ", ".join(f"{i.name} {i.dtype}{list(i.shape)}" for i in inputs))
    try:
        with torch.no_grad():
            out = forward(model, batch)
    except Exception as e:
        how = "positionally" if len(inputs) == 1 else f"by name ({', '.join(batch)})"
        raise ConfigError(f"the model from build_model() in {path} cannot take a zero batch of the declared inputs "
                          f"({declared}, batch 2, passed {how}): {type(e).__name__}: {str(e)[:200]}; make its first layer "
                          "and forward match data.inputs (or data.features), or fix them") from None
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"the model from build_model() in {path} returned {type(out).__name__} for a batch; its "
                          f"forward must return one tensor of logits or values shaped [N, {target.outputs}] "
                          f"({_what(target)})")
    if tuple(out.shape) != (2, target.outputs) or not out.is_floating_point():
        raise ConfigError(f"the model from build_model() in {path} outputs {out.dtype} shaped {list(out.shape)} for a "
                          f"batch of 2; task {target.task} with {_key(pipeline, target)}={target.outputs} "
                          f"({_what(target)}) needs float outputs shaped "
                          f"[2, {target.outputs}]: make its last layer output {target.outputs} values, or fix "
                          f"{_key(pipeline, target)}")
    _CHECKED[key] = hooks
    return hooks


def _what(t: TargetSpec) -> str:
    if t.task == "classification":
        return f"num_classes={t.outputs}: one logit per class"
    if t.task == "multilabel":
        return f"num_labels={t.outputs}: one logit per label"
    return f"{t.outputs} float target(s) {list(t.columns)}"


def _key(pipeline, t: TargetSpec) -> str:
    if pipeline.config.data.label is not None:
        return "data.label.num_classes"
    return {"classification": "data.target.num_classes", "multilabel": "data.target.num_labels"}.get(
        t.task, "data.target.columns")
