"""Terminal views of a cycle: the scorecard side by side, decisions, timings. Reads
records; computes nothing that a gate depends on."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from orchestrator.tasks import show, show_diff


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def _num(v: float | None, fmt: str = "{:.3f}") -> str:
    return "—" if v is None else fmt.format(v)


def _ci_pp(ci) -> str:
    return f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


def _skipped(entries: list[dict], keep: int = 20) -> list[str]:
    """Entries of the source left in place, with why; a long list (a Spark dataset's .crc
    files) is cut, the rest are in the record and `--json`."""
    out = [f"[dim]skipped[/] {escape(e['name'])}: {escape(e['reason'])}" for e in entries[:keep]]
    return out + ([f"[dim]… {len(entries) - keep} more skipped (see --json or the cycle record)[/]"]
                  if len(entries) > keep else [])


def scorecard(console: Console, sc: dict[str, Any]) -> None:
    cand, champ, cmp = sc["chosen"], sc["champion"], sc["comparison"]
    who = f"v{sc['candidate_version']}" if sc.get("candidate_version") else "candidate"
    t = Table(title=f"PLASTER scorecard: {who} ({cand['backend']} {cand['precision']}) vs champion "
                    f"{'v' + sc['champion_version'] if sc['champion_version'] else '(none)'}; "
                    f"{100 * sc['confidence']:g}% CIs")
    t.add_column("", no_wrap=True)
    t.add_column("metric")
    t.add_column("candidate", justify="right")
    t.add_column("champion", justify="right")
    t.add_column("difference [CI]", justify="right")
    diffs = {(d["slice"], d.get("metric", "accuracy")): d for d in cmp["accuracy"]} if cmp else {}
    figures = cand.get("metrics") or {cand.get("metric", "accuracy"): cand["accuracy"]}
    champ_figures = (champ.get("metrics") or {champ.get("metric", "accuracy"): champ["accuracy"]}) if champ else {}
    for metric, by_slice in figures.items():
        for s, a in by_slice.items():
            b, d = champ_figures.get(metric, {}).get(s), diffs.get((s, metric))
            n = a["note"][2:] if a["note"].startswith("n=") else "?"
            t.add_row("A", f"{metric} {s} (n={n})", show(metric, a["value"]), show(metric, b["value"]) if b else "—",
                      show_diff(metric, d["diff"], d["ci"]) if d else "")
    ratios = {r["batch"]: r for r in cmp["latency"]} if cmp else {}
    champ_lat = {x["batch"]: x for x in champ["latency"]} if champ else {}
    for lat in cand["latency"]:
        b, r = lat["batch"], ratios.get(lat["batch"])
        c = champ_lat.get(b)
        t.add_row("L", f"p50 / p99 ms, batch {b}", f"{lat['p50_ms']:.3f} / {lat['p99_ms']:.3f}",
                  f"{c['p50_ms']:.3f} / {c['p99_ms']:.3f}" if c else "—",
                  f"{r['ratio']:.2f}x [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]" if r else "")
    t.add_row("S", "engine bytes", f"{cand['size_bytes']:,}", f"{champ['size_bytes']:,}" if champ else "—", "")
    cs = sc["champion_size"]
    t.add_row("S", "params / FLOPs per sample", f"{sc['size']['param_count']:,} / {sc['size']['flops_per_sample']:,}",
              f"{cs['param_count']:,} / {cs['flops_per_sample']:,}" if cs else "—", "")
    thr = cand["throughput"]
    t.add_row("T", "samples/s within SLA", _num(thr["value"], "{:,.0f}"),
              _num(champ["throughput"]["value"], "{:,.0f}") if champ else "—", thr["note"])
    e = cand["energy_j_per_1k"]
    t.add_row("E", "J per 1,000 inferences", _num(e["value"], "{:.4g}") if e["value"] is not None else "not measured",
              _num(champ["energy_j_per_1k"]["value"], "{:.4g}") if champ else "—", "")
    rate = sc.get("rate") or {}
    if rate:
        t.add_row("R", "epochs / samples trained", f"{rate.get('epochs', '—')} / {rate.get('samples_trained', '—')}",
                  "", f"warm start from v{rate['warm_started_from']}" if rate.get("warm_started_from") else "")
    console.print(t)
    if e["value"] is None:
        console.print(f"E: {e['note']}")
    p = Table(title="Precisions built (candidate; ◀ = served)")
    p.add_column("engine", no_wrap=True)
    slices, main = list(cand["accuracy"]), cand.get("metric", "accuracy")
    for col in (*(f"{main} {s}" for s in slices), "p50 ms", "samples/s", "bytes", ""):
        p.add_column(col, justify="right")
    for e in sc["candidate"]:
        chosen = e["backend"] == cand["backend"] and e["precision"] == cand["precision"]
        p.add_row(f"{e['backend']} {e['precision']}", *(show(main, e["accuracy"][s]["value"]) for s in slices),
                  _num(e["latency"][0]["p50_ms"]), _num(e["throughput"]["value"], "{:,.0f}"),
                  f"{e['size_bytes']:,}", "◀" if chosen else "")
    console.print(p)
    console.print(f"chosen: {sc['chosen_reason']}")
    g = Table(title=f"Gate → {sc['decision']}")
    g.add_column("rule")
    g.add_column("verdict")
    g.add_column("reason", overflow="fold")
    colour = {"PASS": "green", "FAIL": "red", "NOT_MEASURED": "yellow"}
    for v in sc["verdicts"]:
        req = " (required)" if v.get("required") else ""
        g.add_row(v["rule"], f"[{colour[v['verdict']]}]{v['verdict']}[/]{req}", v["reason"])
    console.print(g)


def table_line(t: dict[str, Any]) -> str:
    """A lake table cycle in one line: the version read, what was new since the champion's."""
    since = "the whole table" if t["since"] is None else f"since version {t['since']}"
    line = (f"[cyan]{t['format']}[/] {escape(t['table'])} version {t['version']}: {t['added_rows']:,} new rows in "
            f"{t['added_files']} file(s) {since}")
    extra = [f"{t['deleted_rows']:,} rows deleted" if t.get("deleted_rows") else "",
             f"{t['rewritten_files']} files rewritten (no new rows)" if t.get("rewritten_files") else ""]
    return line + "".join(f"; {e}" for e in extra if e)


def outcome(console: Console, rec: dict[str, Any]) -> None:
    sc = rec["stages"].get("validate", {}).get("output")
    if sc:
        scorecard(console, sc)
    for q in rec["quarantined"]:
        console.print(f"[yellow]quarantined[/] {escape(q['name'])}: {escape(q['reason'])} → {escape(q['moved_to'])}")
    for line in _skipped(rec.get("skipped", [])):
        console.print(line)
    if rec.get("table"):
        console.print(table_line(rec["table"]))
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
            stages += "\n" + "\n".join(f"[yellow]quarantined[/] {escape(q['name'])}: {escape(q['reason'])}"
                                       for q in c["quarantined"])
        if c.get("skipped"):
            stages += "\n" + "\n".join(_skipped(c["skipped"]))
        if c.get("table"):
            stages += "\n" + table_line(c["table"])
        t.add_row(c["id"], c["decision"] or c["state"], c["version"] or "—", _num(c["cycle_time_s"], "{:.1f}s"),
                  _num(c["data_to_live_s"], "{:.1f}s"), stages)
    console.print(t)
    for c in st["cycles"]:
        if c["error"]:
            console.print(f"[red]{c['id']} stopped in {c['error']['stage']}[/]: {c['error']['message']}")
    r = st.get("last_rollout")
    if r:  # how `plaster serve` last moved traffic (rollout.py)
        colour = {"completed": "green", "rolled_back": "red", "rejected": "red"}.get(r["outcome"], "yellow")
        console.print(f"last rollout: {r['strategy']} v{r['from']} → v{r['to']} [{colour}]{r['outcome']}[/] "
                      f"in {r['seconds']:.1f}s: {escape('; '.join(r['reasons']))}")
