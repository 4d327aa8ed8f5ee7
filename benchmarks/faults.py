"""The fault suite: break plaster the ways production does, through the CLI a user runs, and
count what survived.

It copies the reference pipeline (pipelines/digits, small epochs and a lenient gate so most
cycles promote and move the champion alias) into a temporary folder, gives it fresh
PLASTER_HOMEs there, and runs `python -m orchestrator.cli ...` as subprocesses. The kinds:

  crash-after-stage   SIGKILL after each stage (PLASTER_CRASH_AFTER), then `plaster run --resume`
  kill-mid-train      SIGKILL the run's process group while training, after its first checkpoint
  registry-down       `mlflow server` SIGKILLed during validate and during promote: down until the
                      run gives up, or back after a short outage; restarted on its port and store
  storage-unwritable  PLASTER_HOME read-only, PLASTER_HOME under a regular file, storage.uri unwritable
  concurrent-runs     two `plaster run` at once; one `--wait` behind a running one
  bad-shards          20 kinds of bad shard dropped beside a good one
  bad-requests        1,000+ malformed HTTP requests of 25+ kinds against `plaster serve`, then SIGTERM
  bad-configs         25 broken pipeline.yaml / model.py variants, through validate-config and run
  bad-canary          versions planted to fail live (slow; erroring) made champion under `rollout: canary`
                      while clients send requests: the live gate must roll each back by itself
  serve-killed-feedback  `plaster serve` with feedback on SIGKILLed under traffic: only the last
                      unflushed batch may be missing from the feedback shards; then it serves again

After every case it reads the outcome back the way an operator would: the exit code and the
message, MLflow's registry through MlflowClient (versions per cycle id, the champion alias),
plaster's alias ledger, the cycle records, and the sha256 of every shard it wrote (each must
still be in the data source or its _quarantine folder, byte for byte). A case survives when
the exit code and message are right and nothing was lost: lost = shards lost + double
registrations + double promotions + 5xx answers + failed client requests (the live kinds) +
answered requests missing from the feedback beyond the last unflushed batch + wrong outcomes.
It prints a table per kind (tried / survived / lost), writes benchmarks/results/faults.json,
and exits 1 if anything was lost. On a 2-core machine the whole suite takes about 15 minutes;
one kind reruns alone.

    .venv/bin/python benchmarks/faults.py [--only KIND ...] [--out FILE] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

# workloads first: it puts this checkout's orchestrator first on sys.path and PYTHONPATH
from workloads import ROOT, copy_pipeline  # noqa: I001

sys.path.insert(0, str(ROOT / "tests" / "integration"))
from servers import _free_port  # noqa: E402  (the integration tests' free-port helper)

NAME = "digits"
STAGES = ("ingest", "train", "export", "build", "validate", "promote")
DECISIONS = ("PROMOTED", "REJECTED", "HELD", "SKIPPED")
# Small epochs keep a cycle at ~25 s here; the lenient gate makes most cycles PROMOTE, so
# that every crash point also exercises the alias moves (a REJECT moves none).
OVERRIDES = ["train.epochs=5", "train.warm_start_epochs=3",
             "gate.accuracy_min={golden: 0.2, new: 0.2}", "gate.non_inferiority={golden: 0.5, new: 0.5}",
             "gate.latency_ratio_max=10.0", "gate.latency_p99_ms_max=1000.0"]
LOST_KEYS = ("shards", "registrations", "promotions", "http_5xx", "requests", "feedback", "wrong")


@dataclass
class Case:
    kind: str
    name: str
    survived: bool = False
    lost: dict = field(default_factory=lambda: dict.fromkeys(LOST_KEYS, 0))
    note: str = ""
    seconds: float = 0.0
    detail: dict = field(default_factory=dict)

    @property
    def lost_total(self) -> int:
        return sum(self.lost.values())


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tail(text: str, n: int = 1500) -> str:
    return text if len(text) <= n else "…" + text[-n:]


def last_line(text: str, n: int = 220) -> str:
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1].strip()[:n] if lines else "(nothing)"


def ends(text: str, head: int = 1500, last: int = 2500) -> str:
    """Both ends of a long output: where a traceback starts and how it ends."""
    return text if len(text) <= head + last else text[:head] + "\n[…]\n" + text[-last:]


def traceback_in(*texts: str) -> bool:
    return any("Traceback (most recent call last)" in (t or "") for t in texts)


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal the process group the suite started `proc` in (its Ray, its server workers)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


class Home:
    """One PLASTER_HOME, its MLflow (embedded SQLite unless `tracking_uri`), and every shard
    the suite wrote into its data source, by sha256."""

    def __init__(self, suite: "Suite", path: Path, tracking_uri: str | None = None):
        self.suite, self.path, self.tracking_uri = suite, path, tracking_uri
        self.shards: dict[str, str] = {}  # sha256 -> where it was written
        self.counted = Counter()  # what earlier cases already reported lost here

    @property
    def source(self) -> Path:
        return self.path / "data" / NAME / "shards"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in (
            "MLFLOW_TRACKING_URI", "PLASTER_CRASH_AFTER", "RAY_ADDRESS", "PLASTER_STORAGE_URI",
            "PLASTER_TEST_KILL_WORKER", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
        env.update(PLASTER_HOME=str(self.path), MLFLOW_DISABLE_TELEMETRY="true", RAY_USAGE_STATS_ENABLED="0",
                   COLUMNS="160")
        if self.tracking_uri:
            env["MLFLOW_TRACKING_URI"] = self.tracking_uri
        env.update(extra)
        return env

    def plaster(self, *args: str, timeout: float = 600, **popen) -> subprocess.CompletedProcess:
        """`plaster ARGS` to exit, in its own process group (cleaned up after, whatever it left)."""
        env = popen.pop("env", None) or self.env()
        proc = self.popen(*args, env=env, **popen)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            out, err = proc.communicate()
            err += f"\n[fault suite: killed after {timeout:.0f} s]"
        kill_group(proc)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def popen(self, *args: str, env: dict | None = None, **popen) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env or self.env(), start_new_session=True,
                                cwd=self.suite.tmp, **popen)

    def simulate(self, shards: int, folder: Path | None = None) -> None:
        """`plaster simulate`, in this process: it sets up data, it is not a fault, and a
        process per call would cost the suite a minute."""
        from orchestrator import api

        saved = os.environ.get("PLASTER_HOME")
        os.environ["PLASTER_HOME"] = str(self.path)
        try:
            api.simulate(folder or self.suite.pipeline, shards)
        finally:
            if saved is None:
                del os.environ["PLASTER_HOME"]
            else:
                os.environ["PLASTER_HOME"] = saved
        self.track(self.source.glob("shard-*.parquet"))

    def track(self, paths) -> None:
        for p in paths:
            self.shards.setdefault(sha(p), str(p))

    def records(self) -> list[dict]:
        out = []
        for p in (self.path / "cycles" / NAME).glob("*/record.json"):
            with contextlib.suppress(OSError, ValueError):
                out.append(json.loads(p.read_text()))
        return sorted(out, key=lambda r: r["started_at"])

    def record(self, cycle_id: str) -> dict | None:
        return next((r for r in self.records() if r["id"] == cycle_id), None)

    def newest_since(self, t0: float) -> dict | None:
        recs = [r for r in self.records() if r["started_at"] >= t0 - 1]
        return recs[-1] if recs else None

    def ledger(self) -> list[dict]:
        p = self.path / "ledger" / f"{NAME}.jsonl"
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    def uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{self.path / 'mlflow.db'}"

    def versions(self) -> list:
        if not self.tracking_uri and not (self.path / "mlflow.db").exists():
            return []
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=self.uri(), registry_uri=self.uri())
        return list(client.search_model_versions(f"name='{NAME}'"))

    def champion(self) -> str | None:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=self.uri(), registry_uri=self.uri())
        try:
            return str(client.get_model_version_by_alias(NAME, "champion").version)
        except Exception:
            return None

    def audit(self) -> tuple[Counter, list[str]]:
        """Everything lost here so far, read back through MLflow's client, the ledger, the
        records and the data source: (counts by LOST_KEYS, what each count is)."""
        found, notes = Counter(), []
        versions = self.versions()
        by_cycle = Counter((v.tags or {}).get("plaster.cycle_id") for v in versions)
        for cycle, n in by_cycle.items():
            if cycle is None:
                found["registrations"] += n
                notes.append(f"{n} version(s) without a plaster.cycle_id tag")
            elif n > 1:
                found["registrations"] += n - 1
                notes.append(f"cycle {cycle} registered {n} versions")
        moves = Counter(e.get("cycle_id") for e in self.ledger() if e["alias"] == "champion" and e["kind"] == "promote")
        for cycle, n in moves.items():
            if n > 1:
                found["promotions"] += n - 1
                notes.append(f"cycle {cycle} moved the champion alias {n} times")
        promoted = [r for r in self.records() if r["decision"] == "PROMOTED"]
        for r in promoted:
            v = next((v for v in versions if (v.tags or {}).get("plaster.cycle_id") == r["id"]), None)
            if v is None or str(v.version) != str(r["version"]):
                found["wrong"] += 1
                notes.append(f"cycle {r['id']} says PROMOTED v{r['version']} but MLflow has no such version of it")
            if moves.get(r["id"], 0) == 0 and r.get("champion_before") != r["version"]:
                found["wrong"] += 1
                notes.append(f"cycle {r['id']} promoted v{r['version']} but the ledger has no move for it")
        if promoted and not any(e["kind"] == "rollback" for e in self.ledger()):
            last = max(promoted, key=lambda r: r["decided_at"])
            if self.champion() != str(last["version"]):
                found["wrong"] += 1
                notes.append(f"champion alias is v{self.champion()}, the last promotion was v{last['version']}")
        present = set()
        if self.source.is_dir():
            present = {sha(p) for p in self.source.rglob("*") if p.is_file() and not p.name.endswith(".reason.json")}
        for digest, where in self.shards.items():
            if digest not in present:
                found["shards"] += 1
                notes.append(f"shard lost: {Path(where).name} (sha256 {digest[:12]})")
        return found, notes

    def charge(self, case: Case) -> None:
        """Add to `case` what was lost here since the last case was charged."""
        found, notes = self.audit()
        for k in LOST_KEYS:
            new = max(0, found[k] - self.counted[k])
            case.lost[k] += new
            self.counted[k] = max(self.counted[k], found[k])
        if notes:
            case.detail.setdefault("audit", notes)


class Suite:
    def __init__(self, tmp: Path, console):
        self.tmp, self.console = tmp, console
        self.pipeline = copy_pipeline(NAME, tmp / "pipeline", OVERRIDES)
        self.main = Home(self, tmp / "home")
        self.cases: list[Case] = []
        self.figures: dict[str, dict] = {}  # per kind: what its table row and the JSON say beside the counts
        self.live: Home | None = None

    def say(self, msg: str) -> None:
        self.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {msg}")

    def done(self, case: Case, t0: float) -> Case:
        case.seconds = round(time.time() - t0, 1)
        case.survived = case.survived and case.lost_total == 0
        if not case.survived and case.lost_total == 0:
            case.lost["wrong"] = 1  # the outcome itself was wrong
        mark = "[green]survived[/]" if case.survived else f"[red]LOST {case.lost_total}[/]"
        case.note = case.note.replace(str(self.tmp), "$TMP")  # the same message, shorter
        self.say(f"  {mark} {case.kind} / {case.name} ({case.seconds:.0f} s): {case.note}")
        self.cases.append(case)
        return case

    def ensure_champion(self, home: Home) -> None:
        """Bad-requests and concurrent-runs need a champion; rerun alone they make one."""
        if home.versions() and home.champion():
            return
        self.say("  (no champion yet in this home: simulate 2 shards and run a cycle)")
        home.simulate(2)
        out = home.plaster("run", str(self.pipeline))
        if out.returncode != 0 or not home.champion():
            raise RuntimeError(f"the setup cycle did not promote: {tail(out.stdout + out.stderr)}")


# --- 1. SIGKILL after every stage, then --resume ------------------------------------------------------------------


def decided(home: Home, cycle_id: str) -> dict | None:
    rec = home.record(cycle_id)
    return rec if rec and rec["state"] == "decided" and rec["decision"] in DECISIONS else None


def crash_after_stage(s: Suite) -> None:
    h = s.main
    for _i, stage in enumerate(STAGES):
        t0 = time.time()
        case = Case("crash-after-stage", f"SIGKILL after {stage}")
        h.simulate(2 if not h.shards else 1)
        crashed = h.plaster("run", str(s.pipeline), env=h.env(PLASTER_CRASH_AFTER=stage))
        rec = h.newest_since(t0)
        problems = []
        if crashed.returncode != -9:
            problems.append(f"exit {crashed.returncode}, not -9 (SIGKILL): {tail(crashed.stderr, 300)}")
        if rec is None or rec["state"] != "running" or list(rec["stages"])[-1:] != [stage]:
            problems.append(f"record after the crash: {rec and (rec['state'], list(rec['stages']))}")
        started = {n: st["started_at"] for n, st in (rec or {}).get("stages", {}).items()}
        resumed = h.plaster("run", str(s.pipeline), "--resume")
        done = decided(h, rec["id"]) if rec else None
        if resumed.returncode != 0 or done is None:
            problems.append(f"--resume exit {resumed.returncode}: {tail(resumed.stdout + resumed.stderr, 600)}")
        else:
            again = [n for n, t in started.items() if done["stages"][n]["started_at"] != t]
            if again:
                problems.append(f"--resume ran {again} again")
            if done["decision"] not in resumed.stdout:
                problems.append("--resume did not print the decision")
        case.survived = not problems
        case.note = "; ".join(problems) or (f"-9, then --resume: {done['decision']}"
                                            + (f" v{done['version']}" if done["version"] else "") + ", resumes=1")
        case.detail = {"crash_rc": crashed.returncode, "resume_rc": resumed.returncode,
                       "decision": done and done["decision"], "version": done and done["version"]}
        h.charge(case)
        s.done(case, t0)


# --- 2. SIGKILL mid-training ---------------------------------------------------------------------------------------


def kill_mid_train(s: Suite) -> None:
    """A run whose training is long enough to be caught in the middle: its own copy of the
    pipeline (same name, same home), 40 epochs with a checkpoint every 5."""
    h = s.main
    t0 = time.time()
    case = Case("kill-mid-train", "SIGKILL the run's process group after train's first checkpoint")
    folder = copy_pipeline(NAME, s.tmp / "pipeline-long", OVERRIDES + [
        "train.epochs=40", "train.warm_start_epochs=40", "train.checkpoint_every=5"])
    h.simulate(2 if not h.shards else 1, folder)
    proc = h.popen("run", str(folder))
    problems, rec, state = [], None, None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        rec = h.newest_since(t0)
        if rec and "ingest" in rec["stages"]:
            state = h.path / "cycles" / NAME / rec["id"] / "checkpoint" / "state.pt"
            if state.exists() and "train" not in rec["stages"]:
                break
        time.sleep(0.02)
    caught = proc.poll() is None and state is not None and state.exists()
    kill_group(proc)
    proc.communicate()
    if not caught:
        problems.append(f"training was not caught running (exit {proc.returncode})")
    rec = h.record(rec["id"]) if rec else None
    if rec is None or "train" in rec["stages"]:
        problems.append(f"the record after the kill: {rec and list(rec['stages'])}")
    resumed = h.plaster("run", str(folder), "--resume")
    done = decided(h, rec["id"]) if rec else None
    if resumed.returncode != 0 or done is None:
        problems.append(f"--resume exit {resumed.returncode}: {tail(resumed.stdout + resumed.stderr, 600)}")
    else:
        train = done["stages"]["train"]["output"]
        epochs = [e["epoch"] for e in train["history"]]
        if not train.get("resumed_from_epoch"):
            problems.append("training started over instead of continuing from its checkpoint")
        if epochs != list(range(40)):
            problems.append(f"epochs trained: {epochs[:3]}…{epochs[-3:]} ({len(epochs)}), not each of 40 once")
    case.survived = not problems
    case.note = "; ".join(problems) or (
        f"killed at epoch ≥5, --resume continued from epoch {done['stages']['train']['output']['resumed_from_epoch']}: "
        f"{done['decision']}")
    h.charge(case)
    s.done(case, t0)


# --- 3. The registry killed during validate and during promote -------------------------------------------------------


class MlflowServer:
    """`mlflow server` as tests/integration/servers.py starts it, but on a port and store
    that survive a restart, in its own process group (so SIGKILL takes its workers too)."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        log = open(self.folder / "mlflow-server.log", "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}",
             "--artifacts-destination", str(self.folder / "server-artifacts"), "--serve-artifacts"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2)
                return
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.kill()
                    raise RuntimeError(f"mlflow server did not start; see {self.folder / 'mlflow-server.log'}") from None
                time.sleep(0.3)

    def kill(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)
            self.proc.wait()
            self.proc = None


def registry_down(s: Suite) -> None:
    server = MlflowServer(s.tmp / "registry")
    server.start()
    h = Home(s, s.tmp / "home-registry", tracking_uri=server.url)
    try:
        for stage, outage in (("validate", "down"), ("promote", "down"), ("validate", 15), ("promote", 15)):
            _registry_case(s, h, server, stage, outage)
    finally:
        server.kill()


def _registry_case(s: Suite, h: Home, server: MlflowServer, stage: str, outage) -> None:
    t0 = time.time()
    how = "until the run gives up" if outage == "down" else f"for {outage} s"
    case = Case("registry-down", f"mlflow server SIGKILLed during {stage}, down {how}")
    h.simulate(2 if not h.shards else 1)
    # Down for good: MLflow's client would retry for ~4 minutes (7 retries, backoff 2); a
    # user who wants the answer sooner sets these, and so does the suite.
    extra = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"} if outage == "down" else {}
    proc = h.popen("run", str(s.pipeline), env=h.env(**extra))
    before = STAGES[STAGES.index(stage) - 1]
    rec, problems = None, []
    while proc.poll() is None and time.time() - t0 < 300:
        rec = h.newest_since(t0)
        if rec and before in rec["stages"]:
            break
        time.sleep(0.02)
    hit = proc.poll() is None
    server.kill()
    if not hit:
        problems.append(f"the run ended before {stage} (exit {proc.returncode})")
    if outage != "down":
        time.sleep(outage)
        server.start()
    try:
        out, err = proc.communicate(timeout=420)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        problems.append("the run hung with the registry down (killed after 420 s)")
    kill_group(proc)
    rec = h.newest_since(t0)
    first = "exit %s" % proc.returncode
    if proc.returncode == 0 and rec and decided(h, rec["id"]):
        first = f"survived by retrying: {rec['decision']}"
    else:
        if proc.returncode != 1:
            problems.append(f"the run exited {proc.returncode}, not 1: {tail(err, 400)}")
        if traceback_in(out, err):
            problems.append("a traceback was printed, ending: " + last_line(err))
        elif proc.returncode == 1 and not any(w in err for w in ("--resume", "server", "MLflow", server.url)):
            problems.append(f"the message names no fix: {tail(err, 400)}")
        first = f"exit {proc.returncode}: {last_line(err, 140)}"
        if outage == "down":
            server.start()
        resumed = h.plaster("run", str(s.pipeline), "--resume")
        done = decided(h, rec["id"]) if rec else None
        if resumed.returncode != 0 or done is None:
            problems.append(f"--resume exit {resumed.returncode}: {tail(resumed.stdout + resumed.stderr, 600)}")
        else:
            first += f"; --resume: {done['decision']}" + (f" v{done['version']}" if done["version"] else "")
    case.detail = {"first_rc": proc.returncode, "first_stderr": ends(err)}
    case.survived = not problems
    case.note = "; ".join(problems + ([f"then {first}"] if problems else [first]))
    h.charge(case)
    s.done(case, t0)


# --- 4. The storage location unwritable ---------------------------------------------------------------------------


def tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` by relative path, with its sha256: 'nothing half-written'."""
    if not folder.exists():
        return {}
    if folder.is_file():
        return {".": sha(folder)}
    return {str(p.relative_to(folder)): sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def read_only(folder: Path):
    """Make `folder` read-only for the runs inside the block; yields how. Root writes through
    any chmod, so as root it is a read-only bind mount of the folder onto itself (EROFS for
    everyone), undone after."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")] if p.is_dir()}
        for p, m in modes.items():
            p.chmod(m & ~0o222)
        try:
            yield "chmod a-w"
        finally:
            for p, m in sorted(modes.items(), reverse=True):
                p.chmod(m)
        return
    made = subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True, text=True)
    if made.returncode != 0:
        raise RuntimeError(f"as root chmod does not stop writes, and a read-only bind mount was refused: {made.stderr}")
    try:
        probe = folder / ".fault-suite-probe"
        try:
            probe.write_text("x")
            probe.unlink()
            raise RuntimeError(f"{folder} is still writable after a read-only bind mount")
        except OSError:
            pass
        yield "read-only bind mount: root ignores chmod"
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def _refused(case: Case, out: subprocess.CompletedProcess, words: tuple[str, ...]) -> list[str]:
    problems = []
    if out.returncode != 1:
        problems.append(f"exit {out.returncode}, not 1")
    if traceback_in(out.stdout, out.stderr):
        problems.append("a traceback was printed, ending: " + last_line(out.stderr))
    elif not any(w in out.stderr for w in words):
        problems.append(f"the message names none of {list(words)}: {' '.join(out.stderr.split())[-300:]}")
    case.detail["refused"] = {"rc": out.returncode, "stderr": ends(out.stderr)}
    return problems


def _runs_again(s: Suite, h: Home, case: Case, env: dict | None = None, resume: bool = False) -> list[str]:
    out = h.plaster("run", str(s.pipeline), *(["--resume"] if resume else []), env=env or h.env())
    rec = h.records()[-1] if h.records() else None
    if out.returncode != 0 or rec is None or rec["state"] != "decided":
        return [f"after restoring, the run exited {out.returncode}: {tail(out.stdout + out.stderr, 500)}"]
    case.detail["restored"] = rec["decision"] + (" after --resume" if resume else "")
    return []


def _settle(s: Suite, h: Home, case: Case, problems: list[str], t0: float, ok: str) -> None:
    """After an unwritable-storage case: the pipeline must run again once restored; then score it."""
    problems += _runs_again(s, h, case)
    case.survived = not problems
    case.note = "; ".join(problems) or f"{ok}; restored: " + case.detail.get("restored", "?")
    h.charge(case)
    s.done(case, t0)


def storage_unwritable(s: Suite) -> None:
    base = s.tmp / "storage"
    base.mkdir()
    staging = Home(s, base / "staging")
    staging.simulate(2)

    # (a) PLASTER_HOME under a regular file: what a mistyped path or a file where the folder
    # should be gives, and a write refusal even root cannot get past.
    t0 = time.time()
    case = Case("storage-unwritable", "PLASTER_HOME under a regular file")
    blocker = base / "parent"
    blocker.write_text("a file where PLASTER_HOME's parent folder should be\n")
    h = Home(s, blocker / "home")
    h.shards = staging.shards
    before = tree(base)
    problems = _refused(case, h.plaster("run", str(s.pipeline)), ("PLASTER_HOME", str(blocker)))
    if tree(base) != before:
        problems.append("something was written or changed")
    blocker.unlink()
    blocker.mkdir()
    staging.path.rename(h.path)  # no MLflow state in it yet: safe to move
    _settle(s, h, case, problems, t0, "exit 1 naming PLASTER_HOME")

    # (b) PLASTER_HOME read-only, with a champion and a new shard waiting.
    t0 = time.time()
    case = Case("storage-unwritable", "PLASTER_HOME read-only")
    h.simulate(1)
    before = tree(h.path)
    with read_only(h.path) as how:
        case.name += f" ({how})"
        out = h.plaster("run", str(s.pipeline))
    problems = _refused(case, out, ("PLASTER_HOME", str(h.path)))
    if tree(h.path) != before:
        problems.append("PLASTER_HOME changed although it was read-only")
    _settle(s, h, case, problems, t0, "exit 1 naming PLASTER_HOME")

    # (c) storage.uri (here PLASTER_STORAGE_URI) unwritable: the durable copy cannot be made.
    t0 = time.time()
    case = Case("storage-unwritable", "storage.uri under a regular file")
    h.simulate(1)
    store_parent = base / "store-parent"
    store_parent.write_text("a file where the store's parent folder should be\n")
    store = store_parent / "store"
    out = h.plaster("run", str(s.pipeline), env=h.env(PLASTER_STORAGE_URI=str(store)))
    rec = h.records()[-1]
    if out.returncode == 0 and rec["state"] == "decided":
        # The cycle went on without its durable copy: acceptable only if the user was told.
        told = str(store) in out.stderr + out.stdout or "storage" in (out.stderr + out.stdout).lower()
        problems = [] if told and rec.get("storage_errors") else [
            f"the cycle {rec['decision']} without its durable copy in {store} and said nothing "
            f"(record storage_errors: {len(rec.get('storage_errors') or [])})"]
        how = f"decided {rec['decision']} without the store, warned"
        case.detail["refused"] = {"rc": 0, "stderr": ends(out.stderr), "storage_errors": rec.get("storage_errors")}
    else:
        problems = _refused(case, out, ("storage.uri", "PLASTER_STORAGE_URI", str(store)))
        how = "exit 1 naming storage.uri"
    store_parent.unlink()
    failed = rec["state"] == "failed"  # what stopped is resumed; a cycle that went on needs new data
    if not failed:
        h.simulate(1)
    problems += _runs_again(s, h, case, env=h.env(PLASTER_STORAGE_URI=str(store)), resume=failed)
    last = h.records()[-1]
    if not (store / "cycles" / NAME / last["id"] / "record.json").exists():
        problems.append("after restoring, the store has no copy of the cycle record")
    case.survived, case.note = not problems, "; ".join(problems) or f"{how}; restored: {case.detail.get('restored')}"
    h.charge(case)
    s.done(case, t0)


# --- 5. Two runs at once -----------------------------------------------------------------------------------------


def concurrent_runs(s: Suite) -> None:
    h = s.main
    s.ensure_champion(h)
    t0 = time.time()
    case = Case("concurrent-runs", "two `plaster run` started together")
    h.simulate(1)
    versions = len(h.versions())
    procs = [h.popen("run", str(s.pipeline)) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p in procs:
        kill_group(p)
    rcs = sorted(p.returncode for p in procs)
    refused = next((err for (_, err), p in zip(outs, procs) if p.returncode == 3), "")
    problems = []
    if rcs != [0, 3]:
        problems.append(f"exit codes {rcs}, not one 0 and one 3")
    if refused and not ("another cycle of 'digits' is running" in refused and "--wait" in refused):
        problems.append(f"the refusal does not say so: {tail(refused, 300)}")
    cycles = [r for r in h.records() if r["started_at"] >= t0 - 1]
    if len(cycles) != 1:
        problems.append(f"{len(cycles)} cycles started, not 1")
    if len(h.versions()) - versions > 1:
        problems.append(f"{len(h.versions()) - versions} versions registered")
    case.survived = not problems
    case.note = "; ".join(problems) or f"exit codes {rcs}; one cycle ({cycles[0]['decision']}), the other refused"
    h.charge(case)
    s.done(case, t0)

    t0 = time.time()
    case = Case("concurrent-runs", "`plaster run --wait` behind a running cycle")
    h.simulate(1)
    first = h.popen("run", str(s.pipeline))
    while first.poll() is None and not h.newest_since(t0):
        time.sleep(0.05)
    second = h.popen("run", str(s.pipeline), "--wait")
    outs = [first.communicate(timeout=600), second.communicate(timeout=600)]
    for p in (first, second):
        kill_group(p)
    cycles = [r for r in h.records() if r["started_at"] >= t0 - 1]
    problems = []
    if (first.returncode, second.returncode) != (0, 0):
        problems.append(f"exit codes {first.returncode}, {second.returncode}: {tail(outs[1][1], 300)}")
    if len(cycles) != 2 or cycles[1]["started_at"] < (cycles[0]["decided_at"] or 0):
        problems.append(f"the waiting run did not queue behind the first ({[(c['state']) for c in cycles]})")
    elif cycles[1]["decision"] != "SKIPPED":
        problems.append(f"the second cycle found data the first had learned: {cycles[1]['decision']}")
    case.survived = not problems
    case.note = "; ".join(problems) or f"{cycles[0]['decision']}, then the queued one SKIPPED (nothing new)"
    h.charge(case)
    s.done(case, t0)


# --- 6. Bad shards --------------------------------------------------------------------------------------------------


def _bad_shards(folder: Path, good: Path) -> dict[str, tuple[Path, str | None]]:
    """Write the bad shards beside the good ones: name -> (path, words the reason must
    hold; None for a shard that must be learned)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    f32 = pa.list_(pa.float32())
    rng = np.random.default_rng(7)
    px = [list(map(float, rng.random(64))) for _ in range(20)]
    labels = list(range(10)) * 2
    out: dict[str, tuple[Path, str | None]] = {}

    def table(name: str, words: str | None, **cols) -> None:
        p = folder / f"bad-{name}.parquet"
        pq.write_table(pa.table(cols), p)
        out[name] = (p, words)

    def raw(name: str, words: str, data: bytes) -> None:
        p = folder / f"bad-{name}.parquet"
        p.write_bytes(data)
        out[name] = (p, words)

    raw("not-parquet", "not a readable Parquet", b"pixels,label\n" + os.urandom(2000))
    raw("truncated", "not a readable Parquet", good.read_bytes()[: good.stat().st_size // 2])
    raw("zero-bytes", "not a readable Parquet", b"")
    table("wrong-columns", "missing column", image=pa.array(px, type=f32), y=pa.array(labels))
    table("features-strings", "dtype: column 'pixels'", pixels=pa.array([[str(v) for v in r] for r in px]),
          label=pa.array(labels))
    table("features-nested", "dtype: column 'pixels'",
          pixels=pa.array([[r[i:i + 8] for i in range(0, 64, 8)] for r in px]), label=pa.array(labels))
    table("labels-float", "dtype: column 'label'", pixels=pa.array(px, type=f32), label=pa.array([1.5] * 20))
    table("wrong-length", "expected 64", pixels=pa.array([r[:60] for r in px], type=f32), label=pa.array(labels))
    table("labels-10", "outside 0..9", pixels=pa.array(px, type=f32), label=pa.array([10] * 20))
    table("labels-negative", "outside 0..9", pixels=pa.array(px, type=f32), label=pa.array([-1] + labels[1:]))
    table("labels-u64-huge", "outside 0..9", pixels=pa.array(px, type=f32),
          label=pa.array([2**63 + 5] * 20, type=pa.uint64()))
    table("nan", "NaN", pixels=pa.array([[float("nan")] + r[1:] for r in px], type=f32), label=pa.array(labels))
    table("inf", "NaN/inf", pixels=pa.array([r[:-1] + [float("inf")] for r in px], type=f32), label=pa.array(labels))
    table("beyond-float32", "beyond float32", pixels=pa.array([[1e300] * 64 for _ in px], type=pa.list_(pa.float64())),
          label=pa.array(labels))
    table("null-labels", "missing label", pixels=pa.array(px, type=f32),
          label=pa.array([None] + labels[1:], pa.int64()))
    table("null-feature-rows", "null", pixels=pa.array([None] + px[1:], type=f32), label=pa.array(labels))
    table("empty-table", "empty", pixels=pa.array([], type=f32), label=pa.array([], type=pa.int64()))
    table("only-another-column", "missing column", note=pa.array(["x"] * 20))
    table("extra-column-otherwise-good", None, pixels=pa.array(px, type=f32), label=pa.array(labels),
          note=pa.array(["x"] * 20))
    dup = folder / "bad-duplicate.parquet"  # sorts before the original and arrives after it
    shutil.copyfile(good, dup)
    out["duplicate"] = (dup, "duplicate")
    # A folder named like a shard is a dataset (what Spark writes) and its part files are read;
    # one whose write produced no data files (only its _SUCCESS marker) is the bad case.
    d = folder / "bad-folder.parquet"
    d.mkdir()
    (d / "_SUCCESS").touch()
    out["folder-named-parquet"] = (d, "holds no data files")
    return out


def bad_shards(s: Suite) -> None:
    h = s.main
    t0 = time.time()
    h.simulate(2 if not h.shards else 1)
    good = max(h.source.glob("shard-*.parquet"))
    bad = _bad_shards(h.source, good)
    h.track(p for p, _ in bad.values() if p.is_file())
    h.track((bad["folder-named-parquet"][0]).glob("*"))
    dropped = {n: (p.read_bytes() if p.is_file() else None) for n, (p, _) in bad.items()}
    out = h.plaster("run", str(s.pipeline))
    rec = h.newest_since(t0)
    ok = out.returncode == 0 and rec is not None and rec["state"] == "decided"
    snapshot = (rec or {}).get("stages", {}).get("ingest", {}).get("output", {})
    learned = {sh["name"] for sh in snapshot.get("new_shards", [])}
    quarantined = {q["name"]: q for q in (rec or {}).get("quarantined", [])}
    for name, (path, words) in bad.items():
        case = Case("bad-shards", name)
        problems = [] if ok else [f"the cycle did not decide: exit {out.returncode}: {tail(out.stderr, 300)}"]
        if words is None:
            if path.name not in learned:
                problems.append("an acceptable shard was not learned" + (
                    f" (quarantined: {quarantined[path.name]['reason']})" if path.name in quarantined else ""))
            note = "learned (an extra column is ignored)"
        else:
            q = quarantined.get(path.name)
            if q is None:
                problems.append("not quarantined" + (" (learned!)" if path.name in learned else ""))
                note = ""
            else:
                moved = Path(q["moved_to"])
                reason_file = moved.with_name(moved.name + ".reason.json")
                if moved.parent != h.source / "_quarantine":
                    problems.append(f"moved to {moved}, not the source's _quarantine/")
                if dropped[name] is not None and (not moved.is_file() or moved.read_bytes() != dropped[name]):
                    problems.append("the quarantined bytes differ from what was dropped")
                if not reason_file.is_file() or json.loads(reason_file.read_text())["reason"] != q["reason"]:
                    problems.append("no reason file beside it")
                if words not in q["reason"]:
                    problems.append(f"the reason does not say {words!r}: {q['reason']}")
                note = q["reason"][:110]
        if good.name not in learned:
            problems.append(f"the good shard {good.name} was not learned")
        case.survived = not problems
        case.note = "; ".join(problems) or note
        h.charge(case)
        s.done(case, t0)
        t0 = time.time()


# --- 7. Malformed HTTP requests -------------------------------------------------------------------------------------


def http_raw(port: int, data: bytes, timeout: float = 60) -> tuple[int | None, bytes]:
    """Send `data` as is and read one response: (status, body), or (None, why) when the
    connection was dropped without an answer. A server may answer before reading all of a
    refused body (a 413): what it sent is read even if sending the rest failed."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        buf = b""
        try:
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
            head, _, body = buf.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/"):
                return None, b"dropped: " + buf[:80]
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
            if "content-length" in headers:
                while len(body) < int(headers["content-length"]):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    body += chunk
            elif headers.get("transfer-encoding") == "chunked":
                while not body.endswith(b"0\r\n\r\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    body += chunk
                body = _dechunk(body)
            return status, body
        except (ConnectionResetError, socket.timeout) as e:
            return None, f"dropped: {type(e).__name__}".encode()


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size, _, rest = body.partition(b"\r\n")
        n = int(size.split(b";")[0] or b"0", 16)
        if n == 0:
            break
        out, body = out + rest[:n], rest[n + 2:]
    return out


def request(method: str, path: str, body: bytes = b"", headers: dict | None = None, chunked: bool = False) -> bytes:
    head = {"Host": "127.0.0.1", "Connection": "close", **(headers or {})}
    if chunked:
        head["Transfer-Encoding"] = "chunked"
        pieces = [body[i:i + 65536] for i in range(0, len(body), 65536)]
        body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    elif body or method in ("POST", "PUT"):
        head.setdefault("Content-Length", str(len(body)))
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in head.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def post(body: bytes, content_type: str = "application/json", **kw) -> bytes:
    return request("POST", "/predict", body, {"Content-Type": content_type}, **kw)


def _zeros(shape) -> list:
    import numpy as np

    return np.zeros(shape).tolist()


def _kinds(rng: random.Random) -> list[tuple[str, int, object, set[int], bool]]:
    """(kind, repetitions, a function of the repetition giving the raw request, statuses
    accepted, whether the answer must be a JSON object with "error")."""
    j = lambda doc: json.dumps(doc).encode()  # noqa: E731
    good = j({"inputs": _zeros((1, 8, 8))})
    shapes = [(1, 8, 7), (2, 1, 8, 7), (64,), (8, 8), (1, 1, 8, 8, 1), (3, 8, 8), (1, 0), (0, 1, 8, 8)]
    return [
        ("not JSON", 60, lambda i: post(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))), {400}, True),
        ("truncated JSON", 60, lambda i: post(good[: rng.randrange(1, len(good) - 1)]), {400}, True),
        ("JSON array at the top", 40, lambda i: post(j(_zeros((1, 1, 8, 8)))), {422}, True),
        ("JSON scalar at the top", 40, lambda i: post(rng.choice([b"42", b"null", b'"inputs"', b"true"])), {422}, True),
        ('no "inputs" key', 40, lambda i: post(j({"input": _zeros((1, 8, 8))})), {422}, True),
        ('"inputs" a string', 40, lambda i: post(j({"inputs": "pixels"})), {422}, True),
        ('"inputs" a dict or number', 40, lambda i: post(j({"inputs": rng.choice([{"a": 1}, 3.0, None])})),
         {422}, True),
        ("empty batch", 40, lambda i: post(j({"inputs": []})), {422}, True),
        ("wrong shape", 80, lambda i: post(j({"inputs": _zeros(shapes[i % len(shapes)])})), {422}, True),
        ("ragged", 40, lambda i: post(j({"inputs": [_zeros((1, 8, 8)), [[0.0] * rng.randrange(1, 8)]]})), {422}, True),
        ("strings inside", 40, lambda i: post(j({"inputs": [[["x"] * 8] * 8]})), {422}, True),
        ("booleans inside", 40, lambda i: post(j({"inputs": [[[True] * 8] * 8]})), {422}, True),
        ("nulls inside", 40, lambda i: post(j({"inputs": [[[None] * 8] * 8]})), {422}, True),
        ("NaN / Infinity literals", 45,
         lambda i: post(good.replace(b"0.0", [b"NaN", b"Infinity", b"-Infinity"][i % 3], 1)), {400}, True),
        ("huge numbers (1e400, 10**400, 1e39)", 45,
         lambda i: post(good.replace(b"0.0", [b"1e400", b"1" + b"0" * 400, b"1e39"][i % 3], 1)), {422}, True),
        ("too many examples", 20, lambda i: post(j({"inputs": _zeros((257 + i, 1, 8, 8))})), {413}, True),
        ("body over 8 MiB", 4, lambda i: post(b"[" * (9 << 20)), {413}, True),
        ("chunked body over 8 MiB", 3, lambda i: post(b" " * (9 << 20), chunked=True), {413}, True),
        ("chunked bad JSON", 40, lambda i: post(good[:-3], chunked=True), {400}, True),
        ("malformed chunk encoding", 20, lambda i: request("POST", "/predict", b"", {
            "Content-Type": "application/json", "Transfer-Encoding": "chunked"}) + b"zz\r\nnot hex\r\n0\r\n\r\n",
         {400}, False),
        ("form body, wrong Content-Type", 40,
         lambda i: post(b"inputs=1,2,3", "application/x-www-form-urlencoded"), {400}, True),
        ("good body, Content-Type text/plain", 20, lambda i: post(good, "text/plain"), {200, 415}, False),
        ("bad UTF-8", 40, lambda i: post(b'{"inputs": "\xff\xfe' + bytes([rng.randrange(128, 256)]) + b'"}'),
         {400}, True),
        ("nested 10,000 levels", 20, lambda i: post(b"[" * 10000 + b"]" * 10000), {400}, True),
        ('"inputs" nested 10,000 levels', 20, lambda i: post(b'{"inputs": ' + b"[" * 10000 + b"]" * 10000 + b"}"),
         {400}, True),
        ('"inputs" nested 200 levels', 20, lambda i: post(b'{"inputs": ' + b"[" * 200 + b"0" + b"]" * 200 + b"}"),
         {422}, True),
        ("GET /predict", 30, lambda i: request("GET", "/predict"), {405}, False),
        ("PUT / DELETE / PATCH /predict", 30, lambda i: request(["PUT", "DELETE", "PATCH"][i % 3], "/predict", good, {
            "Content-Type": "application/json"}), {405}, False),
        ("unknown path", 30, lambda i: request(rng.choice(["GET", "POST"]), rng.choice(
            ["/nope", "/predict/x", "/../../etc/passwd", "/%00", "/" + "a" * 2000])), {404}, False),
        ("garbage request line", 20, lambda i: b"HELLO THERE\r\n\r\n", {400}, False),
    ]


def _answer_ok(status: int | None, body: bytes, accepted: set[int], want_json: bool) -> str | None:
    """None when the answer is what the contract says; else what is wrong."""
    if status is None:
        return body.decode("latin-1")[:80] or "dropped connection"
    if status >= 500:
        return f"{status} {body[:120]!r}"
    if status not in accepted:
        return f"{status} (expected {sorted(accepted)}) {body[:120]!r}"
    if want_json:
        try:
            doc = json.loads(body)
            if not (isinstance(doc, dict) and isinstance(doc.get("error") or doc.get("detail"), str)):
                return f"{status} without an error message: {body[:120]!r}"
        except ValueError:
            return f"{status} not JSON: {body[:120]!r}"
    return None


def bad_requests(s: Suite) -> None:
    h = s.main
    s.ensure_champion(h)
    t0 = time.time()
    port = _free_port()
    server = h.popen("serve", str(s.pipeline), "--port", str(port))
    good = post(json.dumps({"inputs": _zeros((1, 8, 8))}).encode())

    def good_ok() -> bool:
        status, body = http_raw(port, good)
        return status == 200 and "predictions" in json.loads(body or b"{}")

    deadline = time.time() + 240
    while not _listening(port) or not good_ok():
        if server.poll() is not None or time.time() > deadline:
            kill_group(server)
            out, err = server.communicate()
            case = Case("bad-requests", "plaster serve came up")
            case.note = f"plaster serve did not answer (exit {server.returncode}): {tail(err, 400)}"
            s.done(case, t0)
            return
        time.sleep(0.5)
    s.say(f"  plaster serve answers on 127.0.0.1:{port} after {time.time() - t0:.0f} s")
    rng = random.Random(15)
    total = total_5xx = 0
    try:
        for kind, reps, make, accepted, want_json in _kinds(rng):
            t1 = time.time()
            case = Case("bad-requests", kind)
            wrong: Counter = Counter()
            for i in range(reps):
                try:
                    status, body = http_raw(port, make(i))
                except OSError as e:
                    status, body = None, f"dropped: {type(e).__name__}: {e}".encode()
                total += 1
                if status is not None and status >= 500:
                    case.lost["http_5xx"] += 1
                problem = _answer_ok(status, body, accepted, want_json)
                if problem:
                    wrong[problem[:100]] += 1
            alive = good_ok()
            case.survived = not wrong and alive
            total_5xx += case.lost["http_5xx"]
            case.detail = {"requests": reps, "wrong": dict(wrong)}
            case.note = (f"{reps} requests: all {'/'.join(map(str, sorted(accepted)))}" if not wrong else
                         f"{sum(wrong.values())} of {reps} wrong, e.g. {next(iter(wrong))}") + \
                ("" if alive else "; the server no longer answers a good request")
            s.done(case, t1)
        t1 = time.time()
        case = Case("bad-requests", "all kinds at once from 8 clients, good requests among them")
        kinds = _kinds(rng)
        jobs = [(k, make, acc, wj) for k, reps, make, acc, wj in kinds if reps >= 20 for _ in range(5)]
        jobs += [("good", lambda i: good, {200}, False)] * 60
        rng.shuffle(jobs)

        def one(job):
            k, make, acc, wj = job
            try:
                status, body = http_raw(port, make(0))
            except OSError as e:
                status, body = None, f"dropped: {e}".encode()
            return k, status, _answer_ok(status, body, acc, wj)

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(one, jobs))
        total += len(answers)
        case.lost["http_5xx"] = sum(1 for _, st, _ in answers if st is not None and st >= 500)
        total_5xx += case.lost["http_5xx"]
        bad = [(k, p) for k, _, p in answers if p]
        case.survived = not bad and good_ok()
        case.detail = {"requests": len(answers), "wrong": bad[:20]}
        case.note = f"{len(answers)} requests, {sum(k == 'good' for k, *_ in answers)} good ones all 200" if not bad \
            else f"{len(bad)} wrong, e.g. {bad[0]}"
        s.done(case, t1)
    finally:
        t1 = time.time()
        server.send_signal(signal.SIGTERM)
        try:
            server.communicate(timeout=120)
            stop_s = time.time() - t1
        except subprocess.TimeoutExpired:
            stop_s = None
        kill_group(server)
    s.say(f"  {total} requests, {total_5xx} answered 5xx; after SIGTERM plaster serve exited in "
          + (f"{stop_s:.1f} s" if stop_s is not None else "more than 120 s (killed)"))
    s.serve_stop_s, s.requests_sent = stop_s, total


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


# --- 8. Broken pipeline.yaml / model.py -----------------------------------------------------------------------------


MODEL_HEAD = "import torch\nfrom torch import nn\n\n"


def _config_variants() -> list[tuple[str, dict, list[str]]]:
    """(variant, edits, words the error must hold). Edits: 'yaml' (a function of the YAML
    text), 'model' (model.py's new text, or None to delete it)."""
    def sub(old: str, new: str):
        def edit(text: str) -> str:
            assert old in text, old
            return text.replace(old, new, 1)
        return edit

    linear = MODEL_HEAD + "def build_model():\n    return nn.Sequential(nn.Flatten(), nn.Linear({i}, {o}))\n"
    return [
        ("unknown key (typo)", {"yaml": sub("  epochs: 5", "  epocs: 5")}, ["train.epocs", "unknown key"]),
        ("wrong type", {"yaml": sub("  batch_size: 64", "  batch_size: sixty-four")}, ["train.batch_size", "integer"]),
        ("missing name", {"yaml": sub("name: digits\n", "")}, ["name", "Field required"]),
        ("missing data", {"yaml": lambda t: t.split("\ndata:")[0] + "\ningest:" + t.split("\ningest:")[1]},
         ["data", "Field required"]),
        ("bad YAML syntax", {"yaml": sub("name: digits", "name: [digits")}, ["not valid YAML"]),
        ("top level a list", {"yaml": lambda t: "- name: digits\n"}, ["top level must be a mapping"]),
        ("empty pipeline.yaml", {"yaml": lambda t: ""}, ["name", "data", "Field required"]),
        ("negative epochs", {"yaml": sub("  epochs: 5", "  epochs: -3")}, ["train.epochs", "greater than or equal"]),
        ("holdout_fraction > 1", {"yaml": sub("holdout_fraction: 0.2", "holdout_fraction: 1.5")},
         ["ingest.holdout_fraction", "less than 1"]),
        ("unknown precision", {"yaml": sub("  - int8", "  - int4")}, ["build.precisions", "int4"]),
        ("features shape with a 0", {"yaml": sub("shape:\n    - 1", "shape:\n    - 0")},
         ["data.features.shape", "positive"]),
        ("num_classes 1", {"yaml": sub("num_classes: 10", "num_classes: 1")}, ["data.label.num_classes"]),
        ("cron invalid", {"yaml": lambda t: t + "schedule:\n  cron: 61 25 * * *\n"}, ["schedule.cron"]),
        ("gate names an unknown slice",
         {"yaml": sub("accuracy_min:\n    golden: 0.2", "accuracy_min:\n    gloden: 0.2")},
         ["gate.accuracy_min", "unknown slice 'gloden'"]),
        ("gate requires an unknown rule", {"yaml": sub("required: []", "required: [energy]")},
         ["gate.required", "unknown rule"]),
        ("data.source names an unset variable", {"yaml": sub("${PLASTER_HOME}/data/digits/shards",
                                                              "${PLASTER_FAULT_UNSET}/shards")},
         ["data.source", "PLASTER_FAULT_UNSET"]),
        ("model.py missing", {"model": None}, ["model.py", "not found", "build_model"]),
        ("model.py syntax error", {"model": "def build_model(:\n    pass\n"}, ["model.py:1", "SyntaxError"]),
        ("model.py imports a missing module", {"model": "import plaster_fault_no_such_module\n"},
         ["model.py", "ModuleNotFoundError", "plaster_fault_no_such_module"]),
        ("model.py without build_model", {"model": MODEL_HEAD + "def make_model():\n    return nn.Linear(64, 10)\n"},
         ["model.py", "build_model()"]),
        ("build_model takes an argument",
         {"model": MODEL_HEAD + "def build_model(width):\n    return nn.Linear(64, width)\n"},
         ["build_model(width)", "no required arguments"]),
        ("build_model raising",
         {"model": MODEL_HEAD + "def build_model():\n    raise RuntimeError('weights missing')\n"},
         ["build_model()", "RuntimeError: weights missing"]),
        ("build_model returning 42", {"model": MODEL_HEAD + "def build_model():\n    return 42\n"},
         ["build_model()", "returned int", "torch.nn.Module"]),
        ("5 outputs for 10 classes", {"model": linear.format(i=64, o=5)}, ["num_classes=10", "[2, 5]", "10 values"]),
        ("first layer wrong for the input shape", {"model": linear.format(i=48, o=10)},
         ["data.features.shape", "[1, 8, 8]", "first layer"]),
        ("forward returns a dict", {"model": MODEL_HEAD + "class M(nn.Module):\n    def forward(self, x):\n"
                                    "        return {'logits': torch.zeros(len(x), 10)}\n\n"
                                    "def build_model():\n    return M()\n"}, ["returned dict", "one tensor"]),
    ]


def bad_configs(s: Suite) -> None:
    h = Home(s, s.tmp / "home-configs")
    h.simulate(1)  # data waiting, so a variant plaster does not refuse at load would really run
    variants = _config_variants()

    def one(variant):
        name, edits, words = variant
        t0 = time.time()
        folder = s.tmp / "configs" / name.replace(" ", "-").replace("/", "-").replace(">", "gt") / NAME
        shutil.copytree(s.pipeline, folder)
        if "yaml" in edits:
            p = folder / "pipeline.yaml"
            p.write_text(edits["yaml"](p.read_text()))
        if "model" in edits:
            if edits["model"] is None:
                (folder / "model.py").unlink()
            else:
                (folder / "model.py").write_text(edits["model"])
        case = Case("bad-configs", name)
        problems = []
        outs = {}
        for cmd in (("validate-config",), ("run",)):
            out = h.plaster(*cmd, str(folder), timeout=300)
            outs[cmd[0]] = out
            said = out.stdout + out.stderr
            if out.returncode == 0:
                problems.append(f"`plaster {cmd[0]}` exited 0")
            if traceback_in(said):
                problems.append(f"`plaster {cmd[0]}` printed a traceback: {' '.join(said.split())[-240:]}")
            missing = [w for w in words if w not in " ".join(said.split())]
            if missing:
                problems.append(f"`plaster {cmd[0]}` does not say {missing}: {' '.join(said.split())[-240:]}")
        case.survived = not problems
        msg = " ".join(outs["validate-config"].stderr.split()).replace("error: ", "")
        case.note = "; ".join(problems) or msg[:120]
        case.detail = {c: {"rc": o.returncode, "stderr": tail(o.stderr, 800)} for c, o in outs.items()}
        return case, t0

    # Each variant is two short processes; two at a time halves the wait on 2 cores.
    with ThreadPoolExecutor(2) as pool:
        for case, t0 in pool.map(one, variants):
            s.done(case, t0)
    case = Case("bad-configs", "nothing registered by any variant")
    registered = len(h.versions())
    case.survived = registered == 0 and not h.records()
    case.note = f"{registered} versions, {len(h.records())} cycle records"
    case.lost["registrations"] = registered
    h.charge(case)
    s.done(case, time.time())


# --- 9-10. Live serving: a canary planted to fail, and a server SIGKILLed with feedback on ---------------------------


CANARY = "rollout={strategy: canary, fraction: 0.3, bake_s: 4, min_requests: 40, check_s: 0.5}"
FEEDBACK = "feedback={enabled: true, flush_rows: 200, flush_s: 2}"
GOOD = json.dumps({"inputs": [[[0.0] * 8] * 8]})


@contextlib.contextmanager
def in_home(h: Home):
    """PLASTER_HOME=h for what the suite does in this process (register a planted version)."""
    saved = os.environ.get("PLASTER_HOME")
    os.environ["PLASTER_HOME"] = str(h.path)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PLASTER_HOME", None)
        else:
            os.environ["PLASTER_HOME"] = saved


def live_home(s: Suite) -> Home:
    """One home with a champion for the live kinds (their own pipeline copies, same name)."""
    if s.live is None:
        s.live = Home(s, s.tmp / "home-live")
        s.ensure_champion(s.live)
    return s.live


def start_serving(s: Suite, h: Home, folder: Path, port: int) -> tuple[subprocess.Popen, str | None]:
    """`plaster serve` on `port`, waited for until it answers a good request: (process, None),
    or (process, why not) after it exited or 240 s passed (the process group killed)."""
    t0 = time.time()
    server = h.popen("serve", str(folder), "--port", str(port))
    good = post(GOOD.encode())
    while time.time() - t0 < 240:
        if server.poll() is not None:
            break
        if _listening(port):
            with contextlib.suppress(OSError):
                status, _ = http_raw(port, good, timeout=10)
                if status == 200:
                    s.say(f"  plaster serve answers on 127.0.0.1:{port} after {time.time() - t0:.0f} s")
                    return server, None
        time.sleep(0.5)
    kill_group(server)
    out, err = server.communicate()
    return server, f"plaster serve did not answer (exit {server.returncode}): {tail(out + err, 400)}"


def kill_tree(proc: subprocess.Popen) -> list[str]:
    """SIGKILL `proc`'s process group and, in the same instant, every process it started that
    is outside that group (Ray's workers, the serving replica among them, run in process
    groups of their own and would go on answering for seconds), except Serve's HAProxy: a
    crash leaves it behind, holding the port, for the next `plaster serve` to stop. Returns
    the names of the processes killed outside the group."""
    import psutil

    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    kill_group(proc)
    outside = []
    for p in tree:
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(p.pid) != proc.pid and p.name() != "haproxy":
                outside.append(p.name())
                p.kill()
    return outside


class Clients:
    """`n` threads POSTing examples to /predict one after another, each with its own
    X-Request-Id; every answer (id, time, version) and every failure kept."""

    def __init__(self, port: int, examples, n: int = 4, tag: str = "c", pause_s: float = 0.003):
        self.url, self.examples, self.tag, self.pause_s = f"http://127.0.0.1:{port}/predict", examples, tag, pause_s
        self.answers: list[dict] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(n)]

    def _loop(self, k: int) -> None:
        import requests

        rng = random.Random(k)
        with requests.Session() as session:
            for i in itertools.count():
                if self._stop.is_set():
                    return
                rid = f"{self.tag}-{k}-{i}"
                x = self.examples[rng.randrange(len(self.examples))]
                try:
                    r = session.post(self.url, json={"inputs": x.tolist()}, headers={"X-Request-Id": rid}, timeout=30)
                    if r.status_code == 200:
                        self.answers.append({"id": rid, "at": time.time(), "version": r.json()["version"]})
                    else:
                        self.failures.append(f"{r.status_code} {r.text[:120]}")
                except Exception as e:  # a dropped connection is a failed request, whatever its class
                    self.failures.append(f"{type(e).__name__}: {str(e)[:120]}")
                time.sleep(self.pause_s)

    def __enter__(self) -> "Clients":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


def _until(what, timeout: float, every: float = 0.25):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = what()
        if got:
            return got
        time.sleep(every)
    return None


def _golden(h: Home):
    from orchestrator.dataset import load_arrays

    rec = next(r for r in reversed(h.records()) if r["decision"] == "PROMOTED")
    gx, _ = load_arrays(Path(rec["stages"]["ingest"]["output"]["golden_file"]))
    return gx["input"]


def _median(values: list) -> float | None:
    import statistics

    return statistics.median(values) if values else None


def bad_canary(s: Suite, repeats: int = 3) -> None:
    """Versions planted to fail live (slow; erroring on a quarter of inputs) put live as an
    approval does, under `rollout: canary`: the live gate must roll each back by itself."""
    import planted as plant

    from orchestrator import rollout
    from orchestrator.workspace import Workspace

    h = live_home(s)
    folder = copy_pipeline(NAME, s.tmp / "pipeline-canary", OVERRIDES + [CANARY])
    gx = _golden(h)
    port = _free_port()
    t0 = time.time()
    server, why = start_serving(s, h, folder, port)
    if why:
        s.done(Case("bad-canary", "plaster serve came up", note=why), t0)
        return
    rules = {"slow": "latency:", "errors": "errors:"}
    figures: dict[str, list[dict]] = {k: [] for k in rules}
    try:
        for kind in [k for k in rules for _ in range(repeats)]:
            t1 = time.time()
            case = Case("bad-canary", f"{kind} #{len(figures[kind]) + 1}")
            before = h.champion()
            with in_home(h):
                version = plant.register_planted(kind, gx, NAME, base=before)
                ws = Workspace.from_env()
                with Clients(port, gx, tag=f"{kind}{len(figures[kind])}") as clients:
                    plant.move_champion(version, NAME)
                    done = _until(lambda w=ws, v=version: [r for r in rollout.load(w, NAME) if r["to"] == v], timeout=90)
                    back = _until(lambda v=version: [e for e in h.ledger() if e["kind"] == "rollback" and e["from"] == v],
                                  timeout=30)
                    time.sleep(1.5)  # answers after the restore: none may come from the planted version
            problems = []
            r, move = (done or [None])[0], (back or [None])[-1]
            if r is None:
                problems.append("no rollout record within 90 s")
            elif r["outcome"] != "rolled_back" or not (r["reasons"] or [""])[0].startswith(rules[kind]):
                problems.append(f"rollout {r['outcome']}: {r['reasons'][:1]} (expected rolled_back, {rules[kind]})")
            if move is None:
                problems.append("no rollback in the ledger")
            now = h.champion()
            if now != before:
                problems.append(f"champion alias is v{now}, not back on v{before}")
            if r and move:
                restored = r["started_at"] + move["detect_s"] + move["restore_s"]
                late = [a for a in clients.answers if a["version"] == version and a["at"] > restored + 0.2]
                if late:
                    problems.append(f"{len(late)} answer(s) from planted v{version} after the restore")
                    case.lost["wrong"] += 1
                figures[kind].append({"version": version, "detect_s": move["detect_s"],
                                      "restore_s": move["restore_s"], "requests": r["figures"].get("requests")})
            case.lost["requests"] = len(clients.failures)
            if clients.failures:
                problems.append(f"{len(clients.failures)} client request(s) failed, e.g. {clients.failures[0]}")
            case.survived = not problems
            case.detail = {"planted": version, "champion": before, "answers": len(clients.answers),
                           "failures": clients.failures[:10], "rollout": r, "ledger": move}
            case.note = "; ".join(problems) or (
                f"rolled back ({r['reasons'][0].split(',')[0]}): detected in {move['detect_s']:.2f} s after "
                f"{r['figures'].get('requests')} watched requests, restored in {move['restore_s'] * 1000:.0f} ms; "
                f"{len(clients.answers)} answers, 0 failed")
            h.charge(case)
            s.done(case, t1)
    finally:
        server.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.communicate(timeout=120)
        kill_group(server)
    medians = {k: {"detect_s": _median([f["detect_s"] for f in v]), "restore_s": _median([f["restore_s"] for f in v]),
                   "requests": _median([f["requests"] for f in v if f["requests"] is not None]), "n": len(v)}
               for k, v in figures.items()}
    line = "; ".join(f"{k}: median detect {m['detect_s']:.2f} s ({m['requests']:.0f} watched requests), "
                     f"restore {m['restore_s'] * 1000:.0f} ms" for k, m in medians.items() if m["n"])
    s.say(f"  {line}")
    s.figures["bad-canary"] = {"line": line, "medians": medians, "cases": figures}


def serve_killed_feedback(s: Suite) -> None:
    """`plaster serve` with feedback on, SIGKILLed under traffic: the feedback shards must hold
    every answered request but the last unflushed batch, each shard whole; then it serves again
    on the same port."""
    import pyarrow.parquet as pq

    from orchestrator.config import load_pipeline
    from orchestrator.feedback import location
    from orchestrator.workspace import Workspace

    h = live_home(s)
    folder = copy_pipeline(NAME, s.tmp / "pipeline-feedback", OVERRIDES + [FEEDBACK])
    with in_home(h):
        pipeline = load_pipeline(folder, check=False)
        where = location(pipeline, Workspace.from_env())
        flush_rows, flush_s = pipeline.config.feedback.flush_rows, pipeline.config.feedback.flush_s
    gx = _golden(h)
    port = _free_port()
    t0 = time.time()
    case = Case("serve-killed-feedback", "SIGKILL plaster serve's process group under traffic")
    server, why = start_serving(s, h, folder, port)
    if why:
        case.note = why
        s.done(case, t0)
        return
    before = {p.name for p in where.glob("*.parquet")} if where.is_dir() else set()
    clients = Clients(port, gx, tag="fb").__enter__()
    time.sleep(8)
    killed_at = time.time()
    outside = kill_tree(server)
    time.sleep(0.5)
    clients.stop()
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.communicate(timeout=30)
    probe = None
    if _listening(port):  # what holds the port now: an orphaned HAProxy without its replica
        with contextlib.suppress(OSError):
            probe = http_raw(port, post(GOOD.encode()), timeout=10)[0]
    answered = {a["id"]: a["at"] for a in clients.answers}
    shards = sorted(p for p in where.glob("*.parquet") if p.name not in before) if where.is_dir() else []
    temps = [p.name for p in where.iterdir() if p.name.startswith(".")] if where.is_dir() else []
    kept, unreadable = set(), []
    for p in shards:
        try:
            kept |= set(pq.read_table(p, columns=["request_id"]).column("request_id").to_pylist())
        except Exception as e:  # a torn shard, whatever pyarrow calls it
            unreadable.append(f"{p.name}: {type(e).__name__}")
    missing = sorted((at, rid) for rid, at in answered.items() if rid not in kept)
    window = flush_s + 1.0  # flush_s, plus the server's poll (1 s) that flushes a due buffer
    early = [rid for at, rid in missing if at < killed_at - window]
    problems = []
    if not answered:
        problems.append("no request was answered before the kill")
    if len(missing) > flush_rows:
        problems.append(f"{len(missing)} answered requests missing, more than flush_rows ({flush_rows})")
    if early:
        problems.append(f"{len(early)} missing answered more than {window:g} s before the kill, e.g. {early[0]}")
    if unreadable:
        problems.append(f"{len(unreadable)} shard(s) not whole: {unreadable[:3]}")
    case.lost["feedback"] = len(early) + max(0, len(missing) - flush_rows - len(early))
    case.lost["wrong"] = len(unreadable)
    span = (killed_at - missing[0][0], killed_at - missing[-1][0]) if missing else None
    if probe == 200:
        problems.append("a request was still answered 200 after the kill")
    case.detail = {"outside_group": outside, "port_after_kill": probe if probe is not None else (
                       "listening" if _listening(port) else "closed"),
                   "answered": len(answered), "kept": len(kept), "shards": len(shards), "temp_files": temps,
                   "missing": len(missing), "missing_answered_s_before_kill": span, "flush_rows": flush_rows,
                   "flush_s": flush_s, "client_failures_after_kill": len(clients.failures)}
    lost_line = (f"{len(missing)} of {len(answered)} answered requests not in the {len(shards)} feedback shards"
                 + (f", answered from {span[0]:.2f} s before the kill" if span else "")
                 + ("" if not span else f" to {-span[1]:.2f} s after it (in flight)" if span[1] < 0 else " on")
                 + f" (flush_rows {flush_rows}, flush_s {flush_s:g})"
                 + (f"; {len(temps)} temporary file(s) left, not counted" if temps else ""))
    case.survived = not problems
    case.note = "; ".join(problems) or lost_line
    h.charge(case)
    s.done(case, t0)
    s.figures["serve-killed-feedback"] = {"line": lost_line, **case.detail}

    t1 = time.time()
    case = Case("serve-killed-feedback", "plaster serve again on the same port")
    server, why = start_serving(s, h, folder, port)
    if why:
        case.note = why
        s.done(case, t1)
        return
    status, body = http_raw(port, request("POST", "/predict", GOOD.encode(), {
        "Content-Type": "application/json", "X-Request-Id": "after-restart"}))
    server.send_signal(signal.SIGTERM)
    try:
        out, err = server.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        kill_group(server)
        out, err = server.communicate()
    kill_group(server)
    orphan = next((ln.strip() for ln in (out + err).splitlines() if "HAProxy left behind" in ln), None)
    kept = set()
    for p in where.glob("*.parquet"):
        with contextlib.suppress(Exception):
            kept |= set(pq.read_table(p, columns=["request_id"]).column("request_id").to_pylist())
    problems = []
    if status != 200:
        problems.append(f"a request after the restart: {status} {body[:120]!r}")
    if "after-restart" not in kept:
        problems.append("the request answered after the restart is not in the feedback after SIGTERM")
    case.survived = not problems
    case.detail = {"orphan_haproxy": orphan, "port_after_kill": s.figures["serve-killed-feedback"]["port_after_kill"]}
    held = s.figures["serve-killed-feedback"]["port_after_kill"]
    case.note = "; ".join(problems) or (
        f"after the kill the port was {held if isinstance(held, str) else f'answered {held} by an orphaned HAProxy'}; "
        "came up on the same port and answered" + (f" ({orphan[orphan.index('stopped'):][:100]})" if orphan and
                                                   "stopped" in orphan else "")
        + "; its request reached the feedback at SIGTERM")
    s.figures["serve-killed-feedback"]["restart"] = case.note
    if case.survived:
        s.figures["serve-killed-feedback"]["line"] += "; then served again on the same port" + (
            ", stopping the HAProxy the kill left holding it" if orphan and "stopped" in orphan else "")
    h.charge(case)
    s.done(case, t1)


KINDS = {
    "crash-after-stage": crash_after_stage,
    "kill-mid-train": kill_mid_train,
    "registry-down": registry_down,
    "storage-unwritable": storage_unwritable,
    "concurrent-runs": concurrent_runs,
    "bad-shards": bad_shards,
    "bad-requests": bad_requests,
    "bad-configs": bad_configs,
    "bad-canary": bad_canary,
    "serve-killed-feedback": serve_killed_feedback,
}


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", choices=list(KINDS), default=None, metavar="KIND",
                    help=f"run only these kinds: {', '.join(KINDS)}")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "faults.json")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (homes, logs) for inspection")
    args = ap.parse_args()
    console = Console(width=160)
    kinds = args.only or list(KINDS)
    started = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="plaster-faults-"))
    suite = Suite(tmp, console)
    suite.serve_stop_s = suite.requests_sent = None
    suite.say(f"fault suite in {tmp}: {', '.join(kinds)}")
    errors = {}
    try:
        for kind in kinds:
            suite.say(f"[bold]{kind}[/]")
            try:
                KINDS[kind](suite)
            except Exception as e:  # a broken setup is reported as such, and the other kinds still run
                errors[kind] = f"{type(e).__name__}: {e}"
                case = Case(kind, "the fault could not be set up", note=errors[kind][:300])
                suite.done(case, time.time())
    finally:
        if args.keep:
            suite.say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    wall = time.time() - started

    table = Table(title=f"Fault suite on {NAME} ({os.cpu_count()}-core machine, {wall / 60:.1f} min)")
    for col in ("fault kind", "tried", "survived", "lost", "note"):
        table.add_column(col, justify="left" if col in ("fault kind", "note") else "right", overflow="fold")
    summary = {}
    for kind in kinds:
        cases = [c for c in suite.cases if c.kind == kind]
        lost = sum(c.lost_total for c in cases)
        failed = [c for c in cases if not c.survived]
        extra = ""
        if kind == "bad-requests" and suite.requests_sent is not None:
            stop = "not within 120 s" if suite.serve_stop_s is None else f"{suite.serve_stop_s:.1f} s"
            extra = f"{suite.requests_sent} requests, " \
                    f"{sum(c.lost['http_5xx'] for c in cases)} 5xx; SIGTERM to exit: {stop}. "
        if kind in suite.figures:
            extra = suite.figures[kind]["line"] + ". "
        # The table keeps one short line per lost case; the JSON has every case in full.
        note = extra + ("; ".join(f"{c.name}: {c.note[:90]}" for c in failed) if failed else
                        f"{len(cases)} case(s), all survived")
        summary[kind] = {"tried": len(cases), "survived": len(cases) - len(failed), "lost": lost,
                         "lost_by": {k: sum(c.lost[k] for c in cases) for k in LOST_KEYS}, "note": note}
        table.add_row(kind, str(len(cases)), str(len(cases) - len(failed)), str(lost), note)
    tried = sum(v["tried"] for v in summary.values())
    survived = sum(v["survived"] for v in summary.values())
    lost = sum(v["lost"] for v in summary.values())
    table.add_row("[bold]total[/]", str(tried), str(survived), str(lost), "", end_section=True)
    console.print(table)
    result = {"benchmark": "faults", "pipeline": NAME, "overrides": OVERRIDES, "cpus": os.cpu_count(),
              "euid": os.geteuid(), "wall_s": round(wall, 1), "kinds": summary,
              "totals": {"tried": tried, "survived": survived, "lost": lost},
              "serve_sigterm_exit_s": suite.serve_stop_s, "http_requests": suite.requests_sent,
              "figures": suite.figures, "setup_errors": errors, "cases": [asdict(c) for c in suite.cases]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    console.print(f"wrote {args.out}; {tried} cases, {survived} survived, {lost} lost, {wall:.0f} s")
    sys.exit(1 if lost else 0)


if __name__ == "__main__":
    main()
