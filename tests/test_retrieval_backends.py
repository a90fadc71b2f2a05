"""The numpy BM25 backend (cldg.retrieval.sparse) against Lucene: its norms and analysis are Lucene's own,
and it returns the hits anserini returns (same ids in the same order, scores to float32 rounding)."""
from __future__ import annotations

import pytest

from cldg.config import CommonOptions


@pytest.fixture(scope="module")
def indexed(prepared_workdir, tmp_path_factory):
    from cldg.stages import index

    _, prepared = prepared_workdir
    art = index.run(index.Config(prepare_dir=prepared.path, threads=1),
                    CommonOptions(workdir=tmp_path_factory.mktemp("sparse-index")))
    return prepared, art


def assert_same_hits(ours, lucene):
    assert len(ours) == len(lucene)
    for a, b in zip(ours, lucene):
        assert [p for p, _ in a] == [p for p, _ in b]
        assert [s for _, s in a] == pytest.approx([s for _, s in b], rel=1e-4, abs=1e-4)  # float32 sums in another order (sparse.py)


def test_length_norms_are_lucenes_smallfloat():
    from cldg.retrieval.jvm import start_jvm
    from cldg.retrieval.sparse import LENGTH_TABLE, byte4_to_int, int_to_byte4

    start_jvm()
    from jnius import autoclass

    small_float = autoclass("org.apache.lucene.util.SmallFloat")
    for i in [*range(300), 1000, 4095, 4096, 65537, 10**6, 2**31 - 1]:
        assert int_to_byte4(i) == small_float.intToByte4(i) & 0xFF, i
    for b in range(256):
        assert byte4_to_int(b) == small_float.byte4ToInt(b - 256 if b > 127 else b), b
        assert LENGTH_TABLE[b] == float(byte4_to_int(b)) or b > 200  # Java's float[] rounds the huge ones too


def test_batched_analysis_equals_one_text_at_a_time():
    from jnius import autoclass

    from cldg.retrieval.sparse import SEPARATOR, analyze, lucene_analyzer

    utils = autoclass("io.anserini.analysis.AnalyzerUtils")
    texts = ["I was cooking dinner, wasn't I?", "", "the a an", "3.5 dogs' bones U.S.A. e-mail", "x", "   ",
             "Hello, hello!! 我 喜欢 吃 饺子", f"contains {SEPARATOR} itself"]
    for pretokenized in (False, True):
        analyzer = lucene_analyzer(pretokenized)
        one_by_one = [list(utils.analyze(analyzer, t)) for t in texts]
        assert analyze(analyzer, texts, batch=3) == one_by_one
        assert analyze(analyzer, texts[:-1], batch=100) == one_by_one[:-1]


def test_same_hits_as_lucene_on_the_fixture_corpus(indexed):
    from cldg.data.pairs import read_pairs
    from cldg.retrieval.bm25_index import context_text
    from cldg.retrieval.search import BM25Searcher
    from cldg.retrieval.sparse import SparseBM25Searcher

    prepared, art = indexed
    train = read_pairs(prepared.file("pairs-train.parquet"))
    valid = read_pairs(prepared.file("pairs-valid.parquet"))
    odd = ["", "   ", "the a an", "pizza", "PIZZA pizza pizza dog", " ".join(f"w{i}" for i in range(1500)) + " pizza"]
    for name, texts, queries in (
            ("contexts", [context_text(c) for c in train.context], [context_text(c) for c in train.context + valid.context]),
            ("responses", train.response, train.response + valid.response)):
        ours = SparseBM25Searcher(train.pair_id, texts, k1=0.9, b=0.4)
        threaded = SparseBM25Searcher(train.pair_id, texts, k1=0.9, b=0.4, threads=3)
        lucene = BM25Searcher(art.file(name), k1=0.9, b=0.4, threads=1)
        for k in (1, 8, 50):
            hits = ours.batch_search(queries + odd, k)
            assert_same_hits(hits, lucene.batch_search(queries + odd, k))
            assert threaded.batch_search(queries + odd, k) == hits  # each thread's share, the same floats
        other = SparseBM25Searcher(train.pair_id, texts, k1=2.0, b=1.0)
        assert_same_hits(other.batch_search(queries[:50], 10),
                         BM25Searcher(art.file(name), k1=2.0, b=1.0, threads=1).batch_search(queries[:50], 10))
        assert ours.batch_search([], 5) == [] and ours.batch_search(["pizza"], 0) == [[]]
        lucene.close()


def test_ties_are_broken_by_the_id_string_and_pretokenized_text_is_split_on_spaces(tmp_path):
    from cldg.retrieval.bm25_index import build_index
    from cldg.retrieval.search import BM25Searcher
    from cldg.retrieval.sparse import SparseBM25Searcher

    ids = [9, 10, 100, 2, 31, 7]
    texts = ["我 喜欢 吃 饺子"] * 4 + ["我们 去 公园 吧", "饺子 饺子 好吃"]
    for pretokenized in (True, False):
        build_index(tmp_path / str(pretokenized), ids, texts, pretokenized=pretokenized, threads=1)
        lucene = BM25Searcher(tmp_path / str(pretokenized), threads=1, pretokenized=pretokenized)
        ours = SparseBM25Searcher(ids, texts, pretokenized=pretokenized)
        queries = ["饺子", "我 喜欢", "公园", "吃 饺子 饺子", "我"]
        assert_same_hits(ours.batch_search(queries, 10), lucene.batch_search(queries, 10))
        lucene.close()
    first = [p for p, _ in ours.batch_search(["我 喜欢"], 10)[0]]
    assert first[:4] == [10, 100, 2, 9]  # equal scores: "10" < "100" < "2" < "9", as anserini sorts ids


def _bincount_search(index, query, k):
    """The numpy backend before its compiled loop (np.bincount, then a partition): what it must equal bit for bit."""
    import numpy as np

    terms, counts = query
    if k <= 0 or not len(terms):
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    weights = counts * index.idf[terms]
    ip = index.indptr
    docs = [index.docs[ip[t]:ip[t + 1]] for t in terms]
    vals = [index.score1[ip[t]:ip[t + 1]] if w == index.idf[t] else w - w / index.denom[ip[t]:ip[t + 1]]
            for t, w in zip(terms, weights)]
    acc = np.bincount(np.concatenate(docs), weights=np.concatenate(vals), minlength=index.n)
    cand = np.flatnonzero(acc)
    scores = acc[cand].astype(np.float32)
    if len(cand) > k:
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        cand, scores = cand[scores >= kth], scores[scores >= kth]
    best = np.lexsort((index.id_rank[cand], -scores))[:k]
    return index.ids[cand[best]], scores[best]


def test_the_compiled_loop_equals_the_bincount_search_bit_for_bit_without_the_jvm():
    """Ties at the k-th score (duplicate documents), repeated query words (a boost: weight != idf), k above the
    number of matches, empty and unknown-word queries, more threads than queries, other k1 and b."""
    import numpy as np

    from cldg.retrieval.sparse import SparseBM25

    rng = np.random.default_rng(0)
    for trial in range(12):
        vocab = [f"w{i}" for i in range(int(rng.integers(3, 30)))]
        docs = [list(rng.choice(vocab, size=int(rng.integers(0, 12)))) for _ in range(int(rng.integers(5, 80)))]
        docs += docs[:len(docs) // 3]  # exact duplicates: equal scores, the id string decides
        ids = [int(i) for i in rng.permutation(10 * len(docs))[:len(docs)]]
        index = SparseBM25(ids, docs, k1=[0.9, 2.0, 0.0][trial % 3], b=[0.4, 1.0][trial % 2])
        queries = [index.query(list(rng.choice(vocab + ["unknown"], size=int(rng.integers(0, 15)))))
                   for _ in range(40)]
        queries += [index.query([]), index.query(["unknown"]), (np.zeros(0, np.int64), np.zeros(0, np.float32))]
        for k in (1, 3, 7, 1000):
            expected = [_bincount_search(index, q, k) for q in queries]
            for threads in (1, 3, 64):
                for (ids_a, s_a), (ids_b, s_b) in zip(index.search_many(queries, k, threads), expected):
                    assert ids_a.tolist() == ids_b.tolist()
                    assert s_a.dtype == np.float32 and s_a.tobytes() == s_b.tobytes()
