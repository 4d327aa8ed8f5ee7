"""A cycle whose new data is above ingest.stream_above_rows: the training rows stay in their
shard files and Ray Data streams them to the loop (a real local Ray); the holdout is exact and
never trained on; the next cycle replays whole learned shards drawn by their footers."""

import numpy as np
import pytest

from orchestrator import api, stream
from orchestrator.config import load_pipeline
from orchestrator.dataset import concat, load_arrays, read_shard

pytestmark = pytest.mark.integration


def test_a_streamed_cycle_trains_from_the_files_and_never_on_its_holdout(home, digits):
    yaml_file = digits / "pipeline.yaml"
    yaml_file.write_text(yaml_file.read_text().replace("ingest:\n", "ingest:\n  stream_above_rows: 100\n", 1))
    pipeline = load_pipeline(digits)
    api.simulate(digits, shards=4)
    first = api.run_cycle(digits)
    assert first["decision"] in ("PROMOTED", "REJECTED") and first["version"] == "1", first.get("reasons")
    snap, train = first["stages"]["ingest"]["output"], first["stages"]["train"]["output"]
    plan = snap["train_manifest"]
    assert plan is not None and len(plan["new"]) == 4 and plan["replay"] == []
    assert train["placement"] == "in_process_streamed" and len(train["history"]) == 30

    # The holdout is exactly the rows whose band is below the holdout's width.
    parts = [read_shard(p, pipeline.inputs, pipeline.target) for p in plan["new"]]
    x, y = concat([q[0] for q in parts]), np.concatenate([q[1] for q in parts])
    b = stream.bands(x, y)
    hold_x, hold_y = load_arrays(snap["holdout_new_file"])
    assert len(hold_y) == snap["holdout_new_rows"] == int((b < plan["drop_below"]).sum())
    assert set(stream.bands(hold_x, hold_y)) == set(b[b < plan["drop_below"]])

    # What Ray Data streams to training: every other row, none of the holdout.
    rows = list(stream.dataset(plan, pipeline.inputs, pipeline.target).iter_batches(batch_size=None, batch_format="numpy"))
    tx = {i.name: np.concatenate([r[f"in.{i.name}"] for r in rows]) for i in pipeline.inputs}
    ty = np.concatenate([r["y"] for r in rows])
    assert len(ty) == plan["train_rows"] == int((b >= plan["drop_below"]).sum())
    assert (stream.bands(tx, ty) >= plan["drop_below"]).all()

    api.simulate(digits, shards=4)
    second = api.run_cycle(digits)
    snap2 = second["stages"]["ingest"]["output"]
    plan2 = snap2["train_manifest"]
    assert sorted(p.rsplit("/", 1)[-1] for p in plan2["replay"]) == sorted(snap2["replay_from"])
    assert set(snap2["replay_from"]) <= {s["name"] for s in snap["new_shards"]}, "replay draws learned shards"
    assert plan2["train_rows"] == snap2["train_rows"] and snap2["replay_rows"] > 0
    assert second["stages"]["train"]["output"]["warm_started_from"] == ("1" if first["decision"] == "PROMOTED" else None)
