"""The scorecard as files: stable MLflow metric names, a readable scorecard.md and its plots.

Reads a Scorecard (and the raw samples validate saved); computes nothing the gate depends
on. matplotlib is imported inside the plotting functions so that importing this module
(the CLI, the cycle) stays cheap.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.artifacts import EngineScore, Figure, Scorecard, to_dict
from orchestrator.gate import HOLD, PROMOTE, REJECT
from orchestrator.tasks import is_proportion, show, show_diff

if TYPE_CHECKING:  # validate pulls in the engine runtimes; the samples are only read here
    from orchestrator.stages.validate import Raw

DECISION_CODE = {PROMOTE: 0, REJECT: 1, HOLD: 2}  # a number, so MLflow can chart decisions across cycles


def metrics(sc: Scorecard) -> dict[str, float]:
    """Metric names that stay the same from cycle to cycle, so MLflow can compare runs."""
    out: dict[str, Any] = {}
    for metric, by_slice in _metric_figures(sc.chosen).items():
        for s, fig in by_slice.items():
            out[f"scorecard.{metric}.{s}.candidate"] = fig.value
    for d in sc.comparison.accuracy if sc.comparison else ():
        p = f"scorecard.{d.metric}.{d.slice}"
        out.update({f"{p}.champion": d.champion, f"{p}.diff": d.diff, f"{p}.diff_ci_low": d.ci[0],
                    f"{p}.diff_ci_high": d.ci[1], f"{p}.mcnemar_p": d.mcnemar_p})
    for lat in sc.chosen.latency:
        p = f"scorecard.latency.b{lat.batch}"
        out.update({f"{p}.p50_ms": lat.p50_ms, f"{p}.p95_ms": lat.p95_ms, f"{p}.p99_ms": lat.p99_ms})
    for r in sc.comparison.latency if sc.comparison else ():
        p = f"scorecard.latency.b{r.batch}"
        out.update({f"{p}.ratio": r.ratio, f"{p}.ratio_ci_low": r.ci[0], f"{p}.ratio_ci_high": r.ci[1]})
    out["scorecard.throughput.samples_per_s"] = sc.chosen.throughput.value
    out["scorecard.size.bytes"] = sc.chosen.size_bytes
    out["scorecard.size.params"] = sc.size.param_count
    out["scorecard.size.flops_per_sample"] = sc.size.flops_per_sample
    out["scorecard.energy.j_per_1k"] = sc.chosen.energy_j_per_1k.value
    out["scorecard.decision_code"] = DECISION_CODE[sc.decision]
    # MLflow rejects None and charts NaN/inf badly: an unmeasured figure is simply absent.
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(v)}


# --- scorecard.md ----------------------------------------------------------------------

def _cell(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{v:,}" if isinstance(v, int) else f"{v:,.2f}"
    return str(v).replace("|", "\\|").replace("\n", " ")  # a pipe would split the table cell


def _num(v: float | None, fmt: str) -> str:
    return "—" if v is None else fmt.format(v)


def _pct(fig: Figure | None) -> str:
    if fig is None or fig.value is None:
        return "—"
    ci = f" [{100 * fig.ci[0]:.2f}, {100 * fig.ci[1]:.2f}]" if fig.ci else ""
    return f"{100 * fig.value:.2f}%{ci}"


def _show(metric: str, fig: Figure | None) -> str:
    return "—" if fig is None else show(metric, fig.value, fig.ci)


def _metric_figures(e: EngineScore) -> dict[str, dict[str, Figure]]:
    """Every metric of the engine by slice (a record from before tasks has accuracy only)."""
    return e.metrics or {e.metric: e.accuracy}


def _figure(f: Figure, fmt: str) -> str:
    """A measured figure with its note (batch, SLA), or the note alone saying why it is missing."""
    if f.value is None:
        return f.note
    return f"{fmt.format(f.value)} ({f.note})" if f.note else fmt.format(f.value)


def _ratio(a: float | None, b: float | None) -> str:
    return "" if a is None or not b else f"{a / b:.2f}x"


def _name(e: EngineScore) -> str:
    return f"{e.backend} {e.precision}"


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested rate entries (seconds per stage) become one row each."""
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _is_rate(key: str) -> bool:
    """R is how fast the cycle learned (durations); everything else the cycle ran (epochs,
    rows, workers, warm start) describes the pipeline as programmed, so it goes under P."""
    return key.endswith("_s") or "seconds" in key


def markdown(sc: Scorecard, rate: dict | None = None,
             images: tuple[str, ...] = ("latency.png", "accuracy.png", "precisions.png")) -> str:
    """scorecard.md; `rate` (the cycle's final timings) extends sc.rate, `images` are the plots written."""
    cand, champ, cmp = sc.chosen, sc.champion, sc.comparison
    who = f"v{sc.candidate_version}" if sc.candidate_version else "this cycle's candidate"
    vs = f"champion v{sc.champion_version}" if sc.champion_version else "no champion"
    conf = f"{100 * sc.confidence:g}% CI"
    lines = [f"# Scorecard: {sc.decision} — {who} vs {vs}", "", f"Machine: {sc.machine}", "",
             f"## PLASTER (candidate {_name(cand)}; differences with {conf})", "",
             "| | metric | candidate | champion | difference |", "|---|---|---|---|---|"]

    def row(letter: str, metric: str, a: Any, b: Any = None, diff: str = "") -> None:
        lines.append(f"| {letter} | {_cell(metric)} | {_cell(a)} | {_cell(b)} | {_cell(diff)} |")

    rows = _flat({**sc.rate, **(rate or {})})
    row("P", "served engine", _name(cand), _name(champ) if champ else None)
    for k, v in rows.items():
        if not _is_rate(k):
            row("P", k, v, "")  # the champion's cycle is not this one: nothing to set beside it

    ratios = {r.batch: r for r in cmp.latency} if cmp else {}
    champ_lat = {lat.batch: lat for lat in champ.latency} if champ else {}
    for lat in cand.latency:
        other, r = champ_lat.get(lat.batch), ratios.get(lat.batch)
        for q in ("p50", "p95", "p99"):
            diff = f"{r.ratio:.3f}x [{r.ci[0]:.3f}, {r.ci[1]:.3f}] ({r.rounds} rounds)" if r and q == "p50" else ""
            row("L", f"latency {q} @ batch {lat.batch} (ms)", f"{getattr(lat, q + '_ms'):.3f}",
                f"{getattr(other, q + '_ms'):.3f}" if other else None, diff)

    diffs = {(d.slice, d.metric): d for d in cmp.accuracy} if cmp else {}
    champ_figs = _metric_figures(champ) if champ else {}
    for metric, by_slice in _metric_figures(cand).items():
        for s, fig in by_slice.items():
            d = diffs.get((s, metric))
            diff = ""
            if d:
                diff = show_diff(metric, d.diff, d.ci) + (
                    f", McNemar p={d.mcnemar_p:.3g} (n={d.n}; {d.candidate_only} vs {d.champion_only} discordant)"
                    if d.mcnemar_p is not None else f" (n={d.n}, paired bootstrap)")
            other = champ_figs.get(metric, {}).get(s)
            row("A", f"{metric} ({s})", show(metric, fig.value, fig.ci),
                show(metric, other.value, other.ci) if other else None, diff)

    other = sc.champion_size
    for metric, a, b in (("engine size (bytes)", cand.size_bytes, champ.size_bytes if champ else None),
                         ("parameters", sc.size.param_count, other.param_count if other else None),
                         ("FLOPs per sample", sc.size.flops_per_sample, other.flops_per_sample if other else None)):
        row("S", metric, a, b, _ratio(a, b))
    row("T", "throughput within SLA (samples/s)", _figure(cand.throughput, "{:,.0f}"),
        _figure(champ.throughput, "{:,.0f}") if champ else None,
        _ratio(cand.throughput.value, champ.throughput.value if champ else None))
    row("E", "energy (J per 1,000 inferences)", _figure(cand.energy_j_per_1k, "{:.4g}"),
        _figure(champ.energy_j_per_1k, "{:.4g}") if champ else None)
    for k, v in rows.items():
        if _is_rate(k):
            row("R", k, v, "")

    slices = list(cand.accuracy)
    lines += ["", "## Precisions", "", "| engine | " + " | ".join(f"{cand.metric} ({s})" for s in slices)
              + f" | p50 @ batch {cand.latency[0].batch} (ms) | throughput (samples/s) | bytes | served |",
              "|---" * (len(slices) + 5) + "|"]
    for e in sc.candidate:
        served = "◀ served" if (e.backend, e.precision) == (cand.backend, cand.precision) else ""
        lines.append(f"| {_name(e)} | " + " | ".join(_show(e.metric, e.accuracy.get(s)) for s in slices)
                     + f" | {e.p50_ms:.3f} | {_num(e.throughput.value, '{:,.0f}')} | {e.size_bytes:,} | {served} |")
    lines += drift_lines(sc.drift)
    lines += ["", f"Chosen: {sc.chosen_reason}", "", f"## Gate → {sc.decision}", "",
              "| rule | verdict | required | reason |", "|---|---|---|---|"]
    lines += [f"| {_cell(v.rule)} | {v.verdict} | {'yes' if v.required else ''} | {_cell(v.reason)} |"
              for v in sc.verdicts]
    lines += ["", f"**Decision: {sc.decision}**", ""]
    lines += [f"![{Path(i).stem}]({i})" for i in images]
    return "\n".join(lines) + "\n"


def drift_lines(d: dict | None) -> list[str]:
    """The D row: how far the new rows moved from the champion's training data, worst features first."""
    if not d or not d.get("top"):
        return ["", "## Drift", "", "Not measured: no champion, or a champion registered without its training profile."]
    out = ["", f"## Drift (the {d['rows']} new rows vs the champion's training data, before training)", "",
           "| feature | PSI | Jensen-Shannon distance |", "|---|---|---|"]
    for name, f in d["top"]:
        psi = f"{f['psi']:.3f}" if "psi" in f else "—"  # ids have a distribution, not bins
        out.append(f"| {_cell(name)} | {psi} | {f['js']:.3f} |")
    return out


# --- plots -----------------------------------------------------------------------------

def _ci_bars(ax: Any, x: Any, values: list[float], cis: list[tuple[float, float] | None], scale: float = 100,
             **kw: Any) -> None:
    """Points (in percent, for scale 100) with asymmetric CI whiskers (a figure without a CI gets none)."""
    err = [[scale * (v - c[0]), scale * (c[1] - v)] if c else [0.0, 0.0] for v, c in zip(values, cis)]
    ax.errorbar(x, [scale * v for v in values], yerr=list(zip(*err)) or None, fmt="o", capsize=4, **kw)


def plots(sc: Scorecard, raw: Raw | None, out: Path) -> list[Path]:
    """latency.png (only with raw samples), accuracy.png and precisions.png in `out`."""
    import numpy as np

    from orchestrator.plots import plain_log, pyplot, save

    plt = pyplot()
    cand, champ, written = sc.chosen, sc.champion, []

    keys = {"candidate": f"candidate:{cand.backend}:{cand.precision}"}
    if champ:
        keys["champion"] = f"champion:{champ.backend}:{champ.precision}"
    if raw is not None and keys["candidate"] in raw.latency:
        batches = sorted(raw.latency[keys["candidate"]])
        fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 3.5), squeeze=False)
        for ax, b in zip(axes[0], batches):
            ms = {who: 1e3 * np.ravel(raw.latency[k][b]) for who, k in keys.items() if b in raw.latency.get(k, {})}
            lo, hi = min(a.min() for a in ms.values()), max(a.max() for a in ms.values())
            bins = np.geomspace(max(lo, 1e-6), max(hi, lo) * 1.01 + 1e-6, 40)  # log bins: latency tails are long
            for who, a in ms.items():
                ax.hist(a, bins=bins, alpha=0.5, label=f"{who} (p50 {np.median(a):.3f} ms)")
            ax.set(xscale="log", xlabel="ms per call", ylabel="calls", title=f"batch {b}")
            plain_log(ax.xaxis)
            ax.legend(fontsize=8)
        fig.suptitle(f"Latency: {_name(cand)} vs champion {_name(champ)}" if champ else f"Latency: {_name(cand)}")
        written.append(save(plt, fig, out / "latency.png"))

    slices, metric = list(cand.accuracy), cand.metric
    scale, unit = (100, f"{metric} (%)") if is_proportion(metric) else (1, metric)
    fig, axes = plt.subplots(1, 2 if sc.comparison else 1, figsize=(10 if sc.comparison else 5, 3.5), squeeze=False)
    ax = axes[0][0]
    for i, (who, e) in enumerate((("candidate", cand), ("champion", champ))):
        if e is not None:
            figs = [e.accuracy.get(s, Figure(math.nan)) for s in slices]
            _ci_bars(ax, np.arange(len(slices)) + 0.15 * (i - 0.5), [f.value for f in figs], [f.ci for f in figs],
                     scale=scale, label=who)
    ax.margins(x=0.3)
    ax.set(xticks=range(len(slices)), xticklabels=slices, ylabel=unit,
           title=f"{metric} by slice ({100 * sc.confidence:g}% CI)")
    ax.legend(fontsize=8)
    if sc.comparison:
        ax, d = axes[0][1], [a for a in sc.comparison.accuracy if a.metric == metric]
        _ci_bars(ax, range(len(d)), [a.diff for a in d], [a.ci for a in d], scale=scale)
        ax.axhline(0, color="grey", lw=0.8)
        ax.margins(x=0.3)
        ax.set(xticks=range(len(d)), xticklabels=[a.slice for a in d],
               ylabel=f"candidate − champion ({'pp' if scale == 100 else metric})",
               title="Paired difference")
    written.append(save(plt, fig, out / "accuracy.png"))

    # "new" is the slice the cycle learned from; fall back to the first slice if absent.
    s = "new" if "new" in cand.accuracy else slices[0]
    fig, ax = plt.subplots(figsize=(6, 4))
    for e in sc.candidate:
        served = (e.backend, e.precision) == (cand.backend, cand.precision)
        ax.scatter(e.p50_ms, scale * e.accuracy[s].value, s=120 if served else 40, marker="*" if served else "o",
                   color="C3" if served else "C0", zorder=3)
        ax.annotate(_name(e) + (" (served)" if served else ""), (e.p50_ms, scale * e.accuracy[s].value),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    if champ and s in champ.accuracy:
        ax.scatter(champ.p50_ms, scale * champ.accuracy[s].value, marker="s", color="grey", label="champion")
        ax.legend(fontsize=8)
    ax.margins(x=0.2, y=0.1)  # room for the labels
    ax.set(xlabel=f"p50 latency @ batch {cand.latency[0].batch} (ms)", ylabel=f"{unit} on {s}",
           title="Precision trade-off")
    written.append(save(plt, fig, out / "precisions.png"))
    return written


def write(sc: Scorecard, raw: Raw | None, out: Path, rate: dict | None = None) -> list[Path]:
    """scorecard.json (with the final rate), scorecard.md and the plots, in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    data = to_dict(sc)
    if rate is not None:
        data["rate_final"] = rate  # the cycle's timings known only after promote; sc.rate stops at validate
    js = out / "scorecard.json"
    js.write_text(json.dumps(data, indent=2))
    images = plots(sc, raw, out)
    md = out / "scorecard.md"
    md.write_text(markdown(sc, rate, tuple(p.name for p in images)))
    return [js, md, *images]


def publish(registry: Any, run_id: str, sc: Scorecard, raw: Raw | None, out: Path, rate: dict | None = None) -> list[Path]:
    """Write the files and put them, and the metrics, on an MLflow run (through our Registry
    interface, so this module never imports mlflow)."""
    paths = write(sc, raw, out, rate)
    registry.log_artifacts(run_id, out, "scorecard")
    registry.log_metrics(run_id, metrics(sc))
    return paths


# --- the registered version's page --------------------------------------------------------

def headline(sc: Scorecard, run_id: str, reasons: list[str] | None = None, experiment_id: str | None = None) -> str:
    """The MLflow version description: the decision with its reasons and the scorecard's
    headline as a Markdown table, linking the full scorecard in the run (a link relative to
    the MLflow UI the page is read in, so it holds behind any host name)."""
    cand, champ, cmp = sc.chosen, sc.champion, sc.comparison
    vs = f"champion v{sc.champion_version}" if sc.champion_version else "no champion (first version)"
    lines = [f"**{sc.decision}** vs {vs}, served as {_name(cand)}.", ""]
    failed = [v for v in sc.verdicts if v.verdict != "PASS"]
    for v in failed or sc.verdicts[:3]:
        lines.append(f"- `{v.rule}` {v.verdict}: {v.reason}")
    lines += [f"- {r}" for r in reasons or ()]
    lines += ["", "| figure | candidate | champion | candidate − champion |", "|---|---|---|---|"]
    diffs = {(d.slice, d.metric): d for d in cmp.accuracy} if cmp else {}
    champ_figs = _metric_figures(champ) if champ else {}
    for metric, by_slice in _metric_figures(cand).items():
        for s, fig in by_slice.items():
            other, d = champ_figs.get(metric, {}).get(s), diffs.get((s, metric))
            lines.append(f"| {metric} ({s}) | {show(metric, fig.value)} | "
                         f"{show(metric, other.value) if other else '—'} | "
                         f"{show_diff(metric, d.diff, d.ci) if d else '—'} |")
    ratios = {r.batch: r for r in cmp.latency} if cmp else {}
    champ_lat = {lat.batch: lat for lat in champ.latency} if champ else {}
    for lat in cand.latency:
        r, other = ratios.get(lat.batch), champ_lat.get(lat.batch)
        lines.append(f"| p99 @ batch {lat.batch} (ms) | {lat.p99_ms:.3f} | "
                     f"{f'{other.p99_ms:.3f}' if other else '—'} | "
                     f"{f'p50 ratio {r.ratio:.3f}x [{r.ci[0]:.3f}, {r.ci[1]:.3f}]' if r else '—'} |")
    where = f"#/experiments/{experiment_id}/runs/{run_id}/artifacts/scorecard/scorecard.md"
    if sc.drift and sc.drift.get("worst"):
        d = sc.drift
        lines += ["", f"Drift of the new data vs the champion's training data: {d['metric']} {d['score']:.3f} "
                  f"on `{d['worst']}` ({d['rows']} new rows)."]
    lines += ["", f"Full scorecard: [scorecard/scorecard.md]({where}) in run `{run_id}`." if experiment_id
              else f"Full scorecard: `scorecard/scorecard.md` in run `{run_id}` (its artifacts)."]
    return "\n".join(lines)


def headline_tags(sc: Scorecard) -> dict[str, str]:
    """Headline figures as version tags: the MLflow UI's version list shows them, and
    `search_model_versions` filters on them. MLflow compares tags as strings (=, !=, LIKE,
    ILIKE), so filter by decision or pattern ("tags.`plaster.decision` = 'PROMOTE'") and
    compare figures after reading them (`float(v.tags["plaster.accuracy.new"])`)."""
    out = {}
    for metric, by_slice in _metric_figures(sc.chosen).items():
        for s, fig in by_slice.items():
            out[f"plaster.{metric}.{s}"] = f"{fig.value:.6g}"
    for d in sc.comparison.accuracy if sc.comparison else ():
        out[f"plaster.{d.metric}.{d.slice}.diff"] = f"{d.diff:.6g}"
    for lat in sc.chosen.latency:
        out[f"plaster.p99_ms.b{lat.batch}"] = f"{lat.p99_ms:.4g}"
    for r in sc.comparison.latency if sc.comparison else ():
        out[f"plaster.latency_ratio.b{r.batch}"] = f"{r.ratio:.4g}"
    return out
