"""The user's door: what a pipeline's model.py may define, with types, and its check.

This is the one place that reads model.py. The stages receive resolved inputs, a target and
hooks, never the raw module. The contract (also in docs/architecture.md):

- `build_model() -> torch.nn.Module`. With one input, `forward` gets it positionally; with
  several, by keyword, named as in `data.inputs`. It returns one float tensor: class logits
  `[N, num_classes]` (classification), values `[N, targets]` (regression), label logits
  `[N, num_labels]` (multilabel). Preprocessing serving must repeat belongs inside the model,
  so that it is in the ONNX.
- Optional hooks, each replacing one piece of plaster's loop (defaults: Adam at train.lr; the
  task's loss; no augmentation; plaster's step). A hook is whatever callable model.py binds to
  the name (a function, an imported one, a partial, a callable object):

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
    range: tuple[float, float] | None = None  # declared [low, high] of a float input's values

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
            out.append(InputSpec(name, (len(i.columns),), "float32", columns=tuple(i.columns), range=i.range))
        else:
            out.append(InputSpec(name, tuple(i.shape), i.dtype, column=i.column, vocab_size=i.vocab_size,
                                 range=i.range))
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
        ConfigError: naming the hook, its expected signature and model.py; every such error at once.
    """
    hooks, errors = _hooks(module, path)
    if errors:
        raise ConfigError(_joined(errors, path))
    return hooks


def _hooks(module, path: Path) -> tuple[Hooks, list[str]]:
    """(the hooks, the errors): see load_hooks.

    A hook is whatever model.py binds to a hook's name: a function defined there, an imported
    function, a functools.partial or a callable object all count, and each must bind the hook's
    arguments. Something else under a hook's name (`loss = 0.5`) is an error. Silently ignoring
    a callable that is not a plain function (as before) trained with the default loss while the
    user believed theirs ran. Whether a callable object really follows the contract (a torch loss
    module takes (input, target), not (outputs, batch)) is found by calling it once on a zero
    batch in check_model.
    """
    found: dict[str, Callable] = {}
    errors: list[str] = []
    for name, obj in vars(module).items():
        if name.startswith("_"):
            continue
        if name in HOOKS:
            if not callable(obj) or inspect.ismodule(obj):
                errors.append(f"{path}: {name} is {type(obj).__name__} ({repr(obj)[:40]}), not a function: define "
                              f"{_expected(name)}")
                continue
            try:
                sig = inspect.signature(obj)
            except (TypeError, ValueError):  # a builtin without a signature: the zero-batch call finds out
                sig = None
            if sig is not None:
                try:
                    sig.bind(*range(_SIGNATURES[name]))
                except TypeError:
                    what = "hook" if inspect.isfunction(obj) else f"hook ({type(obj).__name__}, called as)"
                    errors.append(f"{path}: {what} {name}{sig} must take {_SIGNATURES[name]} positional arguments: "
                                  f"{_expected(name)}")
                    continue
            found[name] = obj
        elif name not in _NOT_HOOKS and inspect.isfunction(obj) and obj.__module__ == module.__name__:
            near = difflib.get_close_matches(name, (*HOOKS, "build_model"), n=1, cutoff=0.75)
            if near:
                errors.append(f"{path}: {name}() is not a hook plaster knows; did you mean {near[0]}()? "
                              f"Hooks: {', '.join(HOOKS)} (rename a helper with a leading '_' to keep it)")
    return Hooks(**found), errors


def _joined(errors: list[str], path: Path) -> str:
    if len(errors) == 1:
        return errors[0]
    return "\n".join([f"{path}: {len(errors)} errors; fix each:", *(f"  - {e}" for e in errors)])


def _expected(name: str) -> str:
    return {"loss": "loss(outputs, batch) -> Tensor",
            "build_optimizer": "build_optimizer(params, settings) -> Optimizer | (Optimizer, LRScheduler)",
            "augment": "augment(batch, generator) -> Batch",
            "train_step": "train_step(model, batch, optimizer, loss) -> dict"}[name]


_CHECKED: dict[tuple, Hooks] = {}  # model files whose contract already held, by content and declared inputs


def check_model(pipeline: "Pipeline") -> Hooks:
    """The door, checked at load time: model.py imports, `build_model()` takes no arguments and
    returns a torch.nn.Module that maps a zero batch of the declared inputs to the output the
    task needs, and the hooks it defines have the right signatures and, called once on that zero
    batch, return what the loop expects (loss, build_optimizer, augment). Without this a wrong
    model fails minutes later, inside training, with an IndexError or an AttributeError.

    Raises:
        ConfigError: naming model.py, build_model(), the hook or the pipeline.yaml key to fix;
            every hook error together with the first error of build_model().
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
    hooks, errors = _hooks(module, path)
    try:
        out, model, batch = _check_build(module, path, pipeline)
    except ConfigError as e:
        raise ConfigError(_joined([*errors, str(e)], path)) from None
    errors += _probe_hooks(hooks, model, batch, out, pipeline, path)
    if errors:
        raise ConfigError(_joined(errors, path))
    _CHECKED[key] = hooks
    return hooks


def _check_build(module, path: Path, pipeline: "Pipeline"):
    """(outputs on a zero batch of 2, the model, that batch), or the first ConfigError of build_model."""
    inputs, target = pipeline.inputs, pipeline.target
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
                          f"batch of 2; task {target.task} with {_declared(pipeline, target)} "
                          f"({_what(target)}) needs float outputs shaped "
                          f"[2, {target.outputs}]: make its last layer output {target.outputs} "
                          f"value{'s' if target.outputs != 1 else ''}, or fix "
                          f"{_key(pipeline, target)}")
    return out, model, batch


_TORCH_LOSS = {"classification": "F.cross_entropy", "regression": "F.mse_loss",
               "multilabel": "F.binary_cross_entropy_with_logits"}


def _probe_hooks(hooks: Hooks, model, batch: dict, out, pipeline: "Pipeline", path: Path) -> list[str]:
    """Call loss, build_optimizer and augment once, on the zero batch the model was checked
    with (and a zero target of the task's form), and check what each returns. Signatures alone
    let through a torch loss (`loss = nn.CrossEntropyLoss()`, or F.cross_entropy imported as
    loss): two arguments, but (input, target) where the hook gets (outputs, batch), which
    would fail only inside training. train_step is not called: it steps an optimizer."""
    import torch

    target, train = pipeline.target, pipeline.config.train
    zero = torch.zeros(2, dtype=torch.int64) if target.task == "classification" else torch.zeros(2, target.outputs)
    errors = []

    def hook(name: str) -> str:
        obj = getattr(hooks, name)
        return name if inspect.isfunction(obj) else f"{name} (a {type(obj).__name__} object)"

    def call(name: str, *args):
        try:
            return True, getattr(hooks, name)(*args)
        except Exception as e:
            return False, f"{type(e).__name__}: {str(e)[:160]}"

    if hooks.loss is not None:
        ok, value = call("loss", out, Batch(inputs=dict(batch), target=zero))
        shown = value if not ok else f"{type(value).__name__} {getattr(value, 'shape', '')}".strip()
        if not ok or not (isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point()):
            fix = ("it gets the model's outputs and batch = Batch(inputs={name: Tensor}, target=Tensor), not the "
                   f"target itself: wrap a torch loss, e.g. def loss(outputs, batch): return "
                   f"{_TORCH_LOSS[target.task]}(outputs, batch.target)") if not ok else \
                "reduce it over the batch (e.g. .mean())"
            errors.append(f"{path}: hook {hook('loss')}, called as loss(outputs, batch) on a zero batch of the declared "
                          f"inputs, {'raised' if not ok else 'returned'} {shown}; it must return a scalar float tensor: "
                          f"{fix}")
    if hooks.build_optimizer is not None:
        settings = TrainSettings(lr=train.lr, epochs=train.epochs, steps_per_epoch=1, batch_size=train.batch_size)
        ok, made = call("build_optimizer", model.parameters(), settings)
        opt, sched = (made if isinstance(made, tuple) and len(made) == 2 else (made, None)) if ok else (None, None)
        if not ok or not isinstance(opt, torch.optim.Optimizer) or (sched is not None and not hasattr(sched, "step")):
            got = made if not ok else f"returned {type(made).__name__}"
            errors.append(f"{path}: hook {hook('build_optimizer')}, called as build_optimizer(params, settings), "
                          f"{'raised ' if not ok else ''}{got}; it must return a torch.optim.Optimizer or "
                          "(optimizer, lr_scheduler), e.g. torch.optim.AdamW(params, lr=settings.lr)")
    if hooks.augment is not None:
        ok, res = call("augment", Batch(inputs=dict(batch), target=zero), torch.Generator().manual_seed(0))
        if not ok or not (isinstance(getattr(res, "inputs", None), dict) and hasattr(res, "target")):
            got = f"raised {res}" if not ok else f"returned {type(res).__name__}"
            errors.append(f"{path}: hook {hook('augment')}, called as augment(batch, generator) on a zero batch, {got}; "
                          "it must return a Batch (inputs by name, target), e.g. Batch(inputs={...}, target=batch.target)")
    return errors


def _what(t: TargetSpec) -> str:
    if t.task == "classification":
        return f"num_classes={t.outputs}: one logit per class"
    if t.task == "multilabel":
        return f"num_labels={t.outputs}: one logit per label"
    return f"{t.outputs} float target(s) {list(t.columns)}"


def _key(pipeline, t: TargetSpec) -> str:
    if pipeline.config.data.label is not None:
        return "data.label.num_classes"
    if t.task == "regression":
        return "data.target.columns" if pipeline.config.data.target.columns else "data.target.column"
    return {"classification": "data.target.num_classes", "multilabel": "data.target.num_labels"}[t.task]


def _declared(pipeline, t: TargetSpec) -> str:
    """The key that sets the model's outputs, with its value as pipeline.yaml has it."""
    if t.task == "regression":
        cols = list(t.columns)
        return f"{_key(pipeline, t)}={cols if len(cols) > 1 or pipeline.config.data.target.columns else cols[0]!r}"
    return f"{_key(pipeline, t)}={t.outputs}"
