"""A BM25-score matcher: how well a response answers a context, by lexical overlap alone.

score(c, r) = BM25 of the context's words (the query) against the response (the document), with
document frequencies and the average length taken from the training responses, squashed into [0, 1)
by s / (s + half), where `half` is the score that maps to 0.5 (default: the mean IDF, i.e. about one
average matching word). It needs no training, is deterministic per pair (batch composition does not
change a score), and is the matcher to use before an MSN is trained.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import numpy as np


class BM25Matcher:
    name = "bm25"

    def __init__(self, word_fn, documents: Sequence[str], k1: float = 1.2, b: float = 0.75, half: float | None = None):
        self.words = word_fn
        self.k1, self.b = k1, b
        df: Counter = Counter()
        total = 0
        for doc in documents:
            w = self.words(doc)
            total += len(w)
            df.update(set(w))
        n = max(len(documents), 1)
        self.avgdl = total / n if total else 1.0
        self.idf = {w: math.log(1 + (n - f + 0.5) / (f + 0.5)) for w, f in df.items()}
        self.default_idf = math.log(1 + (n + 0.5) / 0.5)  # an unseen word is as rare as it gets
        self.half = half if half is not None else (sum(self.idf.values()) / max(len(self.idf), 1))

    def raw_score(self, context: Sequence[str], response: str) -> float:
        query = set(w for turn in context for w in self.words(turn))
        doc = self.words(response)
        if not doc or not query:
            return 0.0
        tf = Counter(doc)
        norm = self.k1 * (1 - self.b + self.b * len(doc) / self.avgdl)
        return sum(self.idf.get(w, self.default_idf) * tf[w] * (self.k1 + 1) / (tf[w] + norm) for w in query if w in tf)

    def score(self, contexts: Sequence[Sequence[str]], responses: Sequence[str]) -> np.ndarray:
        raw = np.fromiter((self.raw_score(c, r) for c, r in zip(contexts, responses)), dtype=np.float64,
                          count=len(responses))
        return (raw / (raw + self.half)).astype(np.float32)
