"""Training throughput of the four reference models at their paper sizes, and batch padding.

    .venv/bin/python bench/bench_pretrain.py [--prepare-dir WORKDIR/prepare/FP] [--steps 4] [--device auto]

For each model (in its own subprocess, so that peak memory is its own): real response tokens per
second of full training steps (forward, backward, clip, Adam; the first step is a warm-up and not
timed), real context + response tokens per second, seconds per step (wall and CPU), and peak memory (CPU: peak RSS
of the process; CUDA: peak allocated). Also the share of real (non-pad) tokens per batch with
length-bucketed batches against plain random batches. Without --prepare-dir the pairs are random ids
with chitchat-like lengths and a 20,000-word vocabulary. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

PAPER_SIZES = {"seq2seq": {}, "hred": {}, "hran": {}, "transformer": {}}  # the registry defaults are the paper's


def load_pairs(prepare_dir: str | None, n: int, seed: int = 0):
    """An EncodedPairs of n training pairs (real ones from a prepare artifact, else synthetic) and the vocab size."""
    import random

    from cldg.data.batching import EncodedPairs, Limits

    limits = Limits()
    if prepare_dir:
        from cldg.data.pairs import read_pairs
        from cldg.text.tokenizer import DialogueTokenizer

        tok = DialogueTokenizer.load(os.path.join(prepare_dir, "tokenizer.json"))
        t = read_pairs(os.path.join(prepare_dir, "pairs-train.parquet"))
        idx = sorted(random.Random(seed).sample(range(len(t)), min(n, len(t))))
        return EncodedPairs(tok, [t.context[i] for i in idx], [t.response[i] for i in idx], limits), tok.vocab_size

    vocab = 20000
    return synthetic_pairs(n, vocab, seed), vocab


def synthetic_pairs(n: int, vocab: int, seed: int):
    """An EncodedPairs of n random-word pairs with chitchat-like lengths (1-3 context turns)."""
    import random

    from cldg.data.batching import EncodedPairs, Limits

    class RandomWords:  # "w123 w7 ..." -> ids: a tokenizer for synthetic text
        def encode_batch(self, texts):
            return [[int(w[1:]) for w in s.split()] for s in texts]

    rng = random.Random(seed)

    def sentence():
        return " ".join(f"w{rng.randrange(5, vocab)}" for _ in range(max(1, int(rng.lognormvariate(2.2, 0.6)))))

    contexts = [[sentence() for _ in range(rng.randint(1, 3))] for _ in range(n)]
    return EncodedPairs(RandomWords(), contexts, [sentence() for _ in range(n)], Limits())


def padding_stats(pairs, batch_size: int) -> dict:
    """Share of real tokens in the padded response / context tensors over one epoch's batches."""
    import random

    from cldg.data.batching import bucketed_batches

    def share(batches):
        real_r = real_c = slots_r = slots_c = 0
        for b in batches:
            r = [len(pairs.responses[i]) + 1 for i in b]
            c = [len(pairs.contexts[i][0]) for i in b]
            real_r, slots_r = real_r + sum(r), slots_r + max(r) * len(b)
            real_c, slots_c = real_c + sum(c), slots_c + max(c) * len(b)
        return {"response": round(real_r / slots_r, 4), "context": round(real_c / slots_c, 4)}

    order = list(range(len(pairs)))
    random.Random(0).shuffle(order)
    plain = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return {"bucketed": share(bucketed_batches(pairs.sort_keys(), batch_size, 0, 0)), "random": share(plain)}


def bench_one(name: str, args) -> dict:
    import torch

    from cldg.models import build_model
    from cldg.runtime import resolve_device
    from cldg.text.tokenizer import PAD
    from cldg.training.losses import nll_loss

    device = resolve_device(args.device)
    pairs, vocab = load_pairs(args.prepare_dir, args.pairs)
    torch.manual_seed(0)
    model = build_model(name, vocab, **PAPER_SIZES[name]).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = [pairs.batch(b) for b in pairs_batches(pairs, args)]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    resp_tokens = all_tokens = 0
    t0 = None
    for i, batch in enumerate(batches):
        if i == 1:  # the first step warms up (allocator, kernels); time the rest
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, cpu0 = time.perf_counter(), time.process_time()
        batch = batch.to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss, n = nll_loss(model(batch), batch.response_out, PAD)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        if i >= 1:
            resp_tokens += n
            all_tokens += n + int(batch.context.ne(PAD).sum())
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    out = {"model": name, "device": str(device), "parameters_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
           "config": model.config_dict(), "vocab_size": vocab, "batch_size": args.batch_size,
           "timed_steps": len(batches) - 1, "seconds_per_step": round(seconds / (len(batches) - 1), 3),
           "response_tokens_per_s": round(resp_tokens / seconds, 1),
           "context_and_response_tokens_per_s": round(all_tokens / seconds, 1),
           # CPU seconds of this process (all its threads): on a shared machine wall time mostly measures the others
           "cpu_seconds_per_step": round(cpu_seconds / (len(batches) - 1), 3),
           "response_tokens_per_cpu_s": round(resp_tokens / cpu_seconds, 1),
           "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        out["peak_gpu_memory_MiB"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    out["peak_rss_MiB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["rss_before_training_MiB"] = round(rss_before, 1)
    return out


def pairs_batches(pairs, args):
    """The first steps+1 length-bucketed batches of an epoch (a representative mix of lengths)."""
    from cldg.data.batching import bucketed_batches

    return bucketed_batches(pairs.sort_keys(), args.batch_size, seed=1, epoch=0)[:args.steps + 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepare-dir", default=None, help="a prepare artifact dir (default: synthetic pairs)")
    ap.add_argument("--models", default="seq2seq,hred,hran,transformer")
    ap.add_argument("--steps", type=int, default=4, help="timed training steps per model")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--pairs", type=int, default=20000, help="pairs to sample batches (and padding stats) from")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one model in this process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(bench_one(args.one, args)))
        return
    results = []
    for name in args.models.split(","):
        cmd = [sys.executable, __file__, "--one", name, "--steps", str(args.steps), "--batch-size",
               str(args.batch_size), "--pairs", str(args.pairs), "--device", args.device]
        if args.prepare_dir:
            cmd += ["--prepare-dir", args.prepare_dir]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            results.append({"model": name, "error": proc.stderr.strip().splitlines()[-1:]})
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr)
    pairs, _ = load_pairs(args.prepare_dir, args.pairs)
    print(json.dumps({"data": args.prepare_dir or "synthetic (20,000 words, chitchat-like lengths)",
                      "real_token_share": padding_stats(pairs, args.batch_size), "models": results}, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    main()
