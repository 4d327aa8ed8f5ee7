"""Does bad input get a clear error wherever it arrives? Each kind of bad input is tried, on
each reference pipeline that declares what it breaks, in the three places it can arrive:

- ingest: a Parquet shard written with the pipeline's columns and one defect, read by
  `dataset.read_shard` (its ShardInvalid message is the quarantine reason), then moved aside
  by `folder_source.quarantine`; the moved file must be byte for byte the shard written;
- validate-config: a copy of the pipeline folder with one defect in model.py or
  pipeline.yaml, loaded by `config.load_pipeline` (what `plaster validate-config` runs);
- serving: a request body with one defect, parsed by `serving.parse_inputs` (the server
  answers its BadInput status and message).

A case passes when the input is refused (a 4xx for serving) and the message holds the words
that name the column, input or key and what was expected. No Ray, MLflow or server is
started. Prints a Markdown table, writes benchmarks/results/bad_inputs.json (and .md) and
exits 1 if any case fails.

    .venv/bin/python benchmarks/bad_inputs.py [--out benchmarks/results/bad_inputs.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PIPELINES = ("tabular", "text", "regression", "digits")


@dataclasses.dataclass
class Case:
    kind: str
    where: str  # ingest | validate-config | serving
    pipeline: str
    expect: tuple[str, ...]  # words a clear message holds
    refused: bool = False
    status: int | None = None
    message: str = ""
    kept: bool | None = None  # ingest: the quarantined file is the shard, byte for byte

    @property
    def clear(self) -> bool:
        return self.refused and all(w in self.message for w in self.expect) and self.kept is not False


# --- ingest ---------------------------------------------------------------------------------


def good_columns(p, n: int = 3) -> dict:
    from orchestrator.dataset import example_columns

    return example_columns(p, n, fill=1)


def shard_cases(p) -> list[tuple[str, dict, tuple[str, ...]]]:
    """(kind, replaced columns, expected words) for the defects this pipeline's schema can have."""
    import pyarrow as pa

    out = []
    dense = next((i for i in p.inputs if i.columns), None)
    lists = [i for i in p.inputs if i.column]
    t = p.target
    if dense is not None:
        col = dense.columns[1]
        out.append(("string in a numeric column", {col: pa.array(["a", "b", "c"])},
                    (f"'{col}'", "string", "a number", f"input '{dense.name}'")))
        out.append(("null in a numeric column", {col: pa.array([1.0, None, 2.0])},
                    (f"'{col}'", "null", "row 1", f"input '{dense.name}'")))
    for i in lists:
        width = int(np.prod(i.shape))
        if i.dtype == "int64":
            ids = [[1] * width, [1] * (width - 1) + [i.vocab_size], [2] * width]
            out.append(("token id outside vocab_size", {i.column: pa.array(ids, type=pa.list_(pa.int64()))},
                        (f"'{i.column}'", f"outside 0..{i.vocab_size - 1}", f"vocab_size={i.vocab_size}")))
            out.append(("null in a list column", {i.column: pa.array([[1] * width, None, [2] * width],
                                                                      type=pa.list_(pa.int64()))},
                        (f"'{i.column}'", "null", "row 1", f"int64 ids in 0..{i.vocab_size - 1}")))
        else:
            out.append(("string in a list column", {i.column: pa.array([["a"] * width] * 3)},
                        (f"'{i.column}'", "string", "float32", f"input '{i.name}'")))
            vals = [[0.0] * width, [0.0] * (width - 1) + [None], [0.0] * width]
            out.append(("null in a list column", {i.column: pa.array(vals, type=pa.list_(pa.float32()))},
                        (f"'{i.column}'", "null", "row 1", "float32")))
            out.append(("list of the wrong shape", {i.column: pa.array([[0.0] * (width - 4)] * 3,
                                                                        type=pa.list_(pa.float32()))},
                        (f"'{i.column}'", f"expected {width}", str(list(i.shape)))))
    col = t.columns[0]
    if t.task == "classification":
        out.append(("null class id", {col: pa.array([0, None, 1], type=pa.int64())}, (f"'{col}'", "row 1", "class id")))
        out.append(("class id outside num_classes", {col: pa.array([0, t.num_classes, 1], type=pa.int64())},
                    (f"'{col}'", f"outside 0..{t.num_classes - 1}", f"num_classes={t.num_classes}")))
    elif t.task == "regression":
        out.append(("NaN regression target", {col: pa.array([1.0, float("nan"), 2.0])},
                    (f"'{col}'", "NaN", "row 1", "finite")))
        out.append(("infinite regression target", {col: pa.array([float("inf"), 1.0, 2.0])},
                    (f"'{col}'", "inf", "row 0", "finite")))
        out.append(("regression target beyond float32", {col: pa.array([1.0, 1e300, 2.0])},
                    (f"'{col}'", "beyond float32", "row 1")))
        out.append(("string regression target", {col: pa.array(["1", "2", "3"])}, (f"'{col}'", "string", "float target")))
    else:
        k = t.outputs
        rows = [[0] * k, [1] * (k - 1), [0] * k]
        out.append(("multilabel row of the wrong width", {col: pa.array(rows, type=pa.list_(pa.int64()))},
                    (f"'{col}'", "row 1", f"{k - 1} values", f"expected {k}", f"num_labels={k}")))
        out.append(("multilabel value not 0/1", {col: pa.array([[0] * k, [2] + [0] * (k - 1), [0] * k],
                                                              type=pa.list_(pa.int64()))},
                    (f"'{col}'", "other than 0 and 1", "row 1")))
    return out


def run_ingest(p, folder: Path) -> list[Case]:
    import pyarrow.parquet as pq

    from orchestrator.dataset import ShardInvalid, read_shard, write_columns
    from orchestrator.stages.ingest import quarantine

    cases = []
    for n, (kind, replace, expect) in enumerate(shard_cases(p)):
        case = Case(kind, "ingest", p.name, expect)
        path = folder / f"{p.name}-{n:02d}.parquet"
        write_columns(path, good_columns(p))
        table = pq.read_table(path)
        for name, array in replace.items():
            table = table.set_column(table.column_names.index(name), name, array)
        pq.write_table(table, path)
        data = path.read_bytes()
        try:
            read_shard(path, p.inputs, p.target)
        except ShardInvalid as e:
            case.refused, case.message = True, str(e)
            q = quarantine(path, hashlib.sha256(data).hexdigest(), str(e))
            reason = json.loads(Path(q.moved_to + ".reason.json").read_text())["reason"]
            case.kept = Path(q.moved_to).read_bytes() == data and reason == str(e) and not path.exists()
        cases.append(case)
    return cases


# --- validate-config ---------------------------------------------------------------------------

WRONG_OUTPUTS = {
    "tabular": ("\ndef build_model():\n    return nn.Sequential(nn.Linear(24, 2))\n", ("data.target.num_classes=3", "[2, 3]")),
    "regression": ("\ndef build_model():\n    return nn.Sequential(nn.Linear(10, 3))\n",
                   ("data.target.column='progression'", "[2, 1]")),
    "text": ("\nTOPICS = 4\n", ("data.target.num_labels=5", "[2, 5]")),
    "digits": ("\ndef build_model():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 5))\n",
               ("data.label.num_classes=10", "[2, 10]")),
}
TORCH_LOSS = {"classification": "CrossEntropyLoss", "regression": "MSELoss", "multilabel": "BCEWithLogitsLoss"}
WRONG_WAY = {  # a gate bound on the wrong side of its metric: (pipeline.yaml line, replacement, key)
    "tabular": ("metric_min: {golden: {accuracy: 0.78}, new: {accuracy: 0.72}}", "metric_max: {golden: {accuracy: 0.78}}",
                "gate.metric_max.golden.accuracy"),
    "text": ("metric_min: {golden: {micro_f1: 0.80}, new: {micro_f1: 0.75}}", "metric_max: {golden: {micro_f1: 0.8}}",
             "gate.metric_max.golden.micro_f1"),
    "regression": ("metric_max: {golden: {mae: 55.0}, new: {mae: 55.0, rmse: 68.0}}", "metric_min: {golden: {mae: 55.0}}",
                   "gate.metric_min.golden.mae"),
    "digits": ("accuracy_min: {golden: 0.85, new: 0.70}", "metric_max: {golden: {accuracy: 0.85}}",
               "gate.metric_max.golden.accuracy"),
}


def config_cases(p) -> list[tuple[str, str, tuple[str, str] | None, tuple[str, ...]]]:
    """(kind, text appended to model.py, a pipeline.yaml (old, new) edit, expected words)."""
    outputs, words = WRONG_OUTPUTS[p.name]
    loss = TORCH_LOSS[p.task.name]
    old, new, key = WRONG_WAY[p.name]
    return [
        ("model output does not fit the task", outputs, None, ("build_model()", "model.py", *words)),
        ("hook with a typo (def los)", "\ndef los(outputs, batch):\n    return outputs.sum()\n", None,
         ("los()", "did you mean loss()")),
        ("hook with a wrong signature (def loss(x))", "\ndef loss(x):\n    return x.sum()\n", None,
         ("loss(x)", "2 positional arguments", "loss(outputs, batch)")),
        ("hook that is a torch loss object (loss = nn.XLoss())", f"\nloss = nn.{loss}()\n", None,
         (f"loss (a {loss} object)", "batch.target")),
        ("hook that is not callable (loss = 0.5)", "\nloss = 0.5\n", None, ("loss is float", "not a function")),
        ("gate metric bound the wrong way round", "", (old, new), (key, "-is-better")),
    ]


def run_config(p, tmp: Path) -> list[Case]:
    from orchestrator.config import load_pipeline
    from orchestrator.errors import ConfigError

    cases = []
    for n, (kind, model_extra, edit, expect) in enumerate(config_cases(p)):
        case = Case(kind, "validate-config", p.name, expect)
        folder = tmp / f"{p.name}-{n:02d}" / p.name
        shutil.copytree(ROOT / "pipelines" / p.name, folder, ignore=shutil.ignore_patterns("__pycache__"))
        model = folder / "model.py"
        model.write_text(model.read_text() + model_extra)
        if edit:
            y = folder / "pipeline.yaml"
            assert edit[0] in y.read_text(), edit[0]
            y.write_text(y.read_text().replace(*edit))
        try:
            load_pipeline(folder)
        except ConfigError as e:
            case.refused, case.message = True, str(e).replace(str(folder), f"pipelines/{p.name}")
        cases.append(case)
    return cases


# --- serving -------------------------------------------------------------------------------------


def good_request(p) -> dict:
    return {i.name: np.ones((1, *i.shape), dtype=i.dtype).tolist() for i in p.inputs}


def set_first(value, new):
    """`value` (nested lists) with its first scalar replaced by `new`."""
    if isinstance(value, list):
        return [set_first(value[0], new), *value[1:]]
    return new


def request_cases(p) -> list[tuple[str, dict | bytes, tuple[str, ...]]]:
    out = []
    single = len(p.inputs) == 1
    where = (lambda i: '"inputs"') if single else (lambda i: f'"inputs"."{i.name}"')

    def body(**change):
        inputs = {**good_request(p), **change}
        return {"inputs": inputs[p.inputs[0].name]} if single else {"inputs": inputs}

    dense = next((i for i in p.inputs if i.dtype == "float32"), None)
    if dense is not None:
        good = good_request(p)[dense.name]
        out.append(("null in a request", body(**{dense.name: set_first(good, None)}),
                    (where(dense), "found null", "numbers", str(list(dense.shape)))))
        out.append(("string in a request", body(**{dense.name: set_first(good, "x")}),
                    (where(dense), "found strings", "numbers")))
        out.append(("wrong shape in a request", body(**{dense.name: [[0.0] * (int(np.prod(dense.shape)) + 1)]}),
                    (where(dense), "has shape", str(list(dense.shape)))))
        nan = json.dumps(body()).replace("1.0", "NaN", 1).encode()
        out.append(("NaN in a request", nan, ("NaN", "not JSON", "finite numbers")))
    for i in p.inputs:
        if i.dtype == "int64":
            ids = set_first(good_request(p)[i.name], i.vocab_size)
            out.append(("token id outside vocab_size in a request", body(**{i.name: ids}),
                        (where(i), f"outside 0..{i.vocab_size - 1}", f"vocab_size {i.vocab_size}")))
            out.append(("float token id in a request", body(**{i.name: set_first(good_request(p)[i.name], 1.5)}),
                        (where(i), "integer ids", "found floats")))
    first = p.inputs[-1].name
    out.append(("missing input name", {"inputs": {k: v for k, v in good_request(p).items() if k != first}},
                (f'missing "{first}"', str(list(p.inputs[-1].shape)))))
    out.append(("unknown input name", {"inputs": {**good_request(p), "extra": [1.0]}}, ('unknown "extra"',)))
    return out


def run_serving(p) -> list[Case]:
    from orchestrator import serving

    specs = [dataclasses.asdict(i) for i in p.inputs]
    cases = []
    for kind, body, expect in request_cases(p):
        case = Case(kind, "serving", p.name, expect)
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            serving.parse_inputs(raw, specs, p.config.build.max_batch)
        except serving.BadInput as e:
            case.refused, case.status, case.message = 400 <= e.status < 500, e.status, str(e)
        cases.append(case)
    # A good request still parses: the checks refuse defects, not data.
    serving.parse_inputs(json.dumps({"inputs": good_request(p)}).encode(), specs, p.config.build.max_batch)
    return cases


# --- report ----------------------------------------------------------------------------------------


def short(msg: str, limit: int) -> str:
    msg = " ".join(msg.split()).replace("|", "\\|")
    return msg if len(msg) <= limit else msg[: limit - 1] + "…"


def table(cases: list[Case], limit: int) -> str:
    rows = ["| kind | where | pipeline | message |", "|---|---|---|---|"]
    for c in cases:
        status = f"{c.status} " if c.status else ""
        mark = "" if c.clear else "**UNCLEAR** " if c.refused else "**ACCEPTED** "
        rows.append(f"| {c.kind} | {c.where} | {c.pipeline} | {mark}{status}{short(c.message, limit)} |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bad_inputs.json")
    ap.add_argument("--width", type=int, default=240, help="characters of each message in the printed table")
    args = ap.parse_args()
    from orchestrator.config import load_pipeline

    t0 = time.perf_counter()
    cases: list[Case] = []
    with tempfile.TemporaryDirectory(prefix="plaster-bad-inputs-") as tmp:
        tmp = Path(tmp)
        for name in PIPELINES:
            p = load_pipeline(ROOT / "pipelines" / name, check=False)
            (tmp / "shards").mkdir(exist_ok=True)
            cases += run_ingest(p, tmp / "shards")
            cases += run_config(p, tmp / "config")
            cases += run_serving(p)
    order = {"ingest": 0, "validate-config": 1, "serving": 2}
    first_seen = {k: n for n, k in reversed(list(enumerate(c.kind for c in cases)))}
    cases.sort(key=lambda c: (order[c.where], first_seen[c.kind], PIPELINES.index(c.pipeline)))
    md = table(cases, args.width)
    print(md)
    bad = [c for c in cases if not c.clear]
    print(f"\n{len(cases) - len(bad)}/{len(cases)} cases refused with a message naming the column, input or key and "
          f"the expectation ({time.perf_counter() - t0:.1f} s)")
    out = {"benchmark": "bad_inputs", "pipelines": list(PIPELINES), "cases": len(cases), "clear": len(cases) - len(bad),
           "results": [{**dataclasses.asdict(c), "clear": c.clear} for c in cases]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    args.out.with_suffix(".md").write_text(table(cases, 10_000) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
