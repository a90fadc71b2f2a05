"""Throughput of group-wise contrastive training against MLE training, and what the reference cache saves.

    .venv/bin/python bench/bench_contrastive.py [--model seq2seq] [--groups 8] [--k 3] [--steps 6] [--device auto]

The same model, the same batches of groups (each the pair, 2k positives and 2k negatives, flattened into
one DialogueBatch by `make_group_batch`) and the same optimizer step (forward, backward, clip, Adam) are
timed three ways:
  mle           NLL over every sequence of the flat batch (the cost of the sequences alone), logits only at
                the real tokens as the contrastive step computes them (`group_forward` models),
  contrastive   the stage's step: D from the cached reference log-probs, the eq4 loss (+ NLL logging),
                logits only at real tokens and each distinct context encoded once (`group_forward`),
  contrastive-padded  the same loss computed as before that (every row encodes its own context, logits at
                every padded position, a second log-softmax for the pairs' NLL): the baseline of that change,
  inline-ref    the same, but running the frozen reference on the batch every step (no cache).
Throughput is sequences per second of whole steps including batch building (the first `--warmup` steps
are not timed); the three modes take turns on every batch. On CPU the clock is the process's CPU time
(one torch thread), since wall time on a shared machine mostly measures the neighbours; on CUDA it is
wall time. Target: contrastive >= 0.85x MLE. The cache is one inference pass over the distinct
sequences of all groups; `saved_s_per_epoch` is what running the reference inline would cost per epoch.
Text is random words with chitchat-like lengths; prints JSON.
"""
from __future__ import annotations

import argparse
import json
import random
import time


class RandomWords:
    """'w123 w7 ...' -> ids: a tokenizer for synthetic text."""

    def encode(self, text):
        return [int(w[1:]) for w in text.split()]

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]


def synthetic(n_pairs: int, k: int, vocab: int, seed: int = 0):
    """Contexts and responses by pair id, and a long-format samples table with random candidates."""
    rng = random.Random(seed)

    def sentence():
        return " ".join(f"w{rng.randrange(5, vocab)}" for _ in range(max(1, int(rng.lognormvariate(2.2, 0.6)))))

    contexts = {i: [sentence() for _ in range(rng.randint(1, 3))] for i in range(n_pairs)}
    responses = {i: sentence() for i in range(n_pairs)}
    cols = {c: [] for c in ("split", "pair_id", "side", "polarity", "rank", "cand_pair_id", "matcher_prob", "weight")}
    for pid in range(n_pairs):
        for side in ("response", "context"):
            cands = rng.sample([i for i in range(min(n_pairs, 400)) if i != pid], 2 * k)
            for pol, ids in (("pos", cands[:k]), ("neg", cands[k:])):
                for rank, cand in enumerate(ids):
                    prob = rng.uniform(0.5, 1.0) if pol == "pos" else rng.uniform(0.0, 0.3)
                    for c, v in zip(cols, ("train", pid, side, pol, rank, cand, prob,
                                           prob if pol == "pos" else prob - 1.0)):
                        cols[c].append(v)
    return contexts, responses, cols


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="seq2seq")
    ap.add_argument("--groups", type=int, default=8, help="groups per batch")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--pairs", type=int, default=1000, help="training pairs (groups) in the synthetic set")
    ap.add_argument("--vocab", type=int, default=10000)
    ap.add_argument("--embedding-dim", type=int, default=256)
    ap.add_argument("--hidden-size", type=int, default=256)
    ap.add_argument("--num-layers", type=int, default=2)
    ap.add_argument("--cache-batch-size", type=int, default=256)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (CPU time is what is compared)")
    args = ap.parse_args()

    import torch

    from cldg.data.batching import Limits
    from cldg.models import build_model
    from cldg.runtime import resolve_device
    from cldg.text.tokenizer import PAD
    from cldg.training.groups import GroupOptions, TextIndex, build_groups, contrastive_group_loss, make_group_batch
    from cldg.training.losses import contrastive_loss, nll_loss, picked_logprobs, sequence_logprob
    from cldg.training.reference_cache import sequence_logprobs

    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    contexts, responses, table = synthetic(args.pairs, args.k, args.vocab)
    groups = build_groups(table, "train", GroupOptions(args.k))
    text = TextIndex(RandomWords(), Limits(), contexts, responses)
    size = {"embedding_dim": args.embedding_dim, "hidden_size": args.hidden_size, "num_layers": args.num_layers}
    if args.model == "transformer":
        size = {"embedding_dim": args.embedding_dim, "num_layers": args.num_layers}
    torch.manual_seed(0)
    reference = build_model(args.model, args.vocab, **size).to(device).eval()
    autocast = device.type == "cuda"

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    # the one-time reference pass over every distinct sequence
    seqs = sorted(groups.sequences())
    t0, c0 = time.perf_counter(), time.process_time()
    logp = sequence_logprobs(reference, text, seqs, args.cache_batch_size, device)
    sync()
    cache_s = (time.perf_counter() - t0) if device.type == "cuda" else (time.process_time() - c0)
    ref_logp = dict(zip(seqs, logp))

    order = list(range(len(groups)))
    random.Random(1).shuffle(order)
    n = args.warmup + args.steps
    batch_rows = [order[(i * args.groups) % len(order):][:args.groups] for i in range(n)]

    modes = ("mle", "contrastive", "contrastive-padded", "inline-ref")
    states = {}
    for mode in modes:
        model = build_model(args.model, args.vocab, **size).to(device)
        model.load_state_dict(reference.state_dict())
        model.train()
        states[mode] = (model, torch.optim.Adam(model.parameters(), lr=1e-4))
    totals = {m: {"wall": 0.0, "cpu": 0.0, "build": 0.0, "seqs": 0, "tokens": 0} for m in modes}

    def step(mode: str, rows: list[int]) -> tuple[int, int, float]:
        model, opt = states[mode]
        tb = time.perf_counter()
        gb = make_group_batch(groups, rows, text, ref_logp).to(device)
        build = time.perf_counter() - tb
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            if mode == "mle":
                at = gb.seqs.response_out.ne(PAD)
                logits = model(gb.seqs, at=at) if getattr(model, "group_forward", False) else model(gb.seqs)[at]
                loss = -picked_logprobs(logits, gb.seqs.response_out[at]).mean()
            elif mode == "contrastive-padded":
                logits = model(gb.seqs)
                d = sequence_logprob(logits, gb.seqs.response_out, PAD) - gb.ref_logp
                own = gb.self_index
                nll_loss(logits[own], gb.seqs.response_out[own], PAD)  # logged by the stage, so computed
                loss = contrastive_loss(d[gb.pos_index], d[gb.neg_index], gb.s_pos, gb.s_neg, gb.pos_mask,
                                        gb.neg_mask)
            else:
                if mode == "inline-ref":
                    with torch.inference_mode():
                        fresh = sequence_logprob(reference(gb.seqs), gb.seqs.response_out, PAD).float()
                    gb.ref_logp = fresh.clone()
                loss, _ = contrastive_group_loss(model, gb, "eq4")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        loss.item()
        return gb.seqs.size, int(gb.seqs.response_out.ne(PAD).sum()), build

    # the modes take turns on every batch, so that load from other processes hits them alike
    for i, rows in enumerate(batch_rows):
        for mode in modes:
            sync()
            w0, c0 = time.perf_counter(), time.process_time()
            n_seqs, n_tok, build = step(mode, rows)
            sync()
            if i >= args.warmup:
                t = totals[mode]
                t["wall"] += time.perf_counter() - w0
                t["cpu"] += time.process_time() - c0
                t["build"] += build
                t["seqs"] += n_seqs
                t["tokens"] += n_tok

    # on a shared CPU wall time measures the neighbours too: compare CPU time there, wall time on a GPU
    clock = "wall" if device.type == "cuda" else "cpu"
    results = {m: {"seqs_per_s": round(t["seqs"] / t[clock], 1), "response_tokens_per_s": round(t["tokens"] / t[clock], 1),
                   "s_per_step": round(t[clock] / args.steps, 4), "wall_s_per_step": round(t["wall"] / args.steps, 4),
                   "batch_build_s_per_step": round(t["build"] / args.steps, 4),
                   "seqs_per_step": round(t["seqs"] / args.steps, 1)} for m, t in totals.items()}
    steps_per_epoch = -(-len(groups) // args.groups)
    inline_extra = results["inline-ref"]["s_per_step"] - results["contrastive"]["s_per_step"]
    print(json.dumps({
        "device": str(device), "clock": clock, "torch_threads": torch.get_num_threads(), "model": args.model, "size": size,
        "vocab": args.vocab, "k": args.k, "groups_per_batch": args.groups, "timed_steps": args.steps,
        "throughput": results,
        "contrastive_vs_mle": round(results["contrastive"]["seqs_per_s"] / results["mle"]["seqs_per_s"], 3),
        "contrastive_vs_padded": round(results["contrastive"]["seqs_per_s"] /
                                       results["contrastive-padded"]["seqs_per_s"], 3),
        "target": ">= 0.85",
        "reference_cache": {"distinct_sequences": len(seqs),
                            "sequence_slots": int((groups.pos_ctx >= 0).sum() + (groups.neg_ctx >= 0).sum()),
                            "build_s": round(cache_s, 2), "groups": len(groups), "steps_per_epoch": steps_per_epoch,
                            "inline_reference_extra_s_per_step": round(inline_extra, 4),
                            "saved_s_per_epoch": round(inline_extra * steps_per_epoch, 2),
                            "saved_s_over_3_epochs_net": round(3 * inline_extra * steps_per_epoch - cache_s, 2)},
    }, indent=2))


if __name__ == "__main__":
    main()
