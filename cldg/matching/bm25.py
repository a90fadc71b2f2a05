"""A BM25-score matcher: how well a response answers a context, by lexical overlap alone.

    raw(c, r) = sum over distinct words w of c that occur in r of
                idf(w) * tf(w, r) * (k1 + 1) / (tf(w, r) + k1 * (1 - b + b * |r| / avgdl))
    score(c, r) = raw / (raw + half)                                  in [0, 1)

i.e. BM25 with the context's words as the query and the response as the document; document
frequencies and the average length come from the training responses (an unseen word gets the
largest IDF). The squashing s / (s + half) is monotone, so it keeps BM25's ranking; `half` is the raw
score that maps to 0.5 (default: the mean IDF of the vocabulary, about one average matching word).

It needs no training and is deterministic per pair (the batch a pair is scored in does not change
its score). Known weakness: a response that repeats the context scores high; use it before an MSN is
trained, or as a baseline. Texts are tokenised once and cached (mining scores each training response
against ~70 contexts), so scoring is a few dictionary look-ups per pair.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Callable, Sequence

import numpy as np


class BM25Matcher:
    name = "bm25"

    def __init__(self, word_fn: Callable[[str], list[str]], documents: Sequence[str], k1: float = 1.2,
                 b: float = 0.75, half: float | None = None, cache_size: int = 1_000_000):
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
        if self.half <= 0:
            raise ValueError(f"BM25Matcher: half must be > 0, got {self.half}")
        self.cache_size = cache_size
        self._doc_weights: dict[str, dict[str, float]] = {}
        self._query_words: dict[tuple[str, ...], frozenset[str]] = {}
        self._turn_words: dict[str, list[str]] = {}

    def doc_weights(self, response: str) -> dict[str, float]:
        """BM25 term weight of every word of `response` (the document side), cached per text."""
        weights = self._doc_weights.get(response)
        if weights is None:
            doc = self.words(response)
            norm = self.k1 * (1 - self.b + self.b * len(doc) / self.avgdl)
            weights = {w: self.idf.get(w, self.default_idf) * f * (self.k1 + 1) / (f + norm)
                       for w, f in Counter(doc).items()}
            if len(self._doc_weights) >= self.cache_size:
                self._doc_weights.clear()
            self._doc_weights[response] = weights
        return weights

    def turn_words(self, turn: str) -> list[str]:
        # consecutive pairs of a dialogue share most of their context turns: tokenise each turn once
        words = self._turn_words.get(turn)
        if words is None:
            words = self.words(turn)
            if len(self._turn_words) >= self.cache_size:
                self._turn_words.clear()
            self._turn_words[turn] = words
        return words

    def query_words(self, context: Sequence[str]) -> frozenset[str]:
        key = tuple(context)
        words = self._query_words.get(key)
        if words is None:
            words = frozenset(w for turn in context for w in self.turn_words(turn))
            if len(self._query_words) >= self.cache_size:
                self._query_words.clear()
            self._query_words[key] = words
        return words

    def raw_score(self, context: Sequence[str], response: str) -> float:
        weights = self.doc_weights(response)
        query = self.query_words(context)
        if len(query) > len(weights):
            return sum(v for w, v in weights.items() if w in query)
        return sum(weights.get(w, 0.0) for w in query)

    def score(self, contexts: Sequence[Sequence[str]], responses: Sequence[str]) -> np.ndarray:
        raw = np.fromiter((self.raw_score(c, r) for c, r in zip(contexts, responses)), dtype=np.float64,
                          count=len(responses))
        return (raw / (raw + self.half)).astype(np.float32)
