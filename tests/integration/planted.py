"""Versions planted to fail live: a registered version whose engine is a real one altered to be
slow or to error, for the rollout tests and the fault suite (benchmarks/faults.py).

A planted version skips the gate on purpose; `move_champion` puts it live the way an approval
does. Everything here works on the PLASTER_HOME of the environment (Workspace.from_env)."""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from orchestrator import api, ledger
from orchestrator.workspace import Workspace

KINDS = ("slow", "errors")


def plant(engine: Path, out: Path, kind: str, pixel: int = 0, threshold: float = 0.0) -> None:
    """A real engine that fails live: `slow` adds 24 512x512 matrix products on every example
    (added to the answer times zero weights, so it answers as the original); `errors` adds a
    Gather whose index is out of range where the input's `pixel` exceeds `threshold`, which ONNX
    Runtime refuses at run time."""
    m = onnx.load(str(engine))
    g = m.graph
    x, y = g.input[0].name, g.output[0].name
    n_out = 10
    for node in g.node:  # the original answer under another name; ours adds to it
        node.output[:] = [f"{o}_orig" if o == y else o for o in node.output]
    flat = [helper.make_node("Flatten", [x], ["p_flat"], axis=1)]
    if kind == "slow":
        rng = np.random.default_rng(0)
        inits = [numpy_helper.from_array(rng.standard_normal((64, 512)).astype(np.float32) * 0.05, "p_w0"),
                 numpy_helper.from_array(rng.standard_normal((512, 512)).astype(np.float32) * 0.04, "p_w"),
                 numpy_helper.from_array(np.zeros((512, n_out), np.float32), "p_zero")]
        nodes = flat + [helper.make_node("MatMul", ["p_flat", "p_w0"], ["p_h0"])]
        for i in range(24):
            nodes.append(helper.make_node("MatMul", [f"p_h{i}", "p_w"], [f"p_h{i + 1}"]))
        nodes.append(helper.make_node("MatMul", ["p_h24", "p_zero"], ["p_term"]))
    elif kind == "errors":
        inits = [numpy_helper.from_array(np.array([pixel], np.int64), "p_pixel"),
                 numpy_helper.from_array(np.array(threshold, np.float32), "p_t"),
                 numpy_helper.from_array(np.array(7, np.int64), "p_seven"),
                 numpy_helper.from_array(np.zeros(2, np.float32), "p_table")]
        nodes = flat + [helper.make_node("Gather", ["p_flat", "p_pixel"], ["p_col"], axis=1),
                        helper.make_node("Greater", ["p_col", "p_t"], ["p_big"]),
                        helper.make_node("Cast", ["p_big"], ["p_i"], to=TensorProto.INT64),
                        helper.make_node("Mul", ["p_i", "p_seven"], ["p_idx"]),
                        helper.make_node("Gather", ["p_table", "p_idx"], ["p_term"], axis=0)]
    else:
        raise ValueError(f"planted kind {kind!r}: one of {KINDS}")
    nodes.append(helper.make_node("Add", [f"{y}_orig", "p_term"], [y]))
    g.node.extend(nodes)
    g.initializer.extend(inits)
    onnx.save(m, str(out))


def register_planted(kind: str, gx: np.ndarray, name: str = "digits", base: str = "1") -> str:
    """Version `base`'s bundle with its engine replaced by a planted one, registered as a new
    version of `name`; returns it. `gx` are golden examples: `errors` fails on the quarter of
    them with the highest value of their most varied pixel."""
    ws = Workspace.from_env()
    registry = api.registry_for(ws)
    ref = registry.fetch(name, base, ws.home / "versions" / name)
    bundle = ws.home / "planted" / kind
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(ref.folder, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    engine = bundle / manifest["engine"]
    flat = gx.reshape(len(gx), -1)
    pixel = int(np.argmax(flat.std(0)))
    threshold = float(np.quantile(flat[:, pixel], 0.75))
    plant(engine, engine, kind, pixel, threshold)
    calm = gx[flat[:, pixel] <= threshold][:8]  # the registry's load test must answer
    run_id = registry.start_run(name, f"planted-{kind}", {"plaster.planted": kind})
    # register() finds a version again by its cycle id: each planting is its own
    version = registry.register(name, run_id, f"planted-{kind}-{run_id}", engine, {"plaster": bundle},
                                {"input": np.ascontiguousarray(calm)}, tags={"plaster.planted": kind})
    registry.end_run(run_id, "FINISHED")
    return version


def move_champion(to: str, name: str = "digits") -> str:
    """What an approval does to the aliases (the planted version skips the gate on purpose);
    returns the champion it moved from."""
    ws = Workspace.from_env()
    registry = api.registry_for(ws)
    current = registry.alias(name, "champion")
    registry.set_alias(name, "previous", current)
    registry.set_alias(name, "champion", to)
    ledger.record(ws, name, "champion", current, to, ledger.APPROVE, "planted to fail live")
    return current
