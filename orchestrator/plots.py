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


def plain_log(axis: Any) -> None:
    """A log axis labelled as people read it: 1, 2, 5, 10, 20 (0.05, 0.1 ... below 1), not
    matplotlib's 1.8x10^1 powers, with no minor labels crowding them."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.6g}"))
    axis.set_minor_formatter(NullFormatter())


def dates(axis: Any) -> None:
    """Date ticks that stay distinct however close the points are: matplotlib's concise
    formatter adds seconds when cycles are minutes apart, and the date only where it changes."""
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(minticks=3, maxticks=8)
    axis.set_major_locator(locator)
    axis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # matplotlib's default zone is UTC
