import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fakes import FakeRegistry, context, write_champion_folder

from orchestrator import api, folder_source
from orchestrator.artifacts import VersionRef, sha256_file
from orchestrator.dataset import load_arrays
from orchestrator.errors import DataError
from orchestrator.stages import ingest


def _bad(path, **cols):
    pq.write_table(pa.table(cols), path)


@pytest.fixture
def stream(home, digits):
    paths = api.simulate(digits, shards=2)
    return digits, paths


def test_bad_shards_quarantined_with_reasons_and_good_ones_used(stream, home):
    digits, good = stream
    src = good[0].parent
    (src / "corrupt.parquet").write_bytes(b"PAR1 this is not parquet")
    _bad(src / "schema.parquet", image=pa.array([[0.0] * 64]), y=pa.array([1]))
    _bad(src / "nan.parquet", pixels=pa.array([[float("nan")] * 64], type=pa.list_(pa.float32())), label=pa.array([1]))
    _bad(src / "labels.parquet", pixels=pa.array([[0.0] * 64], type=pa.list_(pa.float32())), label=pa.array([12]))
    _bad(src / "shape.parquet", pixels=pa.array([[0.0] * 60], type=pa.list_(pa.float32())), label=pa.array([1]))
    corrupt_bytes = (src / "corrupt.parquet").read_bytes()

    snap = ingest.run(context(home, digits))

    reasons = {q.name: q.reason for q in snap.quarantined}
    assert set(reasons) == {"corrupt.parquet", "schema.parquet", "nan.parquet", "labels.parquet", "shape.parquet"}
    assert "not a readable Parquet" in reasons["corrupt.parquet"]
    assert "missing column" in reasons["schema.parquet"] and "pixels" in reasons["schema.parquet"]
    assert "NaN" in reasons["nan.parquet"]
    assert "outside 0..9" in reasons["labels.parquet"]
    assert "expected 64" in reasons["shape.parquet"]
    # Never deleted: moved aside, byte for byte, with the reason beside it.
    moved = src / "_quarantine" / "corrupt.parquet"
    assert moved.read_bytes() == corrupt_bytes
    assert "not a readable" in json.loads((src / "_quarantine" / "corrupt.parquet.reason.json").read_text())["reason"]
    # The good shards still make the snapshot.
    assert snap.skip_reason is None
    assert [s.name for s in snap.new_shards] == [p.name for p in good]
    x, y = load_arrays(snap.train_file)
    x = x["input"]
    assert x.shape[1:] == (1, 8, 8) and x.dtype == np.float32
    assert snap.train_rows + snap.holdout_new_rows == 500
    assert snap.golden_rows == 400


def test_too_little_new_data_is_a_skip_with_reason(home, digits):
    api.simulate(digits, shards=1)
    text = (digits / "pipeline.yaml").read_text().replace("min_new_rows: 200", "min_new_rows: 1000")
    (digits / "pipeline.yaml").write_text(text)
    snap = ingest.run(context(home, digits))
    assert snap.skip_reason and "250 new row(s)" in snap.skip_reason and "min_new_rows=1000" in snap.skip_reason


def test_learned_shards_are_not_new_but_replayed(stream, home):
    digits, good = stream
    learned = [sha256_file(good[0])]
    folder = home / "champ"
    write_champion_folder(folder, learned)
    reg = FakeRegistry()
    reg.champion_ref = VersionRef("1", "r", str(folder), "fp32", "onnxruntime")
    reg.learned = learned
    snap = ingest.run(context(home, digits, reg))
    assert [s.name for s in snap.new_shards] == [good[1].name]
    assert snap.replay_rows == 200
    assert set(snap.learned) == {sha256_file(p) for p in good}
    assert snap.champion.version == "1"


def test_missing_source_names_the_fix(home, digits):
    with pytest.raises(DataError, match="plaster simulate"):
        ingest.run(context(home, digits))


def test_named_holdout_slices_are_materialized_and_gateable(stream, home):
    digits, good = stream
    hard = home / "hard.parquet"
    shutil.copy(good[1], hard)
    text = (digits / "pipeline.yaml").read_text()
    text = text.replace("  label: {column: label, num_classes: 10}",
                        f"  label: {{column: label, num_classes: 10}}\n  slices: {{hard: {hard}}}")
    text = text.replace("non_inferiority: {golden: 0.05, new: 0.02}", "non_inferiority: {golden: 0.05, new: 0.02, hard: 0.0}")
    (digits / "pipeline.yaml").write_text(text)
    snap = ingest.run(context(home, digits))
    assert set(snap.slices) == {"golden", "hard"} and snap.golden_file == snap.slices["golden"]
    x, y = load_arrays(snap.slices["hard"])
    assert len(y) == 250 and x["input"].shape[1:] == (1, 8, 8)


def test_the_heavy_workload_simulates_from_a_copy_of_its_folder(home, tmp_path):
    """The benchmarks copy a workload's folder before use: its simulate.py must not reach for
    files beside the original (it did once, and the heavy benchmark broke)."""
    from orchestrator.config import load_pipeline
    from orchestrator.dataset import read_shard

    heavy = tmp_path / "elsewhere" / "heavy"
    shutil.copytree(Path(__file__).resolve().parents[2] / "benchmarks" / "heavy", heavy,
                    ignore=shutil.ignore_patterns("__pycache__"))
    (path,) = api.simulate(heavy, shards=1)
    p = load_pipeline(heavy)
    x, y = read_shard(path, p.inputs, p.target)
    x = x["input"]
    assert x.shape == (1000, 1, 16, 16) and x.dtype == np.float32 and set(np.unique(y)) <= set(range(10))


def test_more_bad_shards_are_quarantined_with_a_reason_naming_the_defect(stream, home):
    """The fault suite's bad shards that the first checks let through or misnamed: null
    feature rows, labels past int64 (read as negative before), values beyond float32, a copy
    of a shard under another name. A folder named like a shard is a dataset (what Spark
    writes): its part file is read, here a copy of a good shard, so a duplicate, moved aside
    keeping its path. An extra column is fine."""
    digits, good = stream
    src = good[0].parent
    f32 = pa.list_(pa.float32())
    _bad(src / "a-null-row.parquet", pixels=pa.array([[0.0] * 64, None], type=f32), label=pa.array([1, 2]))
    _bad(src / "a-u64.parquet", pixels=pa.array([[0.0] * 64], type=f32), label=pa.array([2**63 + 5], type=pa.uint64()))
    _bad(src / "a-huge.parquet", pixels=pa.array([[1e300] * 64], type=pa.list_(pa.float64())), label=pa.array([1]))
    (src / "a-folder.parquet").mkdir()
    (src / "a-folder.parquet" / "part-0.parquet").write_bytes(good[0].read_bytes())
    # The copy sorts first and arrives last: the original (the first arrival) is kept.
    shutil.copyfile(good[1], src / "a-copy.parquet")
    _bad(src / "z-extra.parquet", pixels=pa.array([[0.5] * 64] * 3, type=f32), label=pa.array([1, 2, 3]),
         note=pa.array(["x", "y", "z"]))
    copy_bytes = (src / "a-copy.parquet").read_bytes()

    snap = ingest.run(context(home, digits))

    reasons = {q.name: q.reason for q in snap.quarantined}
    assert set(reasons) == {"a-null-row.parquet", "a-u64.parquet", "a-huge.parquet",
                            "a-folder.parquet/part-0.parquet", "a-copy.parquet"}
    assert "null" in reasons["a-null-row.parquet"] and "row 1" in reasons["a-null-row.parquet"]
    assert "9223372036854775813 outside 0..9" in reasons["a-u64.parquet"]
    assert "beyond float32" in reasons["a-huge.parquet"]
    in_folder = reasons["a-folder.parquet/part-0.parquet"]
    assert "duplicate" in in_folder and good[0].name in in_folder
    assert (src / "_quarantine" / "a-folder.parquet" / "part-0.parquet").read_bytes() == good[0].read_bytes()
    assert "duplicate" in reasons["a-copy.parquet"] and good[1].name in reasons["a-copy.parquet"]
    assert (src / "_quarantine" / "a-copy.parquet").read_bytes() == copy_bytes
    reason_file = src / "_quarantine" / "a-copy.parquet.reason.json"
    assert json.loads(reason_file.read_text())["reason"].startswith("duplicate")
    assert [s.name for s in snap.new_shards] == [p.name for p in good] + ["z-extra.parquet"]
    assert snap.train_rows + snap.holdout_new_rows == 503


def test_a_copy_of_a_learned_shard_is_a_duplicate_and_not_replayed_twice(stream, home):
    digits, good = stream
    learned = [sha256_file(p) for p in good]
    folder = home / "champ"
    write_champion_folder(folder, learned)
    reg = FakeRegistry()
    reg.champion_ref = VersionRef("1", "r", str(folder), "fp32", "onnxruntime")
    reg.learned = learned
    shutil.copyfile(good[0], good[0].parent / "again.parquet")
    assert folder_source.pending(good[0].parent, set()) == (500, folder_source.pending(good[0].parent, set())[1])

    snap = ingest.run(context(home, digits, reg))

    assert [(q.name, "already learned" in q.reason) for q in snap.quarantined] == [("again.parquet", True)]
    assert snap.new_shards == () and snap.skip_reason


def test_replay_reads_only_the_row_groups_it_draws_however_many_shards_are_learned(stream, home):
    digits, good = stream
    src = good[0].parent
    both = pa.concat_tables([pq.read_table(p) for p in good])
    learned_paths = []
    for i in range(40):  # 40 learned shards of 250 distinct rows each, in row groups of 50
        p = src / f"old-{i:02d}.parquet"
        pq.write_table(both.slice(i, 250), p, row_group_size=50)
        learned_paths.append(p)
    learned = [sha256_file(p) for p in learned_paths]
    folder = home / "champ"
    write_champion_folder(folder, learned)
    reg = FakeRegistry()
    reg.champion_ref = VersionRef("1", "r", str(folder), "fp32", "onnxruntime")
    reg.learned = learned
    snap = ingest.run(context(home, digits, reg))
    assert snap.replay_rows == snap.train_rows - snap.replay_rows  # replay_fraction 1.0 of the new rows
    groups = [r.split("#") for r in snap.replay_from]
    assert all(name.startswith("old-") and 0 <= int(g) < 5 for name, g in groups)
    # What was read covers `want` rows and at most one row group more: ~want/50 groups of
    # the 200 learned, not the whole history.
    assert 50 * (len(groups) - 1) < snap.replay_rows <= 50 * len(groups)
    assert len(groups) < 200
