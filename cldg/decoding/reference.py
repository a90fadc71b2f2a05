"""The step-by-step reference decoder: the implementation `cldg.decoding.search` replaced, kept as the
specification that the vectorised one must match token for token (tests/test_speed_paths.py) and as
the baseline of bench/bench_decoding.py. Not used by any stage.

Per step it walks every item's 2K best continuations in Python and bans repeated n-grams row by row;
`search.generate` does the same bookkeeping with tensor operations.
"""
from __future__ import annotations

import torch

from cldg.decoding.search import METHODS, DecodeConfig, _sample, init_state, row_generators
from cldg.text.tokenizer import BOS, EOS, PAD, SEP, UNK


def _banned(hyp: list[int], ctx: list[int] | None, cfg: DecodeConfig) -> list[int]:
    """Tokens that would complete a repeated n-gram (in the response, or one of the context's)."""
    out = []
    n = cfg.no_repeat_ngram
    if n and len(hyp) >= n - 1:
        prefix = tuple(hyp[len(hyp) - n + 1:]) if n > 1 else ()
        for i in range(len(hyp) - n + 1):
            if tuple(hyp[i:i + n - 1]) == prefix:
                out.append(hyp[i + n - 1])
    m = cfg.block_context_ngram
    if m and ctx and len(hyp) >= m - 1:
        prefix = tuple(hyp[len(hyp) - m + 1:]) if m > 1 else ()
        for i in range(len(ctx) - m + 1):
            if tuple(ctx[i:i + m - 1]) == prefix:
                out.append(ctx[i + m - 1])
    return out


def _constrain(logp: torch.Tensor, hyps: list[list[int]], ctxs: list[list[int]] | None, step: int,
               cfg: DecodeConfig) -> torch.Tensor:
    logp[:, [PAD, BOS, SEP]] = float("-inf")  # never part of a response
    if cfg.ban_unk:
        logp[:, UNK] = float("-inf")
    if step < cfg.min_len:
        logp[:, EOS] = float("-inf")
    if cfg.no_repeat_ngram or cfg.block_context_ngram:
        for row, hyp in enumerate(hyps):
            banned = _banned(hyp, ctxs[row] if ctxs else None, cfg)
            if banned:
                logp[row, banned] = float("-inf")
    dead = torch.isinf(logp).all(-1)  # every token banned (tiny vocabulary, strict blocking): end here
    if dead.any():
        logp[dead, EOS] = 0.0
    return logp


def _context_tokens(batch) -> list[list[int]]:
    return [[t for t in row if t != PAD] for row in batch.context.tolist()]


@torch.inference_mode()
def generate_reference(model, batch, cfg: DecodeConfig, generator: torch.Generator | None = None,
                       row_seeds: list[int] | None = None) -> list[list[int]]:
    """`cldg.decoding.search.generate`, step by step (same arguments, same outputs)."""
    if cfg.method not in METHODS:
        raise ValueError(f"unknown decoding method {cfg.method!r}")
    model.eval()
    if cfg.method == "beam":
        return _beam_reference(model, batch, cfg, row_seeds)
    B = batch.size
    device = batch.context.device
    ctxs = _context_tokens(batch) if cfg.block_context_ngram else None
    row_gens = row_generators(row_seeds, B)
    state = init_state(model, batch, row_gens)  # a latent model draws its z from the row generators
    prev = torch.full((B,), BOS, dtype=torch.long, device=device)
    hyps: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    for step in range(cfg.max_len):
        logits, state = model.decode_step(state, prev)
        logp = _constrain(torch.log_softmax(logits.float(), -1), hyps, ctxs, step, cfg)
        nxt = logp.argmax(-1) if cfg.method == "greedy" else _sample(logp, cfg, generator, row_gens)
        for i, t in enumerate(nxt.tolist()):
            if not done[i]:
                if t == EOS:
                    done[i] = True
                else:
                    hyps[i].append(t)
        if all(done):
            break
        prev = nxt
    return hyps


def _length_normalised(score: float, length: int, alpha: float) -> float:
    """GNMT length penalty: score / ((5 + length) / 6) ** alpha (alpha = 0: raw log-probability)."""
    return score / (((5 + length) / 6) ** alpha)


def _beam_reference(model, batch, cfg: DecodeConfig, row_seeds: list[int] | None = None) -> list[list[int]]:
    """Batched beam search (fairseq-style bookkeeping).

    Each step ranks the K * V continuations of an item's K live hypotheses and looks at the best 2K:
    an EOS among the first K ranks finishes that hypothesis (its length counts the EOS); the best K
    non-EOS continuations stay alive. An item stops once it has K finished hypotheses; after
    `max_len` tokens the live ones are finished as they are (greedy does the same), so beam 1 is greedy.
    """
    B, K = batch.size, cfg.beam_size
    if K < 1:
        raise ValueError("beam_size must be at least 1")
    device = batch.context.device
    state = init_state(model, batch, row_generators(row_seeds, B))
    state = model.reorder_state(state, torch.arange(B, device=device).repeat_interleave(K))
    ctxs = None
    if cfg.block_context_ngram:
        ctxs = [c for c in _context_tokens(batch) for _ in range(K)]
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all K rows start identical: only the first may expand at step 0
    hyps: list[list[int]] = [[] for _ in range(B * K)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    prev = torch.full((B * K,), BOS, dtype=torch.long, device=device)
    for step in range(cfg.max_len):
        logits, state = model.decode_step(state, prev)
        V = logits.size(-1)
        logp = _constrain(torch.log_softmax(logits.float(), -1), hyps, ctxs, step, cfg)
        cand = (scores.unsqueeze(-1) + logp.view(B, K, V)).view(B, K * V)
        top_scores, top_idx = cand.topk(min(2 * K, K * V), dim=-1)  # 2K: K live ones even if K end here
        ts, ti = top_scores.tolist(), top_idx.tolist()
        new_scores = torch.full((B, K), float("-inf"), device=device)
        new_rows_list = list(range(B * K))  # rows of finished items stay as placeholders
        new_tokens = torch.full((B * K,), EOS, dtype=torch.long)
        new_hyps: list[list[int]] = [[] for _ in range(B * K)]
        for b in range(B):
            if len(finished[b]) >= K:  # this item has its K finished hypotheses: no more expansion
                continue
            filled = 0
            for rank, (s, flat) in enumerate(zip(ts[b], ti[b])):
                if s == float("-inf") or filled == K:
                    break
                row, tok = b * K + flat // V, flat % V
                if tok == EOS:
                    if rank < K and len(finished[b]) < K:
                        finished[b].append((_length_normalised(s, len(hyps[row]) + 1, cfg.length_penalty), hyps[row]))
                    continue
                dst = b * K + filled
                new_scores[b, filled] = s
                new_rows_list[dst] = row
                new_tokens[dst] = tok
                new_hyps[dst] = hyps[row] + [tok]
                filled += 1
        scores, hyps = new_scores, new_hyps
        prev = new_tokens.to(device)
        state = model.reorder_state(state, torch.tensor(new_rows_list, device=device))
        if all(len(f) >= K for f in finished) or torch.isinf(scores).all():
            break
    out = []
    for b in range(B):
        pool = list(finished[b])
        if len(pool) < K:  # ran out of length: the live hypotheses compete as they are
            for j in range(K):
                s = float(scores[b, j])
                if s != float("-inf"):
                    pool.append((_length_normalised(s, len(hyps[b * K + j]), cfg.length_penalty), hyps[b * K + j]))
        out.append(max(pool, key=lambda x: x[0])[1] if pool else [])
    return out
