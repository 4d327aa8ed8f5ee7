"""The scheduler for real: APScheduler with its SQLite job store, a warm Ray, MLflow on
SQLite. Shards dropped into the data source start a cycle nobody asked for; a cron trigger
fires; two triggers at once give one cycle; SIGTERM stops after the stage in flight."""

import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request

import pytest
from polling import decided, wait_for

from orchestrator import api, scheduler
from orchestrator import record as records
from orchestrator.workspace import Workspace

pytestmark = pytest.mark.integration


def set_schedule(digits, text: str) -> None:
    yaml = digits / "pipeline.yaml"
    body = yaml.read_text().split("\nschedule:")[0]
    yaml.write_text(body.rstrip("\n") + "\n" + text + "\n")




def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_data_and_cron_triggers_one_cycle_at_a_time_and_metrics(home, digits):
    ws = Workspace.from_env()
    set_schedule(digits, "schedule: {poll_seconds: 1}")
    port = free_port()
    d = scheduler.Daemon([digits], metrics_port=port).start()
    try:
        assert d.due(str(digits.resolve())) is None, "an empty data source is not due"
        api.simulate(digits, shards=4)  # nobody calls run: the poll sees 1,000 new rows
        rec = wait_for(lambda: decided(ws, "data"), 300, "a data-triggered cycle")
        assert rec["decision"] == "PROMOTED" and rec["version"] == "1"
        # The record says "decided" a moment before the daemon observes the cycle's metrics.
        def scrape():
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            return text if 'plaster_decisions_total{decision="PROMOTED",pipeline="digits"} 1.0' in text else None

        metrics = wait_for(scrape, 30, "the daemon to observe the decided cycle")
        assert 'plaster_champion_version{pipeline="digits"} 1.0' in metrics
        assert 'plaster_cycle_time_seconds_count{pipeline="digits"} 1.0' in metrics
        assert 'plaster_data_to_live_seconds_count{pipeline="digits"} 1.0' in metrics
        assert 'plaster_stage_seconds{pipeline="digits",stage="train"}' in metrics
        assert "plaster_seconds_since_last_promotion" in metrics
    finally:
        d.shutdown()

    # A restart with a cron added: the job store keeps the data job; the cron job fires on its own.
    set_schedule(digits, "schedule: {poll_seconds: 1, cron: '*/2 * * * * *'}")
    d = scheduler.Daemon([digits], metrics_port=None).start()
    try:
        assert {j.id for j in d.scheduler.get_jobs()} == {"digits:data", "digits:cron"}
        rec = wait_for(lambda: decided(ws, "cron"), 60, "a cron-triggered cycle")
        assert rec["decision"] == "SKIPPED", "nothing new arrived since v1"
    finally:
        d.shutdown()

    # Two triggers at the same moment: one cycle runs, the other folds into it.
    set_schedule(digits, "schedule: {poll_seconds: null}")
    d = scheduler.Daemon([digits], metrics_port=None).start()
    try:
        assert d.scheduler.get_jobs() == []
        api.simulate(digits, shards=4)
        before = len(records.load_all(ws, "digits"))
        folder = str(digits.resolve())
        out = {}
        threads = [threading.Thread(target=lambda k=k, f=f: out.__setitem__(k, f(folder, k)))
                   for k, f in (("data", d.cycle), ("cron", d.cycle))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ran = [r for r in out.values() if r is not None]
        assert len(ran) == 1 and ran[0]["state"] == "decided", out
        assert len(records.load_all(ws, "digits")) == before + 1
    finally:
        d.shutdown()


def test_sigterm_stops_after_the_stage_in_flight_and_the_next_daemon_resumes(home, digits):
    ws = Workspace.from_env()
    set_schedule(digits, "schedule: {poll_seconds: 1}")
    api.simulate(digits, shards=4)
    log = open(home.parent / "schedule.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "schedule", str(digits), "--metrics-port", "0"],
                            stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        rec = wait_for(lambda: next((r for r in records.load_all(ws, "digits") if "ingest" in r["stages"]), None),
                       180, "the scheduled cycle to get past ingest")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=180) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    rec = records.load_all(ws, "digits")[-1]
    assert rec["state"] == "interrupted" and rec["decision"] is None, rec["state"]
    done_stages = list(rec["stages"])
    assert "promote" not in done_stages

    d = scheduler.Daemon([digits], metrics_port=None).start()
    try:
        resumed = wait_for(lambda: (r := records.load_all(ws, "digits")[-1])["state"] == "decided" and r, 300,
                           "the interrupted cycle to be resumed")
        assert resumed["id"] == rec["id"] and resumed["decision"] == "PROMOTED" and resumed["resumes"] == 1
        for stage in done_stages:  # finished stages were not run again
            assert resumed["stages"][stage]["started_at"] == rec["stages"][stage]["started_at"]
    finally:
        d.shutdown()
