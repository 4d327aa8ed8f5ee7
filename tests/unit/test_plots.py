"""Plots people read: plain numbers on log axes, time labels that stay distinct."""

from datetime import datetime, timedelta, timezone

from orchestrator.plots import dates, plain_log, pyplot


def labels(fig, axis) -> list[str]:
    fig.canvas.draw()
    return [t.get_text() for t in axis.get_majorticklabels() if t.get_text()]


def test_log_axis_ticks_are_plain_numbers():
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [0.05, 3.0, 18.0])
    ax.set_yscale("log")
    plain_log(ax.yaxis)
    got = labels(fig, ax.yaxis)
    plt.close(fig)
    assert {"0.1", "0.2", "0.5", "1", "2", "5", "10"} <= set(got), got
    assert not any("10^" in t or "×" in t or "$" in t for t in got), got


def test_cycles_minutes_apart_get_distinct_time_labels():
    plt = pyplot()
    fig, ax = plt.subplots()
    t0 = datetime(2026, 12, 3, 11, 0, tzinfo=timezone.utc)
    ax.plot([t0 + timedelta(minutes=m) for m in (0, 2, 4, 6)], [1, 2, 3, 4])
    dates(ax.xaxis)
    got = labels(fig, ax.xaxis)
    plt.close(fig)
    assert len(got) >= 3 and len(set(got)) == len(got), got
