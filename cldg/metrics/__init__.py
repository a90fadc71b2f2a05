"""Automatic metrics of the paper's Table 2, each a small pure function (see the submodules), and the
table layout that `evaluate` and `compare` print. Kept import-light: submodules load on use."""
from __future__ import annotations

# The paper's Table 2 columns, in its order: (header, metrics.json key).
TABLE_LAYOUT = [("BLEU-1", "bleu1"), ("BLEU-2", "bleu2"), ("BLEU-3", "bleu3"), ("BLEU-4", "bleu4"),
                ("Dist-1", "dist1"), ("Dist-2", "dist2"), ("Dist-3", "dist3"),
                ("Avg.", "average"), ("Ext.", "extrema"), ("Gre.", "greedy"), ("Coh.", "coherence"),
                ("Ent-1", "ent1"), ("Ent-2", "ent2")]
EXTRA_LAYOUT = [("len", "length"), ("ref ppl", "reference_ppl")]
# Counted, not divided: the different words, bigrams and whole replies a model produced over the test set. Dist-n
# divides by all n-grams generated, so a model that answers twice as long needs twice the distinct words to keep its
# Dist; these counts (cldg compare, the seeds summary, the ablation table) show how much it says whatever the length.
COUNT_LAYOUT = [("distinct words", "distinct_words"), ("distinct bigrams", "distinct_bigrams"),
                ("distinct replies", "distinct_replies")]
COUNTS = {key for _, key in COUNT_LAYOUT}
# Dist-n at one length: the compared models' replies to each context cut to the shortest of them
# (diversity.cut_to_shortest), so the per-token ratio no longer moves with how long a model answers. A figure of a
# comparison, not of one run: `cldg compare` and the seeds summary compute it over the runs they compare.
MATCHED_LAYOUT = [("Dist-1, length-matched", "dist1_matched"), ("Dist-2, length-matched", "dist2_matched"),
                  ("Dist-3, length-matched", "dist3_matched")]
MATCHED = {key for _, key in MATCHED_LAYOUT}
# Shown in %, like the paper; the entropies are in bits.
PERCENT = {"bleu1", "bleu2", "bleu3", "bleu4", "dist1", "dist2", "dist3", "average", "extrema", "greedy",
           "coherence"} | MATCHED


def fmt(key: str, value: float) -> str:
    """A metric as the paper prints it: % with two decimals; entropies (bits) with three; counts whole."""
    if key in PERCENT:
        return f"{100 * value:.2f}"
    if key in COUNTS:
        return f"{value:.0f}"
    if key.startswith("ent") or key.startswith("gen_entropy"):
        return f"{value:.3f}"
    return f"{value:.2f}"


def fmt_interval(key: str, d: dict) -> str:
    """A difference and its interval (`diff`, `ci_low`, `ci_high`), signed, in the metric's unit: points of % for
    the % metrics, whole numbers for the counts, two decimals otherwise."""
    scale, digits = (100 if key in PERCENT else 1), (0 if key in COUNTS else 2)
    return f"{scale * d['diff']:+.{digits}f} [{scale * d['ci_low']:+.{digits}f}, {scale * d['ci_high']:+.{digits}f}]"


def compute_all(hypotheses: list[list[str]], references: list[list[str]], last_turns: list[list[str]],
                ngram_counts: dict[int, dict], wv, detokenize=None) -> tuple[dict[str, float], dict[str, list[float]]]:
    """All automatic metrics over a test set, from metric words (`DialogueTokenizer.words`).

    Returns (corpus, per_response): corpus figures are means of the per-response values (BLEU-n,
    Ent-n, Average, Extrema, Greedy, Coherence, length) or corpus-level (Dist-n, generated-n-gram
    entropy, sacreBLEU in 0-100); fractions are in [0, 1], entropies in bits. The per-response
    values feed the paired bootstrap of `cldg compare`. `detokenize` (words -> text) feeds sacreBLEU,
    which tokenizes raw text itself.
    """
    import numpy as np

    from cldg.metrics import bleu, diversity, embedding

    if not len(hypotheses) == len(references) == len(last_turns):
        raise ValueError("hypotheses, references and last context turns must be equally many")
    per = bleu.bleu_scores(hypotheses, references)
    per["ent1"] = diversity.ent_n(hypotheses, 1, ngram_counts.get(1, {}))
    per["ent2"] = diversity.ent_n(hypotheses, 2, ngram_counts.get(2, {}))
    per["average"] = [embedding.average(wv, h, r) for h, r in zip(hypotheses, references)]
    per["extrema"] = [embedding.extrema(wv, h, r) for h, r in zip(hypotheses, references)]
    per["greedy"] = [embedding.greedy(wv, h, r) for h, r in zip(hypotheses, references)]
    per["coherence"] = [embedding.coherence(wv, c, h) for c, h in zip(last_turns, hypotheses)]
    per["length"] = [float(len(h)) for h in hypotheses]
    corpus: dict[str, float] = {k: float(np.mean(v)) if v else 0.0 for k, v in per.items()}
    for n in (1, 2, 3):
        corpus[f"dist{n}"] = diversity.distinct_n(hypotheses, n)
    corpus["gen_entropy1"] = diversity.generated_entropy(hypotheses, 1)
    corpus["gen_entropy2"] = diversity.generated_entropy(hypotheses, 2)
    corpus["sacrebleu"] = bleu.sacrebleu_corpus(hypotheses, references, detokenize)
    corpus["responses"] = len(hypotheses)
    return corpus, per
