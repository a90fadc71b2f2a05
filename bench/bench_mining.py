"""Mining throughput with the MSN matcher: the sequential path before issue 17 against the overlapped one, in one run.

    .venv/bin/python bench/bench_mining.py --workdir /tmp/i17/demo [--pairs 1000] [--chunk-size 250] \
        [--k 3] [--n-candidates 20] [--n-random 10] [--threads 2] [--paths old,old_1thread,overlap_lucene,overlap_numpy]

`--workdir` holds prepare/, index/ and matcher/ artifacts (`latest` of each; the demo's, e.g. a copy of
`cldg-work/chitchat-demo`); nothing is written there. The first `--pairs` train pairs are mined in chunks
of `--chunk-size` with the demo's options (k 3, 20 BM25 + 10 random candidates per side), as
`cldg mine-samples` mines them, by each path:
- `old`: Lucene (anserini batch_search), then MSN scoring, chunk after chunk (mine_dual_samples), torch
  at `--threads` threads as before;
- `old_1thread`: the same with torch at 1 thread (separates the thread count's effect from the overlap's);
- `overlap_lucene`: the same searches in a producer thread that retrieves, builds candidates and tokenizes
  chunk i+1 while chunk i is scored at `--threads` - 1 torch threads (cldg.retrieval.mining.mine_pipelined,
  as `cldg mine-samples --overlap` runs it);
- `overlap_numpy`: the same, with the numpy BM25 backend (cldg.retrieval.sparse) instead of Lucene;
- `sequential_numpy`: the numpy backend without the overlap.
Also timed apart on the same chunks: retrieval + candidates alone per backend, and scoring alone, which
bound what overlapping can gain on 2 cores. Every path's rows are compared with `old`'s. Prints JSON:
pairs/s per path, the speed-up over `old` measured in the same run, and the time all the demo's
19,802 train + valid pairs would take at each rate. Runs under configure_runtime as a
stage does (deterministic, `--threads` torch threads).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("cldg-work/chitchat-demo"))
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--chunk-size", type=int, default=250)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--n-candidates", type=int, default=20)
    ap.add_argument("--n-random", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--score-batch-size", type=int, default=512)
    ap.add_argument("--paths", default="old,old_1thread,overlap_lucene,overlap_numpy")
    args = ap.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from cldg.artifacts import Artifact
    from cldg.data.pairs import read_pairs
    from cldg.matching.msn import load_msn_matcher
    from cldg.retrieval.jvm import start_jvm
    from cldg.retrieval.mining import (Query, TrainPool, encode_chunk, mine_dual_samples, mine_pipelined,
                                       plan_chunk, score_chunk)
    from cldg.runtime import configure_runtime
    from cldg.stages.mine import open_searchers

    threads = configure_runtime(True, args.threads)
    prepared = Artifact.load(args.workdir / "prepare" / "latest")
    index = Artifact.load(args.workdir / "index" / "latest")
    matcher_art = Artifact.load(args.workdir / "matcher" / "latest")
    train = read_pairs(prepared.file("pairs-train.parquet"))
    n_valid = len(read_pairs(prepared.file("pairs-valid.parquet")))
    pool = TrainPool(train.pair_id, train.context, train.response)
    n = min(args.pairs, len(train))
    queries = [Query("train", train.pair_id[i], train.context[i], train.response[i]) for i in range(n)]
    chunks = [queries[lo:lo + args.chunk_size] for lo in range(0, n, args.chunk_size)]
    matcher = load_msn_matcher(matcher_art.path, torch.device("cpu"), batch_size=args.score_batch_size)
    start_jvm("2g")
    out: dict = {"threads": threads, "cpu_count": os.cpu_count(), "load_avg_at_start": os.getloadavg(),
                 "pairs": n, "chunk_size": args.chunk_size, "k": args.k, "n_candidates": args.n_candidates,
                 "n_random": args.n_random, "train_pairs_in_corpus": len(train)}
    searchers = {}
    for backend in ("lucene", "numpy"):
        t0 = time.perf_counter()
        searchers[backend] = open_searchers(index, args.threads, backend, pool)
        out[f"{backend}_searchers_open_s"] = round(time.perf_counter() - t0, 2)
    opts = (args.k, args.n_candidates, args.n_random, 13)

    # the parts alone: retrieval + candidates (+ tokenizing) per backend, then scoring, on the same chunks
    parts: dict = {}
    plans = None
    for backend in ("lucene", "numpy"):
        t0 = time.perf_counter()
        planned = [plan_chunk(c, pool, *searchers[backend], args.n_candidates, args.n_random, 13) for c in chunks]
        parts[f"retrieve_{backend}_s"] = round(time.perf_counter() - t0, 2)
        plans = plans or planned
    t0 = time.perf_counter()
    for p in plans:
        encode_chunk(p, matcher)
    parts["tokenize_s"] = round(time.perf_counter() - t0, 2)
    parts["scored_pairs"] = sum(len(p.contexts) for p in plans)
    for t in sorted({threads, 1}, reverse=True):
        torch.set_num_threads(t)
        t0 = time.perf_counter()
        for p in plans:
            score_chunk(p, matcher)
        seconds = time.perf_counter() - t0
        parts[f"score_{t}_threads_s"] = round(seconds, 2)
        parts[f"msn_pairs_per_s_{t}_threads"] = round(parts["scored_pairs"] / seconds, 1)
    torch.set_num_threads(threads)
    out["parts"] = parts

    def run(path: str):
        backend = "numpy" if "numpy" in path else "lucene"
        a = (pool, *searchers[backend], matcher, *opts)
        if path.startswith("overlap"):  # as cldg mine-samples runs it: scoring leaves a core to retrieval
            return list(mine_pipelined(chunks, *a, score_threads=max(1, threads - 1)))
        torch.set_num_threads(1 if path.endswith("1thread") else threads)
        try:
            return [mine_dual_samples(c, *a) for c in chunks]
        finally:
            torch.set_num_threads(threads)

    results, reference = {}, None
    for path in args.paths.split(","):
        t0 = time.perf_counter()
        rows = run(path)
        seconds = time.perf_counter() - t0
        reference = reference if reference is not None else rows
        results[path] = {"seconds": round(seconds, 2), "pairs_per_s": round(n / seconds, 2),
                         "same_rows_as_first": rows == reference}
    base = results[args.paths.split(",")[0]]["pairs_per_s"]
    demo_pairs = len(train) + n_valid
    for r in results.values():
        r["speedup_vs_first"] = round(r["pairs_per_s"] / base, 2)
        r["demo_all_pairs_s_estimate"] = round(demo_pairs / r["pairs_per_s"], 1)
    out["paths"] = results
    out["demo_train_and_valid_pairs"] = demo_pairs
    out["load_avg_at_end"] = os.getloadavg()
    for pair in searchers.values():
        for s in pair:
            s.close()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
