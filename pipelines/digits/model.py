"""The digits reference model: a small CNN on 8x8 grey images, 10 classes.

A pipeline's model.py defines build_model() -> torch.nn.Module; plaster does the rest.
"""

import torch
from torch import nn


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


if __name__ == "__main__":
    print(build_model()(torch.zeros(2, 1, 8, 8)).shape)
