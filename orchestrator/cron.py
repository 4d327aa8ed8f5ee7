"""Crontab strings to APScheduler triggers: the usual 5 fields, or 6 with seconds first
(for schedules finer than a minute, and for tests that cannot wait a minute)."""

from __future__ import annotations


def trigger(expr: str):
    from apscheduler.triggers.cron import CronTrigger

    fields = expr.split()
    if len(fields) == 5:
        return CronTrigger.from_crontab(expr, timezone="UTC")
    if len(fields) == 6:
        second, minute, hour, day, month, dow = fields
        return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month, day_of_week=dow,
                           timezone="UTC")
    raise ValueError(f"cron {expr!r} has {len(fields)} fields; use 5 (min hour day month weekday) or 6 (sec first)")
