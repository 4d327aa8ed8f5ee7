"""The tabular reference model: an MLP over 24 numeric columns, 3 classes.

The columns arrive in a user's units (thousands next to shares in 0..1), so the first layer
standardises them with running means and standard deviations it learns while training, like
BatchNorm, and applies as constants in eval mode: the normalisation is inside the ONNX graph
and serving sends raw columns. Not nn.BatchNorm1d itself: its exported BatchNormalization
node stores variances (millions for columns in thousands, beyond FP16's 65504) and INT8
quantizes its raw input with one scale for all columns (the 0..1 columns round to zero).
Exported, this layer is a Sub and a Div, which the FP16 and INT8 variants keep exact enough;
the first Linear then sees standardised values.
"""

import torch
from torch import nn

COLUMNS = 24


class Standardize(nn.Module):
    """(x - mean) / std per column, with running statistics updated in training mode."""

    def __init__(self, width: int, momentum: float = 0.1):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("std", torch.ones(width))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))  # batches; the first sets the stats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and len(x) > 1:
            with torch.no_grad():
                m = 1.0 if self.seen == 0 else self.momentum
                self.mean.lerp_(x.mean(0), m)
                self.std.lerp_(x.std(0).clamp_min(1e-6), m)
                self.seen += 1
        return (x - self.mean) / self.std


def build_model() -> nn.Module:
    return nn.Sequential(
        Standardize(COLUMNS),
        nn.Linear(COLUMNS, 64),
        nn.ReLU(),
        nn.Linear(64, 64),
        nn.ReLU(),
        nn.Linear(64, 3),
    )


if __name__ == "__main__":
    print(build_model().eval()(torch.zeros(2, COLUMNS)).shape)
