"""matplotlib for reports written to files: the Agg backend, and figures always closed.
Imported lazily by the modules that plot, so the CLI and the cycle never pay for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on a training host
    import matplotlib.pyplot as plt

    return plt


def save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)  # pyplot keeps every figure until closed; a long-lived orchestrator would leak them
    return path
