"""Embedding-based metrics (Liu et al., 2016) with the prepare stage's word vectors.

Average: cosine of the SIF-weighted mean vectors, weight a / (a + p(w)), a = 1e-3, p(w) the training
unigram probability. Extrema: cosine of the per-dimension extreme values (largest magnitude, sign
kept). Greedy: mean of the two directions' average best cosine per word. Coherence: the Average
metric between the last context turn and the generated response. Words without a vector are skipped;
when one side has no vector at all, the score is 0.
"""
from __future__ import annotations

import numpy as np

SIF_A = 1e-3


class WordVectors:
    def __init__(self, vectors: np.ndarray, has_vector: np.ndarray, token_to_id, unigram_counts: dict | None = None):
        self.vectors = vectors.astype(np.float32)
        self.has = has_vector.astype(bool)
        self.token_to_id = token_to_id
        total = sum(unigram_counts.values()) if unigram_counts else 0
        self.prob = {g[0]: c / total for g, c in unigram_counts.items()} if total else {}

    def lookup(self, words: list[str]) -> tuple[np.ndarray, list[str]]:
        ids = [self.token_to_id(w) for w in words]
        kept = [(i, w) for i, w in zip(ids, words) if 0 <= i < len(self.has) and self.has[i]]
        if not kept:
            return np.zeros((0, self.vectors.shape[1]), np.float32), []
        return self.vectors[[i for i, _ in kept]], [w for _, w in kept]

    def sif_mean(self, words: list[str]) -> np.ndarray | None:
        vecs, kept = self.lookup(words)
        if not kept:
            return None
        w = np.array([SIF_A / (SIF_A + self.prob.get(x, 0.0)) for x in kept], np.float32)
        return (vecs * w[:, None]).sum(0) / w.sum()


def _cos(a: np.ndarray | None, b: np.ndarray | None) -> float:
    if a is None or b is None:
        return 0.0
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


def average(wv: WordVectors, hyp: list[str], ref: list[str]) -> float:
    return _cos(wv.sif_mean(hyp), wv.sif_mean(ref))


def extrema(wv: WordVectors, hyp: list[str], ref: list[str]) -> float:
    def ext(words):
        v, kept = wv.lookup(words)
        if not kept:
            return None
        mx, mn = v.max(0), v.min(0)
        return np.where(np.abs(mn) > np.abs(mx), mn, mx)
    return _cos(ext(hyp), ext(ref))


def greedy(wv: WordVectors, hyp: list[str], ref: list[str]) -> float:
    h, hk = wv.lookup(hyp)
    r, rk = wv.lookup(ref)
    if not hk or not rk:
        return 0.0
    hn = h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12)
    rn = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
    sim = hn @ rn.T
    return float((sim.max(1).mean() + sim.max(0).mean()) / 2)


def coherence(wv: WordVectors, last_context_turn: list[str], hyp: list[str]) -> float:
    return average(wv, last_context_turn, hyp)
