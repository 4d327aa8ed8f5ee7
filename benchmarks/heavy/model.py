"""The heavy benchmark model: a wider CNN on 16x16 grey images, 10 classes.

About 10 M multiply-adds per example forward (digits' CNN: ~0.2 M), so a cycle's time is
dominated by training compute, not by orchestration. Same contract as any pipeline's
model.py: build_model() -> torch.nn.Module.
"""

import torch
from torch import nn

WIDTH = 32


def build_model() -> nn.Module:
    w = WIDTH
    return nn.Sequential(
        nn.Conv2d(1, w, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(w, 2 * w, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 16x16 -> 8x8
        nn.Conv2d(2 * w, 4 * w, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 8x8 -> 4x4
        nn.Flatten(),
        nn.Linear(4 * w * 4 * 4, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )


if __name__ == "__main__":
    print(build_model()(torch.zeros(2, 1, 16, 16)).shape)
