"""Decoding throughput (batched vs one context at a time) and metric time; prints JSON.

    .venv/bin/python bench/bench_decoding.py [--device cpu|cuda] [--batch-size 64] [--metric-responses 10000]

The model is a paper-size seq2seq (2-layer LSTM 256, attention) with a 20k vocabulary and random
weights; its outputs are not meaningful, only the work per response is. Every response runs to
--max-len tokens (EOS is banned), so batched and single decoding do the same number of steps.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import time

import numpy as np
import torch

from cldg.data.batching import Limits, collate_ids
from cldg.decoding.search import DecodeConfig, generate
from cldg.models import build_model
from cldg.text.tokenizer import SEP


def random_contexts(n: int, vocab: int, rng: random.Random):
    out = []
    for _ in range(n):
        turns = [[rng.randrange(5, vocab) for _ in range(rng.randint(5, 20))] for _ in range(rng.randint(1, 3))]
        flat = []
        for i, t in enumerate(turns):
            flat += ([SEP] if i else []) + t
        out.append((flat, turns))
    return out


def responses_per_second(model, contexts, cfg, batch_size, device) -> float:
    limits = Limits()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for start in range(0, len(contexts), batch_size):
        batch = collate_ids(contexts[start:start + batch_size], None, limits).to(device)
        generate(model, batch, cfg, torch.Generator().manual_seed(0))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(contexts) / (time.perf_counter() - t0)


def bench_decoding(args, device) -> dict:
    torch.manual_seed(0)
    vocab = 20000
    model = build_model("seq2seq", vocab, embedding_dim=256, hidden_size=256, num_layers=2, dropout=0.0).to(device)
    model.eval()
    rng = random.Random(0)
    batched_ctx = random_contexts(args.batched_contexts, vocab, rng)
    single_ctx = batched_ctx[:args.single_contexts]
    out = {}
    for name, cfg in (("greedy", DecodeConfig("greedy", max_len=args.max_len, min_len=args.max_len)),
                      ("beam5", DecodeConfig("beam", beam_size=5, max_len=args.max_len, min_len=args.max_len))):
        responses_per_second(model, single_ctx[:2], cfg, 1, device)  # warm-up
        single = responses_per_second(model, single_ctx, cfg, 1, device)
        batched = responses_per_second(model, batched_ctx, cfg, args.batch_size, device)
        out[name] = {"one_at_a_time_per_s": round(single, 2), f"batched_{args.batch_size}_per_s": round(batched, 2),
                     "speedup": round(batched / single, 1)}
    return out


def bench_metrics(n: int) -> dict:
    from cldg.metrics import compute_all
    from cldg.metrics.embedding import WordVectors
    from cldg.text.ngrams import count_ngrams

    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(20000)]
    zipf = 1 / np.arange(1, len(vocab) + 1)
    zipf /= zipf.sum()

    def sentences(k):  # Zipf-distributed words, 0-15 per sentence (some empty, as real outputs can be)
        words = rng.choice(len(vocab), size=(k, 15), p=zipf)
        return [[vocab[i] for i in row[:length]] for row, length in zip(words, rng.integers(0, 16, k))]

    train = sentences(20000)
    counts = {k: dict(v) for k, v in count_ngrams(train, 2).items()}
    ids = {w: i + 5 for i, w in enumerate(vocab)}
    vectors = rng.normal(size=(len(vocab) + 5, 100)).astype(np.float32)
    has = np.ones(len(vocab) + 5, bool)
    has[:5] = False
    wv = WordVectors(vectors, has, ids.get, counts[1])
    hyps, refs, last = sentences(n), sentences(n), sentences(n)
    compute_all(hyps[:10], refs[:10], last[:10], counts, wv)  # imports (NLTK, sacrebleu) out of the timing
    t0 = time.perf_counter()
    compute_all(hyps, refs, last, counts, wv)
    seconds = time.perf_counter() - t0
    return {"responses": n, "seconds": round(seconds, 2), "responses_per_s": round(n / seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--batched-contexts", type=int, default=256)
    ap.add_argument("--single-contexts", type=int, default=24)
    ap.add_argument("--max-len", type=int, default=20)
    ap.add_argument("--metric-responses", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result = {"device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
              "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
              "model": "seq2seq 2x256 LSTM + attention, vocab 20000", "max_len": args.max_len,
              "decoding": bench_decoding(args, device), "metrics": bench_metrics(args.metric_responses)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
