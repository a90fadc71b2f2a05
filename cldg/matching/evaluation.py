"""Response selection metrics: R10@k and MRR over candidate lists (the true response first)."""
from __future__ import annotations

import random
from typing import Sequence

import numpy as np


def ranks_of_true(scores: np.ndarray) -> np.ndarray:
    """scores [N, C] with the true response in column 0 -> its 1-based rank (ties count against it)."""
    return 1 + (scores[:, 1:] >= scores[:, :1]).sum(1)


def recall_at(ranks: np.ndarray, k: int) -> float:
    return float((ranks <= k).mean()) if len(ranks) else 0.0


def mrr(ranks: np.ndarray) -> float:
    return float((1.0 / ranks).mean()) if len(ranks) else 0.0


def selection_metrics(scores: np.ndarray) -> dict[str, float]:
    r = ranks_of_true(scores)
    return {"R10@1": recall_at(r, 1), "R10@2": recall_at(r, 2), "R10@5": recall_at(r, 5), "MRR": mrr(r)}


def candidate_sets(responses: Sequence[str], n_negatives: int = 9, seed: int = 0) -> list[list[int]]:
    """For pair i: [i, 9 random other indices whose response differs from i's], seeded."""
    rng = random.Random(seed)
    out = []
    n = len(responses)
    for i in range(n):
        cands = [i]
        tries = 0
        while len(cands) < n_negatives + 1 and tries < 100 * (n_negatives + 1):
            j = rng.randrange(n)
            tries += 1
            if j not in cands and responses[j] != responses[i]:
                cands.append(j)
        out.append(cands)
    return [c for c in out if len(c) == n_negatives + 1]


def evaluate_matcher(matcher, contexts: Sequence[Sequence[str]], responses: Sequence[str],
                     sets: list[list[int]]) -> dict[str, float]:
    """R10@1/2/5 and MRR of `matcher` on 1 true + 9 random responses per context."""
    ctx = [contexts[s[0]] for s in sets for _ in s]
    resp = [responses[j] for s in sets for j in s]
    scores = np.asarray(matcher.score(ctx, resp), dtype=np.float64).reshape(len(sets), -1)
    return selection_metrics(scores)
