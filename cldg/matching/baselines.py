"""Baseline matchers reported beside MSN: bag-of-words cosine here; BM25 is `cldg.matching.bm25`."""
from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import numpy as np


class BagOfWordsMatcher:
    """Cosine between the word-count vectors of the whole context (all turns) and of the response, in [0, 1]."""

    name = "bow"

    def __init__(self, word_fn):
        self.words = word_fn

    def score(self, contexts: Sequence[Sequence[str]], responses: Sequence[str]) -> np.ndarray:
        out = np.zeros(len(responses), np.float32)
        cache: dict[str, Counter] = {}  # candidate lists repeat each context 10 times

        def bag(text: str) -> Counter:
            if text not in cache:
                cache[text] = Counter(self.words(text))
            return cache[text]

        for i, (c, r) in enumerate(zip(contexts, responses)):
            a = sum((bag(t) for t in c), Counter())
            b = bag(r)
            dot = sum(v * b[w] for w, v in a.items() if w in b)
            na, nb = math.sqrt(sum(v * v for v in a.values())), math.sqrt(sum(v * v for v in b.values()))
            out[i] = dot / (na * nb) if na and nb else 0.0
        return out
