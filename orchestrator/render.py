"""Terminal views of a cycle: the scorecard side by side, decisions, timings. Reads
records; computes nothing that a gate depends on."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def _num(v: float | None, fmt: str = "{:.3f}") -> str:
    return "—" if v is None else fmt.format(v)


def scorecard(console: Console, sc: dict[str, Any]) -> None:
    cand, champ = sc["chosen"], sc["champion"]
    t = Table(title=f"Scorecard: candidate ({cand['backend']} {cand['precision']}) vs champion "
                    f"{'v' + sc['champion_version'] if sc['champion_version'] else '(none)'}")
    t.add_column("metric")
    t.add_column("candidate", justify="right")
    t.add_column("champion", justify="right")
    t.add_column("Δ", justify="right")
    for s in sorted(cand["accuracy"]):
        a = cand["accuracy"][s]["value"]
        b = champ["accuracy"][s]["value"] if champ else None
        t.add_row(f"accuracy ({s})", _pct(a), _pct(b), "" if b is None else f"{100 * (a - b):+.1f} pp")
    for key, label in (("latency_p50_ms", "latency p50 (ms)"), ("latency_p99_ms", "latency p99 (ms)"),
                       ("throughput_per_s", "throughput (/s)")):
        a = cand[key]["value"]
        b = champ[key]["value"] if champ else None
        fmt = "{:,.0f}" if key == "throughput_per_s" else "{:.3f}"
        t.add_row(label, _num(a, fmt), _num(b, fmt), "" if b is None else f"{a / b:.2f}x")
    t.add_row("size (bytes)", f"{cand['size_bytes']:,}", f"{champ['size_bytes']:,}" if champ else "—", "")
    console.print(t)
    p = Table(title="Precisions built (candidate; ◀ = served)")
    p.add_column("engine", no_wrap=True)
    for col in ("acc golden", "acc new", "p50 ms", "p99 ms", "samples/s", "bytes", ""):
        p.add_column(col, justify="right")
    for e in sc["candidate"]:
        chosen = e["backend"] == cand["backend"] and e["precision"] == cand["precision"]
        p.add_row(f"{e['backend']} {e['precision']}", _pct(e["accuracy"].get("golden", {}).get("value")),
                  _pct(e["accuracy"]["new"]["value"]), _num(e["latency_p50_ms"]["value"]),
                  _num(e["latency_p99_ms"]["value"]), f"{e['throughput_per_s']['value']:,.0f}",
                  f"{e['size_bytes']:,}", "◀" if chosen else "")
    console.print(p)
    console.print(f"chosen: {sc['chosen_reason']}")
    g = Table(title=f"Gate → {sc['decision']}")
    g.add_column("rule")
    g.add_column("verdict")
    g.add_column("reason", overflow="fold")
    colour = {"PASS": "green", "FAIL": "red", "NOT_MEASURED": "yellow"}
    for v in sc["verdicts"]:
        g.add_row(v["rule"], f"[{colour[v['verdict']]}]{v['verdict']}[/]", v["reason"])
    console.print(g)


def outcome(console: Console, rec: dict[str, Any]) -> None:
    sc = rec["stages"].get("validate", {}).get("output")
    if sc:
        scorecard(console, sc)
    for q in rec["quarantined"]:
        console.print(f"[yellow]quarantined[/] {q['name']}: {q['reason']} → {q['moved_to']}")
    stages = "  ".join(f"{n} {s['seconds']:.1f}s" for n, s in rec["stages"].items())
    colour = {"PROMOTED": "green", "REJECTED": "red", "SKIPPED": "yellow", "HELD": "yellow"}.get(rec["decision"], "white")
    console.print(f"[bold {colour}]{rec['decision']}[/]" + (f" v{rec['version']}" if rec["version"] else "")
                  + f"  cycle {rec['id']}")
    if not sc or rec["decision"] == "SKIPPED":  # otherwise the gate table above has them
        for r in rec["reasons"]:
            console.print(f"  · {r}")
    console.print(f"stages: {stages}")
    lag = rec["data_to_live_s"]
    console.print(f"cycle time {rec['cycle_time_s']:.1f}s" + (f", data-to-live lag {lag:.1f}s" if lag is not None else ""))


def status(console: Console, st: dict[str, Any]) -> None:
    a = st["aliases"]
    console.print(f"[bold]{st['pipeline']}[/]  champion v{a['champion'] or '—'}  previous v{a['previous'] or '—'}"
                  f"  challenger v{a['challenger'] or '—'}   tracking {st['tracking_uri']}")
    t = Table()
    t.add_column("cycle", no_wrap=True)
    t.add_column("decision", no_wrap=True)
    t.add_column("ver", justify="right")
    t.add_column("cycle time", justify="right")
    t.add_column("data→live", justify="right")
    t.add_column("stages (s)", overflow="fold")
    for c in st["cycles"]:
        stages = " ".join(f"{k[:3]} {v:.1f}" for k, v in c["stage_seconds"].items())
        if c["quarantined"]:
            stages += "\n" + "\n".join(f"[yellow]quarantined[/] {q['name']}: {q['reason']}" for q in c["quarantined"])
        t.add_row(c["id"], c["decision"] or c["state"], c["version"] or "—", _num(c["cycle_time_s"], "{:.1f}s"),
                  _num(c["data_to_live_s"], "{:.1f}s"), stages)
    console.print(t)
    for c in st["cycles"]:
        if c["error"]:
            console.print(f"[red]{c['id']} stopped in {c['error']['stage']}[/]: {c['error']['message']}")
