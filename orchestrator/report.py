"""`plaster history` and `plaster report`: the rate of learning across cycles, as DevOps
figures, a terminal table and a static HTML page with plots.

Pure functions over the dict `api.history()` returns (cycles from local records, alias moves
from the ledger). Nothing here talks to MLflow: the caller decides where a report goes.
matplotlib is imported only when plotting, so `plaster history` stays quick.
"""

from __future__ import annotations

import html
import json
import statistics
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestrator.ledger import APPROVE, PROMOTE, ROLLBACK
from orchestrator.tasks import is_proportion

DAY = 86400.0
COLOUR = {"PROMOTED": "green", "REJECTED": "red", "SKIPPED": "yellow", "HELD": "yellow", "failed": "red"}
MARKER = {"PROMOTED": ("^", "tab:green"), "REJECTED": ("x", "tab:red"), "SKIPPED": ("o", "tab:grey"),
          "HELD": ("s", "tab:orange")}


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def lag_parts(c: dict) -> dict[str, float] | None:
    """Where a PROMOTED cycle's data_to_live_s went; None for any other cycle (nothing went live).

    - wait_s: the oldest new shard arriving → the cycle starting (waiting for a trigger);
    - cycle_s: the cycle starting → the champion alias moving (a resumed cycle's pause included);
    - rollout_s: the alias moving → every request served by it: a completed canary or linear
      rollout's length (rollout.py); 0 when the move sends all traffic at once (all_at_once, or no
      `plaster serve` watching: its alias poll and engine swap are not recorded).

    The arrival is the alias move minus data_to_live_s (the record keeps the lag, not the arrival).
    A shard that arrived after the cycle started (and was still ingested) waited 0 s.
    """
    lag = c.get("data_to_live_s")
    if c.get("decision") != "PROMOTED" or lag is None:
        return None
    moved = [m["at"] for m in c.get("alias_moves", []) if m["alias"] == "champion" and m["kind"] == PROMOTE]
    live = c.get("promoted_at") or (moved[-1] if moved else None) or c["decided_at"] or c["started_at"] + lag
    wait = min(max(0.0, c["started_at"] - (live - lag)), lag)
    r = c.get("rollout")
    staged = r is not None and r["outcome"] == "completed" and r["strategy"] in ("canary", "linear")
    return {"wait_s": wait, "cycle_s": lag - wait, "rollout_s": max(0.0, r["at"] - live) if staged else 0.0}


def lag_slo(cycles: list[dict], slo_s: float | None) -> dict[str, Any]:
    """The data-to-live lag of PROMOTED cycles against the SLO (pipeline.yaml slo.data_to_live_s).

    - lag_promoted_cycles: how many PROMOTED cycles with a lag the figures cover;
    - lag_p50_s, lag_p95_s: numpy percentiles (linear interpolation) of their data_to_live_s;
    - lag_within_slo: share of them with lag <= SLO; slo_budget_s: SLO - p95 (negative: breached);
    - lag_wait_p50_s, lag_cycle_p50_s, lag_rollout_p50_s: the median of each part (lag_parts).
    Figures without data (or without an SLO) are None.
    """
    import numpy as np

    # A staged rollout is part of the lag: the new data is live when every request gets it.
    lags = [c["data_to_live_s"] + (lag_parts(c) or {}).get("rollout_s", 0.0) for c in cycles
            if c["decision"] == "PROMOTED" and c["data_to_live_s"] is not None]
    parts = [p for p in map(lag_parts, cycles) if p is not None]
    p50, p95 = (float(v) for v in np.percentile(lags, [50, 95])) if lags else (None, None)
    has = bool(lags) and slo_s is not None
    return {
        "slo_data_to_live_s": slo_s, "lag_promoted_cycles": len(lags), "lag_p50_s": p50, "lag_p95_s": p95,
        "lag_within_slo": sum(v <= slo_s for v in lags) / len(lags) if has else None,
        "slo_budget_s": slo_s - p95 if has else None,
        "lag_wait_p50_s": _median([p["wait_s"] for p in parts]),
        "lag_cycle_p50_s": _median([p["cycle_s"] for p in parts]),
        "lag_rollout_p50_s": _median([p["rollout_s"] for p in parts]),
    }


def devops(history: dict, now: float | None = None) -> dict[str, Any]:
    """DevOps figures for the rate of learning. Alias moves count over the whole ledger,
    cycle figures over the cycles in `history` (the last N asked for).

    - promotions: champion moves of kind promote or approve (a rollback restores, it delivers nothing new).
    - promotions_per_day: promotions / window_days; window_days = first event (earliest cycle start
      or alias move) → `now` (default: the current time, so a pipeline that stopped learning decays),
      at least 1, so a pipeline's first hour does not read as dozens a day.
    - median_lead_time_s: median data_to_live_s of PROMOTED cycles (oldest new shard arriving → champion moved).
    - median_cycle_time_s: median cycle_time_s of cycles that trained (PROMOTED, REJECTED, HELD);
      a SKIPPED cycle found too little data and would flatter it.
    - change_failure_rate: rollbacks / promotions; None without promotions.
    - median_time_to_restore_s: per rollback, from the latest champion move that put the
      rolled-away-from version live to the rollback, i.e. how long the bad version served; None without rollbacks.
    - decisions: cycles by decision (one without a decision yet by its state: running, failed).
    - the data-to-live SLO figures of lag_slo(): lag p50/p95, share within the SLO, budget left, parts.
    """
    now = time.time() if now is None else now
    cycles = history["cycles"]
    moves = sorted((m for m in history["alias_moves"] if m["alias"] == "champion"), key=lambda m: m["at"])
    promotions = [m for m in moves if m["kind"] in (PROMOTE, APPROVE)]
    rollbacks = [m for m in moves if m["kind"] == ROLLBACK]
    events = [c["started_at"] for c in cycles] + [m["at"] for m in moves]
    window = max((now - min(events)) / DAY, 1.0) if events else 1.0
    restores = []
    for r in rollbacks:
        live = [m["at"] for m in moves if m["to"] == r["from"] and m["at"] <= r["at"]]
        if live:  # a ledger started after that version went live cannot tell
            restores.append(r["at"] - live[-1])
    return {
        "promotions": len(promotions), "window_days": window, "promotions_per_day": len(promotions) / window,
        "median_lead_time_s": _median([c["data_to_live_s"] for c in cycles
                                       if c["decision"] == "PROMOTED" and c["data_to_live_s"] is not None]),
        "median_cycle_time_s": _median([c["cycle_time_s"] for c in cycles
                                        if c["decision"] in ("PROMOTED", "REJECTED", "HELD")
                                        and c["cycle_time_s"] is not None]),
        "rollbacks": len(rollbacks),
        "change_failure_rate": len(rollbacks) / len(promotions) if promotions else None,
        "median_time_to_restore_s": _median(restores),
        **live_gate_figures(history.get("rollouts") or []),
        "decisions": dict(Counter(c["decision"] or c["state"] for c in cycles)),
        **lag_slo(cycles, _slo(history)),
    }


def live_gate_figures(rollouts: list[dict]) -> dict[str, Any]:
    """What the live gate did (rollout.py's records):

    - rollouts: canary, linear and shadow rollouts that ended (completed, rolled back, rejected, aborted);
    - auto_rollbacks: those the live gate ended (a canary rolled back, a shadow rejected);
    - median_time_to_detect_s: per automatic rollback, the new model's first request → the failing look;
    - median_time_to_restore_traffic_s: per automatic rollback, that look → no request reaching it.
    """
    auto = [r for r in rollouts if r["outcome"] in ("rolled_back", "rejected")]
    return {"rollouts": len(rollouts), "auto_rollbacks": len(auto),
            "median_time_to_detect_s": _median([r["figures"]["detect_s"] for r in auto if "detect_s" in r["figures"]]),
            "median_time_to_restore_traffic_s": _median([r["figures"]["restore_s"] for r in auto
                                                         if "restore_s" in r["figures"]])}


def _slo(history: dict) -> float | None:
    return (history.get("slo") or {}).get("data_to_live_s")  # a history from before slo: has none


# --- text shared by the terminal and the HTML tables, so the two never disagree ----------

def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def _dur(s: float | None) -> str:
    """Seconds in the largest unit that keeps the figure readable: lags range from seconds to days."""
    if s is None:
        return "—"
    for unit, size in (("d", DAY), ("h", 3600.0), ("m", 60.0)):
        if s >= 2 * size:
            return f"{s / size:.1f}{unit}"
    return f"{s:.1f}s"


def _signed(s: float | None) -> str:
    return "—" if s is None else ("-" + _dur(-s) if s < 0 else _dur(s))


def _parts(c: dict) -> str:
    p = lag_parts(c)
    return "—" if p is None else \
        f"wait {_dur(p['wait_s'])} + cycle {_dur(p['cycle_s'])} + rollout {_dur(p['rollout_s'])}"


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M")


def _move(m: dict) -> str:
    alias = "" if m["alias"] == "champion" else f"{m['alias']} "  # almost every move is the champion's
    return alias + " → ".join("—" if v is None else f"v{v}" for v in (m["from"], m["to"]))


def _metric(metric: str, v: float | None) -> str:
    return _pct(v) if is_proportion(metric) or v is None else f"{v:.4g}"


def _cycle_cells(c: dict) -> dict[str, str]:
    before, after = c["new_accuracy_champion"], c["new_accuracy_candidate"]
    return {
        "cycle": c["id"], "trigger": c["trigger"] or "—",
        "decision": (c["decision"] or c["state"]) + (f" v{c['version']}" if c["version"] else ""),
        "data→live": _dur(c["data_to_live_s"]), "lag: wait + cycle + rollout": _parts(c),
        "cycle time": _dur(c["cycle_time_s"]),
        "stages (s)": " ".join(f"{k[:3]} {v:.1f}" for k, v in c["stage_seconds"].items()),
        "new data: champion → candidate": "—" if (before, after) == (None, None)
        else f"{_metric(c.get('metric', 'accuracy'), before)} → {_metric(c.get('metric', 'accuracy'), after)}",
        "drift (worst feature)": _drift(c.get("drift")),
        "alias moves": "; ".join(_move(m) for m in c["alias_moves"]),
    }


def _drift(d: dict | None) -> str:
    # The new rows against the champion's training data, measured before training.
    return "—" if not d or not d.get("worst") else f"{d['metric']} {d['score']:.3g} ({d['worst']})"


def _move_cells(m: dict) -> dict[str, str]:
    return {"time (UTC)": _utc(m["at"]), "move": _move(m), "kind": m["kind"], "actor": m["actor"],
            "reason": m["reason"]}


def _rollout_cells(r: dict) -> dict[str, str]:
    f = r["figures"]
    return {"time (UTC)": _utc(r["at"]), "rollout": f"{r['strategy']} v{r['from']} → v{r['to']}",
            "outcome": r["outcome"], "length": _dur(r["seconds"]),
            "requests": str(f.get("requests", "—")),
            "detect / restore": "—" if "detect_s" not in f else f"{f['detect_s']:.1f}s / {1000 * f['restore_s']:.0f} ms",
            "why": "; ".join(r["reasons"])}


def _devops_rows(d: dict) -> list[tuple[str, str, str]]:
    """(figure, value, definition)."""
    cfr = d["change_failure_rate"]
    return [
        ("promotions", f"{d['promotions']} ({d['promotions_per_day']:.2f}/day over {d['window_days']:.1f} d)",
         "champion moves by promote or approve; per day over first event → now, at least 1 day"),
        ("median lead time", _dur(d["median_lead_time_s"]),
         "oldest new shard arriving → champion moved (PROMOTED cycles)"),
        ("median cycle time", _dur(d["median_cycle_time_s"]), "cycle start → decision (cycles that trained)"),
        ("change-failure rate", "—" if cfr is None else f"{100 * cfr:.0f}% ({d['rollbacks']} rollback(s))",
         "rollbacks / promotions"),
        ("median time to restore", _dur(d["median_time_to_restore_s"]),
         "rolled-back version going live → its rollback"),
        ("live gate", f"{d['auto_rollbacks']} automatic rollback(s) of {d['rollouts']} rollout(s)",
         "canary, linear and shadow rollouts of `plaster serve`; rolled back or rejected by the live gate"),
        ("time to detect / restore", f"{_dur(d['median_time_to_detect_s'])} / "
         + ("—" if d["median_time_to_restore_traffic_s"] is None else
            f"{1000 * d['median_time_to_restore_traffic_s']:.0f} ms"),
         "medians over automatic rollbacks: the new model's first request → the failing look → no request reaching it"),
        ("decisions", ", ".join(f"{k} {n}" for k, n in d["decisions"].items()) or "—", "cycles by decision"),
        *_slo_rows(d),
    ]


def _slo_rows(d: dict) -> list[tuple[str, str, str]]:
    slo, n, budget = d["slo_data_to_live_s"], d["lag_promoted_cycles"], d["slo_budget_s"]
    within = d["lag_within_slo"]
    return [
        ("data-to-live SLO", "— (set slo.data_to_live_s)" if slo is None else _dur(slo),
         "pipeline.yaml slo.data_to_live_s: oldest new shard arriving → champion moved"),
        ("lag p50 / p95", f"{_dur(d['lag_p50_s'])} / {_dur(d['lag_p95_s'])} over {n} promoted cycle(s)",
         "data_to_live_s of PROMOTED cycles (numpy percentiles, linear)"),
        ("within SLO", "—" if within is None else f"{_pct(within)} ({round(within * n)} of {n})",
         "promoted cycles whose lag <= SLO"),
        ("SLO budget left", _signed(budget) + (" (breached)" if budget is not None and budget < 0 else ""),
         "SLO - p95 lag; negative: the SLO is breached"),
        ("lag by part (p50)", "—" if d["lag_rollout_p50_s"] is None else
         f"wait {_dur(d['lag_wait_p50_s'])}, cycle {_dur(d['lag_cycle_p50_s'])}, "
         f"rollout {_dur(d['lag_rollout_p50_s'])}",
         "wait: oldest new shard arriving → cycle start (waiting for a trigger); cycle: start → champion alias "
         "moved; rollout: alias moved → every request on it (a canary or linear rollout; 0 when the move "
         "sends all traffic at once)"),
    ]


# --- terminal ------------------------------------------------------------------------------

def history_table(console: Console, history: dict) -> None:
    """Cycles, then every alias move (rollbacks and approvals belong to no cycle), then the DevOps figures.
    Cells are Text, not markup: a reason or trigger with brackets must print as written."""
    cycles, slo = history["cycles"], _slo(history)
    if not cycles:
        console.print(f"[bold]{history['pipeline']}[/]: no cycles yet")
    else:
        # No side rules, short headers, two lines per cycle: the stage seconds keep ~24 columns of 80.
        t = Table(title=f"{history['pipeline']}: last {len(cycles)} cycle(s)", box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False)
        t.add_column("cycle\ntrigger", no_wrap=True)
        t.add_column("decision\nchampion", no_wrap=True)
        t.add_column("time, lag\nstages (s)")
        t.add_column("new-data acc.\nchamp → cand", justify="right", no_wrap=True)
        for c in cycles:
            x = _cycle_cells(c)
            decision = Text(x["decision"], style=COLOUR.get(c["decision"] or c["state"], ""))
            if x["alias moves"]:
                decision.append("\n" + x["alias moves"], style="dim")
            timing = Text(x["cycle time"])
            if c["data_to_live_s"] is not None:
                over = slo is not None and c["data_to_live_s"] > slo
                timing.append(f", lag {x['data→live']}" + (" > SLO" if over else ""), style="red" if over else "")
            if lag_parts(c) is not None:  # where the lag went: waiting for a trigger, the cycle, the rollout
                timing.append("\n" + x["lag: wait + cycle + rollout"], style="dim")
            timing.append("\n" + x["stages (s)"])
            t.add_row(Text(f"{x['cycle']}\n{x['trigger']}"), decision, timing, x["new data: champion → candidate"])
        console.print(t)
    if history["alias_moves"]:
        m = Table(title="Alias moves (ledger)", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for col in ("time (UTC)", "move", "kind", "actor"):
            m.add_column(col, no_wrap=True)
        m.add_column("reason", overflow="fold")
        for move in history["alias_moves"]:
            m.add_row(*(Text(v) for v in _move_cells(move).values()))
        console.print(m)
    if history.get("rollouts"):
        r = Table(title="Rollouts (live gate)", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        cells = [_rollout_cells(x) for x in history["rollouts"]]
        for col in cells[0]:
            r.add_column(col, no_wrap=col != "why", overflow="fold")
        for row in cells:
            r.add_row(*(Text(v) for v in row.values()))
        console.print(r)
    g = Table.grid(padding=(0, 2))
    for k, v, _ in _devops_rows(devops(history)):
        g.add_row(k, Text(v))
    console.print(g)


# --- HTML + plots --------------------------------------------------------------------------

def _when(c: dict) -> datetime:
    return datetime.fromtimestamp(c["decided_at"] or c["started_at"], timezone.utc)


def _dated(ax: Any, fig: Any) -> None:
    from orchestrator.plots import dates

    dates(ax.xaxis)
    ax.set_xlabel("decided at (UTC)")


def _plots(cycles: list[dict], out: Path, slo: float | None = None) -> list[Path]:
    from orchestrator.plots import plain_log, pyplot, save

    plt = pyplot()
    written = []

    fig, ax = plt.subplots(figsize=(8, 4))
    lag = [(_when(c), c["data_to_live_s"]) for c in cycles if c["data_to_live_s"]]
    ax.plot([p[0] for p in lag], [p[1] for p in lag], "--o", color="grey", mfc="none", lw=0.8, label="data→live lag")
    timed = [(_when(c), c["cycle_time_s"], c["decision"]) for c in cycles if c["cycle_time_s"]]
    ax.plot([p[0] for p in timed], [p[1] for p in timed], "-", color="C0", lw=0.8, label="cycle time")
    for d, (marker, colour) in MARKER.items():
        sel = [p for p in timed if p[2] == d]
        if sel:
            ax.scatter([p[0] for p in sel], [p[1] for p in sel], marker=marker, color=colour, zorder=3, label=d)
    if slo is not None:
        ax.axhline(slo, color="tab:red", ls=":", lw=1.2, label=f"data→live SLO {_dur(slo)}")
    ax.set(yscale="log", ylabel="seconds (log: lags reach days)", title="Cycle time and data-to-live lag")
    plain_log(ax.yaxis)
    ax.legend(fontsize=8)
    _dated(ax, fig)
    written.append(save(plt, fig, out / "cycle_time.png"))

    names = list(dict.fromkeys(k for c in cycles for k in c["stage_seconds"]))  # stage order as recorded
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(cycles)), 4))
    bottom = [0.0] * len(cycles)
    for n in names:
        secs = [c["stage_seconds"].get(n, 0.0) for c in cycles]
        ax.bar(range(len(cycles)), secs, bottom=bottom, label=n)
        bottom = [b + s for b, s in zip(bottom, secs)]
    # Cycle numbers with their time to the second: cycles minutes apart stay distinct.
    ax.set_xticks(range(len(cycles)), [f"#{i + 1} {_when(c):%m-%d %H:%M:%S}" for i, c in enumerate(cycles)],
                  rotation=60, ha="right", fontsize=7)
    ax.set(xlabel="cycle (decided at, UTC)", ylabel="seconds", title="Stage seconds per cycle")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))  # beside the bars, never over them
    written.append(save(plt, fig, out / "stages.png"))

    fig, ax = plt.subplots(figsize=(8, 4))
    metric = next((c.get("metric", "accuracy") for c in reversed(cycles) if c.get("metric")), "accuracy")
    scale = 100 if is_proportion(metric) else 1
    for key, label, marker in (("new_accuracy_champion", "stale champion", "o"),
                               ("new_accuracy_candidate", "retrained candidate", "^")):
        pts = [(_when(c), scale * c[key]) for c in cycles if c[key] is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=label)
    ax.set(ylabel=f"{metric} on new data{' (%)' if scale == 100 else ''}",
           title=f"{metric} on each cycle's new data: before and after retraining")
    ax.legend(fontsize=8)
    _dated(ax, fig)
    written.append(save(plt, fig, out / "accuracy.png"))
    return written


def _table(rows: list[dict[str, str]]) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
       "table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #ccc;padding:3px 8px;"
       "text-align:left;vertical-align:top}th{background:#f3f3f3}img{max-width:100%;display:block;margin:1em 0}")


def write_html(history: dict, out: Path, now: float | None = None) -> list[Path]:
    """`out`/index.html (DevOps table, plots, cycle and alias-move tables), the PNGs it embeds
    by relative path, and history.json (the input plus the DevOps figures). Returns the files."""
    now = time.time() if now is None else now
    out.mkdir(parents=True, exist_ok=True)
    figures = devops(history, now)
    cycles, p = history["cycles"], html.escape(history["pipeline"])
    images = _plots(cycles, out, _slo(history)) if cycles else []
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>plaster report: {p}</title>"
             f"<style>{CSS}</style></head><body><h1>plaster report: {p}</h1>",
             f"<p>Generated {_utc(now)} UTC from the last {len(cycles)} cycle(s) and "
             f"{len(history['alias_moves'])} alias move(s).</p>",
             "<h2>Rate of learning</h2>",
             _table([{"figure": k, "value": v, "definition": d} for k, v, d in _devops_rows(figures)])]
    if cycles:
        parts += ["<h2>Plots</h2>", *(f"<img src='{i.name}' alt='{i.stem}'>" for i in images)]
        parts += ["<h2>Cycles</h2>", _table([_cycle_cells(c) for c in cycles])]
    else:
        parts.append("<p>No cycles yet: run <code>plaster run</code> on this pipeline, then report again.</p>")
    parts.append("<h2>Alias moves</h2>")
    parts.append(_table([_move_cells(m) for m in history["alias_moves"]]) if history["alias_moves"]
                 else "<p>The champion has not moved yet.</p>")
    if history.get("rollouts"):
        parts += ["<h2>Rollouts (live gate)</h2>", _table([_rollout_cells(r) for r in history["rollouts"]])]
    index = out / "index.html"
    index.write_text("\n".join(parts) + "\n</body></html>\n", encoding="utf-8")
    js = out / "history.json"
    js.write_text(json.dumps({**history, "devops": figures}, indent=2))
    return [index, js, *images]
