"""The `plaster` command: parse, call orchestrator.api, print. Heavy libraries (torch,
ray, mlflow) load only inside commands that need them, so --help answers at once."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from orchestrator.errors import Interrupted, PlasterError
from orchestrator.secrets import mask

app = typer.Typer(help="plaster: new data to a promoted model, measured.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
console = Console()
err = Console(stderr=True)


@contextlib.contextmanager
def _stop_on_signals():
    """SIGTERM/SIGINT set the event the work in flight watches; a second signal kills at once."""
    import signal
    import threading

    stop = threading.Event()
    stop.signum = None

    def handler(signum, _frame):
        if stop.is_set():
            raise SystemExit(128 + signum)
        stop.signum = signum
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def _exit_now(code: int) -> None:
    """Exit once the work is persisted and every service is stopped, skipping the interpreter's
    teardown of torch, ONNX Runtime and Ray (3-10 s on 2 busy cores, after "stopped")."""
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def _guard(fn):
    try:
        return fn()
    except PlasterError as e:
        err.print(f"[red]error:[/] {e}")
        raise typer.Exit(e.exit_code) from None


@app.command()
def run(pipeline: Path = typer.Argument(..., help="pipeline folder (pipeline.yaml + model.py)"),
        resume: bool = typer.Option(False, "--resume", help="continue the last unfinished cycle"),
        wait: bool = typer.Option(False, "--wait", help="queue behind a running cycle instead of refusing"),
        trigger: str = typer.Option("manual", help="recorded as what started this cycle"),
        as_json: bool = typer.Option(False, "--json", help="also print the cycle record as one JSON line at the end")):
    """One cycle: ingest → train → export → build → validate → promote."""
    from orchestrator import api, render
    from orchestrator.submit import OUTCOME_PREFIX

    logging.basicConfig(level=logging.WARNING)
    with console.status("starting…") as spinner, _stop_on_signals() as stop:
        def say(msg: str) -> None:
            msg = mask(msg)
            if msg.endswith("…"):
                spinner.update(msg)
            else:
                console.print(msg)

        try:
            rec = _guard(lambda: api.run_cycle(pipeline, resume=resume, wait=wait, trigger=trigger, say=say,
                                               stop=stop))
        except Interrupted as e:  # stopped before any cycle started: nothing to resume
            err.print(f"[yellow]interrupted[/] {e}; no cycle started")
            _exit_now(128 + (stop.signum or 15))
    if rec["state"] == "interrupted":
        where = rec.get("interrupted", {})
        err.print(f"[yellow]interrupted[/] in {where.get('where') or where.get('stage')}: cycle {rec['id']} is saved; "
                  f"`plaster run {pipeline} --resume` continues it")
        if as_json:
            print(OUTCOME_PREFIX + json.dumps(rec, default=str), flush=True)
        _exit_now(128 + (stop.signum or 15))
    render.outcome(console, rec)
    if as_json:
        print(OUTCOME_PREFIX + json.dumps(rec, default=str), flush=True)


# A submitted cycle's exit code, like `plaster gate`: SKIPPED (nothing new to learn) is a success.
SUBMIT_EXIT = {"PROMOTED": 0, "SKIPPED": 0, "REJECTED": 1, "HELD": 2}


@app.command()
def submit(pipeline: Path = typer.Argument(..., help="pipeline folder (pipeline.yaml + model.py)"),
           address: str = typer.Option(..., "--address", envvar="RAY_API_SERVER_ADDRESS",
                                       help="the head's job server, http://HEAD:8265"),
           follow: bool = typer.Option(False, "--follow", help="stream the logs; exit with the cycle's outcome"),
           env: list[str] = typer.Option([], "--env", help="KEY=VALUE for the job's environment (repeatable)"),
           token: Optional[str] = typer.Option(None, "--token", help="Ray auth token (default: RAY_AUTH_TOKEN, "
                                               "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)")):
    """Run one cycle on a Ray cluster as a Ray Job. With --follow: exit 0 PROMOTED or SKIPPED, 1 REJECTED,
    2 HELD or any error."""
    from orchestrator import render
    from orchestrator import submit as jobs

    pairs = {}
    for item in env:
        if "=" not in item:
            err.print(f"[red]error:[/] --env {item!r}: write KEY=VALUE")
            raise typer.Exit(2)
        k, v = item.split("=", 1)
        pairs[k] = v
    job_id = _guard(lambda: jobs.submit(pipeline, address, pairs, token, say=err.print))
    console.print(f"submitted [bold]{job_id}[/] to {address}")
    if not follow:
        console.print(f"follow it with `ray job logs {job_id} --address {address} --follow`")
        return
    rec = _guard(lambda: jobs.follow(address, job_id, lambda line: console.print(line, markup=False, highlight=False),
                                     token))
    render.outcome(console, rec)
    raise typer.Exit(SUBMIT_EXIT.get(rec.get("decision"), 2))


@app.command()
def status(pipeline: Path, as_json: bool = typer.Option(False, "--json"), last: int = 10):
    """Champion, last cycles, their decisions and timings."""
    from orchestrator import api, render

    st = _guard(lambda: api.status(pipeline, last=last))
    if as_json:
        print(json.dumps(st, indent=2, default=str))
    else:
        render.status(console, st)


@app.command()
def simulate(pipeline: Path, shards: int = typer.Option(4, help="how many shards to append"),
             shuffle_labels: bool = typer.Option(False, help="write deliberately bad labels (for demos of REJECT)")):
    """Append the next shards of a reference pipeline's data stream."""
    from orchestrator import api

    paths = _guard(lambda: api.simulate(pipeline, shards, shuffle_labels))
    # A folder source answers with the shard files; a lake table with the versions committed.
    console.print(f"wrote {len(paths)} shard(s): " + ", ".join(getattr(p, "name", str(p)) for p in paths))


GATE_EXIT = {"PROMOTE": 0, "REJECT": 1, "HOLD": 2}


@app.command()
def gate(pipeline: Path = typer.Argument(..., help="pipeline folder (pipeline.yaml + model.py)"),
         candidate: Optional[str] = typer.Option(None, help="registered version to judge (default: challenger, else newest)"),
         as_json: bool = typer.Option(False, "--json", help="print the whole scorecard as JSON"),
         junit: Optional[Path] = typer.Option(None, "--junit", help="also write JUnit XML: one test case per "
                                              "gate rule, for CI systems to show")):
    """Re-validate a registered version against the champion; exit 0 PROMOTE, 1 REJECT, 2 HOLD or error."""
    import time

    from orchestrator import api, render

    logging.basicConfig(level=logging.WARNING)
    t0 = time.monotonic()
    try:
        if as_json:
            # stdout carries only the JSON: MLflow prints "View run ..." lines when a run ends.
            with contextlib.redirect_stdout(sys.stderr):
                out = api.gate(pipeline, candidate)
        else:
            with console.status("judging…") as spinner:
                out = api.gate(pipeline, candidate, say=lambda m: spinner.update(m))
    except Exception as e:  # a CI gate must never read an error as REJECT
        # MLflow's own errors quote the request URL, credentials and all
        err.print(f"[red]error:[/] {e}" if isinstance(e, PlasterError) else f"[red]error:[/] {type(e).__name__}: "
                  f"{mask(str(e))}")
        raise typer.Exit(2) from None
    if junit is not None:
        from orchestrator import junit as junit_xml

        junit_xml.write(junit, out["pipeline"], out["scorecard"], time.monotonic() - t0)
        err.print(f"JUnit report: {junit}")
    if as_json:
        print(json.dumps(out, indent=2))
    else:
        render.scorecard(console, out["scorecard"])
        console.print(f"scorecard logged to MLflow run {out['run_id']} ({out['tracking_uri']}); files in {out['files']}")
    raise typer.Exit(GATE_EXIT[out["decision"]])


@app.command()
def approve(pipeline: Path, version: str = typer.Argument(..., help="the HELD version to promote"),
            reason: str = typer.Option("", help="recorded in `plaster history`")):
    """Promote a version held for manual approval (compare-and-set against the champion it was judged with)."""
    from orchestrator import api

    e = _guard(lambda: api.approve(pipeline, version, reason))
    console.print(f"[green]approved[/] v{e['to']} is champion (previous: v{e['from'] or '—'}), by {e['actor']}")


@app.command()
def rollback(pipeline: Path, to: Optional[str] = typer.Option(None, "--to", help="version to go back to (default: previous)"),
             reason: str = typer.Option(..., help="why; recorded in `plaster history`")):
    """Point champion back (default: at `previous`); serving follows within seconds."""
    from orchestrator import api

    e = _guard(lambda: api.rollback(pipeline, reason, to))
    console.print(f"[yellow]rolled back[/] champion v{e['from'] or '—'} → v{e['to']}: {e['reason']}")


@app.command()
def schedule(pipelines: list[Path] = typer.Argument(..., help="pipeline folders to schedule"),
             metrics_port: Optional[int] = typer.Option(9464, help="Prometheus metrics port (0 = off)"),
             metrics_host: str = typer.Option("127.0.0.1", help="interface for the metrics endpoint")):
    """Run the scheduler daemon: cron and data-arrival triggers; SIGTERM stops it cleanly."""
    import signal
    import threading
    import time

    from orchestrator.scheduler import Daemon

    logging.basicConfig(level=logging.WARNING)
    done = threading.Event()

    def say(msg: str) -> None:
        console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {mask(msg)}")

    daemon = _guard(lambda: Daemon(pipelines, metrics_port or None, metrics_host, say=say).start())
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    if metrics_port:
        say(f"metrics on http://{metrics_host}:{metrics_port}/metrics")
    done.wait()
    t0 = time.monotonic()
    say("stopping: the cycle in flight stops at its next safe point and is resumed at the next start…")
    daemon.shutdown()
    import ray

    ray.shutdown()
    say(f"stopped in {time.monotonic() - t0:.1f} s")
    _exit_now(0)


@app.command()
def history(pipeline: Path, as_json: bool = typer.Option(False, "--json"),
            last: int = typer.Option(50, help="how many recent cycles")):
    """Cycles with decisions, timings and accuracy on new data; every champion move; DevOps figures."""
    from orchestrator import api, report

    h = _guard(lambda: api.history(pipeline, last=last))
    if as_json:
        print(json.dumps({**h, "devops": report.devops(h)}, indent=2))
    else:
        report.history_table(console, h)


@app.command("report")
def report_cmd(pipeline: Path, out: Path = typer.Option(..., "--out", help="folder for index.html, PNGs, history.json"),
               last: int = typer.Option(50, help="how many recent cycles")):
    """A static HTML report of the rate of learning, also logged to the pipeline's MLflow experiment."""
    from orchestrator import api

    logging.basicConfig(level=logging.WARNING)
    with contextlib.redirect_stdout(sys.stderr):  # MLflow's "View run" line is not the report
        r = _guard(lambda: api.report(pipeline, out, last=last))
    console.print(f"report: {out / 'index.html'}; logged to MLflow run {r['run_id']} ({r['tracking_uri']})")


@app.command()
def label(pipeline: Path = typer.Argument(..., help="pipeline folder (pipeline.yaml + model.py)"),
          labels: Path = typer.Argument(..., help="Parquet or CSV file: request_id, optionally example, the target"),
          as_json: bool = typer.Option(False, "--json", help="print the counts and shard paths as JSON")):
    """Join labels that arrived later with the served requests (feedback:) into a new data shard."""
    from orchestrator import api

    r = _guard(lambda: api.label(pipeline, labels))
    if as_json:
        print(json.dumps(r, indent=2))
        return
    console.print(f"[green]labelled[/] {r['joined']} row(s) → {', '.join(r['shards']) or 'no new shard'}; "
                  f"{r['pending']} label(s) pending (request not served yet), {r['already_labelled']} already labelled")


@app.command()
def serve(pipeline: Path = typer.Argument(..., help="pipeline folder (pipeline.yaml + model.py)"),
          port: int = typer.Option(8000, help="HTTP port"),
          host: str = typer.Option("127.0.0.1", help="interface to listen on (0.0.0.0: all)"),
          poll: float = typer.Option(1.0, "--poll", help="seconds between reads of the champion alias")):
    """Serve the champion over HTTP (POST /predict, GET /healthz, /version); follows promotions and rollbacks."""
    import time

    from orchestrator import serving

    logging.basicConfig(level=logging.WARNING)

    def say(msg: str) -> None:
        console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {mask(msg)}")

    _guard(lambda: serving.serve_forever(pipeline, port=port, host=host, poll_s=poll, say=say))
    _exit_now(0)


@app.command("validate-config")
def validate_config(pipeline: Optional[Path] = typer.Argument(None, help="pipeline folder to check"),
                    reference: bool = typer.Option(False, "--reference",
                                                   help="print every pipeline.yaml key with its default instead")):
    """Check pipeline.yaml and model.py; report every error at once."""
    if reference:
        from orchestrator import reference as ref

        print(ref.text(), end="")
        return
    if pipeline is None:
        err.print("[red]error:[/] name a pipeline folder (`plaster validate-config pipelines/digits`), "
                  "or pass --reference")
        raise typer.Exit(2)
    from orchestrator.config import load_pipeline

    p = _guard(lambda: load_pipeline(pipeline))
    console.print(f"[green]ok[/] {p.name}: source {p.config.data.source}")


def main(argv: Optional[list[str]] = None) -> None:
    app(argv)


if __name__ == "__main__":
    app()
