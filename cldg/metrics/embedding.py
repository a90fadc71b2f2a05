"""Embedding-based metrics (Liu et al., 2016) with the prepare stage's word vectors.

Words without a vector (out of vocabulary, special tokens, or no vector in the file) are skipped; when
one side has no word with a vector left, the score is 0.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

SIF_A = 1e-3
N_SPECIAL = 5  # ids 0-4 are <pad> <unk> <bos> <eos> <sep>: never words


class WordVectors:
    """Vectors aligned with tokenizer ids, plus the training unigram probabilities p(w) for SIF weights."""

    def __init__(self, vectors: np.ndarray, has_vector: np.ndarray, token_to_id: Callable[[str], int | None],
                 unigram_counts: dict | None = None):
        self.vectors = np.asarray(vectors, np.float32)
        self.has = np.asarray(has_vector).astype(bool)
        self.token_to_id = token_to_id
        total = sum(unigram_counts.values()) if unigram_counts else 0
        self.prob = {g[0]: c / total for g, c in unigram_counts.items()} if total else {}
        self._ids: dict[str, int] = {}

    def _id(self, word: str) -> int:
        i = self._ids.get(word)
        if i is None:
            j = self.token_to_id(word)
            i = j if j is not None and N_SPECIAL <= j < len(self.has) and self.has[j] else -1
            self._ids[word] = i
        return i

    def lookup(self, words: list[str]) -> tuple[np.ndarray, list[str]]:
        """(vectors [n, dim], the n words) of the words that have a vector."""
        kept = [(i, w) for i, w in ((self._id(w), w) for w in words) if i >= 0]
        if not kept:
            return np.zeros((0, self.vectors.shape[1]), np.float32), []
        return self.vectors[[i for i, _ in kept]], [w for _, w in kept]

    def sif_weight(self, word: str) -> float:
        """a / (a + p(w)), a = 1e-3 (Arora et al., 2017); a word unseen in training has p(w) = 0."""
        return SIF_A / (SIF_A + self.prob.get(word, 0.0))

    def sif_mean(self, words: list[str]) -> np.ndarray | None:
        """SIF-weighted mean vector of the words with a vector (None when there is none)."""
        vecs, kept = self.lookup(words)
        if not kept:
            return None
        w = np.array([self.sif_weight(x) for x in kept], np.float32)
        return (vecs * w[:, None]).sum(0) / w.sum()


def cosine(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """Cosine similarity; 0 when either side is missing or a zero vector."""
    if a is None or b is None:
        return 0.0
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


def average(wv: WordVectors, hyp: list[str], ref: list[str]) -> float:
    """Embedding Average: cosine between the SIF-weighted mean vectors of hypothesis and reference."""
    return cosine(wv.sif_mean(hyp), wv.sif_mean(ref))


def extrema_vector(wv: WordVectors, words: list[str]) -> np.ndarray | None:
    """Per dimension, the value of largest magnitude over the words (sign kept; max on a tie)."""
    v, kept = wv.lookup(words)
    if not kept:
        return None
    mx, mn = v.max(0), v.min(0)
    return np.where(np.abs(mn) > np.abs(mx), mn, mx)


def extrema(wv: WordVectors, hyp: list[str], ref: list[str]) -> float:
    """Vector Extrema: cosine between the extrema vectors of hypothesis and reference."""
    return cosine(extrema_vector(wv, hyp), extrema_vector(wv, ref))


def greedy(wv: WordVectors, hyp: list[str], ref: list[str]) -> float:
    """Greedy Matching: each word's best cosine against the other side, averaged over its words;
    the mean of the two directions (hypothesis -> reference and reference -> hypothesis)."""
    h, hk = wv.lookup(hyp)
    r, rk = wv.lookup(ref)
    if not hk or not rk:
        return 0.0
    hn = h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12)
    rn = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
    sim = hn @ rn.T
    return float((sim.max(1).mean() + sim.max(0).mean()) / 2)


def coherence(wv: WordVectors, last_context_turn: list[str], hyp: list[str]) -> float:
    """Coherence: cosine between the SIF-weighted mean vectors of the last context turn and the response."""
    return average(wv, last_context_turn, hyp)
