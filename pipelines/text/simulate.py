"""A drifting stream of short documents tagged with 1 to 3 of 5 topics (multilabel).

A document is its first 32 token ids (0 pads a shorter one) from a 1,000-word vocabulary:
common words (ids 1..199) shared by every topic, and words of its topics. Each topic has an
established vocabulary (ids 200..699; neighbouring topics share some words) and a new one
(ids 700..999) that the stream adopts as it goes on: in shard k a topic word comes from the
new vocabulary with probability min(0.9, 0.15 k). A champion that learnt the first shards
barely knows the new words, so it loses topics on later shards; the established words stay
in use, so the golden holdout (the first shard's language) stays fair to every model.
Three metadata columns ride along: the document's full length in words and its number of
links (both grow with its number of topics), and the hour it was posted (no signal).
A fixed golden holdout is written once; shards are only ever appended, never rewritten.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from orchestrator.dataset import write_columns

ROWS_PER_SHARD = 250
GOLDEN_ROWS = 500
LENGTH = 32
TOPICS = 5
COMMON = np.arange(1, 200)
NEW_PER_SHARD = 0.15  # share of topic words from the new vocabulary, per shard
NEW_MAX = 0.9
TOPIC_SHARE = 0.4  # of a document's words, the rest are common words


def _zipf(n: int) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1)
    return p / p.sum()


# Each topic's words with a Zipf-like frequency, in a fixed order (seed 11).
_rng = np.random.default_rng(11)
_OLD = [_rng.permutation(np.arange(200 + 100 * t, 200 + 100 * t + 140) % 700) for t in range(TOPICS)]
_OLD = [np.where(w < 200, w + 500, w) for w in _OLD]  # topic 4's overlap wraps onto topic 3's words, not common ones
_NEW = [_rng.permutation(np.arange(700 + 60 * t, 760 + 60 * t)) for t in range(TOPICS)]
_P_COMMON, _P_OLD, _P_NEW = _zipf(len(COMMON)), _zipf(140), _zipf(60)


def _documents(k: int, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    new_share = min(NEW_MAX, NEW_PER_SHARD * k)
    tokens = np.zeros((n, LENGTH), dtype=np.int64)
    topics = np.zeros((n, TOPICS), dtype=np.int64)
    length = np.zeros(n, dtype=np.int64)
    links = np.zeros(n, dtype=np.int64)
    for i in range(n):
        count = rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15])
        chosen = rng.choice(TOPICS, size=count, replace=False)
        topics[i, chosen] = 1
        weight = rng.dirichlet(np.full(count, 2.0))  # a main topic and minor ones
        length[i] = int(rng.lognormal(np.log(20 + 15 * count), 0.4))
        links[i] = rng.poisson(0.5 + count)
        words = []
        for _ in range(min(LENGTH, length[i])):
            if rng.random() >= TOPIC_SHARE:
                words.append(rng.choice(COMMON, p=_P_COMMON))
                continue
            t = chosen[rng.choice(count, p=weight)]
            if rng.random() < new_share:
                words.append(rng.choice(_NEW[t], p=_P_NEW))
            else:
                words.append(rng.choice(_OLD[t], p=_P_OLD))
        tokens[i, :len(words)] = words
    hour = rng.uniform(0.0, 24.0, size=n)
    return {"tokens": tokens, "length": length, "links": links, "hour": hour, "topics": topics}


def simulate(source: Path, golden: Path | None, shards: int, shuffle_labels: bool = False) -> list[Path]:
    """Append the next `shards` shards of the stream to `source`; return their paths."""
    source.mkdir(parents=True, exist_ok=True)
    if golden is not None and not golden.exists():
        golden.parent.mkdir(parents=True, exist_ok=True)
        write_columns(golden, _documents(0, GOLDEN_ROWS, np.random.default_rng(10_000)))
    start = len(list(source.glob("shard-*.parquet")))
    written = []
    for k in range(start, start + shards):
        rng = np.random.default_rng(k)
        docs = _documents(k, ROWS_PER_SHARD, rng)
        if shuffle_labels:
            docs["topics"] = docs["topics"][rng.permutation(ROWS_PER_SHARD)]
        path = source / f"shard-{k:05d}.parquet"
        write_columns(path, docs)
        written.append(path)
    return written
