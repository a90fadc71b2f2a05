"""Diversity and informativeness: Dist-n, Ent-n and the generated n-gram entropy."""
from __future__ import annotations

import math
from collections import Counter

from cldg.text.ngrams import ngrams


def distinct_n(responses: list[list[str]], n: int) -> float:
    """Dist-n: distinct n-grams / all n-grams over all generated responses (0 when there are none)."""
    grams = [g for r in responses for g in ngrams(r, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def distinct_count(responses: list[list[str]], key: str) -> int:
    """How many different words (`distinct_words`), bigrams (`distinct_bigrams`) or whole replies
    (`distinct_replies`) the responses hold: Dist's numerator, without dividing by the length."""
    if key == "distinct_replies":
        return len({tuple(r) for r in responses})
    n = {"distinct_words": 1, "distinct_bigrams": 2}[key]
    return len({g for r in responses for g in ngrams(r, n)})


def cut_to_shortest(runs: list[list[list[str]]]) -> list[list[list[str]]]:
    """Several models' replies to the same contexts (runs[m][i]: model m's reply to context i), each context's
    replies cut to the first L_i words, L_i the shortest of them. Every model then has as many words for each
    context as every other, so Dist-n over the cut replies compares variety at one length: a model that answers
    longer can neither gain (more words to vary) nor lose (Dist-n's denominator grows with every word) by it."""
    if len({len(r) for r in runs}) > 1:
        raise ValueError("every model needs a reply to each context")
    shortest = [min(len(replies[i]) for replies in runs) for i in range(len(runs[0]))] if runs else []
    return [[reply[:n] for reply, n in zip(replies, shortest)] for replies in runs]


def entropy_per_response(response: list[str], n: int, counts: dict[tuple[str, ...], int], total: int) -> float:
    """Mean over the response's n-grams g of -log2 p(g), p from the training n-gram counts. An unseen
    n-gram adds 0 but is still counted; a response without n-grams scores 0."""
    grams = ngrams(response, n)
    if not grams or total <= 0:
        return 0.0
    s = 0.0
    for g in grams:
        c = counts.get(g, 0)
        if c:
            s += -math.log2(c / total)
    return s / len(grams)


def ent_n(responses: list[list[str]], n: int, counts: dict[tuple[str, ...], int]) -> list[float]:
    """Per-response Ent-n (average them for the corpus figure)."""
    total = sum(counts.values())
    return [entropy_per_response(r, n, counts, total) for r in responses]


def generated_entropy(responses: list[list[str]], n: int) -> float:
    """Entropy (bits) of the generated n-gram distribution (Zhang et al., 2018)."""
    c = Counter(g for r in responses for g in ngrams(r, n))
    total = sum(c.values())
    # 0.0 - (not unary minus): one distinct n-gram gives 0.0, not -0.0 ("-0.000 bits" in the tables)
    return 0.0 - sum(v / total * math.log2(v / total) for v in c.values()) if total else 0.0
