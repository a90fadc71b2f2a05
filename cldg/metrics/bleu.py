"""BLEU as the paper reports it (sentence-level NLTK BLEU averaged over responses), and sacreBLEU beside it."""
from __future__ import annotations

import string

STRIP = {"a", "an", "the"}
PUNCT = set(string.punctuation)
EPSILON = 1e-12


def bleu_words(words: list[str]) -> list[str]:
    """The paper's convention: lowercased words without punctuation tokens and without a / an / the."""
    return [w for w in (w.lower() for w in words) if w not in STRIP and not all(ch in PUNCT for ch in w)]


def _smoothing():
    from nltk.translate.bleu_score import SmoothingFunction

    # method1 adds epsilon to the numerator of a zero n-gram precision; epsilon is a constructor argument.
    return SmoothingFunction(epsilon=EPSILON).method1


def sentence_bleu_n(hypothesis: list[str], reference: list[str], n: int) -> float:
    """Sentence-level NLTK BLEU-n of one response: cumulative uniform weights (1/n, ..., 1/n) over
    1..n-gram precisions, smoothing method1 (epsilon 1e-12), one reference. NLTK gives 0 when no
    unigram matches (so always for an empty hypothesis or reference)."""
    return sentence_bleu_upto(hypothesis, reference, n)[n - 1]


def sentence_bleu_upto(hypothesis: list[str], reference: list[str], max_n: int = 4) -> list[float]:
    """[BLEU-1, ..., BLEU-max_n] of one response in one NLTK call (it takes several weight vectors)."""
    from nltk.translate.bleu_score import sentence_bleu

    if not hypothesis or not reference:
        return [0.0] * max_n
    weights = [tuple([1.0 / n] * n) for n in range(1, max_n + 1)]
    scores = sentence_bleu([reference], hypothesis, weights=weights, smoothing_function=_smoothing())
    if not isinstance(scores, list):  # NLTK returns a bare number for a single weight vector, and 0 on no match
        scores = [scores] * max_n if scores == 0 else [scores]
    return [float(s) for s in scores]


def bleu_scores(hypotheses: list[list[str]], references: list[list[str]], max_n: int = 4) -> dict[str, list[float]]:
    """Per-response BLEU-1..max_n after `bleu_words` (their mean is the corpus figure of Table 2)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    rows = [sentence_bleu_upto(bleu_words(h), bleu_words(r), max_n) for h, r in zip(hypotheses, references)]
    return {f"bleu{n}": [row[n - 1] for row in rows] for n in range(1, max_n + 1)}


def sacrebleu_corpus(hypotheses: list[list[str]], references: list[list[str]], detokenize=None) -> float:
    """sacreBLEU corpus BLEU (0-100, its default 13a tokenization, no stripping). sacreBLEU tokenizes raw
    text itself, so the words are first joined back into text with `detokenize` (default: spaces)."""
    import sacrebleu

    if not hypotheses:
        return 0.0
    join = detokenize or " ".join
    return float(sacrebleu.corpus_bleu([join(h) for h in hypotheses], [[join(r) for r in references]]).score)
