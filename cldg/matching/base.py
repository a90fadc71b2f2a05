"""The matcher interface: anything that scores how well a response fits a context.

Mining (`cldg mine-samples`) only needs `score`; MSN (`cldg.matching.msn`) and the BM25-score matcher
(`cldg.matching.bm25`) both implement it, so one can replace the other.
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class Matcher(Protocol):
    name: str

    def score(self, contexts: Sequence[Sequence[str]], responses: Sequence[str]) -> np.ndarray:
        """Matching probability in [0, 1] for each (context turns, response) pair; shape [N], float32."""
        ...
