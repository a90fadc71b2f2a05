"""Automatic metrics of the paper's Table 2, each a small pure function (see the submodules)."""
from __future__ import annotations

import numpy as np

from cldg.metrics import bleu, diversity, embedding

TABLE2 = ("bleu1", "bleu2", "bleu3", "bleu4", "dist1", "dist2", "dist3", "ent1", "ent2", "average", "extrema",
          "greedy", "coherence")


def compute_all(hypotheses: list[list[str]], references: list[list[str]], last_turns: list[list[str]],
                ngram_counts: dict[int, dict], wv: embedding.WordVectors) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Corpus metrics (means in [0, 1] except entropies in bits and sacreBLEU in 0-100) and the
    per-response values they average (for paired bootstrap comparisons)."""
    per = bleu.bleu_scores(hypotheses, references)
    per["ent1"] = diversity.ent_n(hypotheses, 1, ngram_counts.get(1, {}))
    per["ent2"] = diversity.ent_n(hypotheses, 2, ngram_counts.get(2, {}))
    per["average"] = [embedding.average(wv, h, r) for h, r in zip(hypotheses, references)]
    per["extrema"] = [embedding.extrema(wv, h, r) for h, r in zip(hypotheses, references)]
    per["greedy"] = [embedding.greedy(wv, h, r) for h, r in zip(hypotheses, references)]
    per["coherence"] = [embedding.coherence(wv, c, h) for c, h in zip(last_turns, hypotheses)]
    per["length"] = [float(len(h)) for h in hypotheses]
    corpus = {k: float(np.mean(v)) if v else 0.0 for k, v in per.items()}
    for n in (1, 2, 3):
        corpus[f"dist{n}"] = diversity.distinct_n(hypotheses, n)
    corpus["gen_entropy1"] = diversity.generated_entropy(hypotheses, 1)
    corpus["gen_entropy2"] = diversity.generated_entropy(hypotheses, 2)
    corpus["sacrebleu"] = bleu.sacrebleu_corpus(hypotheses, references)
    corpus["responses"] = len(hypotheses)
    return corpus, per
