"""Inference: batched MSN scoring of (context, response) pairs, and the `Matcher` built on it.

`score_pairs` (the fast path) computes what `MSN.forward` computes, in another order:
- identical (context, response) pairs are scored once; pairs are taken in blocks in their given order;
- in a block, each distinct context runs the selector and turn self-attention once, and each distinct
  response its self-attention once, however many pairs share it (mining: ~70 candidates per query on
  each side);
- the per-(turn, response) work (cross-attention, six maps, CNN), nearly all of the cost, runs on
  (turn, response) pairs bucketed by their lengths, so a CNN batch is trimmed to nearly its real size
  (padding is masked, so it never changes a score);
- the parts of the six maps that depend on one side only (x A and unit vectors) are computed per turn
  and per response, and the six maps are one batched matmul;
- the turn GRU runs once per block.
Scores equal `score_pairs_reference` (batches of `MSN.forward`, the training graph) to float rounding.
"""
from __future__ import annotations

import contextlib
from typing import Any, Sequence

import numpy as np
import torch

from cldg.matching.msn.batching import pad_batch, pad_grouped, truncate_pair
from cldg.matching.msn.layers import unit
from cldg.matching.msn.model import MSN

Pair = tuple[list[list[int]], list[int]]  # (context turn ids, response ids), already truncated


class MSNMatcher:
    """`cldg.matching.base.Matcher` backed by an MSN: probabilities sigmoid(logit) in [0, 1].

    Scores with `score_pairs` (the fast path, module doc) under `torch.inference_mode` (bf16 autocast
    on CUDA); `batch_size` sizes its batches.
    """

    name = "msn"

    def __init__(self, model: MSN, tokenizer, device: Any = "cpu", batch_size: int = 256):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.batch_size = batch_size

    def encode(self, contexts: Sequence[Sequence[str]], responses: Sequence[str]):
        unique = list(dict.fromkeys([u for c in contexts for u in c] + list(responses)))
        ids = dict(zip(unique, self.tokenizer.encode_batch(unique))) if unique else {}
        cfg = self.model.config
        return [truncate_pair([ids[u] for u in c], ids[r], cfg.max_turns, cfg.max_turn_len, cfg.response_len)
                for c, r in zip(contexts, responses)]

    def score(self, contexts: Sequence[Sequence[str]], responses: Sequence[str]) -> np.ndarray:
        if len(contexts) != len(responses):
            raise ValueError(f"{len(contexts)} contexts but {len(responses)} responses")
        return self.score_ids(self.encode(contexts, responses))

    def score_ids(self, pairs: Sequence[tuple[list[list[int]], list[int]]]) -> np.ndarray:
        """Probabilities for already-truncated (context turn ids, response ids) pairs."""
        return score_pairs(self.model, pairs, self.batch_size, self.device)


def score_pairs(model: MSN, pairs: Sequence[Pair], batch_size: int, device: Any,
                block_pairs: int = 8192) -> np.ndarray:
    """Probabilities [N] for (context ids, response ids) pairs: the fast inference path (module doc).

    `block_pairs` distinct pairs are encoded together; `batch_size` sets the size of the encoder
    batches (contexts, responses) and, times 4, of the (turn, response) CNN batches.
    """
    device = torch.device(device)
    slot: dict[tuple, int] = {}  # distinct pairs, in order of first appearance
    where = np.array([slot.setdefault((tuple(map(tuple, c)), tuple(r)), len(slot)) for c, r in pairs], dtype=np.int64)
    unique = list(slot)
    probs = np.zeros(len(unique), dtype=np.float32)
    with _inference(model, device) as autocast:
        for lo in range(0, len(unique), block_pairs):
            with autocast:
                logits = _score_block(model, unique[lo:lo + block_pairs], max(1, batch_size), device)
            probs[lo:lo + len(logits)] = torch.sigmoid(logits.float()).cpu().numpy()
    return probs[where]


def score_pairs_reference(model: MSN, pairs: Sequence[Pair], batch_size: int, device: Any) -> np.ndarray:
    """Batched `MSN.forward` scoring -> probabilities [N]: the training graph, the baseline of `score_pairs`
    (and what training validates with).

    Pairs that share a context are put side by side (the context is encoded once per batch), and
    contexts of similar shape share a batch, so batches carry little padding.
    """
    device = torch.device(device)
    out = np.zeros(len(pairs), dtype=np.float32)
    groups: dict[tuple, list[int]] = {}
    for i, (c, _) in enumerate(pairs):
        groups.setdefault(tuple(map(tuple, c)), []).append(i)
    ordered = sorted(groups.items(), key=lambda kv: (len(kv[0]), max((len(t) for t in kv[0]), default=0)))
    order = [i for _, members in ordered for i in sorted(members, key=lambda i: len(pairs[i][1]))]
    with _inference(model, device) as autocast, autocast:
        for lo in range(0, len(order), batch_size):
            idx = order[lo:lo + batch_size]
            ctx, resp, cidx = pad_grouped([pairs[i][0] for i in idx], [pairs[i][1] for i in idx], device)
            out[idx] = torch.sigmoid(model(ctx, resp, cidx).float()).cpu().numpy()
    return out


@contextlib.contextmanager
def _inference(model: MSN, device: torch.device):
    """Eval mode and `torch.inference_mode` for the duration; yields the autocast to score under."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                   else contextlib.nullcontext())
    finally:
        model.train(was_training)


def _length_batches(lengths: np.ndarray, batch_size: int):
    """Indices sorted by length, cut into batches of `batch_size`."""
    order = np.argsort(lengths, kind="stable")
    return [order[lo:lo + batch_size] for lo in range(0, len(order), batch_size)]


def _encode_contexts(model: MSN, contexts: list[tuple], batch_size: int, device) -> tuple:
    """Selector + turn self-attention for each context once -> per real turn (in context order):
    scaled embeddings [T, L, d], self-attended [T, L, d], word mask [T, L]; and turns per context."""
    n_turns = np.array([len(c) for c in contexts], dtype=np.int64)
    first = np.concatenate([[0], np.cumsum(n_turns)[:-1]])
    turn_len = np.array([len(t) for c in contexts for t in c], dtype=np.int64)
    T, L, d = len(turn_len), max(1, int(turn_len.max(initial=1))), model.config.width
    emb = torch.zeros(T, L, d, device=device)
    hid = torch.zeros(T, L, d, device=device)
    shape = n_turns * 64 + np.array([max(map(len, c), default=0) for c in contexts])
    for idx in _length_batches(shape, batch_size):
        ids, _ = pad_batch([contexts[i] for i in idx], [], device)
        word_mask = ids != 0
        turn_mask = word_mask.any(-1)
        ctx = model.embed_words(ids)
        ctx = ctx * model.select(ctx, word_mask, turn_mask).view(*turn_mask.shape, 1, 1)
        c_idx, u_idx = turn_mask.nonzero(as_tuple=True)
        if not len(c_idx):  # contexts without turns: nothing to encode
            continue
        turns, mask = ctx[c_idx, u_idx], word_mask[c_idx, u_idx]
        h = model.utt_attn(turns, turns, mask, mask)
        U = ids.shape[1]  # turn slots are left-padded: slot u of context k is its turn u - (U - n_turns[k])
        rows = torch.as_tensor(first[idx], device=device)[c_idx] + u_idx - (U - torch.as_tensor(n_turns[idx], device=device)[c_idx])
        m = mask.unsqueeze(-1).to(turns.dtype)
        emb[rows, :ids.shape[2]] = (turns * m).to(emb.dtype)
        hid[rows, :ids.shape[2]] = h.to(hid.dtype)
    mask = torch.arange(L, device=device) < torch.as_tensor(turn_len, device=device).unsqueeze(1)
    return emb, hid, mask, n_turns, turn_len


def _encode_responses(model: MSN, responses: list[tuple], batch_size: int, device) -> tuple:
    """Embeddings [R, L, d] and self-attended responses [R, L, d] (0 past each one's length), word mask."""
    lengths = np.array([len(r) for r in responses], dtype=np.int64)
    R, L, d = len(responses), max(1, int(lengths.max(initial=1))), model.config.width
    emb = torch.zeros(R, L, d, device=device)
    hid = torch.zeros(R, L, d, device=device)
    for idx in _length_batches(lengths, batch_size):
        _, ids = pad_batch([], [responses[i] for i in idx], device)
        mask = ids != 0
        x = model.embed_words(ids) * mask.unsqueeze(-1)
        emb[idx, :ids.shape[1]] = x.to(emb.dtype)
        hid[idx, :ids.shape[1]] = model.resp_attn(x, x, mask, mask).to(hid.dtype)
    mask = torch.arange(L, device=device) < torch.as_tensor(lengths, device=device).unsqueeze(1)
    return emb, hid, mask, lengths


def _score_block(model: MSN, block: list[tuple], batch_size: int, device) -> torch.Tensor:
    """Logits [P] of distinct (context, response) pairs."""
    ctx_slot: dict[tuple, int] = {}
    resp_slot: dict[tuple, int] = {}
    pair_ctx = np.array([ctx_slot.setdefault(c, len(ctx_slot)) for c, _ in block], dtype=np.int64)
    pair_resp = np.array([resp_slot.setdefault(r, len(resp_slot)) for _, r in block], dtype=np.int64)
    t_emb, t_hid, t_mask, n_turns, turn_len = _encode_contexts(model, list(ctx_slot), batch_size, device)
    r_emb, r_hid, r_mask, resp_len = _encode_responses(model, list(resp_slot), batch_size, device)
    # the one-sided parts of the six maps: x A / sqrt(d) of the first two bilinear forms, unit vectors
    b0, b1, _ = model.bilinear
    t_left = torch.stack([t_emb @ b0.A * b0.scale, unit(t_emb), t_hid @ b1.A * b1.scale, unit(t_hid)], 1)
    r_right = torch.stack([r_emb, unit(r_emb), r_hid, unit(r_hid)], 1)             # [R, 4, L, d]
    # (turn, response) rows: pair p with each turn of its context; turn slot u counts from the left
    first = np.concatenate([[0], np.cumsum(n_turns)[:-1]])
    U = max(1, int(n_turns.max(initial=1)))
    row_pair = np.repeat(np.arange(len(block)), n_turns[pair_ctx])
    within = np.arange(len(row_pair)) - np.repeat(np.cumsum(n_turns[pair_ctx]) - n_turns[pair_ctx], n_turns[pair_ctx])
    row_turn = first[pair_ctx][row_pair] + within
    row_slot = U - n_turns[pair_ctx][row_pair] + within
    row_resp = pair_resp[row_pair]
    # bucket rows by (turn length, response length) so that CNN batches carry little padding
    key = _bucket(turn_len[row_turn]) * 4096 + _bucket(resp_len[row_resp])
    vectors = torch.zeros(len(row_pair), model.config.match_dim, device=device)
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.diff(key[order])) + 1
    for group in np.split(order, bounds):
        for lo in range(0, len(group), 4 * batch_size):
            rows = group[lo:lo + 4 * batch_size]
            tu = torch.as_tensor(row_turn[rows], device=device)
            rr = torch.as_tensor(row_resp[rows], device=device)
            Lt, Lr = int(turn_len[row_turn[rows]].max()), int(resp_len[row_resp[rows]].max())
            vectors[torch.as_tensor(rows, device=device)] = _match(
                model, t_left[tu, :, :Lt], t_hid[tu, :Lt], t_mask[tu, :Lt],
                r_right[rr, :, :Lr], r_hid[rr, :Lr], r_mask[rr, :Lr]).to(vectors.dtype)
    per_turn = vectors.new_zeros(len(block), U, vectors.shape[1])
    per_turn[torch.as_tensor(row_pair, device=device), torch.as_tensor(row_slot, device=device)] = vectors
    real = torch.as_tensor(np.arange(U) >= U - n_turns[pair_ctx][:, None], device=device)
    h = vectors.new_zeros(len(block), model.config.gru_hidden)
    for u in range(U):  # as MSN.forward: empty slots leave the state unchanged
        step = real[:, u].unsqueeze(-1).to(h.dtype)
        h = step * model.gru(per_turn[:, u], h) + (1 - step) * h
    return model.out(h).squeeze(-1)


def _bucket(lengths: np.ndarray) -> np.ndarray:
    """Length classes of (turn, response) rows, 4 tokens wide: on chitchat, 89% of the cells of the
    trimmed maps are real, in ~65 CNN batches for 8,000 pairs (exact lengths: 100% in ~900 batches)."""
    return (lengths + 3) // 4


def _match(model: MSN, left, h_utt, utt_mask, right, h_resp, resp_mask) -> torch.Tensor:
    """`MSN.match` with the one-sided parts given: left [N, 4, L, d] = (utt A0/sqrt(d), unit(utt),
    h_utt A1/sqrt(d), unit(h_utt)), right [N, 4, Lr, d] = (resp, unit(resp), h_resp, unit(h_resp)),
    all 0 past each row's length; so the maps are 0 outside the valid rectangle without a mask."""
    x_utt = model.utt_resp_attn(h_utt, h_resp, utt_mask, resp_mask)
    x_resp = model.resp_utt_attn(h_resp, h_utt, resp_mask, utt_mask)
    b2 = model.bilinear[2]
    cross = torch.stack([x_utt @ b2.A * b2.scale, unit(x_utt)], 1) @ torch.stack([x_resp, unit(x_resp)], 1).transpose(2, 3)
    maps = torch.cat([left @ right.transpose(2, 3), cross], 1)              # [N, 6, L, Lr], MSN.match's order
    maps = maps.contiguous(memory_format=torch.channels_last)  # oneDNN's fast layout for few channels (~2x)
    return model.cnn(maps, utt_mask.sum(1), resp_mask.sum(1))
