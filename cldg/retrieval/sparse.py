"""BM25 retrieval in numpy with Lucene's scoring: the `numpy` backend of `cldg mine-samples --retrieval`.

The Lucene backend (cldg.retrieval.search.BM25Searcher) asks anserini for each query's top hits sorted
by (score, docid): that sort turns off Lucene's top-k pruning, so every document that shares a word
with a whole-context query is scored (on full chitchat, ~360,000 postings per context query). This
module gives the same hits from postings held in memory:

- Text analysis is Lucene's own (anserini's DefaultEnglishAnalyzer, or the whitespace analyzer for
  pretokenized indexes), run through the JVM once per index and once per batch of queries (many texts
  in one call), so the terms are those of the Lucene index built from the same texts.
- Scores follow Lucene 9's BM25Similarity: idf = log(1 + (N - df + 0.5) / (df + 0.5)), document
  lengths quantised to Lucene's one-byte norms (SmallFloat.intToByte4), the 256-entry norm cache,
  weight - weight / (1 + freq * normInverse) per term in float32, a repeated query word counted as a
  boost (anserini's BagOfWordsQueryGenerator), the per-term scores summed in float64 and rounded to
  float32. Ties are broken by the pair id as a string, as anserini's sort does.
- A query's postings are summed per document, and the top k found by a size-k heap sweep over the sums,
  in one compiled loop (numba; `_top_k_queries`, whose doc says why) that holds no GIL, so a batch of
  queries runs on several threads. No pruning: every posting of every query word is visited, as Lucene
  does under that sort.

Differences from Lucene: Lucene sums a document's per-term scores in float32 in an order of its own,
this module in float64 in the query's order, so scores differ in the last float32 bits (measured: at
most 7e-5 on scores of 20-90). Hit lists are the same except where two different documents' scores lie
that close, which the benches and tests measure (bench/bench_retrieval.py reports the share of
identical top-k lists). Memory: ~14 bytes per posting (4.4M postings, ~60 MB, for full chitchat's
contexts), plus 8 bytes per document for each searching thread.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from numba import njit

SEPARATOR = "qqcldgtextseparatorqq"  # joins texts analysed in one JVM call; analysed to itself


# --- Lucene's one-byte length norms (org.apache.lucene.util.SmallFloat) ----------------------------

def _long_to_int4(i: int) -> int:
    bits = i.bit_length()
    if bits < 4:
        return i
    shift = bits - 4
    return ((i >> shift) & 0x07) | ((shift + 1) << 3)


def _int4_to_long(i: int) -> int:
    bits, shift = i & 0x07, (i >> 3) - 1
    return bits if shift == -1 else (bits | 0x08) << shift


_NUM_FREE = 255 - _long_to_int4(2**31 - 1)


def int_to_byte4(i: int) -> int:
    """SmallFloat.intToByte4 as an unsigned byte: the norm Lucene stores for a field of i terms."""
    return i if i < _NUM_FREE else _NUM_FREE + _long_to_int4(i - _NUM_FREE)


def byte4_to_int(b: int) -> int:
    return b if b < _NUM_FREE else _NUM_FREE + _int4_to_long(b - _NUM_FREE)


LENGTH_TABLE = np.array([byte4_to_int(i) for i in range(256)], dtype=np.float32)  # Java's float[] of the same


# --- analysis through the JVM ----------------------------------------------------------------------

def lucene_analyzer(pretokenized: bool):
    """The analyzer the index was built and is searched with (cldg.retrieval.search); starts the JVM."""
    from cldg.retrieval.jvm import start_jvm

    start_jvm()
    from jnius import autoclass

    if pretokenized:
        return autoclass("org.apache.lucene.analysis.core.WhitespaceAnalyzer")()
    return autoclass("io.anserini.analysis.DefaultEnglishAnalyzer").newDefaultInstance()


def analyze(analyzer, texts: Sequence[str], batch: int = 2000) -> list[list[str]]:
    """Lucene's terms of each text: `batch` texts per JVM call, joined by SEPARATOR and split after."""
    from jnius import autoclass

    utils = autoclass("io.anserini.analysis.AnalyzerUtils")
    out: list[list[str]] = []
    for lo in range(0, len(texts), batch):
        chunk = texts[lo:lo + batch]
        if any(SEPARATOR in t for t in chunk):  # never in practice; analyse those one by one
            out += [list(utils.analyze(analyzer, t)) for t in chunk]
            continue
        # the Java list printed as "[a, b, c]": terms hold no spaces, so ", " splits them
        joined = str(utils.analyze(analyzer, f" {SEPARATOR} ".join(chunk)).toString())[1:-1]
        cur: list[str] = []
        for term in (joined.split(", ") if joined else []):
            if term == SEPARATOR:
                out.append(cur)
                cur = []
            else:
                cur.append(term)
        out.append(cur)
    return out


# --- the index -------------------------------------------------------------------------------------

class SparseBM25:
    """Postings of analysed documents and Lucene's BM25 over them (module doc). `ids`: the pair ids."""

    def __init__(self, ids: Sequence[int], doc_terms: Sequence[Sequence[str]], k1: float = 0.9, b: float = 0.4):
        n = len(doc_terms)
        self.n = n
        self.ids = np.asarray(ids, dtype=np.int64)
        rank = np.empty(n, dtype=np.int64)
        rank[np.argsort(np.array([str(i) for i in ids], dtype=object), kind="stable")] = np.arange(n)
        self.id_rank = rank  # anserini breaks ties by the id string
        vocab: dict[str, int] = {}
        flat = np.fromiter((vocab.setdefault(t, len(vocab)) for terms in doc_terms for t in terms), dtype=np.int64)
        lengths = np.fromiter((len(t) for t in doc_terms), dtype=np.int64, count=n)
        self.vocab = vocab
        key = flat * max(n, 1) + np.repeat(np.arange(n, dtype=np.int64), lengths)
        key, freq = np.unique(key, return_counts=True)  # by term, then document
        terms, self.docs = key // max(n, 1), (key % max(n, 1)).astype(np.int32)
        df = np.bincount(terms, minlength=len(vocab))
        self.indptr = np.zeros(len(vocab) + 1, dtype=np.int64)
        np.cumsum(df, out=self.indptr[1:])
        # Lucene's field statistics and BM25Similarity, in float32 where Java computes in float
        doc_count = int((lengths > 0).sum())
        avgdl = np.float32(lengths.sum() / doc_count) if doc_count else np.float32(1.0)
        k1_, b_ = np.float32(k1), np.float32(b)
        with np.errstate(divide="ignore"):  # b = 1: the empty length's entry is inf, as Java's float division gives
            cache = np.float32(1) / (k1_ * ((np.float32(1) - b_) + b_ * LENGTH_TABLE / avgdl))
        norm_of = {int(x): int_to_byte4(int(x)) for x in np.unique(lengths)}
        norms = np.array([norm_of[int(x)] for x in lengths], dtype=np.uint8) if n else np.zeros(0, np.uint8)
        self.idf = np.log(1 + (doc_count - df + 0.5) / (df + 0.5)).astype(np.float32) if len(df) else np.zeros(0, np.float32)
        self.denom = np.float32(1) + freq.astype(np.float32) * cache[norms[self.docs]]  # 1f + freq * normInverse
        w = np.repeat(self.idf, df)
        self.score1 = w - w / self.denom  # each posting's score for a word that occurs once in the query

    def query(self, terms: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(term ids, counts) of a query's analysed terms, in order of first occurrence; unknown terms dropped."""
        counts: dict[int, int] = {}
        for t in terms:
            i = self.vocab.get(t)
            if i is not None:
                counts[i] = counts.get(i, 0) + 1
        return np.fromiter(counts, np.int64, len(counts)), np.fromiter(counts.values(), np.float32, len(counts))

    def search(self, query: tuple[np.ndarray, np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        """The top k (pair ids, float32 scores), best first, ties broken by the id string."""
        return self.search_many([query], k)[0]

    def search_many(self, queries: Sequence[tuple[np.ndarray, np.ndarray]], k: int,
                    threads: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
        """`search` of each query, `threads` threads each taking a contiguous share of the queries (the
        kernel holds no GIL)."""
        if k <= 0 or not queries:
            return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in queries]
        k = min(k, max(self.n, 1))  # the output arrays hold k per query
        lengths = np.fromiter((len(t) for t, _ in queries), np.int64, len(queries))
        q_ptr = np.zeros(len(queries) + 1, np.int64)
        np.cumsum(lengths, out=q_ptr[1:])
        q_terms = np.concatenate([np.asarray(t, np.int64) for t, _ in queries])
        q_counts = np.concatenate([np.asarray(c, np.float32) for _, c in queries])
        q_weights = (q_counts * self.idf[q_terms]).astype(np.float32)  # boost * idf, float32 as in Lucene
        top = np.empty((len(queries), k), np.int32)
        top_scores = np.empty((len(queries), k), np.float32)
        found = np.zeros(len(queries), np.int64)

        def run(lo: int, hi: int) -> None:
            _top_k_queries(self.indptr, self.docs, self.score1, self.denom, self.idf, self.id_rank,
                           q_ptr[lo:hi + 1], q_terms, q_weights, k, np.zeros(self.n, np.float64),
                           np.empty(k, np.float64), top[lo:hi], top_scores[lo:hi], found[lo:hi])

        bounds = np.linspace(0, len(queries), max(1, min(threads, len(queries))) + 1).astype(int)
        if len(bounds) == 2:
            run(0, len(queries))
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(len(bounds) - 1) as pool:
                list(pool.map(run, bounds[:-1], bounds[1:]))
        return [(self.ids[top[i, :m]], top_scores[i, :m].copy()) for i, m in enumerate(found.tolist())]


@njit(nogil=True, cache=True)
def _top_k_queries(indptr, docs, score1, denom, idf, id_rank, q_ptr, q_terms, q_weights, k,
                   acc, heap, top, top_scores, found):  # pragma: no cover - compiled; tests call it through search
    """Each query's top k documents into top/top_scores/found: the per-term scores of its words'
    postings summed per document in float64 in the query's order (what np.bincount over the
    concatenated postings gives), rounded to float32, best first, ties by id_rank. `acc` (zeros, one
    per document; left zeroed) and `heap` (k floats) are scratch.

    Why three passes and no list of the documents touched: keeping that list costs a branch per
    posting that the CPU cannot predict (measured: 3x the summing itself); two sweeps over `acc`
    (the k-th best sum by a size-k min-heap, then the documents at or above it) cost less."""
    n = len(acc)
    for qi in range(len(q_ptr) - 1):
        for j in range(q_ptr[qi], q_ptr[qi + 1]):
            t, w = q_terms[j], q_weights[j]
            if w == idf[t]:
                for p in range(indptr[t], indptr[t + 1]):
                    acc[docs[p]] += score1[p]
            else:  # a repeated query word: its boost times idf, Lucene's weight - weight / (1 + ...) in float32
                for p in range(indptr[t], indptr[t + 1]):
                    acc[docs[p]] += w - w / denom[p]
        # the k-th largest sum: a min-heap of the k largest seen (every term scores > 0, so 0 is "no match")
        size = 0
        for d in range(n):
            v = acc[d]
            if v == 0.0 or (size == k and v <= heap[0]):
                continue
            if size < k:  # sift up
                i = size
                size += 1
                while i > 0 and heap[(i - 1) // 2] > v:
                    heap[i] = heap[(i - 1) // 2]
                    i = (i - 1) // 2
                heap[i] = v
            else:  # replace the root, sift down
                i = 0
                while True:
                    c = 2 * i + 1
                    if c >= k:
                        break
                    if c + 1 < k and heap[c + 1] < heap[c]:
                        c += 1
                    if heap[c] >= v:
                        break
                    heap[i] = heap[c]
                    i = c
                heap[i] = v
        # rounding to float32 is monotone: the top k and every document tied with the k-th in float32
        kth = np.float32(heap[0]) if size == k else np.float32(0.0)
        m = 0
        for d in range(n):
            v = acc[d]
            if v != 0.0:
                if np.float32(v) >= kth:
                    m += 1
                acc[d] = 0.0 if np.float32(v) < kth else -v  # mark the kept ones for the pass below
        cand = np.empty(m, np.int64)
        scores = np.empty(m, np.float32)
        m = 0
        for d in range(n):
            if acc[d] < 0.0:
                cand[m] = d
                scores[m] = np.float32(-acc[d])
                acc[d] = 0.0
                m += 1
        by_id = np.argsort(id_rank[cand], kind="mergesort")
        cand, scores = cand[by_id], scores[by_id]
        best = np.argsort(-scores, kind="mergesort")[:k]  # stable: equal scores keep the id order
        for i in range(len(best)):
            top[qi, i] = cand[best[i]]
            top_scores[qi, i] = scores[best[i]]
        found[qi] = len(best)


class SparseBM25Searcher:
    """`BM25Searcher`'s interface (batch_search, close) over a SparseBM25 of the texts a Lucene index holds.

    `ids` and `texts` must be what the index was built from (`cldg index`: the prepare artifact's train
    pairs, contexts joined by cldg.retrieval.bm25_index.context_text). Queries are clipped and emptied
    as the Lucene backend does them (search.prepare_queries), so both see the same query terms.
    """

    def __init__(self, ids: Sequence[int], texts: Sequence[str], k1: float = 0.9, b: float = 0.4,
                 pretokenized: bool = False, threads: int = 1):
        self.analyzer = lucene_analyzer(pretokenized)
        self.pretokenized = pretokenized
        self.threads = threads
        self.index = SparseBM25(ids, analyze(self.analyzer, list(texts)), k1, b)

    def queries(self, queries: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Analysed queries (term ids, counts), built once; pass them to `search_prepared`."""
        from cldg.retrieval.search import prepare_queries

        return [self.index.query(t) for t in analyze(self.analyzer, prepare_queries(queries, self.pretokenized))]

    def search_prepared(self, prepared, k: int) -> list[list[tuple[int, float]]]:
        return [list(zip(ids.tolist(), scores.tolist()))
                for ids, scores in self.index.search_many(prepared, k, self.threads)]

    def batch_search(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        """For each query, up to k (pair id, BM25 score), best first, as BM25Searcher.batch_search."""
        if not queries or k <= 0:
            return [[] for _ in queries]
        return self.search_prepared(self.queries(queries), k)

    def close(self) -> None:
        pass


def idf(df: int, doc_count: int) -> float:
    """Lucene's idf in float32 (for tests and explanations)."""
    return float(np.float32(math.log(1 + (doc_count - df + 0.5) / (df + 0.5))))
