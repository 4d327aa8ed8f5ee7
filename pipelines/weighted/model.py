"""The weighted reference model: digits from an imbalanced stream, using plaster's training hooks.

The CNN is the digits pipeline's. What differs is how it is trained, through three of the
optional hooks (module-level functions plaster finds by name):

- loss: cross-entropy weighted by (softened) inverse class frequency, so a rare digit's
  mistake (7, 8, 9: a handful per shard) costs more than a common one's; the balanced golden
  holdout is where that shows.
- build_optimizer: AdamW with a cosine decay of the learning rate over the whole run.
- augment: small random shifts and noise on training images, more variety for the rare
  classes' few examples (shifting every image cost accuracy on the centred golden digits).

Functions that are not hooks start with '_': plaster treats a public name close to a hook's
as a misspelt hook.
"""

import torch
import torch.nn.functional as F
from torch import nn

from orchestrator.door import Batch, TrainSettings

# The stream's class frequencies (simulate.CLASS_FREQUENCY; a user would count their own
# labels): 0-5 common, 6 half as common, 7 a quarter, 8 and 9 a seventh.
CLASS_FREQUENCY = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.25, 0.15, 0.15])
# Inverse frequency, softened by a square root (full inverse weights overfit the rare
# classes' few images), scaled to a mean of 1 so the learning rate keeps its meaning.
CLASS_WEIGHT = CLASS_FREQUENCY.rsqrt() / CLASS_FREQUENCY.rsqrt().mean()
MAX_SHIFT = 1  # pixels, in each direction
KEEP = 0.5  # share of images left unshifted: the golden digits are centred
NOISE = 0.05  # std of the added noise, in pixel units (0..1)


def build_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 8x8 -> 4x4
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def loss(outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Class-weighted cross-entropy.

    Args:
        outputs: float logits [N, 10], the model's output on batch.inputs.
        batch: batch.target holds int64 class ids [N].
    Returns:
        A scalar tensor to minimise.
    """
    return F.cross_entropy(outputs, batch.target, weight=CLASS_WEIGHT.to(outputs.device))


def build_optimizer(params, settings: TrainSettings):
    """AdamW, its learning rate decayed along a cosine to 5% of settings.lr by the last step.

    Args:
        params: the model's parameters (an iterator, as model.parameters() gives).
        settings: .lr (train.lr, or train.warm_start_lr when warm-starting), .epochs and
            .steps_per_epoch of this run, .batch_size.
    Returns:
        (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler); plaster steps the
        scheduler after every optimizer step. CosineAnnealingLR rather than OneCycleLR: it
        tolerates being stepped past its length, where OneCycleLR raises.
    """
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=1e-3)
    steps = max(1, settings.epochs * settings.steps_per_epoch)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=0.05 * settings.lr)


def augment(batch: Batch, generator: torch.Generator) -> Batch:
    """About half the training images moved by up to MAX_SHIFT pixels (zeros fill the edge), all noised.

    Args:
        batch: batch.inputs["image"] is float32 [N, 1, 8, 8] in 0..1; batch.target int64 [N].
        generator: plaster's seeded torch.Generator; every random draw comes from it, so a
            run is reproducible.
    Returns:
        A new Batch with the augmented images and the same targets.
    """
    x = batch.inputs["image"]
    n, pad = len(x), MAX_SHIFT
    shifts = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator, device=generator.device).to(x.device)
    keep = torch.rand(n, generator=generator, device=generator.device).to(x.device) < KEEP
    shifts[keep] = pad  # these stay where they are
    padded = F.pad(x, (pad, pad, pad, pad))
    moved = torch.empty_like(x)
    for dy in range(2 * pad + 1):  # 9 crops of the padded batch, each example takes its own
        for dx in range(2 * pad + 1):
            rows = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
            moved[rows] = padded[rows, :, dy:dy + 8, dx:dx + 8]
    noise = torch.randn(x.shape, generator=generator, device=generator.device).to(x.device) * NOISE
    return Batch(inputs={**batch.inputs, "image": (moved + noise).clamp(0.0, 1.0)}, target=batch.target)


if __name__ == "__main__":
    print(build_model()(torch.zeros(2, 1, 8, 8)).shape)
