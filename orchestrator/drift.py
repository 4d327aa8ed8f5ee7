"""Drift: per-feature statistics of a set of rows (a profile), and how far new rows have moved
from the champion's training data, measured before anything is trained.

A profile is plain JSON kept with each registered version (`profile.json` in its bundle), so
the next cycle compares its new shards with what the champion actually learned. Numeric
features get mean, std, quantiles and decile bin edges; the population stability index
(PSI) and the Jensen-Shannon distance of new rows are taken on the champion's bins. Token or
category ids (int64 inputs) get their frequency distribution and the Jensen-Shannon distance.
The formulas are scipy's (`stats.entropy`, `spatial.distance.jensenshannon`); this module
only bins and labels. It never reads files or the registry: callers pass arrays and profiles.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
_EPS = 1e-4  # an empty bin on one side would make PSI infinite; the usual floor


def feature_names(spec) -> list[str]:
    """One name per numeric feature of an input: its columns, or `name[i]` over a list column."""
    if spec.columns:
        return list(spec.columns)
    n = int(np.prod(spec.shape))
    return [spec.name] if n == 1 else [f"{spec.name}[{i}]" for i in range(n)]


def profile(x: dict[str, np.ndarray], inputs) -> dict[str, Any]:
    """Statistics of rows `x` (arrays by input name), per feature; JSON-ready."""
    out: dict[str, Any] = {"rows": int(len(next(iter(x.values())))) if x else 0, "features": {}}
    for spec in inputs:
        a = np.asarray(x[spec.name])
        if spec.dtype == "int64":
            ids = a.reshape(-1).astype(np.int64)
            size = spec.vocab_size or int(ids.max(initial=0)) + 1
            counts = np.bincount(np.clip(ids, 0, size - 1), minlength=size)
            out["features"][spec.name] = {"kind": "ids", "counts": counts.tolist()}
            continue
        flat = a.reshape(len(a), -1).astype(np.float64)
        for j, name in enumerate(feature_names(spec)):
            col = flat[:, j]
            edges = np.unique(np.quantile(col, np.linspace(0, 1, 11))) if len(col) else np.array([0.0])
            values, freq = np.unique(col, return_counts=True)
            out["features"][name] = {
                "kind": "numeric", "mean": float(col.mean()) if len(col) else 0.0,
                "std": float(col.std()) if len(col) else 0.0,
                "min": float(col.min()) if len(col) else 0.0, "max": float(col.max()) if len(col) else 0.0,
                "quantiles": dict(zip(map(str, QUANTILES), np.quantile(col, QUANTILES).tolist())) if len(col) else {},
                "edges": edges.tolist(),
                "shares": (_binned(col, edges.tolist()) / len(col)).tolist() if len(edges) > 1 else [1.0],
                "top_share": float(freq.max() / len(col)) if len(col) else 1.0,  # share of the commonest value
                "_input": spec.name, "_index": j,
            }
    return out


def _binned(col: np.ndarray, edges: list[float]) -> np.ndarray:
    inner = np.asarray(edges[1:-1])  # the outer bins are open: new rows beyond the old range still count
    return np.bincount(np.searchsorted(inner, col, side="right"), minlength=len(inner) + 1).astype(np.float64)


def measure(reference: dict[str, Any], x: dict[str, np.ndarray], inputs) -> dict[str, Any]:
    """Drift of rows `x` against a reference profile: per feature PSI and JS distance
    (numeric) or JS distance (ids), and the worst feature. Features the reference lacks
    (a new input) are skipped."""
    feats: dict[str, dict[str, float]] = {}
    for spec in inputs:
        a = np.asarray(x[spec.name])
        if spec.dtype == "int64":
            ref = reference["features"].get(spec.name)
            if not ref:
                continue
            p = np.asarray(ref["counts"], dtype=np.float64)
            ids = np.clip(a.reshape(-1).astype(np.int64), 0, len(p) - 1)
            q = np.bincount(ids, minlength=len(p)).astype(np.float64)
            feats[spec.name] = {"js": float(jensenshannon(p, q, base=2))}
            continue
        flat = a.reshape(len(a), -1).astype(np.float64)
        for j, name in enumerate(feature_names(spec)):
            ref = reference["features"].get(name)
            if not ref or len(ref["edges"]) < 2:
                continue  # a constant feature in the reference: no bins to compare on
            p = np.asarray(ref["shares"], dtype=np.float64)  # ties (integer pixels) make bins unequal
            q = _binned(flat[:, j], ref["edges"])
            q = q / max(q.sum(), 1.0)
            pe, qe = np.maximum(p, _EPS), np.maximum(q, _EPS)
            psi = float(entropy(qe, pe) + entropy(pe, qe))  # PSI = KL(q||p) + KL(p||q)
            feats[name] = {"psi": psi, "js": float(jensenshannon(p, q, base=2))}
    if not feats:
        return {"features": {}, "worst": None, "score": 0.0, "rows": int(len(next(iter(x.values()))) if x else 0)}
    score = {k: v.get("psi", v["js"]) for k, v in feats.items()}
    worst = max(score, key=score.get)
    return {"features": feats, "worst": worst, "score": score[worst], "metric": "psi" if "psi" in feats[worst] else "js",
            "rows": int(len(next(iter(x.values()))))}


def top(drift: dict[str, Any], n: int = 5) -> list[tuple[str, dict[str, float]]]:
    """The n features that moved most, worst first (by PSI, else JS distance)."""
    return sorted(drift.get("features", {}).items(), key=lambda kv: -kv[1].get("psi", kv[1]["js"]))[:n]


def impossible(reference: dict[str, Any] | None, x: dict[str, np.ndarray], inputs, min_rows: int = 20) -> str | None:
    """Why rows of one shard cannot be real data under the declared schema or the champion's
    profile, or None.

    A feature whose every value lies outside its input's declared `range` is mis-scaled. A
    scalar column that is constant in the shard though it varied in the champion's data (its
    commonest value under half the rows, so ~min_rows rows are all the same by chance with
    odds below 2^-min_rows) is a broken producer: a default filled in, a join gone wrong.
    """
    for spec in inputs:  # the declared range holds with or without a champion
        if spec.range is None or spec.name not in x:
            continue
        lo, hi = spec.range
        flat = np.asarray(x[spec.name], dtype=np.float64).reshape(len(x[spec.name]), -1)
        outside = np.all((flat < lo) | (flat > hi), axis=0)
        if outside.any():
            j = int(np.argmax(outside))
            name = feature_names(spec)[j]
            return (f"feature {name} lies entirely outside its declared range [{lo:g}, {hi:g}] (min {flat[:, j].min():g}, "
                    f"max {flat[:, j].max():g}): a unit or scale changed upstream; fix the producer or "
                    f"data.inputs.{spec.name}.range")
    if not reference or not x or len(next(iter(x.values()))) < min_rows:
        return None
    for spec in inputs:
        if not spec.columns:
            continue  # list columns (images, sequences) are often constant in places by nature
        flat = np.asarray(x[spec.name]).reshape(len(x[spec.name]), -1)
        for j, name in enumerate(spec.columns):
            ref = reference["features"].get(name)
            col = flat[:, j]
            if ref and ref["top_share"] < 0.5 and np.all(col == col[0]):
                return (f"column {name} is constant ({col[0]:g}) in all {len(col)} rows, but varied in the champion's "
                        f"training data (std {ref['std']:.3g}, no value in over half the rows): fix the producer "
                        "of this shard, then drop it into data.source again")
    return None


def champion_profile(champion) -> dict[str, Any] | None:
    """The champion's training-data profile from its bundle; None for versions older than it."""
    import json
    from pathlib import Path

    f = Path(champion.folder) / "profile.json" if champion else None
    return json.loads(f.read_text()) if f and f.is_file() else None
