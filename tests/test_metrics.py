"""Each metric on hand-computed examples, including the corner cases (empty response, no n-grams,
every word out of vocabulary); BLEU against NLTK; bootstrap and Cohen's kappa on known tables."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cldg.metrics import bleu, compute_all, diversity, embedding, stats


# ---------------------------------------------------------------- BLEU

def test_bleu_words_strip_punctuation_and_articles():
    assert bleu.bleu_words(["The", "cat", ",", "a", "dog", "an", "owl", "!", "?!", "don't", "..."]) == \
        ["cat", "dog", "owl", "don't"]


def test_bleu_hand_computed():
    hyp, ref = ["i", "like", "green", "tea"], ["i", "like", "black", "tea"]
    # unigram precision 3/4; bigrams: (i like) matches of 3 -> 1/3; no trigram/4-gram matches (epsilon)
    assert bleu.sentence_bleu_n(hyp, ref, 1) == pytest.approx(0.75)
    assert bleu.sentence_bleu_n(hyp, ref, 2) == pytest.approx(math.sqrt(0.75 * 1 / 3))
    expected3 = math.exp((math.log(0.75) + math.log(1 / 3) + math.log(1e-12 / 2)) / 3)
    assert bleu.sentence_bleu_n(hyp, ref, 3) == pytest.approx(expected3)
    # brevity penalty: hypothesis shorter than the reference
    assert bleu.sentence_bleu_n(["i", "like"], ref, 1) == pytest.approx(math.exp(1 - 4 / 2))


def test_bleu_corner_cases():
    assert bleu.sentence_bleu_upto([], ["a", "b"]) == [0.0] * 4  # empty response
    assert bleu.sentence_bleu_upto(["x"], []) == [0.0] * 4  # empty reference
    assert bleu.sentence_bleu_upto(["x", "y"], ["z"]) == [0.0] * 4  # no unigram match
    # only articles and punctuation: nothing left after the paper's stripping
    assert bleu.bleu_scores([["the", "."]], [["the", "."]])["bleu1"] == [0.0]
    # a one-word exact match: higher orders have no n-grams at all and are smoothed, not undefined
    one = bleu.sentence_bleu_upto(["yes"], ["yes"])
    assert one[0] == pytest.approx(1.0) and 0 < one[3] < 1e-6


def test_bleu_equals_nltk():
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    rng = np.random.default_rng(0)
    words = ["i", "you", "like", "tea", "coffee", "very", "much", "do", "not", "we"]
    smooth = SmoothingFunction(epsilon=1e-12).method1
    hyps = [list(rng.choice(words, rng.integers(1, 9))) for _ in range(60)]
    refs = [list(rng.choice(words, rng.integers(1, 9))) for _ in range(60)]
    ours = bleu.bleu_scores(hyps, refs)
    for n in range(1, 5):
        w = tuple([1 / n] * n)
        theirs = [sentence_bleu([r], h, weights=w, smoothing_function=smooth) for h, r in zip(hyps, refs)]
        assert ours[f"bleu{n}"] == pytest.approx(theirs, rel=1e-12, abs=0)


def test_sacrebleu_identity_and_disjoint():
    assert bleu.sacrebleu_corpus([["a", "b", "c", "d"]], [["a", "b", "c", "d"]]) == pytest.approx(100.0)
    assert bleu.sacrebleu_corpus([["x", "y", "z", "w"]], [["a", "b", "c", "d"]]) == pytest.approx(0.0)
    assert bleu.sacrebleu_corpus([], []) == 0.0


# ---------------------------------------------------------------- diversity

def test_distinct_n():
    responses = [["i", "am", "ok"], ["i", "am", "fine"], []]
    assert diversity.distinct_n(responses, 1) == pytest.approx(4 / 6)
    assert diversity.distinct_n(responses, 2) == pytest.approx(3 / 4)
    assert diversity.distinct_n(responses, 3) == pytest.approx(2 / 2)
    assert diversity.distinct_n([["hi"], []], 2) == 0.0  # no bigram anywhere
    assert diversity.distinct_n([], 1) == 0.0


def test_distinct_counts_are_dist_numerators_and_do_not_fall_with_length():
    responses = [["i", "am", "ok"], ["i", "am", "fine"], [], ["i", "am", "ok"]]
    assert diversity.distinct_count(responses, "distinct_words") == 4  # i am ok fine
    assert diversity.distinct_count(responses, "distinct_bigrams") == 3  # (i am) (am ok) (am fine)
    assert diversity.distinct_count(responses, "distinct_replies") == 3  # the empty reply is one of them
    # a model that says the same words twice as long: Dist-1 halves, the count stays
    doubled = [r + r for r in responses]
    assert diversity.distinct_count(doubled, "distinct_words") == 4
    assert diversity.distinct_n(doubled, 1) == pytest.approx(diversity.distinct_n(responses, 1) / 2)
    with pytest.raises(KeyError):
        diversity.distinct_count(responses, "distinct_trigrams")


def test_cut_to_shortest_gives_every_model_the_same_words_per_context():
    short = [["yeah"], ["i", "do"], []]
    long = [["i", "think", "so", "too"], ["i", "like", "it"], ["ok"]]
    cut_short, cut_long = diversity.cut_to_shortest([short, long])
    assert cut_short == short  # the shorter reply of each context stays whole
    assert cut_long == [["i"], ["i", "like"], []]  # the other is cut to its length, from the start
    assert sum(map(len, cut_short)) == sum(map(len, cut_long))
    with pytest.raises(ValueError, match="every model"):
        diversity.cut_to_shortest([short, long[:2]])
    # the same first words, then a stock tail: per token, the longer model's Dist-1 halves; cut to one length the
    # two are level, since up to the shorter reply's length they said the same things
    terse = [["yes"], ["no"], ["maybe"]]
    padded = [[w, "i", "think", "so"] for (w,) in terse]
    assert diversity.distinct_n(padded, 1) == pytest.approx(0.5) and diversity.distinct_n(terse, 1) == 1.0
    cut_terse, cut_padded = diversity.cut_to_shortest([terse, padded])
    assert diversity.distinct_n(cut_padded, 1) == diversity.distinct_n(cut_terse, 1) == 1.0


def test_ent_n_against_training_counts():
    counts = {("a",): 2, ("b",): 1, ("c",): 1}  # total 4: p(a) = 1/2, p(b) = p(c) = 1/4
    per = diversity.ent_n([["a", "b"], ["a", "zzz"], [], ["zzz"]], 1, counts)
    assert per[0] == pytest.approx((1 + 2) / 2)
    assert per[1] == pytest.approx((1 + 0) / 2)  # unseen: contributes 0 but is counted
    assert per[2] == 0.0  # empty response
    assert per[3] == 0.0  # all unseen
    bigrams = {("a", "b"): 3, ("b", "a"): 1}
    assert diversity.ent_n([["a", "b", "a"], ["a"]], 2, bigrams) == pytest.approx(
        [(-math.log2(3 / 4) - math.log2(1 / 4)) / 2, 0.0])  # a one-word response has no bigram


def test_generated_entropy():
    assert diversity.generated_entropy([["a", "b"], ["a", "c"]], 1) == pytest.approx(1.5)  # p = 1/2, 1/4, 1/4
    assert diversity.generated_entropy([["a", "a"]], 1) == 0.0
    assert str(diversity.generated_entropy([["a", "a"]], 1)) == "0.0"  # not -0.0 ("-0.000 bits" in the tables)
    assert diversity.generated_entropy([["a"], []], 2) == 0.0


# ---------------------------------------------------------------- embeddings

VOCAB = ["<pad>", "<unk>", "<bos>", "<eos>", "<sep>", "cat", "dog", "car", "novec"]


def make_wv(unigrams=None) -> embedding.WordVectors:
    vectors = np.zeros((len(VOCAB), 2), np.float32)
    vectors[5] = [1, 0]   # cat
    vectors[6] = [0, 1]   # dog
    vectors[7] = [-2, 1]  # car
    vectors[1] = [5, 5]   # <unk> has a (bogus) vector: must never be used
    has = np.array([0, 1, 0, 0, 0, 1, 1, 1, 0], np.uint8)
    ids = {w: i for i, w in enumerate(VOCAB)}
    return embedding.WordVectors(vectors, has, lambda w: ids.get(w, 1), unigrams)


def test_sif_weights_and_average():
    wv = make_wv({("cat",): 998, ("dog",): 1, ("car",): 1})  # p(cat) = .998, p(dog) = .001
    assert wv.sif_weight("cat") == pytest.approx(1e-3 / (1e-3 + 0.998))
    assert wv.sif_weight("dog") == pytest.approx(0.5)
    assert wv.sif_weight("unseen") == 1.0
    w_cat, w_dog = 1e-3 / 0.999, 0.5
    mean = (np.array([1, 0]) * w_cat + np.array([0, 1]) * w_dog) / (w_cat + w_dog)
    expected = mean @ np.array([0, 1]) / np.linalg.norm(mean)
    assert embedding.average(wv, ["cat", "dog"], ["dog"]) == pytest.approx(expected, rel=1e-5)
    assert embedding.average(wv, ["cat"], ["cat", "novec", "zzz"]) == pytest.approx(1.0)  # OOV skipped
    assert embedding.coherence(wv, ["dog"], ["cat"]) == pytest.approx(0.0, abs=1e-7)


def test_extrema_and_greedy():
    wv = make_wv()
    # extrema of cat [1,0] and car [-2,1]: dim0 -> -2 (larger magnitude), dim1 -> 1
    assert np.allclose(embedding.extrema_vector(wv, ["cat", "car"]), [-2, 1])
    assert embedding.extrema(wv, ["cat", "car"], ["car"]) == pytest.approx(1.0)
    # greedy: hyp {cat, dog} vs ref {cat}: h->r best cosines 1, 0 (mean .5); r->h best 1; (0.5 + 1) / 2
    assert embedding.greedy(wv, ["cat", "dog"], ["cat"]) == pytest.approx(0.75)
    c = -2 / math.sqrt(5)  # cos(cat, car)
    assert embedding.greedy(wv, ["cat"], ["car"]) == pytest.approx(c, rel=1e-6)


def test_embedding_corner_cases():
    wv = make_wv()
    for metric in (embedding.average, embedding.extrema, embedding.greedy, embedding.coherence):
        assert metric(wv, [], ["cat"]) == 0.0  # empty response
        assert metric(wv, ["zzz", "novec", "<unk>"], ["cat"]) == 0.0  # every word without a vector
        assert metric(wv, ["cat"], []) == 0.0


# ---------------------------------------------------------------- compute_all

def test_compute_all_averages_per_response_values():
    wv = make_wv({("cat",): 1, ("dog",): 1})
    counts = {1: {("cat",): 1, ("dog",): 1}, 2: {("cat", "dog"): 1}}
    hyps = [["cat", "dog"], [], ["zzz"]]
    refs = [["cat", "dog"], ["dog"], ["car"]]
    last = [["dog"], ["cat"], []]
    corpus, per = compute_all(hyps, refs, last, counts, wv)
    assert set(per) >= {"bleu1", "bleu4", "ent1", "ent2", "average", "extrema", "greedy", "coherence", "length"}
    assert all(len(v) == 3 for v in per.values())
    assert corpus["bleu1"] == pytest.approx(1 / 3)  # 1, 0, 0
    assert corpus["average"] == pytest.approx(1 / 3)
    assert corpus["ent1"] == pytest.approx((1.0 + 0 + 0) / 3)
    assert corpus["dist1"] == pytest.approx(3 / 3) and corpus["dist2"] == 1.0
    assert corpus["length"] == pytest.approx(1.0)
    assert corpus["responses"] == 3


# ---------------------------------------------------------------- statistics

def test_cohens_kappa_known_table():
    # the 2x2 table [[20, 5], [10, 15]]: p_o = .7, p_e = .5*.6 + .5*.4 = .5, kappa = .4
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert stats.cohens_kappa(a, b) == pytest.approx(0.4)
    assert stats.cohens_kappa(a, a) == pytest.approx(1.0)
    # three categories: [[5,1,0],[1,4,1],[0,1,3]] -> p_o = 12/16, p_e = (6*6 + 6*6 + 4*4)/256
    pairs = [("A", "A")] * 5 + [("A", "B")] + [("B", "A")] + [("B", "B")] * 4 + [("B", "tie")] + \
            [("tie", "B")] + [("tie", "tie")] * 3
    pe = (36 + 36 + 16) / 256
    assert stats.cohens_kappa([x for x, _ in pairs], [y for _, y in pairs]) == pytest.approx((0.75 - pe) / (1 - pe))
    with pytest.raises(ValueError):
        stats.cohens_kappa(["a"], ["a", "b"])


def test_paired_bootstrap():
    rng = np.random.default_rng(1)
    a = rng.normal(0.0, 1.0, 400)
    better = a + 0.5 + rng.normal(0, 0.1, 400)
    r = stats.paired_bootstrap(list(a), list(better), samples=500, seed=0)
    assert r["diff"] == pytest.approx(0.5, abs=0.03)
    assert r["ci_low"] < r["diff"] < r["ci_high"] and r["ci_low"] > 0.4
    assert r["p_not_better"] == 0.0
    same = stats.paired_bootstrap(list(a), list(a + rng.normal(0, 0.1, 400)), samples=500, seed=0)
    assert same["ci_low"] < 0 < same["ci_high"]
    assert stats.paired_bootstrap(list(a), list(better), samples=500, seed=0) == r  # seeded


def test_recentred_interval_is_the_percentile_interval_when_centred_and_follows_the_estimate_when_not():
    rng = np.random.default_rng(2)
    centred = rng.normal(1.0, 0.2, 4000)
    lo, hi = stats.recentred_interval(centred, float(np.median(centred)))
    assert (lo, hi) == pytest.approx(tuple(np.quantile(centred, [0.025, 0.975])), abs=1e-9)
    # replicates far below the estimate (as a resampled corpus-level ratio can be): the same width, around it
    s_lo, s_hi = stats.recentred_interval(centred - 3.0, 1.0)
    assert s_lo < 1.0 < s_hi and (s_hi - s_lo) == pytest.approx(hi - lo)


def test_dist_difference_interval_contains_the_point_difference_for_a_much_more_varied_system():
    """Resampling repeats responses, which lowers Dist-n of a varied system far more than of a dull one: the plain
    percentile interval of the difference then lies wholly below the point difference; the recentred one holds
    it."""
    from cldg.tools.compare import dist_bootstrap

    rng = np.random.default_rng(3)
    dull = [["i", "don't", "know"] if i % 3 else ["yeah"] for i in range(300)]
    varied = [[f"w{int(w)}" for w in rng.integers(0, 3000, 8)] for _ in range(300)]
    r = dist_bootstrap(dull, varied, 1, samples=300, seed=0)
    assert r["ci_low"] <= r["diff"] <= r["ci_high"] and r["ci_low"] > 0
