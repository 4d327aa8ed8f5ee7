"""Ingest on partitioned and lake-table sources: data.slices cut by partition value (the new
holdout rows of one Hive partition or table partition column, `newest` being the greatest
value among the cycle's new data), and a bad file inside a Delta table reported, not moved."""

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from fakes import context

from orchestrator import api
from orchestrator.dataset import load_arrays
from orchestrator.stages import ingest

ROOT = Path(__file__).resolve().parents[2]


def _pipelines(tmp_path, name):
    # The lake pipelines' simulators load the tabular stream from its folder.
    for p in ("tabular", name):
        shutil.copytree(ROOT / "pipelines" / p, tmp_path / "pipelines" / p)
    return tmp_path / "pipelines" / name


def _rows_of(x):
    return {tuple(np.round(r, 5)) for r in x["dense"]}


def test_newest_day_of_a_delta_table_is_a_slice_of_the_new_holdout(tmp_path, home):
    lake = _pipelines(tmp_path, "lake")
    api.simulate(lake, 3)
    snap = ingest.run(context(home, lake))
    assert snap.table["format"] == "delta" and snap.table["added_rows"] == 750
    x, _ = load_arrays(snap.slices["newest_day"])
    hold, _ = load_arrays(snap.holdout_new_file)
    newest = pq.read_table(Path(home) / "data" / "lake" / "events",
                           filters=[("day", "=", "2026-12-03")]).to_pandas()
    day3 = {tuple(np.round(r, 5)) for r in newest[[f"f{j:02d}" for j in range(24)]].to_numpy(np.float32)}
    assert 0 < len(x["dense"]) < len(hold["dense"])
    assert _rows_of(x) <= _rows_of(hold) and _rows_of(x) <= day3  # holdout rows, all of the newest day
    assert len(_rows_of(hold) & day3) == len(x["dense"])  # and every holdout row of that day


def test_a_fixed_partition_value_of_a_hive_folder(tmp_path, home, digits):
    paths = api.simulate(digits, shards=2)
    src = paths[0].parent
    for i, p in enumerate(paths):  # the same shards, as a Hive dataset of two regions
        (src / f"region={i + 1}").mkdir()
        p.rename(src / f"region={i + 1}" / p.name)
    cfg = yaml.safe_load((digits / "pipeline.yaml").read_text())
    cfg["data"]["slices"] = {"second": {"partition": "region", "value": "2"}, "none": {"partition": "region", "value": "9"}}
    (digits / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
    snap = ingest.run(context(home, digits))
    assert "none" not in snap.slices  # no row with that value: not judged, said why
    x, y = load_arrays(snap.slices["second"])
    hold_x, _ = load_arrays(snap.holdout_new_file)
    assert 0 < len(y) < len(hold_x["pixels"] if "pixels" in hold_x else next(iter(hold_x.values())))


def test_a_bad_file_inside_a_table_is_reported_and_left_in_place(tmp_path, home):
    from deltalake import DeltaTable, write_deltalake

    from orchestrator.config import load_module

    lake = _pipelines(tmp_path, "lake")
    api.simulate(lake, 2)
    table = Path(home) / "data" / "lake" / "events"
    bad = load_module(lake / "simulate.py").day_rows(2)
    bad = bad.set_column(0, "f00", pa.array([float("nan")] * bad.num_rows))  # a NaN in every row of a feature
    write_deltalake(str(table), bad, mode="append", partition_by=["day"])
    files_before = sorted(DeltaTable(str(table)).file_uris())
    snap = ingest.run(context(home, lake))
    assert [q.name.split("/")[0] for q in snap.quarantined] == ["day=2026-12-03"]
    q = snap.quarantined[0]
    assert "f00" in q.reason and "NaN" in q.reason and q.moved_to.startswith("left in ")
    assert sorted(DeltaTable(str(table)).file_uris()) == files_before  # nothing moved or deleted in the table
    assert sum(s.rows for s in snap.new_shards) == 500  # the two good days are learned


def test_the_schedulers_poll_of_a_table_reads_its_log_once_for_rows_and_drift(tmp_path, home, monkeypatch):
    from types import SimpleNamespace

    from orchestrator import lake_delta
    from orchestrator.config import load_pipeline

    lake = _pipelines(tmp_path, "lake")
    api.simulate(lake, 2)
    snap = ingest.run(context(home, lake))
    (tmp_path / "champion").mkdir()
    shutil.copy(snap.profile_file, tmp_path / "champion" / "profile.json")  # a champion with a profile, no lineage
    champion = SimpleNamespace(folder=str(tmp_path / "champion"), version="1")
    looks = []
    changes = lake_delta.DeltaSource.changes
    monkeypatch.setattr(lake_delta.DeltaSource, "changes", lambda t, since: looks.append(since) or changes(t, since))
    waiting = ingest.pending_of(load_pipeline(lake), set(), champion)
    moved = waiting.drift()
    assert waiting.rows == 500 and waiting.oldest is not None
    assert moved is not None and moved["score"] >= 0  # the drift of the rows counted
    assert looks == [None]  # one read of the log fed both
