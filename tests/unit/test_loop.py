"""plaster's one training loop (stages/train.Loop + fit) on tiny fixed data: each hook is called
where the contract says, early stopping keeps the best epoch, and the losses are pinned so a
change to the loop shows up as a number."""

import numpy as np
import pytest
import torch
from torch import nn

from orchestrator.config import TrainConfig
from orchestrator.door import Batch, Hooks
from orchestrator.stages.train import Loop, Recipe, fit, recipe_for
from orchestrator.stream import InMemory


def data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return {"dense": x}, (x[:, 0] > 0).astype(np.int64)


def run(hooks=None, epochs=3, val=None, patience=None, clip=None):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    x, y = data()
    loop = Loop(model, hooks or Hooks(), Recipe("classification", epochs, 16, 0.05, 0, 100, patience, clip), "cpu", 4)
    last = fit(loop, InMemory(x, y), val, rank=0, world=1, start=0, checkpoint=lambda e, last: None)
    return loop, last


def test_default_loop_losses_are_pinned():
    loop, last = run()
    assert last == 2 and [r["epoch"] for r in loop.history] == [0, 1, 2]
    losses = [round(r["train_loss"], 4) for r in loop.history]
    assert losses == pytest.approx([0.8864, 0.6229, 0.4705], abs=2e-3), losses
    assert loop.history[-1]["train_accuracy"] > 0.9


def test_each_hook_is_called_by_the_loop():
    calls = {"loss": 0, "augment": 0, "opt": 0}

    def loss(outputs, batch):
        calls["loss"] += 1
        return nn.functional.cross_entropy(outputs, batch.target, weight=torch.tensor([1.0, 2.0]))

    def augment(batch, generator):
        calls["augment"] += 1
        noise = torch.randn(batch.inputs["dense"].shape, generator=generator) * 0.01
        return Batch(inputs={"dense": batch.inputs["dense"] + noise}, target=batch.target)

    def build_optimizer(params, settings):
        calls["opt"] += 1
        opt = torch.optim.SGD(params, lr=settings.lr)
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=settings.steps_per_epoch, gamma=0.5)

    loop, _ = run(Hooks(loss=loss, augment=augment, build_optimizer=build_optimizer))
    assert calls == {"loss": 12, "augment": 12, "opt": 1}  # 3 epochs x 4 batches; one optimizer
    assert [r["lr"] for r in loop.history] == pytest.approx([0.025, 0.0125, 0.00625]), "stepped per batch"


def test_a_train_step_hook_replaces_the_step():
    seen = []

    def train_step(model, batch, optimizer, loss):
        optimizer.zero_grad()
        out = model(batch.inputs["dense"])
        value = loss(out, batch)
        value.backward()
        optimizer.step()
        seen.append(len(batch.target))
        return {"loss": value}  # no outputs: the history has the loss only

    loop, _ = run(Hooks(train_step=train_step), epochs=1)
    assert seen == [16, 16, 16, 16] and set(loop.history[0]) == {"epoch", "train_loss"}


def test_early_stopping_keeps_the_best_epoch_and_stops():
    vx, vy = data(32, seed=1)
    vy = 1 - vy  # a validation set the model gets worse on as it learns: the loss only rises
    loop, last = run(epochs=20, val=(vx, vy), patience=2)
    assert last == loop.best[1] + 2 < 19, "stopped two epochs after the best one"
    assert all("val_loss" in r for r in loop.history)
    best = loop.final_weights()
    assert all(torch.equal(best[k], loop.best[2][k]) for k in best)


def test_gradient_clipping_changes_the_step():
    clipped, _ = run(clip=1e-3, epochs=1)
    free, _ = run(epochs=1)
    assert clipped.history[0]["train_loss"] != pytest.approx(free.history[0]["train_loss"], abs=1e-4)


def test_mixed_precision_is_off_on_a_cpu_with_the_reason():
    _, why = recipe_for(TrainConfig(), "classification", 3, 0.1, "cpu")
    assert why.startswith("off: training on CPU")
    rec, why = recipe_for(TrainConfig(mixed_precision="off"), "classification", 3, 0.1, "cuda")
    assert rec.mixed_precision == "off" and "train.mixed_precision: off" in why
