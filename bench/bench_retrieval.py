"""Retrieval and mining on the full chitchat train split: Lucene (pyserini) against pure-Python BM25.

    .venv/bin/python bench/bench_retrieval.py [--workdir /tmp/cldg-bench-retrieval] [--threads 2] \
        [--queries 10000] [--baseline-queries 2000] [--mine-max-pairs 0] [--skip-mining]

Measures, and prints as JSON:
- `cldg index` wall time (fresh subprocess, --force) and its peak RSS;
- `LuceneSearcher.batch_search` queries/s at k=50 on both indexes (contexts searched with contexts,
  responses with responses, as mining does), and the retrieval time that implies for both sides of the
  whole train split;
- BM25Matcher pairs/s, scoring each query context against 70 training responses (cold caches);
- `cldg mine-samples --matcher bm25` (k=3, 50 candidates, 20 random) wall time and peak RSS
  (fresh subprocess, --force; `--mine-max-pairs N` mines the first N train pairs plus every valid pair,
  and the JSON extrapolates to the whole split);
- the same top-50 retrieval done by `rank_bm25.BM25Okapi` (the pure-Python approach of the paper's
  released code) on `--baseline-queries` context queries, and Lucene's speed-up over it.
The prepare artifact is built in the bench workdir first when absent (small word vectors: retrieval
does not use them). Not run by CI.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CLDG = [sys.executable, "-m", "cldg.cli"]


def run_child(args: list[str]) -> dict:
    """Run a cldg command in a fresh process; wall time and that process's own peak RSS."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({proc.returncode}):\n{err[-3000:]}")
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/cldg-bench-retrieval"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--queries", type=int, default=10000, help="queries per index for the Lucene q/s figure")
    ap.add_argument("--baseline-queries", type=int, default=2000)
    ap.add_argument("--mine-max-pairs", type=int, default=0, help="0: mine every train pair")
    ap.add_argument("--skip-mining", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    wd = str(args.workdir)
    out: dict = {"threads": args.threads, "cpu_count": os.cpu_count(), "load_avg_at_start": os.getloadavg()}

    from cldg.artifacts import ArtifactStore

    store = ArtifactStore(args.workdir)
    if store.latest("prepare") is None:
        out["prepare"] = run_child(CLDG + ["prepare", "--workdir", wd, "--vector-dim", "16", "--vector-epochs", "1"])
    prepared = store.latest("prepare")

    out["index"] = run_child(CLDG + ["index", "--workdir", wd, "--force", "--threads", str(args.threads)])
    index = store.latest("index")
    out["index"].update(index.manifest["timings"], documents=index.manifest["rows"]["documents"])

    import numpy as np

    from cldg.data.pairs import read_pairs
    from cldg.retrieval.bm25_index import context_text
    from cldg.retrieval.jvm import start_jvm
    from cldg.text.tokenizer import DialogueTokenizer

    train = read_pairs(prepared.file("pairs-train.parquet"))
    n_train = len(train)
    out["train_pairs"] = n_train
    contexts = [context_text(c) for c in train.context]
    rng = np.random.default_rng(0)
    sample = rng.choice(n_train, size=min(args.queries, n_train), replace=False)

    t0 = time.perf_counter()
    start_jvm("4g")
    from cldg.retrieval.search import BM25Searcher

    out["jvm_and_pyserini_import_s"] = round(time.perf_counter() - t0, 2)
    bm25 = index.manifest["bm25"]
    search = {}
    for name, queries in (("contexts", [contexts[i] for i in sample]), ("responses", [train.response[i] for i in sample])):
        searcher = BM25Searcher(index.file(name), bm25["k1"], bm25["b"], args.threads)
        searcher.batch_search(queries[:500], k=50)  # warm up (JIT, page cache)
        t0 = time.perf_counter()
        hits = searcher.batch_search(queries, k=50)
        seconds = time.perf_counter() - t0
        search[name] = {"queries": len(queries), "seconds": round(seconds, 2), "queries_per_s": round(len(queries) / seconds, 1),
                        "mean_hits": round(float(np.mean([len(h) for h in hits])), 1)}
        if name == "contexts":
            lucene_hits = hits
            lucene_searcher = searcher
        else:
            searcher.close()
    out["lucene_batch_search_k50"] = search
    qps = [search[n]["queries_per_s"] for n in ("contexts", "responses")]
    out["lucene_retrieval_both_sides_train_s_estimate"] = round(n_train / qps[0] + n_train / qps[1], 1)

    # BM25Matcher: each sampled context against 70 training responses, as mining scores them
    from cldg.matching.bm25 import BM25Matcher

    tok = DialogueTokenizer.load(prepared.file("tokenizer.json"))
    t0 = time.perf_counter()
    matcher = BM25Matcher(tok.words, train.response)
    build_s = time.perf_counter() - t0
    n_q = min(2000, len(sample))
    cand = rng.integers(0, n_train, size=(n_q, 70))
    ctx = [train.context[sample[i]] for i in range(n_q) for _ in range(70)]
    resp = [train.response[j] for j in cand.ravel()]
    t0 = time.perf_counter()
    scores = matcher.score(ctx, resp)
    seconds = time.perf_counter() - t0
    out["bm25_matcher"] = {"build_s": round(build_s, 2), "pairs": len(resp), "seconds": round(seconds, 2),
                           "pairs_per_s": round(len(resp) / seconds, 1), "mean_prob": round(float(scores.mean()), 4)}

    # the pure-Python baseline: rank_bm25 over the same contexts, same queries, top 50
    from rank_bm25 import BM25Okapi

    t0 = time.perf_counter()
    corpus = [tok.words(c) for c in contexts]
    baseline = BM25Okapi(corpus, k1=bm25["k1"], b=bm25["b"])
    base_build = time.perf_counter() - t0
    bq = sample[: args.baseline_queries]
    t0 = time.perf_counter()
    base_hits = []
    for i in bq:
        s = baseline.get_scores(tok.words(contexts[i]))
        top = np.argpartition(-s, 50)[:50]
        base_hits.append(top[np.argsort(-s[top])])
    base_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    lucene_searcher.batch_search([contexts[i] for i in bq], k=50)
    lucene_s = time.perf_counter() - t0
    lucene_searcher.close()
    # agreement of the two top-50 lists (different analyzers: Lucene stems and drops stopwords)
    overlap = np.mean([len({train.pair_id[j] for j in b} & {p for p, _ in h}) / 50
                       for b, h in zip(base_hits, lucene_hits[: len(bq)])])
    out["rank_bm25_baseline"] = {"queries": len(bq), "build_s": round(base_build, 2), "seconds": round(base_s, 2),
                                 "queries_per_s": round(len(bq) / base_s, 2),
                                 "lucene_same_queries_s": round(lucene_s, 3),
                                 "lucene_speedup": round(base_s / lucene_s, 1),
                                 "top50_overlap_with_lucene": round(float(overlap), 3)}
    del baseline, corpus

    if not args.skip_mining:
        out["mine_samples"] = run_child(CLDG + ["mine-samples", "--workdir", wd, "--force", "--matcher", "bm25",
                                                "--threads", str(args.threads), "--max-pairs", str(args.mine_max_pairs)])
        samples = store.latest("samples")
        rows = samples.manifest["rows"]
        out["mine_samples"].update(rows, mine_s=samples.manifest["timings"]["mine_s"])
        out["mine_samples"]["pairs_per_s"] = round(rows["queries"] / samples.manifest["timings"]["mine_s"], 1)
        out["mine_samples"]["full_train_and_valid_s_estimate"] = round(
            (n_train + rows["valid_queries"]) / out["mine_samples"]["pairs_per_s"], 1)
    out["load_avg_at_end"] = os.getloadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
