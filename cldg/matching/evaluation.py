"""Response selection metrics: R10@1, R10@2, R10@5 and MRR on 1 true + 9 random candidates.

Pure functions. The true response sits in column 0 of each candidate list. Ties are broken at random
*in expectation*: with g candidates scoring strictly higher and t scoring the same as the true one, its
rank is uniform on g+1 .. g+t+1, and R@k / MRR are the exact expectations. So a matcher that scores
everything 0 gets R10@1 = 0.1 (chance), neither 0 nor 1, and lexical baselines with many zero scores are
measured fairly.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

METRICS = ("R10@1", "R10@2", "R10@5", "MRR")


def candidate_sets(responses: Sequence[str], n_negatives: int = 9, seed: int = 0) -> np.ndarray:
    """[N, 1 + n_negatives] indices: row i is [i, then n_negatives distinct random j whose response
    text differs from response i]. Seeded; rows for which not enough distinct responses exist are dropped."""
    rng = np.random.default_rng(seed)
    n = len(responses)
    rows = []
    for i in range(n):
        chosen: list[int] = []
        for _ in range(50):  # a few rounds of rejection sampling (almost always one)
            for j in rng.integers(0, n, size=2 * n_negatives + 2).tolist():
                if j != i and j not in chosen and responses[j] != responses[i]:
                    chosen.append(j)
                    if len(chosen) == n_negatives:
                        break
            if len(chosen) == n_negatives:
                rows.append([i] + chosen)
                break
    return np.asarray(rows, dtype=np.int64).reshape(-1, n_negatives + 1)


def expected_rank_metrics(scores: np.ndarray, ks: Sequence[int] = (1, 2, 5)) -> dict[str, float]:
    """scores [N, C] (true response in column 0) -> {"R10@k": ..., "MRR": ...} averaged over rows."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] == 0:
        raise ValueError(f"expected a non-empty [N, C] score matrix, got shape {scores.shape}")
    true = scores[:, :1]
    higher = (scores[:, 1:] > true).sum(1)
    ties = (scores[:, 1:] == true).sum(1)
    out = {}
    for k in ks:
        # positions g+1 .. g+t+1 that are <= k, out of t+1
        hit = np.clip(k - higher, 0, ties + 1) / (ties + 1)
        out[f"R{scores.shape[1]}@{k}"] = float(hit.mean())
    rr = np.empty(len(scores))
    for i, (g, t) in enumerate(zip(higher, ties)):
        rr[i] = np.mean(1.0 / np.arange(g + 1, g + t + 2))
    out["MRR"] = float(rr.mean())
    return out


def candidate_pairs(contexts: Sequence, responses: Sequence, sets: np.ndarray) -> tuple[list, list]:
    """Flatten candidate sets into (context, response) lists, row by row."""
    ctx = [contexts[row[0]] for row in sets for _ in row]
    resp = [responses[j] for row in sets for j in row]
    return ctx, resp


def evaluate_scores(score_fn, contexts: Sequence, responses: Sequence, sets: np.ndarray) -> dict[str, float]:
    """Metrics of `score_fn(contexts, responses) -> scores` on the candidate sets (any item type)."""
    ctx, resp = candidate_pairs(contexts, responses, sets)
    scores = np.asarray(score_fn(ctx, resp), dtype=np.float64).reshape(len(sets), -1)
    return expected_rank_metrics(scores)


def evaluate_matcher(matcher, contexts: Sequence[Sequence[str]], responses: Sequence[str],
                     sets: np.ndarray) -> dict[str, float]:
    """R10@1/2/5 and MRR of a `Matcher` (its `.score`) on 1 true + 9 random responses per context."""
    return evaluate_scores(matcher.score, contexts, responses, sets)
