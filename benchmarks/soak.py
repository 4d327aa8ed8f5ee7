"""Soak: many warm cycles in one long-lived process (the scheduler's life), watching memory.

Ray is started first, once, as `plaster schedule` does. Before each cycle the workload's
simulator appends --shards new drifted shards; then api.run_cycle runs in this process
(cycle 1 has no champion: it trains from scratch and is the warm-up). After each cycle:
this process's RSS, the RSS summed over its process tree (the local Ray it started,
workers included), and the process's high-water mark (ru_maxrss); during each cycle a
0.1 s sampler keeps the peaks of both
(benchmarks/rss.py). Printed as a table, with the growth from cycle 2 (after warm-up) to
the last cycle of: the per-cycle peak of the process tree (the headline, target < 10%), the
per-cycle peak of this process, the high-water mark and the end-of-cycle RSS, and the
end-of-cycle RSS's least-squares slope (MiB per cycle). When cycles trained in different
places (train.workers: auto decides per cycle between this process and Ray Train, whose
worker adds hundreds of MiB), the growth among cycles of the same placement is given too.
JSON and a PNG of RSS per cycle.

    .venv/bin/python benchmarks/soak.py [--workload digits|heavy] [--cycles 20] [--shards 4]
        [--out benchmarks/results/soak_<workload>.json]   (the PNG beside it)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

from rss import MIB, PeakRSS, sample  # noqa: I001

# workloads first: it puts this checkout's orchestrator on sys.path
from workloads import copy_pipeline, parse, placement

TARGET_PCT = 10.0


def high_water() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def growth(rows: list[dict], key: str, start: int) -> float:
    a, b = rows[start - 1][key], rows[-1][key]
    return 100.0 * (b - a) / a


def slope(rows: list[dict], key: str) -> float:
    xs, ys = [r["cycle"] for r in rows], [r[key] for r in rows]
    if len(xs) < 2:
        return 0.0
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def summarize(rows: list[dict], say) -> dict:
    """Growth from cycle 2 to the last cycle (and the end-of-cycle slope), printed through `say`."""
    summary: dict = {}
    if len(rows) < 2:
        return summary
    keys = ("peak_tree_mib", "peak_self_mib", "high_water_mib", "end_tree_mib", "end_self_mib")
    summary = {f"growth_pct_{k}": growth(rows, k, 2) for k in keys}
    summary.update({f"slope_mib_per_cycle_{k}": slope(rows[1:], k) for k in ("end_tree_mib", "end_self_mib")})
    g = summary["growth_pct_peak_tree_mib"]
    summary["met"] = g < TARGET_PCT
    say(f"peak RSS of the process tree, cycle 2 → {rows[-1]['cycle']}: {rows[1]['peak_tree_mib']:.0f} → "
        f"{rows[-1]['peak_tree_mib']:.0f} MiB, {g:+.1f}% "
        f"(target < {TARGET_PCT:g}%: {'met' if summary['met'] else 'NOT met'})")
    mixed = sorted({r["placement"] for r in rows[1:]})
    summary["placements"] = mixed
    if len(mixed) > 1:
        # A Ray Train cycle holds a worker process (hundreds of MiB) that an in-process one does
        # not: compare like with like too.
        for where in mixed:
            same = [r for r in rows[1:] if r["placement"] == where]
            if len(same) >= 2:
                a, b = same[0]["peak_tree_mib"], same[-1]["peak_tree_mib"]
                summary[f"growth_pct_peak_tree_mib_{where}"] = 100.0 * (b - a) / a
        same_place = ", ".join(f"{w} {summary[f'growth_pct_peak_tree_mib_{w}']:+.1f}%" for w in mixed
                               if f"growth_pct_peak_tree_mib_{w}" in summary)
        say(f"[bold]placement changed between cycles ({', '.join(mixed)}): the headline mixes them[/]; "
            f"same placement only, first → last: {same_place or 'too few cycles of each'}")
    say("also, cycle 2 → last: " + ", ".join(
        f"{k.removeprefix('growth_pct_').removesuffix('_mib').replace('_', ' ')} {summary[f'growth_pct_{k}']:+.1f}%"
        for k in keys[1:]) + "; end-of-cycle slope (cycles 2..): "
        f"tree {summary['slope_mib_per_cycle_end_tree_mib']:+.1f}, self {summary['slope_mib_per_cycle_end_self_mib']:+.1f} "
        "MiB/cycle")
    return summary


def plot(rows: list[dict], workload: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    c = [r["cycle"] for r in rows]
    for key, label, style in (("peak_tree_mib", "peak during cycle, process tree", "-o"),
                              ("peak_self_mib", "peak during cycle, this process", "-s"),
                              ("end_tree_mib", "after cycle, process tree", "--o"),
                              ("end_self_mib", "after cycle, this process", "--s"),
                              ("high_water_mib", "high-water mark (ru_maxrss), this process", ":")):
        ax.plot(c, [r[key] for r in rows], style, ms=3, label=label)
    if len(rows) >= 2:
        base = rows[1]["peak_tree_mib"]
        ax.axhline(base * (1 + TARGET_PCT / 100), color="grey", ls="-.", lw=1,
                   label=f"cycle 2's tree peak + {TARGET_PCT:g}%")
    ax.set_xlabel("cycle")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title(f"Soak: {len(rows)} cycles of {workload} in one process")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--shards", type=int, default=4, help="new shards before each cycle")
    args, out_file, console = parse(ap, "soak")
    from rich.table import Table

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="plaster-soak-") as t:
        tmp = Path(t)
        folder = copy_pipeline(args.workload, tmp, args.overrides)
        os.environ["PLASTER_HOME"] = str(tmp / "home")
        from orchestrator import api
        from orchestrator.runtime import ensure_ray
        from orchestrator.workspace import Workspace

        ensure_ray(Workspace.from_env())  # as the scheduler does: once, before its first cycle
        start = time.perf_counter()
        for cycle in range(1, args.cycles + 1):
            api.simulate(folder, shards=args.shards)
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                rec = api.run_cycle(folder)
                wall = time.perf_counter() - t0
            own, total, procs = sample()
            where, why = placement(rec)
            ingest = (rec["stages"].get("ingest") or {}).get("output") or {}
            rows.append({"cycle": cycle, "decision": rec["decision"], "reasons": rec["reasons"], "wall_s": wall,
                         "train_rows": ingest.get("train_rows"),
                         "placement": where, "workers_reason": why, "processes": procs,
                         "peak_self_mib": mem.peak_self_mib, "peak_tree_mib": mem.peak_mib,
                         "end_self_mib": own / MIB, "end_tree_mib": total / MIB, "high_water_mib": high_water() / MIB})
            r = rows[-1]
            console.print(f"cycle {cycle}/{args.cycles}: {r['decision']} in {wall:.1f} s, train rows {r['train_rows']}, "
                          f"{where}; RSS after {r['end_self_mib']:.0f} MiB (tree {r['end_tree_mib']:.0f}, "
                          f"{procs} processes), peak {r['peak_self_mib']:.0f} (tree {r['peak_tree_mib']:.0f})")
        total_s = time.perf_counter() - start

    table = Table(title=f"Soak: {args.cycles} cycles of {args.workload} in one process, {args.shards} new shards each (MiB)")
    for col in ("cycle", "decision", "wall s", "train rows", "train on", "procs", "peak tree", "peak self",
                "after tree", "after self", "high-water"):
        table.add_column(col, justify="left" if col in ("decision", "train on") else "right")
    for r in rows:
        table.add_row(str(r["cycle"]), r["decision"], f"{r['wall_s']:.1f}", str(r["train_rows"]), r["placement"],
                      str(r["processes"]), f"{r['peak_tree_mib']:.0f}", f"{r['peak_self_mib']:.0f}",
                      f"{r['end_tree_mib']:.0f}", f"{r['end_self_mib']:.0f}", f"{r['high_water_mib']:.0f}")
    console.print(table)
    summary = summarize(rows, console.print)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    png = out_file.with_suffix(".png")
    plot(rows, args.workload, png)
    out_file.write_text(json.dumps({"benchmark": "soak", "workload": args.workload, "overrides": args.overrides,
                                    "cycles": args.cycles,
                                    "shards_per_cycle": args.shards, "cpus": os.cpu_count(), "total_s": total_s,
                                    "target_pct": TARGET_PCT, "headline": "growth_pct_peak_tree_mib",
                                    "rss_method": "sum of RSS over this process and its descendants; peaks sampled "
                                                  "every 0.1 s during each cycle (benchmarks/rss.py)",
                                    **summary, "per_cycle": rows, "plot": str(png)}, indent=2))
    console.print(f"wrote {out_file} and {png}")


if __name__ == "__main__":
    main()
