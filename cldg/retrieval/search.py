"""Batched BM25 retrieval over a cldg index (`LuceneSearcher.batch_search` with threads).

The query analyzer must match the index's: the English analyzer (the searcher's default) for `en`
indexes, Lucene's WhitespaceAnalyzer for `pretokenized` ones (otherwise a Chinese query would be cut
into single characters that were never indexed). Call `cldg.retrieval.jvm.start_jvm` first.
"""
from __future__ import annotations

import re
from pathlib import Path

# Lucene refuses a boolean query of more than 1,024 clauses (one per distinct term), and anserini's
# batch_search then fails the whole batch. Long queries keep their last MAX_QUERY_TERMS distinct
# words: the end of a context is what the response answers.
MAX_QUERY_TERMS = 400
_WORD = re.compile(r"\w+")


def clip_query(query: str, pretokenized: bool = False, max_terms: int = MAX_QUERY_TERMS) -> str:
    words = query.split() if pretokenized else _WORD.findall(query)
    if len(set(words)) <= max_terms:
        return query
    kept: list[str] = []
    seen: set[str] = set()
    for w in reversed(words):
        if w not in seen and len(seen) >= max_terms:
            break
        seen.add(w)
        kept.append(w)
    return " ".join(reversed(kept))


def prepare_queries(queries: list[str], pretokenized: bool = False) -> list[str]:
    """What is searched for each query: clipped (clip_query); a blank query becomes "<empty>" (Lucene
    cannot search an empty string; "<empty>" analyses to the word "empty")."""
    return [clip_query(q, pretokenized) if q.strip() else "<empty>" for q in queries]


class BM25Searcher:
    def __init__(self, directory: Path, k1: float = 0.9, b: float = 0.4, threads: int = 2,
                 pretokenized: bool = False):
        from cldg.retrieval.jvm import start_jvm

        start_jvm()  # no-op when already running; must precede the pyserini import
        from pyserini.search.lucene import LuceneSearcher

        self.searcher = LuceneSearcher(str(directory))
        self.searcher.set_bm25(k1, b)
        if pretokenized:
            from pyserini.analysis import JWhiteSpaceAnalyzer

            self.searcher.set_analyzer(JWhiteSpaceAnalyzer())
        self.threads = threads
        self.pretokenized = pretokenized

    def batch_search(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        """For each query, up to k (pair id, BM25 score), best first. Empty queries get no hits."""
        if not queries or k <= 0:
            return [[] for _ in queries]
        qids = [str(i) for i in range(len(queries))]
        # a query of stopwords only returns nothing
        safe = prepare_queries(queries, self.pretokenized)
        hits = self.searcher.batch_search(safe, qids, k=k, threads=self.threads)
        return [[(int(h.docid), float(h.score)) for h in hits.get(q, [])] for q in qids]

    def close(self) -> None:
        self.searcher.close()
