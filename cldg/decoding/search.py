"""Batched decoding for any DialogueModel: greedy, beam search, top-k and nucleus sampling.

Constraints, applied to the next-token log-probabilities before choosing: a minimum length (EOS
banned before it), n-gram blocking inside the response (`no_repeat_ngram`) and against the context
(`block_context_ngram`). Beam search ranks finished hypotheses by score / ((5 + len) / 6) ** alpha
(GNMT length penalty; alpha = 0 ranks by raw log-probability). Sampling is seeded: one torch.Generator
for the batch, or one per context (`row_seeds`) so that a context's sample does not depend on its batch.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from cldg.choices import DECODING_METHODS
from cldg.text.tokenizer import BOS, EOS, PAD, SEP, UNK

METHODS = DECODING_METHODS  # one list, shared with the CLI


@dataclass
class DecodeConfig:
    method: str = "greedy"
    beam_size: int = 5
    length_penalty: float = 1.0
    top_k: int = 10
    top_p: float = 0.9
    temperature: float = 1.0
    max_len: int = 30
    min_len: int = 1
    no_repeat_ngram: int = 0
    block_context_ngram: int = 0
    ban_unk: bool = True


NEG_INF = float("-inf")
# Finished rows (greedy, row-seeded sampling) and items whose beams have ended leave the batch, so later steps cost
# only what is still decoding. Off only to measure what that saves (bench/bench_decoding.py --trained-model): the
# responses are the same either way (tests).
DROP_FINISHED = True


def _ngram_bans(hist: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, tokens) that would complete an n-gram already in the row's own tokens `hist` [R, t]."""
    R, t = hist.shape
    if t < max(n, 1):  # no complete n-gram yet
        return hist.new_empty(0), hist.new_empty(0)
    windows = hist.unfold(1, n, 1)  # [R, t - n + 1, n]
    if n == 1:
        match = torch.ones(windows.shape[:2], dtype=torch.bool, device=hist.device)
    else:
        match = (windows[:, :, :-1] == hist[:, t - n + 1:].unsqueeze(1)).all(-1)
    rows, cols = match.nonzero(as_tuple=True)
    return rows, windows[rows, cols, -1]


def _context_bans(hist: torch.Tensor, ctx: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, tokens) that would complete one of the context's m-grams; ctx [R, L] is padded with -1."""
    t = hist.size(1)
    if t < m - 1 or ctx.size(1) < m:
        return hist.new_empty(0), hist.new_empty(0)
    windows = ctx.unfold(1, m, 1)  # [R, L - m + 1, m]
    match = (windows >= 0).all(-1)
    if m > 1:
        match &= (windows[:, :, :-1] == hist[:, t - m + 1:].unsqueeze(1)).all(-1)
    rows, cols = match.nonzero(as_tuple=True)
    return rows, windows[rows, cols, -1]


def _constrain(logp: torch.Tensor, hist: torch.Tensor, ctx: torch.Tensor | None, step: int,
               cfg: DecodeConfig) -> torch.Tensor:
    """Ban tokens in place. hist [R, t]: each row's tokens so far; ctx [R, L]: its context, -1 padded."""
    logp[:, [PAD, BOS, SEP]] = NEG_INF  # never part of a response
    if cfg.ban_unk:
        logp[:, UNK] = NEG_INF
    if step < cfg.min_len:
        logp[:, EOS] = NEG_INF
    if cfg.no_repeat_ngram:
        rows, toks = _ngram_bans(hist, cfg.no_repeat_ngram)
        logp[rows, toks] = NEG_INF
    if cfg.block_context_ngram and ctx is not None:
        rows, toks = _context_bans(hist, ctx, cfg.block_context_ngram)
        logp[rows, toks] = NEG_INF
    dead = logp.amax(-1) == NEG_INF  # every token banned (tiny vocabulary, strict blocking): end here
    if dead.any():
        logp[dead, EOS] = 0.0
    return logp


def _context_tensor(batch, repeat: int = 1) -> torch.Tensor:
    """Each context's non-pad tokens, left-aligned and padded with -1 (never a token id), rows repeated."""
    ctx = batch.context
    real = ctx.ne(PAD)
    order = torch.argsort((~real).to(torch.int8), dim=1, stable=True)  # real tokens first, in order
    out = torch.where(real.gather(1, order), ctx.gather(1, order), torch.full_like(ctx, -1))
    width = int(real.sum(1).max()) if ctx.numel() else 0
    out = out[:, :width]
    return out.repeat_interleave(repeat, 0) if repeat > 1 else out


def _sample(logp: torch.Tensor, cfg: DecodeConfig, gen: torch.Generator | None,
            row_gens: list[torch.Generator] | None = None) -> torch.Tensor:
    """One token per row from the top-k / nucleus-truncated distribution. With `row_gens` (a generator
    per row) each row draws its own uniform number, so a context's sample does not depend on its batch."""
    logits = logp / max(cfg.temperature, 1e-6)
    if cfg.method == "topk":
        kth = torch.topk(logits, min(cfg.top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    elif cfg.method == "nucleus":
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, -1)
        cum = probs.cumsum(-1)
        drop = cum - probs > cfg.top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    probs = torch.softmax(logits.float(), -1).cpu()
    if row_gens is None:
        return torch.multinomial(probs, 1, generator=gen).squeeze(1).to(logp.device)
    u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in row_gens])
    cdf = probs.double().cumsum(-1)
    # the first token whose CDF exceeds u * total: it has probability > 0, since u < 1
    idx = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)
    return idx.clamp_max(probs.size(-1) - 1).to(logp.device)


def row_generators(row_seeds: list[int] | None, B: int) -> list[torch.Generator] | None:
    """A CPU generator per context, seeded by its row seed (None without row seeds)."""
    if row_seeds is None:
        return None
    if len(row_seeds) != B:
        raise ValueError(f"{len(row_seeds)} row seeds for a batch of {B}")
    return [torch.Generator().manual_seed(int(s)) for s in row_seeds]


def init_state(model, batch, row_gens: list[torch.Generator] | None = None):
    """model.init_decoding(batch); a model whose init_decoding takes `row_generators` (a latent model: CVAE,
    DialogWAE, which sample z there) gets each row's generator, so a context's z does not depend on its batch.
    Other models are called as before (their init_decoding draws nothing)."""
    if row_gens is not None and "row_generators" in inspect.signature(model.init_decoding).parameters:
        return model.init_decoding(batch, row_generators=row_gens)
    return model.init_decoding(batch)


@torch.inference_mode()
def generate(model, batch, cfg: DecodeConfig, generator: torch.Generator | None = None,
             row_seeds: list[int] | None = None) -> list[list[int]]:
    """Token ids of one response per context in `batch` (EOS and padding stripped).

    Sampling (topk, nucleus) draws from `generator`, or, given `row_seeds` (one per context), from a
    generator per context: then a context's response is the same in any batch (evaluate uses this,
    keyed by pair id, so its output does not depend on --batch-size). A latent model (CVAE, DialogWAE) draws
    its z from the same per-context generators before the first step, whatever the method (greedy and beam
    too); without row seeds it draws from the global torch RNG.

    The bookkeeping is tensor operations (no Python loop over rows); `cldg.decoding.reference` is the
    step-by-step specification it matches token for token.
    """
    if cfg.method not in METHODS:
        raise ValueError(f"unknown decoding method {cfg.method!r}")
    model.eval()
    if callable(getattr(model, "rerank_scores", None)):  # a reranking model (MMI): its N-best list, reranked
        from cldg.decoding.rerank import generate_reranked

        return generate_reranked(model, batch, cfg)
    if cfg.method == "beam":
        return _beam(model, batch, cfg, row_seeds)
    B = batch.size
    device = batch.context.device
    ctx = _context_tensor(batch) if cfg.block_context_ngram else None
    row_gens = row_generators(row_seeds, B)
    state = init_state(model, batch, row_gens)
    prev = torch.full((B,), BOS, dtype=torch.long, device=device)
    hist = torch.empty(B, 0, dtype=torch.long, device=device)  # each live row's tokens so far
    done = torch.zeros(B, dtype=torch.bool, device=device)
    # a row that has ended leaves the batch, as in beam search; not when the rows sample from one shared generator,
    # whose draws for the other rows would then change
    drop = DROP_FINISHED and (cfg.method == "greedy" or row_gens is not None)
    rows = list(range(B))  # the context each live row decodes
    responses: list[list[int]] = [[] for _ in range(B)]
    for step in range(cfg.max_len):
        logits, state = model.decode_step(state, prev)
        logp = _constrain(torch.log_softmax(logits.float(), -1), hist, ctx, step, cfg)
        nxt = logp.argmax(-1) if cfg.method == "greedy" else _sample(logp, cfg, generator, row_gens)
        hist = torch.cat([hist, nxt.unsqueeze(1)], 1)
        done |= nxt == EOS
        if bool(done.all()):
            break
        prev = nxt
        if drop and bool(done.any()):
            for i in done.nonzero().squeeze(1).tolist():
                responses[rows[i]] = hist[i].tolist()
            kept = (~done).nonzero().squeeze(1)
            state = model.reorder_state(state, kept)
            hist, prev, done = hist[kept], prev[kept], done[kept]
            ctx = None if ctx is None else ctx[kept]
            rows = [rows[i] for i in kept.tolist()]
            row_gens = None if row_gens is None else [row_gens[i] for i in kept.tolist()]
    for i, r in enumerate(rows):
        responses[r] = hist[i].tolist()
    # a response is the tokens before its first EOS (a row that did not leave went on past it)
    return [toks[:toks.index(EOS)] if EOS in toks else toks for toks in responses]


# Rows of a beam step's [B * K, V] log-probabilities are ranked a block of items at a time, each block
# about this many floats (1 MiB): on a big batch the whole step (64 x 5 x 20k floats, 26 MB) does not fit
# in cache, and its four passes (log-softmax, bans, adding the scores, top-k) each went out to memory.
# Every operation is per row or per item, so the blocks give the same numbers as the whole.
BEAM_BLOCK_FLOATS = 1 << 18


def _top_continuations(logits: torch.Tensor, scores: torch.Tensor, hist: torch.Tensor, ctx: torch.Tensor | None,
                       step: int, cfg: DecodeConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The best 2K of each item's K * V continuations (K live ones even if K end here): (scores [B, 2K],
    flat indices row-in-item * V + token [B, 2K]), ranked by one top-k over beam x vocabulary."""
    B, K = scores.shape
    V = logits.size(-1)
    n = min(2 * K, K * V)
    items = max(1, BEAM_BLOCK_FLOATS // (K * V))
    blocks = []
    for lo in range(0, B, items):
        hi = min(B, lo + items)
        rows = slice(lo * K, hi * K)
        logp = _constrain(torch.log_softmax(logits[rows].float(), -1), hist[rows],
                          None if ctx is None else ctx[rows], step, cfg)
        cand = (scores[lo:hi].unsqueeze(-1) + logp.view(hi - lo, K, V)).view(hi - lo, K * V)
        blocks.append(cand.topk(n, dim=-1))
    if len(blocks) == 1:
        return blocks[0]
    return torch.cat([b[0] for b in blocks]), torch.cat([b[1] for b in blocks])


def _length_normalised(score: float, length: int, alpha: float) -> float:
    """GNMT length penalty: score / ((5 + length) / 6) ** alpha (alpha = 0: raw log-probability)."""
    return score / (((5 + length) / 6) ** alpha)


def _beam(model, batch, cfg: DecodeConfig, row_seeds: list[int] | None = None) -> list[list[int]]:
    """The best hypothesis of each item's beam (`beam_nbest`)."""
    return [max(pool, key=lambda x: x[0])[1] if pool else [] for pool in beam_nbest(model, batch, cfg, row_seeds)]


@torch.inference_mode()  # never differentiated; and topk(out=...) refuses tensors that need grad
def beam_nbest(model, batch, cfg: DecodeConfig,
               row_seeds: list[int] | None = None) -> list[list[tuple[float, list[int]]]]:
    """Each item's N-best list, N = cfg.beam_size: (length-normalised score, token ids without EOS), the finished
    hypotheses in the order they ended, then (when fewer than N ended) the live ones.

    Batched beam search (fairseq-style bookkeeping), vectorised over batch x beam.

    Each step ranks the K * V continuations of an item's K live hypotheses (one top-k over beam x
    vocabulary) and looks at the best 2K: an EOS among the first K ranks finishes that hypothesis (its
    length counts the EOS; at most K finished per item); the best K non-EOS continuations stay alive.
    An item stops once it has K finished hypotheses, and its K rows leave the batch (fairseq does the same): the
    steps after it cost only the items still searching, as one at a time would. After `max_len` tokens the
    live ones are finished as they are (greedy does the same), so beam 1 is greedy.

    The state entries a model lists in `beam_static_keys` (the encoded context: the same for all K
    rows of an item) are expanded once and never reordered, since hypotheses only move inside their
    item's block of K rows.

    `row_seeds` (one per item) only matter to a latent model, whose z is drawn per item (`init_state`).
    """
    B, K = batch.size, cfg.beam_size
    if K < 1:
        raise ValueError("beam_size must be at least 1")
    device = batch.context.device
    state = init_state(model, batch, row_generators(row_seeds, B))
    state = model.reorder_state(state, torch.arange(B, device=device).repeat_interleave(K))
    static_keys = set(getattr(model, "beam_static_keys", ()))
    ctx = _context_tensor(batch, K) if cfg.block_context_ngram else None
    scores = torch.full((B, K), NEG_INF, device=device)
    scores[:, 0] = 0.0  # all K rows start identical: only the first may expand at step 0
    hist = torch.empty(B * K, 0, dtype=torch.long, device=device)  # each row's tokens so far
    n_finished = torch.zeros(B, dtype=torch.long, device=device)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    prev = torch.full((B * K,), BOS, dtype=torch.long, device=device)
    base = torch.arange(B, device=device).unsqueeze(1) * K  # first row of each item
    items = torch.arange(B, device=device)  # the item each block of K rows searches for
    identity = torch.arange(B * K, device=device)
    for step in range(cfg.max_len):
        logits, state = model.decode_step(state, prev)
        top_scores, top_idx = _top_continuations(logits, scores, hist, ctx, step, cfg)
        V = logits.size(-1)
        rank = torch.arange(top_idx.size(1), device=device)
        active = (n_finished < K).unsqueeze(1)  # an item with K finished hypotheses expands no more
        finite = top_scores != NEG_INF  # sorted: the finite ones come first
        tok = top_idx % V
        src = base + top_idx // V  # the row each candidate extends
        is_eos = tok == EOS
        # an EOS among the first K ranks finishes its hypothesis, while the item has room
        eos_ok = active & finite & is_eos & (rank < K)
        finish = eos_ok & (n_finished.unsqueeze(1) + eos_ok.long().cumsum(1) <= K)
        # the first K non-EOS continuations stay alive, in rank order
        live = active & finite & ~is_eos
        slot = live.long().cumsum(1) - 1
        keep = live & (slot < K)
        if bool(finish.any()):
            fb, fr = finish.nonzero(as_tuple=True)
            rows = src[fb, fr]
            for b, s, toks in zip(items[fb].tolist(), top_scores[fb, fr].tolist(), hist[rows].tolist()):
                finished[b].append((_length_normalised(s, len(toks) + 1, cfg.length_penalty), toks))
            n_finished += finish.long().sum(1)
        n_rows = identity.numel()
        kb, kr = keep.nonzero(as_tuple=True)
        dst = kb * K + slot[kb, kr]
        new_scores = torch.full((n_rows,), NEG_INF, device=device)
        new_scores[dst] = top_scores[kb, kr]
        new_src = identity.clone()  # unfilled slots stay as placeholders
        new_src[dst] = src[kb, kr]
        new_tok = torch.full((n_rows,), EOS, dtype=torch.long, device=device)
        new_tok[dst] = tok[kb, kr]
        scores = new_scores.view(-1, K)
        hist = torch.cat([hist[new_src], new_tok.unsqueeze(1)], 1)
        prev = new_tok
        moving = {k: v for k, v in state.items() if k not in static_keys}
        state = {**state, **model.reorder_state(moving, new_src)}
        searching = n_finished < K
        if not bool(searching.any()) or bool(torch.isinf(scores).all()):
            break
        if DROP_FINISHED and not bool(searching.all()):  # finished items leave: their rows (static state too) are not computed again
            kept = searching.nonzero().squeeze(1)
            rows = (kept.unsqueeze(1) * K + torch.arange(K, device=device)).view(-1)
            state = model.reorder_state(state, rows)
            scores, n_finished, items = scores[kept], n_finished[kept], items[kept]
            hist, prev = hist[rows], prev[rows]
            ctx = None if ctx is None else ctx[rows]
            base = torch.arange(kept.numel(), device=device).unsqueeze(1) * K
            identity = torch.arange(rows.numel(), device=device)
    out = [list(pool) for pool in finished]
    live_scores, live_hyps = scores.tolist(), hist.tolist()
    for j, b in enumerate(items.tolist()):
        pool = out[b]
        if len(pool) < K:  # ran out of length: the live hypotheses compete as they are
            for r in range(K):
                s = live_scores[j][r]
                if s != NEG_INF:
                    pool.append((_length_normalised(s, len(live_hyps[j * K + r]), cfg.length_penalty),
                                 live_hyps[j * K + r]))
    return out
