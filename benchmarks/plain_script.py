"""The baseline a single-machine user would write instead of plaster: one process, no
distribution, no orchestration. Trains the same model for the same epochs on the same
arrays (warm-started from the champion), exports to ONNX, makes FP16/INT8 variants,
evaluates candidate and champion on the same slices, registers in MLflow. Prints one JSON
line of timings. Used by benchmarks/cycle_time.py; not part of plaster.

    python benchmarks/plain_script.py --pipeline DIR --snapshot DIR --champion DIR --mlflow DIR
"""

import argparse
import json
import time
from pathlib import Path

T0 = time.perf_counter()

import numpy as np  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    for a in ("--pipeline", "--snapshot", "--champion", "--mlflow", "--out"):
        ap.add_argument(a, required=True)
    args = ap.parse_args()
    t: dict[str, float] = {}
    mark = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        t[name] = now - mark
        mark = now

    import mlflow
    import onnxruntime as ort
    import torch

    from orchestrator.config import load_pipeline
    from orchestrator.stages.export import export_onnx
    from orchestrator.stages.train import recipe
    from orchestrator.variants import make
    lap("imports")

    p = load_pipeline(args.pipeline)
    cfg = p.config.train
    snap = args.snapshot
    x, y = (np.load(f"{snap}/train.npz")[k] for k in ("in.input", "y"))  # digits: one input, named "input"
    slices = {s: tuple(np.load(f"{snap}/{f}.npz")[k] for k in ("in.input", "y"))
              for s, f in (("new", "holdout_new"), ("golden", "golden"))}
    torch.manual_seed(cfg.seed)
    model = p.module().build_model()
    model.load_state_dict(torch.load(f"{args.champion}/weights.pt", map_location="cpu", weights_only=True))
    epochs, lr = recipe(cfg, warm=True)  # the epochs and lr plaster's warm-started cycle trains with
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    lap("load")
    for epoch in range(epochs):
        model.train()
        order = np.random.default_rng(cfg.seed + epoch).permutation(len(y))
        for s in range(0, len(y), cfg.batch_size):
            idx = order[s:s + cfg.batch_size]
            opt.zero_grad()
            loss = loss_fn(model(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]))
            loss.backward()
            opt.step()
    model.eval()
    lap("train")

    out = args.out
    name = export_onnx(model, {"input": x[:2]}, f"{out}/fp32.onnx")[0]
    lap("export")
    for precision in ("fp16", "int8"):
        make(precision, Path(out) / "fp32.onnx", Path(out) / f"{precision}.onnx", {name: x[:256]})
    lap("variants")

    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions = {k: ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"]) for k, path in
                (("candidate", f"{out}/fp32.onnx"), ("fp16", f"{out}/fp16.onnx"), ("int8", f"{out}/int8.onnx"),
                 ("champion", f"{args.champion}/variants/fp32.onnx"))}
    acc = {k: {s: float((sess.run(None, {sess.get_inputs()[0].name: sx})[0].argmax(1) == sy).mean())
               for s, (sx, sy) in slices.items()} for k, sess in sessions.items()}
    one = slices["new"][0][:1]
    lat = {}
    for k, sess in sessions.items():
        n = sess.get_inputs()[0].name
        ts = []
        for _ in range(300):
            t1 = time.perf_counter()
            sess.run(None, {n: one})
            ts.append(time.perf_counter() - t1)
        lat[k] = float(np.median(ts) * 1e3)
    lap("evaluate")

    mlflow.set_tracking_uri(f"sqlite:///{args.mlflow}/mlflow.db")
    # Artifacts beside the database: the default (./mlruns) would litter the caller's folder.
    if mlflow.get_experiment_by_name("plain") is None:
        mlflow.create_experiment("plain", artifact_location=f"{args.mlflow}/artifacts")
    mlflow.set_experiment("plain")
    import onnx

    with mlflow.start_run():
        mlflow.log_metrics({f"acc_{k}_{s}": v for k, d in acc.items() for s, v in d.items()})
        mlflow.onnx.log_model(onnx.load(f"{out}/fp32.onnx"), name="model", registered_model_name=f"{p.name}-plain",
                              onnx_execution_providers=["CPUExecutionProvider"], save_as_external_data=False)
    lap("register")
    print(json.dumps({"wall_s": time.perf_counter() - T0, "pieces_s": t, "accuracy": acc, "p50_ms": lat}))


if __name__ == "__main__":
    main()
