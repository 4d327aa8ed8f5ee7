"""`plaster schedule`: cycles start without anyone calling `run`.

Per pipeline (pipeline.yaml `schedule:`): a cron trigger, and a data-arrival trigger that
polls the data source and starts a cycle when the new rows reach `ingest.min_new_rows`, the
oldest unlearned shard is older than `max_staleness`, or the unlearned rows drifted beyond
`drift_threshold` from the champion's training data. APScheduler 3 keeps the jobs in a
SQLAlchemy job store on SQLite under PLASTER_HOME, so schedules (and missed runs, coalesced
into one) survive restarts. One cycle per pipeline at a time, across processes: the same
lock as `plaster run`; a trigger that finds it held is folded into the cycle running.

The daemon keeps one Ray runtime warm across its cycles. SIGTERM stops it after the stage in
flight is persisted; the interrupted cycle is resumed when the daemon starts again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

from orchestrator import ledger
from orchestrator import record as records
from orchestrator.config import Pipeline, load_pipeline
from orchestrator.errors import ConfigError, CycleLockedError, PlasterError, ResumeError
from orchestrator.metrics import Metrics
from orchestrator.workspace import Workspace

log = logging.getLogger("plaster.scheduler")
_DAEMON: "Daemon | None" = None  # jobs in the store are references to module functions: they find the daemon here


def _daemon() -> "Daemon":
    if _DAEMON is None:
        raise RuntimeError("no plaster scheduler is running in this process")
    return _DAEMON


def cron_fired(folder: str) -> None:
    _daemon().cycle(folder, "cron")


def poll(folder: str) -> None:
    d = _daemon()
    why = d.due(folder)
    if why:
        d.cycle(folder, why)


def resume(folder: str) -> None:
    _daemon().cycle(folder, "resume")


class Daemon:
    def __init__(self, folders: list[str | Path], metrics_port: int | None = None, metrics_host: str = "127.0.0.1",
                 say: Callable[[str], None] = lambda m: None):
        self.ws = Workspace.from_env()
        if not folders:
            raise ConfigError("name at least one pipeline folder: `plaster schedule pipelines/digits`")
        self.pipelines: dict[str, Pipeline] = {str(Path(f).resolve()): load_pipeline(f) for f in folders}
        self.metrics_port, self.metrics_host, self.say = metrics_port, metrics_host, say
        self.stop = threading.Event()
        self.metrics = Metrics()
        self.registry = None
        self.scheduler = None
        self.cycles_run = 0

    def start(self) -> "Daemon":
        global _DAEMON
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.triggers.date import DateTrigger
        from apscheduler.triggers.interval import IntervalTrigger

        from orchestrator.api import registry_for
        from orchestrator.cron import trigger as cron_trigger
        from orchestrator.runtime import ensure_ray

        os.environ.setdefault("PLASTER_ACTOR", "plaster-scheduler")
        ensure_ray(self.ws)  # once: every cycle of this daemon runs on this warm runtime
        self.registry = registry_for(self.ws)
        for p in self.pipelines.values():
            self._observe_champion(p.name)
            self.metrics.observe_slo(p.name, p.config.slo.data_to_live_s, [  # lags of the recorded promotions
                r["data_to_live_s"] for r in records.load_all(self.ws, p.name)
                if r.get("decision") == "PROMOTED" and r.get("data_to_live_s") is not None])
        if self.metrics_port is not None:
            self.metrics.serve(self.metrics_port, self.metrics_host)
        _DAEMON = self
        sched = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(url=f"sqlite:///{self.ws.home / 'scheduler.db'}")},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600},
            executors={"default": {"type": "threadpool", "max_workers": max(2, 2 * len(self.pipelines))}},
            timezone="UTC",
        )
        sched.start(paused=True)
        wanted = {}
        for folder, p in self.pipelines.items():
            s = p.config.schedule
            if s.cron:
                wanted[f"{p.name}:cron"] = (f"{__name__}:cron_fired", cron_trigger(s.cron), folder)
            if s.poll_seconds:
                wanted[f"{p.name}:data"] = (f"{__name__}:poll", IntervalTrigger(seconds=s.poll_seconds), folder)
        for job in sched.get_jobs():
            if job.id not in wanted:
                job.remove()  # a pipeline this daemon no longer schedules
        for job_id, (func, trig, folder) in wanted.items():
            old = sched.get_job(job_id)
            # Keep a stored job whose trigger is unchanged: its next run time survives the
            # restart, so a run missed while the daemon was down is coalesced and run once.
            if old is None or str(old.trigger) != str(trig) or old.args != (folder,):
                sched.add_job(func, trig, args=[folder], id=job_id, name=job_id, replace_existing=True)
        for folder, p in self.pipelines.items():
            rec = records.unfinished(self.ws, p.name)
            if rec is not None and rec["state"] == records.INTERRUPTED:
                sched.add_job(f"{__name__}:resume", DateTrigger(), args=[folder], id=f"{p.name}:resume",
                              replace_existing=True)
        self.scheduler = sched
        sched.resume()
        self.say(f"scheduling {', '.join(p.name for p in self.pipelines.values())}: "
                 + "; ".join(f"{j.id} next {j.next_run_time:%H:%M:%S}" for j in sched.get_jobs() if j.next_run_time))
        return self

    def shutdown(self) -> None:
        """Stop after the stage in flight is persisted; wait for running cycles to return."""
        global _DAEMON
        self.stop.set()
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=True)
        _DAEMON = None

    def due(self, folder: str) -> str | None:
        """'data' when the data source holds enough unlearned rows; else 'staleness' when the
        oldest has waited too long, or 'drift' when the unlearned rows moved beyond
        schedule.drift_threshold from the champion's training data; else None."""
        from orchestrator.stages import ingest

        p = self.pipelines[folder]
        self._observe_champion(p.name)  # the alias may have moved without us (approve, rollback)
        champion = self.registry.champion(p.name, self.ws.home / "champions" / p.name)
        learned = set(self.registry.lineage(champion)) if champion else set()
        waiting = ingest.pending_of(p, learned, champion)
        rows, oldest = waiting.rows, waiting.oldest
        if rows >= p.config.ingest.min_new_rows:
            return "data"
        stale = p.config.schedule.max_staleness
        if stale and oldest is not None and rows > 0 and time.time() - oldest >= stale:
            return "staleness"
        threshold = p.config.schedule.drift_threshold
        if threshold and rows > 0 and champion is not None:
            moved = waiting.drift()
            if moved and moved["score"] >= threshold:
                self.say(f"{p.name}: drift {moved['metric']} {moved['score']:.3f} on {moved['worst']} "
                         f">= schedule.drift_threshold {threshold}")
                return "drift"
        return None

    def cycle(self, folder: str, trigger: str) -> dict | None:
        from orchestrator import api

        if self.stop.is_set():
            return None
        p = self.pipelines[folder]
        unfinished = records.unfinished(self.ws, p.name)
        # Whatever fired, finish the cycle a SIGTERM interrupted before starting another.
        resuming = unfinished is not None and unfinished["state"] == records.INTERRUPTED
        self.say(f"{p.name}: {trigger} trigger, " + ("resuming the interrupted cycle" if resuming else "starting a cycle"))
        try:
            rec = api.run_cycle(folder, resume=resuming, trigger=trigger, registry=self.registry, stop=self.stop)
        except (CycleLockedError, ResumeError):  # another trigger got there first
            self.say(f"{p.name}: a cycle is already running; the {trigger} trigger is folded into it")
            return None
        except PlasterError as e:
            self.metrics.decisions.labels(p.name, "FAILED").inc()
            self.say(f"{p.name}: cycle failed: {e}")
            return None
        self.cycles_run += 1
        # The champion gauge first: a scrape that sees this cycle's decision counted also sees
        # the version it made champion (CI caught the other order between the two).
        self._observe_champion(p.name)
        self.metrics.observe_cycle(rec)
        self.say(f"{p.name}: {rec['decision'] or rec['state']}" + (f" v{rec['version']}" if rec.get("version") else "")
                 + (f" in {rec['cycle_time_s']:.1f}s" if rec.get("cycle_time_s") else ""))
        return rec

    def _observe_champion(self, name: str) -> None:
        moves = [m for m in ledger.load(self.ws, name)
                 if m["alias"] == "champion" and m["kind"] in (ledger.PROMOTE, ledger.APPROVE)]
        self.metrics.observe_champion(name, self.registry.alias(name, "champion"), moves[-1]["at"] if moves else None)
