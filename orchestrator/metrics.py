"""Prometheus metrics of the scheduler daemon: how fast the pipelines learn, scraped from
127.0.0.1 by default. Fed from cycle records and the alias ledger; computes nothing else."""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LAG_BUCKETS = (10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400, 259200)
_CYCLE_BUCKETS = (5, 10, 20, 30, 45, 60, 90, 120, 300, 600, 1800, 3600)
LAG_WINDOW = 100  # the lag p50/p95 gauges cover this many most recent promoted cycles


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.cycle_time = Histogram("plaster_cycle_time_seconds", "cycle start to decision", ["pipeline"],
                                    buckets=_CYCLE_BUCKETS, registry=r)
        self.lag = Histogram("plaster_data_to_live_seconds", "arrival of the oldest new shard to the champion alias move",
                             ["pipeline"], buckets=_LAG_BUCKETS, registry=r)
        self.stage = Gauge("plaster_stage_seconds", "seconds of each stage in the last cycle", ["pipeline", "stage"],
                           registry=r)
        self.decisions = Counter("plaster_decisions_total", "cycle decisions", ["pipeline", "decision"], registry=r)
        self.champion = Gauge("plaster_champion_version", "registry version the champion alias points at",
                              ["pipeline"], registry=r)
        self.since = Gauge("plaster_seconds_since_last_promotion", "now minus the last champion move to a new version",
                           ["pipeline"], registry=r)
        self.slo = Gauge("plaster_data_to_live_slo_seconds", "the data-to-live SLO (pipeline.yaml slo.data_to_live_s)",
                         ["pipeline"], registry=r)
        self.lag_p50 = Gauge("plaster_data_to_live_p50_seconds",
                             f"median data-to-live lag of the last {LAG_WINDOW} promoted cycles", ["pipeline"], registry=r)
        self.lag_p95 = Gauge("plaster_data_to_live_p95_seconds",
                             f"p95 data-to-live lag of the last {LAG_WINDOW} promoted cycles", ["pipeline"], registry=r)
        self.budget = Gauge("plaster_data_to_live_slo_budget_seconds",
                            "the SLO minus the p95 lag; negative: the SLO is breached", ["pipeline"], registry=r)
        self._last_promotion: dict[str, float] = {}
        self._lags: dict[str, deque[float]] = {}
        self._slo: dict[str, float] = {}

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)

    def observe_cycle(self, rec: dict[str, Any]) -> None:
        p = rec["pipeline"]
        if rec.get("decision"):
            self.decisions.labels(p, rec["decision"]).inc()
        if rec.get("cycle_time_s") is not None:
            self.cycle_time.labels(p).observe(rec["cycle_time_s"])
        if rec.get("data_to_live_s") is not None:
            self.lag.labels(p).observe(rec["data_to_live_s"])
            if rec.get("decision") == "PROMOTED":
                self._lags.setdefault(p, deque(maxlen=LAG_WINDOW)).append(rec["data_to_live_s"])
                self._lag_gauges(p)
        for name, s in rec["stages"].items():
            self.stage.labels(p, name).set(s["seconds"])

    def observe_slo(self, pipeline: str, slo_s: float | None, lags: Iterable[float] = ()) -> None:
        """The pipeline's SLO (None: no gauge) and, at start, the lags of its recorded promoted
        cycles, oldest first, so the p50/p95 gauges survive a restart (the histogram starts empty)."""
        if slo_s is not None:
            self._slo[pipeline] = slo_s
            self.slo.labels(pipeline).set(slo_s)
        self._lags.setdefault(pipeline, deque(maxlen=LAG_WINDOW)).extend(lags)
        self._lag_gauges(pipeline)

    def _lag_gauges(self, p: str) -> None:
        import numpy as np

        lags = self._lags.get(p)
        if not lags:
            return
        p50, p95 = (float(v) for v in np.percentile(list(lags), [50, 95]))
        self.lag_p50.labels(p).set(p50)
        self.lag_p95.labels(p).set(p95)
        if p in self._slo:
            self.budget.labels(p).set(self._slo[p] - p95)

    def observe_champion(self, pipeline: str, version: str | None, promoted_at: float | None) -> None:
        if version is not None:
            self.champion.labels(pipeline).set(float(version))
        if promoted_at is not None and promoted_at != self._last_promotion.get(pipeline):
            self._last_promotion[pipeline] = promoted_at
            # evaluated at scrape time, so the figure keeps growing between cycles
            self.since.labels(pipeline).set_function(lambda t=promoted_at: time.time() - t)
