"""Warm start after drift, measured: does retraining from the champion's weights reach, on the
new data, the accuracy that training from scratch reaches, and how much sooner?

Setup (real plaster): shards arrive, a cycle promotes champion v1, drifted shards arrive,
and plaster's own ingest stage freezes the snapshot a second cycle would train on (new rows
plus replayed old rows; the new-data holdout kept out). Then, in this process with plain
torch, the pipeline's model.py and the same loop as plaster's in-process training
(orchestrator.stages.train.Loop, plaster's own loop: same optimizer, batch size and shuffling), each with the
epochs and learning rate plaster's train stage would choose (orchestrator.stages.train.recipe):
  warm     starts from champion v1's weights: train.warm_start_epochs at train.warm_start_lr
  scratch  starts from a fresh initialisation: train.epochs at train.lr
Both are evaluated on the new-data holdout before training and after every epoch. The clock
counts training time only (evaluation is the same for both and left out).

Reported per repetition (seed = train.seed + rep): scratch's final accuracy; the training
time warm needs to first reach it; scratch's whole training time; the ratio of the two
(target <= 1/3); and warm's whole training time over scratch's (what a warm cycle's train
stage costs beside training anew). The new-data holdout is small (digits: 200 rows), so the same ratio for
warm first coming within one standard error of scratch's final accuracy is reported too.
Medians over --reps, both curves in a PNG, everything in JSON.

    .venv/bin/python benchmarks/warm_start.py [--workload digits|heavy] [--reps 3] [--new-shards 4]
        [--out benchmarks/results/warm_start_<workload>[_new<N> unless N is 4].json]   (the PNG beside it)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

# workloads first: it puts this checkout's orchestrator on sys.path
from workloads import copy_pipeline, parse, placement, prepare

TARGET = 1 / 3


def snapshot_of_next_cycle(folder: Path, tmp: Path):
    """Plaster's ingest stage alone, as the next cycle would run it (reads the registry, moves no alias)."""
    from orchestrator import api
    from orchestrator.config import load_pipeline
    from orchestrator.context import StageContext
    from orchestrator.stages import ingest
    from orchestrator.workspace import Workspace

    ws = Workspace.from_env()
    ctx = StageContext(ws, load_pipeline(folder), "warm-start-bench", tmp / "ingest", api.registry_for(ws), run_id="")
    snap = ingest.run(ctx)
    assert not snap.skip_reason, snap.skip_reason
    assert snap.champion is not None, "no champion: the prepared cycle did not promote"
    return snap


def accuracy(model, x, y) -> float:
    import torch

    from orchestrator.door import forward

    model.eval()
    with torch.no_grad():
        right = sum(int((forward(model, {k: torch.from_numpy(v[s:s + 1024]) for k, v in x.items()}).argmax(1)
                         == torch.from_numpy(y[s:s + 1024])).sum()) for s in range(0, len(y), 1024))
    return right / len(y)


def curve(pipeline, init: str | None, seed: int, epochs: int, lr: float, train, slices) -> list[dict]:
    """[{epoch, train_s, new, golden}] from epoch 0 (before any step) to `epochs`."""
    import torch

    from orchestrator.stages.train import Loop, recipe_for
    from orchestrator.stream import InMemory

    cfg = pipeline.config.train
    torch.manual_seed(seed)
    model = pipeline.module().build_model()
    if init:
        model.load_state_dict(torch.load(init, map_location="cpu", weights_only=True))
    x, y = train
    rec, _ = recipe_for(cfg, pipeline.config.task, epochs, lr, "cpu")
    loop = Loop(model, pipeline.hooks(), rec, "cpu", -(-len(y) // cfg.batch_size))
    points = [{"epoch": 0, "train_s": 0.0, **{s: accuracy(model, *xy) for s, xy in slices.items()}}]
    spent = 0.0
    for epoch in range(epochs):
        t0 = time.perf_counter()
        loop.epoch(InMemory(x, y).batches(epoch, 0, 1, cfg.batch_size, seed))
        spent += time.perf_counter() - t0
        points.append({"epoch": epoch + 1, "train_s": spent, **{s: accuracy(model, *xy) for s, xy in slices.items()}})
    return points


def first_reach(points: list[dict], target: float) -> dict | None:
    return next((p for p in points if p["new"] >= target), None)


def plot(reps: list[dict], workload: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, r in enumerate(reps):
        alpha = 1.0 if i == 0 else 0.35
        for mode, colour in (("warm", "tab:blue"), ("scratch", "tab:orange")):
            pts = r["curves"][mode]
            ax.plot([p["train_s"] for p in pts], [p["new"] for p in pts], "-o", ms=3, color=colour, alpha=alpha,
                    label=f"{mode} ({'from champion v1' if mode == 'warm' else 'fresh init'})" if i == 0 else None)
        ax.axhline(r["scratch_final"], color="tab:orange", ls=":", lw=1, alpha=alpha)
        if r["warm_reach_s"] is not None:
            ax.axvline(r["warm_reach_s"], color="tab:blue", ls="--", lw=1, alpha=alpha)
        ax.axvline(r["scratch_total_s"] * TARGET, color="grey", ls="-.", lw=1, alpha=alpha * 0.6)
    ax.set_xlabel("training wall time (s), evaluation excluded")
    ax.set_ylabel("accuracy on the new-data holdout")
    ax.set_title(f"Warm start vs from scratch after drift ({workload}); dotted: scratch's final accuracy,\n"
                 f"dashed: warm first reaches it, dash-dot: 1/3 of scratch's training time", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="seeds train.seed .. train.seed + reps - 1")
    ap.add_argument("--new-shards", type=int, default=4,
                    help="drifted shards after champion v1 (trained on 4): fewer is milder drift between cycles, "
                         "as a scheduler that retrains sooner sees")
    args, out_file, console = parse(ap, "warm_start")
    if args.out is None and args.new_shards != ap.get_default("new_shards"):  # each drift keeps its own figures
        out_file = out_file.with_name(f"{out_file.stem}_new{args.new_shards}.json")
    from rich.table import Table

    with tempfile.TemporaryDirectory(prefix="plaster-warm-bench-") as t:
        tmp = Path(t)
        folder = copy_pipeline(args.workload, tmp, args.overrides)
        console.print(f"preparing {args.workload}: one cycle for champion v1, then {args.new_shards} drifted shards…")
        first = prepare(tmp / "home", folder, then=args.new_shards)
        console.print("  champion v1 trained: placement %s (%s)" % placement(first))
        from orchestrator.config import load_pipeline
        from orchestrator.dataset import load_arrays
        from orchestrator.stages.train import recipe

        pipeline = load_pipeline(folder)
        snap = snapshot_of_next_cycle(folder, tmp)
        init = str(Path(snap.champion.folder) / "weights.pt")
        train = load_arrays(snap.train_file)
        slices = {"new": load_arrays(snap.holdout_new_file)}
        if snap.golden_file:
            slices["golden"] = load_arrays(snap.golden_file)
        recipes = {mode: recipe(pipeline.config.train, warm=mode == "warm") for mode in ("scratch", "warm")}
        console.print(f"snapshot: {snap.train_rows} training rows ({snap.replay_rows} replayed), "
                      f"{snap.holdout_new_rows} new-data holdout rows; "
                      + ", ".join(f"{m}: {e} epochs at lr {lr:g}" for m, (e, lr) in recipes.items()))
        reps = []
        for rep in range(args.reps):
            seed = pipeline.config.train.seed + rep
            curves = {}
            for mode in ("scratch", "warm"):
                curves[mode] = curve(pipeline, init if mode == "warm" else None, seed, *recipes[mode], train, slices)
            final = curves["scratch"][-1]["new"]
            total = curves["scratch"][-1]["train_s"]
            hit = first_reach(curves["warm"], final)
            own = first_reach(curves["scratch"], final)
            # The holdout is small: also when warm first comes within one standard error of it.
            se = math.sqrt(final * (1 - final) / len(slices["new"][1]))
            near = first_reach(curves["warm"], final - se)
            r = {"seed": seed, "scratch_final": final, "scratch_total_s": total, "warm_final": curves["warm"][-1]["new"],
                 "warm_start_accuracy": curves["warm"][0]["new"], "warm_reach_s": hit["train_s"] if hit else None,
                 "warm_reach_epoch": hit["epoch"] if hit else None, "scratch_reach_s": own["train_s"],
                 "ratio": (hit["train_s"] / total) if hit else None, "holdout_se": se,
                 "warm_total_s": curves["warm"][-1]["train_s"], "warm_total_ratio": curves["warm"][-1]["train_s"] / total,
                 "warm_reach_within_se_s": near["train_s"] if near else None,
                 "ratio_within_se": (near["train_s"] / total) if near else None, "curves": curves}
            reps.append(r)
            console.print(f"rep {rep + 1}/{args.reps}: scratch final {final:.3f} in {total:.1f} s; warm starts at "
                          f"{r['warm_start_accuracy']:.3f}, reaches it "
                          + (f"after {r['warm_reach_s']:.1f} s (epoch {r['warm_reach_epoch']}): ratio {r['ratio']:.3f}"
                             if hit else "never"))

    def median(key: str) -> float | None:
        """A repetition where warm never got there counts as worse than any other (inf); None if that is the median."""
        m = statistics.median([r[key] if r[key] is not None else math.inf for r in reps])
        return None if math.isinf(m) else m

    median_ratio, median_within_se = median("ratio"), median("ratio_within_se")
    misses = sum(r["ratio"] is None for r in reps)
    median_warm_total = statistics.median(r["warm_total_ratio"] for r in reps)
    (s_ep, s_lr), (w_ep, w_lr) = recipes["scratch"], recipes["warm"]
    table = Table(title=f"Warm start vs scratch after drift on {args.workload} (scratch: {s_ep} epochs at lr {s_lr:g}; "
                        f"warm: {w_ep} epochs at lr {w_lr:g}), new-data holdout ({snap.holdout_new_rows} rows)")
    for col in ("seed", "scratch final acc", "scratch train s", "warm at start", "warm final acc", "warm train s",
                "warm reaches it at s", "epoch", "ratio (target ≤ 0.33)", "within 1 SE at s", "ratio"):
        table.add_column(col, justify="right")
    for r in reps:
        table.add_row(str(r["seed"]), f"{r['scratch_final']:.3f}", f"{r['scratch_total_s']:.1f}",
                      f"{r['warm_start_accuracy']:.3f}", f"{r['warm_final']:.3f}", f"{r['warm_total_s']:.1f}",
                      f"{r['warm_reach_s']:.1f}" if r["warm_reach_s"] is not None else "never",
                      str(r["warm_reach_epoch"]) if r["warm_reach_epoch"] is not None else "-",
                      f"{r['ratio']:.3f}" if r["ratio"] is not None else "-",
                      f"{r['warm_reach_within_se_s']:.1f}" if r["warm_reach_within_se_s"] is not None else "never",
                      f"{r['ratio_within_se']:.3f}" if r["ratio_within_se"] is not None else "-")
    console.print(table)
    console.print(f"median ratio: {median_ratio:.3f} (target ≤ {TARGET:.2f}: "
                  f"{'met' if median_ratio <= TARGET else 'NOT met'})" if median_ratio is not None
                  else "median ratio: warm did not reach scratch's final accuracy in half or more of the repetitions: "
                       "target NOT met")
    console.print(f"repetitions where warm never reached it: {misses} of {len(reps)}")
    console.print("median ratio to come within one standard error of it: "
                  + (f"{median_within_se:.3f}" if median_within_se is not None else "never"))
    console.print(f"median warm training time / scratch training time: {median_warm_total:.3f}")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    png = out_file.with_suffix(".png")
    plot(reps, args.workload, png)
    result = {"benchmark": "warm_start", "workload": args.workload, "overrides": args.overrides, "new_shards": args.new_shards,
              "recipes": {m: {"epochs": e, "lr": lr} for m, (e, lr) in recipes.items()}, "reps": args.reps,
              "cpus": os.cpu_count(), "train_rows": snap.train_rows, "replay_rows": snap.replay_rows,
              "holdout_new_rows": snap.holdout_new_rows, "champion_version": snap.champion.version,
              "target_ratio": TARGET, "median_ratio": median_ratio, "median_ratio_within_se": median_within_se,
              "misses": misses, "median_warm_total_ratio": median_warm_total,
              "met": median_ratio is not None and median_ratio <= TARGET,
              "clock": "training time only; evaluation after each epoch excluded", "repetitions": reps,
              "plot": str(png)}
    out_file.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {out_file} and {png}")


if __name__ == "__main__":
    main()
