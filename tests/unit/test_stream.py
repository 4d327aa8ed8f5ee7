"""Streaming snapshots: a row's band comes from its content alone (the same in ingest and in
every read of the training data, on any node), bands spread evenly, and the kept sets are
capped however large the new data grows."""

import numpy as np
import pytest

from orchestrator import stream
from orchestrator.config import PipelineConfig


def rows(n, seed=0):
    rng = np.random.default_rng(seed)
    return ({"dense": rng.normal(size=(n, 5)).astype(np.float32), "ids": rng.integers(0, 100, size=(n, 3))},
            rng.integers(0, 3, size=n))


def test_a_rows_band_depends_on_its_content_only():
    x, y = rows(1000)
    b = stream.bands(x, y)
    assert b.shape == (1000,) and (b >= 0).all() and (b < 1).all()
    order = np.random.default_rng(1).permutation(1000)
    shuffled = stream.bands({k: v[order] for k, v in x.items()}, y[order])
    assert np.array_equal(shuffled, b[order]), "the same row gets the same band wherever it sits"
    x2 = {k: v.copy() for k, v in x.items()}
    x2["dense"][0, 0] += 1e-3
    assert stream.bands(x2, y)[0] != b[0] and np.array_equal(stream.bands(x2, y)[1:], b[1:])


def test_bands_spread_evenly():
    x, y = rows(20000, seed=2)
    share = (stream.bands(x, y) < 0.2).mean()
    assert share == pytest.approx(0.2, abs=0.015)


def config(**ingest):
    data = {"source": "/tmp/x", "features": {"column": "f", "shape": [2]}, "label": {"column": "y", "num_classes": 2}}
    return PipelineConfig.model_validate({"name": "t", "data": data,
                                          "ingest": ingest, "train": {"early_stopping_patience": 3}})


def test_streaming_starts_above_the_rows_or_bytes_set():
    cfg = config(stream_above_rows=1000, stream_above_bytes=None)
    assert not stream.should_stream(cfg, 1000, 10**12) and stream.should_stream(cfg, 1001, 0)
    cfg = config(stream_above_rows=None, stream_above_bytes=2**20)
    assert stream.should_stream(cfg, 10, 2**20 + 1) and not stream.should_stream(cfg, 10**9, 2**20)


def test_the_kept_bands_are_capped_however_large_the_data():
    cfg = config(holdout_fraction=0.2, holdout_max_rows=50_000)
    hold, val, sample = stream.split_bands(cfg, 100_000)
    assert hold == 0.2 and val == pytest.approx(0.1 * 0.8)
    for n in (10**7, 10**8):
        hold, val, sample = stream.split_bands(cfg, n)
        assert hold * n == pytest.approx(50_000) and val * n <= 50_000 and sample * n <= 50_000


def test_missing_names_the_files_of_a_plan_that_are_gone(tmp_path):
    for name in ("a.parquet", "b.parquet"):
        (tmp_path / name).write_bytes(b"PAR1")
    plan = {"new": [str(tmp_path / "a.parquet"), str(tmp_path / "gone.parquet")],
            "replay": [f"file://{tmp_path / 'b.parquet'}", f"file://{tmp_path / 'vacuumed.parquet'}"]}
    assert stream.missing(plan) == [str(tmp_path / "gone.parquet"), f"file://{tmp_path / 'vacuumed.parquet'}"]
