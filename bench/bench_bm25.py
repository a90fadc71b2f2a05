"""BM25 backends side by side: Lucene (pyserini), cldg's numpy backend and bm25s, same queries, k = 50.

    .venv/bin/pip install -c constraints.txt -r requirements-bench.txt    # bm25s, PyStemmer, numba (once)
    .venv/bin/python bench/bench_bm25.py [--workdir /tmp/cldg-bench-retrieval] [--queries 1000] [--repeats 3]
        [--engines lucene-1t,lucene-2t,numpy,numpy-2t,bm25s-numpy,bm25s-numba,bm25s-numba-2t,bm25s-numba-lucene-terms]

The corpus is the contexts index of the full chitchat train split (every train context, its turns joined
as `cldg index` joins them), the queries `--queries` of those contexts, whole (clipped to 400 distinct
words as the Lucene backend clips them), drawn as bench/bench_retrieval.py draws them. The prepare and
index artifacts are built in the workdir when absent (the same workdir as bench_retrieval.py). Engines:
  lucene-1t, lucene-2t   cldg.retrieval.search.BM25Searcher: pyserini batch_search on 1 or 2 threads;
  numpy, numpy-2t        cldg.retrieval.sparse.SparseBM25Searcher: Lucene's analysis and scoring over
                         postings in memory (query analysis in the JVM included in its time), the
                         queries scored on 1 or 2 threads;
  bm25s-numpy, bm25s-numba
                         bm25s (method "lucene", the index's k1 and b) with its own tokenizer (regex
                         words, its English stopwords, PyStemmer's English stemmer), query tokenizing
                         included in the time; serial (n_threads 0), and the numba backend also on
                         2 threads (bm25s-numba-2t);
  bm25s-numba-lucene-terms
                         bm25s over the terms Lucene's analyzer gives (analysed in the JVM, in the time),
                         to separate tokenization from scoring in the overlap.
Per engine: build time (Lucene: opening the index, built by `cldg index`, whose timings are given; the
others: from texts, tokenizing included), the first 100 queries' time (JIT compiles: JVM, numba),
queries/s and CPU seconds per 1,000 queries (median over `--repeats`, the engines taking turns in each
repeat, after the untimed first 100), and against Lucene's hits: the share
of queries whose top-50 pair ids are the same list, and overlap@50 (mean share of Lucene's top 50 also
in the engine's top 50). Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
CLDG = [sys.executable, "-m", "cldg.cli"]
K = 50


def ensure_artifacts(workdir: Path):
    """(prepare, index) artifacts of full chitchat in workdir, built when absent."""
    from cldg.artifacts import ArtifactStore

    store = ArtifactStore(workdir)
    for stage, extra in (("prepare", ["--vector-dim", "16", "--vector-epochs", "1"]), ("index", ["--threads", "2"])):
        if store.latest(stage) is None:  # retrieval does not use the word vectors: small ones
            subprocess.run(CLDG + [stage, "--workdir", str(workdir)] + extra, check=True,
                           stdout=subprocess.DEVNULL)
    return store.latest("prepare"), store.latest("index")


class Bm25sEngine:
    """bm25s over the contexts: its own tokenizer, or Lucene's terms (`lucene_terms`)."""

    def __init__(self, ids, texts, k1, b, backend: str, lucene_terms: bool, threads: int = 0):
        import bm25s

        self.ids, self.threads = ids, threads
        self.lucene_terms = lucene_terms
        self.retriever = bm25s.BM25(k1=k1, b=b, method="lucene", backend=backend)
        if lucene_terms:
            from cldg.retrieval.sparse import lucene_analyzer

            self.analyzer = lucene_analyzer(False)
        else:
            import Stemmer

            self.stemmer = Stemmer.Stemmer("english")
        self.retriever.index(self.tokens(texts), show_progress=False)

    def tokens(self, texts):
        if self.lucene_terms:
            from cldg.retrieval.sparse import analyze

            return analyze(self.analyzer, list(texts))
        import bm25s

        return bm25s.tokenize(list(texts), stopwords="en", stemmer=self.stemmer, return_ids=False, show_progress=False)

    def batch_search(self, queries, k):
        from cldg.retrieval.search import prepare_queries

        docs, scores = self.retriever.retrieve(self.tokens(prepare_queries(queries)), k=k, show_progress=False,
                                               n_threads=self.threads)
        # bm25s always returns k documents; those scored 0 share no word with the query (Lucene drops them)
        return [[(self.ids[d], float(s)) for d, s in zip(drow, srow) if s > 0] for drow, srow in zip(docs, scores)]

    def close(self):
        pass


def missing_packages(name: str) -> list[str]:
    import importlib.util

    need = {"bm25s": "bm25s"} if name.startswith("bm25s") else {}
    if name.startswith("bm25s") and "lucene-terms" not in name:
        need["Stemmer"] = "PyStemmer"
    if name.startswith("bm25s-numba"):
        need["numba"] = "numba"
    return [pkg for module, pkg in need.items() if importlib.util.find_spec(module) is None]


def build_engine(name: str, ids, texts, index, bm25):
    from cldg.retrieval.search import BM25Searcher
    from cldg.retrieval.sparse import SparseBM25Searcher

    if name.startswith("lucene-"):
        return BM25Searcher(index.file("contexts"), bm25["k1"], bm25["b"], threads=int(name[len("lucene-"):-1]))
    if name in ("numpy", "numpy-2t"):
        return SparseBM25Searcher(ids, texts, bm25["k1"], bm25["b"], threads=2 if name.endswith("-2t") else 1)
    if name.startswith("bm25s-"):
        backend = "numba" if name.startswith("bm25s-numba") else "numpy"
        return Bm25sEngine(ids, texts, bm25["k1"], bm25["b"], backend, lucene_terms="lucene-terms" in name,
                           threads=2 if name.endswith("-2t") else 0)
    raise SystemExit(f"unknown engine {name}")


def agreement(hits, reference) -> dict:
    same = sum([p for p, _ in h] == [p for p, _ in r] for h, r in zip(hits, reference))
    overlap = [len({p for p, _ in h} & {p for p, _ in r}) / len(r) for h, r in zip(hits, reference) if r]
    return {"same_top50_list_share": round(same / len(reference), 4),
            "overlap_at_50": round(statistics.mean(overlap), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/cldg-bench-retrieval"))
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--engines", default="lucene-1t,lucene-2t,numpy,numpy-2t,bm25s-numpy,bm25s-numba,bm25s-numba-2t,"
                                         "bm25s-numba-lucene-terms")
    args = ap.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out: dict = {"cpu_count": os.cpu_count(), "load_avg_at_start": os.getloadavg(), "k": K}

    import numpy as np

    from cldg.data.pairs import read_pairs
    from cldg.retrieval.bm25_index import context_text
    from cldg.retrieval.jvm import start_jvm

    prepared, index = ensure_artifacts(args.workdir)
    train = read_pairs(prepared.file("pairs-train.parquet"))
    ids, texts = list(train.pair_id), [context_text(c) for c in train.context]
    sample = np.random.default_rng(0).choice(len(texts), size=min(args.queries, len(texts)), replace=False)
    queries = [texts[i] for i in sample]
    out.update(documents=len(texts), queries=len(queries),
               lucene_index_timings_s=index.manifest.get("timings"), bm25=index.manifest["bm25"])
    start_jvm("4g")

    engines, results = {}, {}
    for name in args.engines.split(","):
        missing = missing_packages(name)
        if missing:
            results[name] = {"skipped": f"not installed: {', '.join(missing)} (requirements-dev.txt)"}
            continue
        w0, c0 = time.perf_counter(), time.process_time()
        engines[name] = build_engine(name, ids, texts, index, out["bm25"])
        results[name] = {"open_or_build_s": round(time.perf_counter() - w0, 2),
                         "open_or_build_cpu_s": round(time.process_time() - c0, 2)}
        w0 = time.perf_counter()
        engines[name].batch_search(queries[:100], K)  # warm-up: JIT (JVM, numba's compile), page cache
        results[name]["first_100_queries_s"] = round(time.perf_counter() - w0, 2)
    times = {name: [] for name in engines}
    hits = {}
    for rep in range(args.repeats):
        order = list(engines) if rep % 2 == 0 else list(reversed(engines))
        for name in order:
            w0, c0 = time.perf_counter(), time.process_time()
            hits[name] = engines[name].batch_search(queries, K)
            times[name].append((time.perf_counter() - w0, time.process_time() - c0))
    reference = hits.get("lucene-1t") or hits.get("lucene-2t")
    for name, ts in times.items():
        wall, cpu = statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)
        results[name].update(queries_per_s=round(len(queries) / wall, 1), cpu_s_per_1000_queries=round(1000 * cpu / len(queries), 2),
                             wall_s=[round(t[0], 2) for t in ts])
        if reference is not None:
            results[name].update(agreement(hits[name], reference))
        engines[name].close()
    out["engines"] = results
    out["load_avg_at_end"] = os.getloadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
