"""N-gram counts of the training text (the reference distribution of the Ent-n metric)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterable


def ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def count_ngrams(tokenized: Iterable[list[str]], max_n: int = 3) -> dict[int, Counter]:
    counts = {n: Counter() for n in range(1, max_n + 1)}
    for words in tokenized:
        for n in counts:
            counts[n].update(ngrams(words, n))
    return counts


def save_ngram_counts(counts: dict[int, Counter], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ns, grams, values = [], [], []
    for n, c in counts.items():
        for g, v in c.items():
            ns.append(n)
            grams.append(" ".join(g))
            values.append(v)
    pq.write_table(pa.table({"n": pa.array(ns, pa.int8()), "ngram": pa.array(grams, pa.string()),
                             "count": pa.array(values, pa.int64())}), path)


def load_ngram_counts(path: Path) -> dict[int, dict[tuple[str, ...], int]]:
    import pyarrow.parquet as pq

    t = pq.read_table(path).to_pydict()
    out: dict[int, dict[tuple[str, ...], int]] = {}
    for n, g, c in zip(t["n"], t["ngram"], t["count"]):
        out.setdefault(int(n), {})[tuple(g.split(" "))] = int(c)
    return out
