"""BLEU as the paper reports it, and sacreBLEU beside it."""
from __future__ import annotations

import string

STRIP = {"a", "an", "the"}
PUNCT = set(string.punctuation)


def bleu_words(words: list[str]) -> list[str]:
    """The paper's convention: lowercased words without punctuation and without a / an / the."""
    return [w for w in (w.lower() for w in words) if w not in STRIP and not all(ch in PUNCT for ch in w)]


def sentence_bleu_n(hypothesis: list[str], reference: list[str], n: int) -> float:
    """Sentence-level NLTK BLEU-n: cumulative uniform weights over 1..n-grams, smoothing method1
    (epsilon 1e-12). An empty hypothesis or reference scores 0."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    if not hypothesis or not reference:
        return 0.0
    weights = tuple([1.0 / n] * n)
    return float(sentence_bleu([reference], hypothesis, weights=weights,
                               smoothing_function=SmoothingFunction(epsilon=1e-12).method1))


def bleu_scores(hypotheses: list[list[str]], references: list[list[str]], max_n: int = 4) -> dict[str, list[float]]:
    """Per-response BLEU-1..max_n (average them for the corpus figure)."""
    hyps = [bleu_words(h) for h in hypotheses]
    refs = [bleu_words(r) for r in references]
    return {f"bleu{n}": [sentence_bleu_n(h, r, n) for h, r in zip(hyps, refs)] for n in range(1, max_n + 1)}


def sacrebleu_corpus(hypotheses: list[list[str]], references: list[list[str]]) -> float:
    """sacreBLEU corpus BLEU (its default 13a tokenization) on the space-joined words."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu([" ".join(h) for h in hypotheses], [[" ".join(r) for r in references]]).score)
