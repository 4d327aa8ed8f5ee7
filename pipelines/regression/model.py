"""The regression reference model: disease progression from 10 measurements, in the target's units.

Both ends are scaled inside the model, so the ONNX graph takes the raw columns and returns
progression itself: the inputs are standardised with running statistics learnt while
training (as BatchNorm does, but exported as a Sub and a Div that the FP16 and INT8 variants
keep exact: see pipelines/tabular/model.py), and the last layer's output is mapped to the
target's usual range (times 75, plus 150: diabetes progression's spread and centre), so the
network itself predicts values near 0 with spread near 1 and MSE converges in a few epochs.
"""

import torch
from torch import nn

COLUMNS = 10
TARGET_SCALE, TARGET_CENTRE = 75.0, 150.0


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


class Progression(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(Standardize(COLUMNS), nn.Linear(COLUMNS, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * TARGET_SCALE + TARGET_CENTRE  # [N, 1], in progression's units


def build_model() -> nn.Module:
    return Progression()


if __name__ == "__main__":
    print(build_model().eval()(torch.zeros(2, COLUMNS)).shape)
