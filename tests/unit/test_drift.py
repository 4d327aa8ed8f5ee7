"""Drift statistics: same-distribution rows score low, moved rows high on the feature that
moved; id inputs compare their frequency distributions; a shard whose column is constant
where the champion's varied is impossible data."""

import json

import numpy as np

from orchestrator import drift
from orchestrator.door import InputSpec

DENSE = InputSpec("dense", (3,), "float32", columns=("a", "b", "c"))
TOKENS = InputSpec("tokens", (8,), "int64", column="t", vocab_size=50)


def rows(rng, n, shift=0.0, tokens_from=0):
    x = rng.normal(size=(n, 3)).astype(np.float32)
    x[:, 1] += shift
    return {"dense": x, "tokens": rng.integers(tokens_from, tokens_from + 25, size=(n, 8))}


def test_moved_rows_score_high_on_the_feature_that_moved_and_same_rows_low():
    rng = np.random.default_rng(0)
    ref = drift.profile(rows(rng, 2000), [DENSE, TOKENS])
    json.dumps(ref)  # kept with the version as JSON
    same = drift.measure(ref, rows(rng, 500), [DENSE, TOKENS])
    moved = drift.measure(ref, rows(rng, 500, shift=1.0), [DENSE])
    assert same["score"] < 0.1, same
    assert moved["worst"] == "b" and moved["metric"] == "psi" and moved["score"] > 0.5
    assert moved["features"]["a"]["psi"] < 0.1 and moved["features"]["b"]["js"] > same["features"]["b"]["js"]
    assert [name for name, _ in drift.top(moved, 1)] == ["b"]


def test_id_inputs_compare_their_frequency_distributions():
    rng = np.random.default_rng(1)
    ref = drift.profile(rows(rng, 1000), [TOKENS])
    assert len(ref["features"]["tokens"]["counts"]) == 50
    same = drift.measure(ref, rows(rng, 300), [TOKENS])["features"]["tokens"]["js"]
    shifted = drift.measure(ref, rows(rng, 300, tokens_from=20), [TOKENS])["features"]["tokens"]["js"]
    assert same < 0.1 < 0.5 < shifted <= 1.0


def test_integer_features_with_ties_are_binned_on_the_champions_own_shares():
    # Pixels of 0..16 tie at many quantiles: bins of unequal mass must not read as drift.
    rng = np.random.default_rng(2)
    pix = InputSpec("x", (4,), "float32", column="x")
    data = lambda n: {"x": rng.choice([0, 0, 0, 4, 16], size=(n, 4)).astype(np.float32)}  # noqa: E731
    ref = drift.profile(data(3000), [pix])
    assert drift.measure(ref, data(500), [pix])["score"] < 0.05


def test_a_column_constant_where_the_champions_varied_is_impossible():
    rng = np.random.default_rng(3)
    ref = drift.profile(rows(rng, 1000), [DENSE])
    bad = rows(rng, 100)
    bad["dense"][:, 2] = 0.0
    why = drift.impossible(ref, bad, [DENSE])
    assert why.startswith("column c is constant (0) in all 100 rows") and "fix the producer" in why
    assert drift.impossible(ref, rows(rng, 100), [DENSE]) is None
    assert drift.impossible(None, bad, [DENSE]) is None, "no champion profile: nothing to hold it against"
    few = {k: v[:5] for k, v in bad.items()}
    assert drift.impossible(ref, few, [DENSE]) is None, "5 equal rows happen by chance"


def test_a_feature_entirely_outside_its_declared_range_is_impossible_even_without_a_champion():
    spec = InputSpec("dense", (3,), "float32", columns=("a", "b", "c"), range=(-10.0, 10.0))
    rng = np.random.default_rng(4)
    x = {"dense": rng.normal(size=(50, 3)).astype(np.float32)}
    assert drift.impossible(None, x, [spec]) is None
    x["dense"][:, 1] = x["dense"][:, 1] * 10 + 1000  # grams where kilograms were declared
    why = drift.impossible(None, x, [spec])
    assert why.startswith("feature b lies entirely outside its declared range [-10, 10]") and "range" in why
    x["dense"][0, 1] = 0.0  # one value inside: not entirely outside
    assert drift.impossible(None, x, [spec]) is None
