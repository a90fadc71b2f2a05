"""Decoding throughput: batched against one context at a time, and the vectorised decoder against the
step-by-step reference it replaced, measured in the same run (interleaved rounds); metric time. Prints JSON.

    .venv/bin/python bench/bench_decoding.py [--device cpu|cuda] [--batch-size 64] [--rounds 2] \
        [--metric-responses 10000] [--skip-transformer] [--threads 1] [--wall-clock] \
        [--trained-model WORKDIR/reference/latest [--skip-random]]

Rates are per second of the process's CPU time on CPU (all its threads; `--wall-clock` for wall time), of
wall time on CUDA: on a shared machine wall time mostly measures the neighbours, and with more torch
threads than free cores the waiting threads spin, so use `--threads 1` there.

The seq2seq is paper-size (2-layer LSTM 256, attention) with a 20k vocabulary and random weights; its
outputs are not meaningful, only the work per response is. Every response runs to --max-len tokens
(EOS is banned), so batched and single decoding do the same number of steps. Variants, each timed on
its own contexts in every round, so that a load change on a shared machine hits all of them alike:
- `one_at_a_time`: the vectorised decoder (cldg.decoding.search) on batches of 1;
- `one_at_a_time_reference`: the step-by-step reference (cldg.decoding.reference) on batches of 1;
- `batched`: the vectorised decoder on --batch-size contexts; `batched_reference`: the reference, same.
The transformer (paper size: 6 blocks, 512, 8 heads; vocabulary 20k) compares its key/value cache with
re-running the decoder over the prefix at every step (the reference), both batched with the vectorised
beam. `same_tokens` checks that the fast and the reference variants returned the same responses.
`output_layer_bound`: the seq2seq's output layer (256 x 20k) alone, on one context's 5 beam rows 64 times
against once on the batch's 320 rows (how well the layer itself batches), and the ceiling it sets: one at
a time's time per response over the batched output layer's alone (max_len steps), which batched beam
search cannot beat however cheap the rest of its step were.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import time
from pathlib import Path

import numpy as np
import torch

from cldg.data.batching import Limits, collate_ids
from cldg.decoding.reference import generate_reference
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


def timed(fn, model, contexts, cfg, batch_size, device, limits=None) -> tuple[float, list, float]:
    """Seconds to decode `contexts` in batches of `batch_size`, the responses, and the process's CPU seconds."""
    limits = limits or Limits()
    out = []
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    for start in range(0, len(contexts), batch_size):
        batch = collate_ids(contexts[start:start + batch_size], None, limits).to(device)
        out += fn(model, batch, cfg, torch.Generator().manual_seed(0))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out, time.process_time() - c0


# the rates and ratios the JSON reports: wall time on CUDA; on CPU the process's CPU time, since on a shared
# machine wall time mostly measures the neighbours (run with --threads 1 there: torch's waiting threads spin)
CLOCK = {"name": "wall"}


def interleaved(variants: dict, rounds: int) -> dict:
    """variants: name -> (fn, model, contexts per round, cfg, batch size, device[, limits]). Each round times every
    variant once on fresh contexts; returns name -> (responses/s over all rounds by CLOCK, responses)."""
    seconds = {k: 0.0 for k in variants}
    count = {k: 0 for k in variants}
    outputs = {k: [] for k in variants}
    for r in range(rounds):
        for name, (fn, model, contexts, cfg, bs, device, *limits) in variants.items():
            chunk = contexts[r]
            s, out, cpu = timed(fn, model, chunk, cfg, bs, device, *limits)
            seconds[name] += cpu if CLOCK["name"] == "cpu" else s
            count[name] += len(chunk)
            outputs[name] += out
    return {k: (count[k] / seconds[k], outputs[k]) for k in variants}


def output_layer_bound(model, batch_size: int, beam: int, device, repeats: int = 5) -> dict:
    """The output layer alone, one step: `batch_size` times on the rows of one context's beam (`beam`
    rows) and once on the batch's rows (batch_size x beam), medians over `repeats`."""
    layer = model.out
    few = torch.randn(beam, layer.in_features, device=device)
    many = torch.randn(batch_size * beam, layer.in_features, device=device)
    clock = time.process_time if CLOCK["name"] == "cpu" else time.perf_counter
    with torch.inference_mode():
        layer(few), layer(many)  # warm-up
        t_few, t_many = [], []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = clock()
            for _ in range(batch_size):
                layer(few)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t1 = clock()
            layer(many)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t_few.append(t1 - t0)
            t_many.append(clock() - t1)
    few_s, many_s = sorted(t_few)[repeats // 2], sorted(t_many)[repeats // 2]
    return {"rows_one_context": beam, "rows_batched": batch_size * beam, "shape": [layer.in_features, layer.out_features],
            "one_at_a_time_s": round(few_s, 4), "batched_s": round(many_s, 4),
            "layer_speedup_batched_vs_one_at_a_time": round(few_s / many_s, 2)}


def bench_seq2seq(args, device) -> dict:
    torch.manual_seed(0)
    vocab = 20000
    model = build_model("seq2seq", vocab, embedding_dim=256, hidden_size=256, num_layers=2, dropout=0.0).to(device)
    model.eval()
    rng = random.Random(0)
    R = args.rounds
    batched = [random_contexts(args.batch_size * args.batches_per_round, vocab, rng) for _ in range(R)]
    single = [random_contexts(args.single_contexts, vocab, rng) for _ in range(R)]
    out = {}
    for name, cfg in (("greedy", DecodeConfig("greedy", max_len=args.max_len, min_len=args.max_len)),
                      ("beam5", DecodeConfig("beam", beam_size=5, max_len=args.max_len, min_len=args.max_len))):
        for fn in (generate, generate_reference):  # warm-up
            timed(fn, model, single[0][:2], cfg, 1, device)
        res = interleaved({
            "one_at_a_time": (generate, model, single, cfg, 1, device),
            "one_at_a_time_reference": (generate_reference, model, single, cfg, 1, device),
            "batched": (generate, model, batched, cfg, args.batch_size, device),
            "batched_reference": (generate_reference, model, batched, cfg, args.batch_size, device),
        }, R)
        rate = {k: v[0] for k, v in res.items()}
        out[name] = {f"{k}_per_s": round(v, 2) for k, v in rate.items()} | {
            "speedup_batched_vs_one_at_a_time": round(rate["batched"] / rate["one_at_a_time"], 2),
            "speedup_batched_vs_reference_one_at_a_time": round(rate["batched"] / rate["one_at_a_time_reference"], 2),
            "speedup_batched_vs_batched_reference": round(rate["batched"] / rate["batched_reference"], 2),
            "same_tokens": res["batched"][1] == res["batched_reference"][1]
            and res["one_at_a_time"][1] == res["one_at_a_time_reference"][1],
        }
    bound = output_layer_bound(model, args.batch_size, 5, device)
    # every response runs max_len steps: the batch's output layer alone costs this per response, and batched
    # beam search can beat one at a time by at most one-at-a-time's whole time per response over it
    layer_per_response = bound["batched_s"] * args.max_len / args.batch_size
    bound["ceiling_batched_vs_one_at_a_time"] = round((1 / out["beam5"]["one_at_a_time_per_s"]) / layer_per_response, 2)
    out["beam5"]["output_layer_bound"] = bound
    return out


@contextlib.contextmanager
def switched_off(owner, flag: str):
    """A fast path's switch set to False for the block (the variant it replaced, timed beside it)."""
    setattr(owner, flag, False)
    try:
        yield
    finally:
        setattr(owner, flag, True)


def bench_trained(args, device) -> dict:
    """A trained model (a `reference` or `contrastive` artifact) on the test contexts of its prepare artifact, as
    `cldg evaluate` decodes them (greedy and beam 5, trigram blocking, max_len 25; contexts in length order):
    responses end at their own EOS, so a batch's items finish at different steps. Batched (finished items leave
    the batch) vs the same with finished items kept in it, vs one context at a time."""
    from cldg.artifacts import Artifact
    from cldg.data.batching import encode_context
    from cldg.data.pairs import read_pairs
    from cldg.decoding import search
    from cldg.model_artifacts import model_limits, model_prepare
    from cldg.models import load_model
    from cldg.text.tokenizer import DialogueTokenizer

    art = Artifact.load(Path(args.trained_model))
    prepared, limits = model_prepare(art), model_limits(art)
    tok = DialogueTokenizer.load(prepared.file("tokenizer.json"))
    model = load_model(art.path, device).eval()
    pairs = read_pairs(prepared.file("pairs-test.parquet"))
    enc = [encode_context(tok, c, limits) for c in pairs.context[:args.trained_contexts]]
    R = args.rounds
    rounds = [sorted(enc[r::R], key=lambda e: len(e[0])) for r in range(R)]  # evaluate's length order
    singles = [chunk[::max(1, len(chunk) // args.trained_single)][:args.trained_single] for chunk in rounds]

    def keep_finished(m, batch, cfg, g):
        with switched_off(search, "DROP_FINISHED"):
            return generate(m, batch, cfg, g)

    out = {"model_dir": str(art.path), "model": getattr(model, "name", None), "contexts": len(enc),
           "single_contexts": sum(len(c) for c in singles)}
    for name, cfg in (("greedy", DecodeConfig("greedy", max_len=25, no_repeat_ngram=3)),
                      ("beam5", DecodeConfig("beam", beam_size=5, max_len=25, no_repeat_ngram=3))):
        timed(generate, model, singles[0][:2], cfg, 1, device, limits)  # warm-up
        res = interleaved({
            "batched": (generate, model, rounds, cfg, args.batch_size, device, limits),
            "batched_finished_kept": (keep_finished, model, rounds, cfg, args.batch_size, device, limits),
            "one_at_a_time": (generate, model, singles, cfg, 1, device, limits),
        }, R)
        rate = {k: v[0] for k, v in res.items()}
        by_context = {tuple(e[0]): o for e, o in zip([e for chunk in rounds for e in chunk], res["batched"][1])}
        singles_same = all(by_context[tuple(e[0])] == o
                           for e, o in zip([e for chunk in singles for e in chunk], res["one_at_a_time"][1]))
        out[name] = {"decoding": f"{name}, no_repeat_ngram 3, max_len 25",
                     **{f"{k}_per_s": round(v, 2) for k, v in rate.items()},
                     "speedup_batched_vs_one_at_a_time": round(rate["batched"] / rate["one_at_a_time"], 2),
                     "speedup_finished_kept_vs_one_at_a_time": round(rate["batched_finished_kept"] / rate["one_at_a_time"], 2),
                     "speedup_dropping_finished": round(rate["batched"] / rate["batched_finished_kept"], 2),
                     "same_tokens": res["batched"][1] == res["batched_finished_kept"][1] and singles_same,
                     "mean_response_tokens": round(sum(map(len, res["batched"][1])) / max(len(res["batched"][1]), 1), 2)}
    return out


def bench_transformer(args, device) -> dict:
    torch.manual_seed(0)
    vocab = 20000
    model = build_model("transformer", vocab, dropout=0.0).to(device).eval()  # paper size (registry defaults)
    rng = random.Random(1)
    R = args.rounds
    contexts = [random_contexts(args.transformer_batch, vocab, rng) for _ in range(R)]
    single = [random_contexts(args.transformer_single, vocab, rng) for _ in range(R)]
    cfg = DecodeConfig("beam", beam_size=5, max_len=args.max_len, min_len=args.max_len)

    def cached(m, batch, c, g):
        m.use_kv_cache = True
        return generate(m, batch, c, g)

    def uncached(m, batch, c, g):
        with switched_off(m, "use_kv_cache"):
            return generate(m, batch, c, g)

    timed(cached, model, single[0][:1], cfg, 1, device)
    timed(uncached, model, single[0][:1], cfg, 1, device)
    res = interleaved({
        "one_at_a_time_kv_cache": (cached, model, single, cfg, 1, device),
        "batched_kv_cache": (cached, model, contexts, cfg, args.transformer_batch, device),
        "batched_no_cache": (uncached, model, contexts, cfg, args.transformer_batch, device),
    }, R)
    rate = {k: v[0] for k, v in res.items()}
    return {"model": "transformer 6 blocks, 512, 8 heads, ffn 2048, vocab 20000", "batch_size": args.transformer_batch,
            "beam5": {f"{k}_per_s": round(v, 2) for k, v in rate.items()} | {
                "speedup_kv_cache_vs_no_cache": round(rate["batched_kv_cache"] / rate["batched_no_cache"], 2),
                "speedup_batched_vs_one_at_a_time": round(rate["batched_kv_cache"] / rate["one_at_a_time_kv_cache"], 2),
                "same_tokens": res["batched_kv_cache"][1] == res["batched_no_cache"][1]}}


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
    ap.add_argument("--batches-per-round", type=int, default=1)
    ap.add_argument("--single-contexts", type=int, default=8, help="contexts decoded one at a time per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-len", type=int, default=20)
    ap.add_argument("--transformer-batch", type=int, default=16)
    ap.add_argument("--transformer-single", type=int, default=2)
    ap.add_argument("--skip-transformer", action="store_true")
    ap.add_argument("--metric-responses", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--wall-clock", action="store_true", help="rates by wall time on CPU too (default: CPU time)")
    ap.add_argument("--trained-model", default="", help="a model artifact directory: also time it on its test contexts")
    ap.add_argument("--trained-contexts", type=int, default=1024, help="test contexts for --trained-model (all rounds)")
    ap.add_argument("--trained-single", type=int, default=48, help="of them, decoded one at a time per round")
    ap.add_argument("--skip-random", action="store_true", help="only --trained-model (no random-weight models, metrics)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    CLOCK["name"] = "wall" if device.type == "cuda" or args.wall_clock else "cpu"
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    result = {"device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
              "torch_threads": torch.get_num_threads(), "clock": CLOCK["name"], "python": platform.python_version(),
              "load_avg_at_start": load0, "model": "seq2seq 2x256 LSTM + attention, vocab 20000",
              "max_len": args.max_len, "batch_size": args.batch_size, "rounds": args.rounds}
    if args.trained_model:
        result["trained"] = bench_trained(args, device)
    if not args.skip_random:
        result["decoding"] = bench_seq2seq(args, device)
        if not args.skip_transformer:
            result["transformer"] = bench_transformer(args, device)
        result["metrics"] = bench_metrics(args.metric_responses)
    result["load_avg_at_end"] = os.getloadavg()
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
