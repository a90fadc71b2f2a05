"""The MSN model: configuration and `MSN` (the training / reference forward pass).

See `cldg.matching.msn` for the architecture and where it departs from the released code.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cldg.errors import CldgError
from cldg.matching.msn.layers import NEG, AttentiveBlock, Bilinear, MaskedCNN, masked_mean, pairwise_cosine
from cldg.text.tokenizer import PAD


@dataclass
class MSNConfig:
    vocab_size: int
    embed_dim: int = 100          # size of the word vectors
    hidden: int = 0               # model width (0: embed_dim, no projection)
    ffn_dim: int = 0              # attention block feed-forward size (0: hidden)
    max_turns: int = 5            # context turns seen (the last ones)
    max_turn_len: int = 30        # tokens per context turn
    max_response_len: int = 0     # tokens of the response (0: max_turn_len)
    heads: int = 1                # attention heads (slices of the width, no projections)
    hops: int = 3                 # selector hops (keys = mean of the last 1..hops turns)
    gamma: float = 0.3            # selector threshold
    alpha: float = 0.5            # weight of word-level vs utterance-level relevance
    cnn_channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    match_dim: int = 128          # matching vector per turn
    gru_hidden: int = 128
    dropout: float = 0.1

    @property
    def width(self) -> int:
        return self.hidden or self.embed_dim

    @property
    def response_len(self) -> int:
        return self.max_response_len or self.max_turn_len


class MSN(nn.Module):
    name = "msn"

    def __init__(self, config: MSNConfig, word_vectors: np.ndarray | None = None,
                 has_vector: np.ndarray | None = None):
        super().__init__()
        self.config = cfg = config
        d = cfg.width
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=PAD)
        if word_vectors is not None:
            self.init_embeddings(word_vectors, has_vector)
        self.proj = nn.Linear(cfg.embed_dim, d, bias=False) if cfg.hidden and cfg.hidden != cfg.embed_dim else None
        ffn = cfg.ffn_dim or d
        self.selector_attn = AttentiveBlock(d, ffn, cfg.dropout, cfg.heads)
        self.selector_word = Bilinear(d)
        self.hop_fuse = nn.Linear(cfg.hops, 1)
        nn.init.constant_(self.hop_fuse.weight, 1.0)  # start: every hop counts, scores well above gamma
        nn.init.zeros_(self.hop_fuse.bias)
        self.utt_attn = AttentiveBlock(d, ffn, cfg.dropout, cfg.heads)
        self.resp_attn = AttentiveBlock(d, ffn, cfg.dropout, cfg.heads)
        self.utt_resp_attn = AttentiveBlock(d, ffn, cfg.dropout, cfg.heads)
        self.resp_utt_attn = AttentiveBlock(d, ffn, cfg.dropout, cfg.heads)
        self.bilinear = nn.ModuleList([Bilinear(d) for _ in range(3)])
        self.cnn = MaskedCNN(6, cfg.cnn_channels, cfg.match_dim)
        self.gru = nn.GRUCell(cfg.match_dim, cfg.gru_hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.gru_hidden, 1)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def config_dict(self) -> dict:
        """The config as saved in model.json (`cldg.models.save_model`)."""
        return asdict(self.config)

    def init_embeddings(self, vectors: np.ndarray, has_vector: np.ndarray | None) -> None:
        if vectors.shape != (self.config.vocab_size, self.config.embed_dim):
            raise CldgError(f"word vectors have shape {vectors.shape}, the model needs "
                            f"({self.config.vocab_size}, {self.config.embed_dim})")
        with torch.no_grad():
            w = self.embed.weight
            std = float(np.std(vectors[has_vector])) if has_vector is not None and has_vector.any() else 0.1
            w.normal_(0.0, std or 0.1)  # words without a vector: random, same scale
            known = torch.as_tensor(has_vector if has_vector is not None else np.ones(len(vectors), bool))
            w[known] = torch.as_tensor(vectors, dtype=w.dtype)[known]
            w[PAD].zero_()

    # --- pieces -------------------------------------------------------------------------------

    def embed_words(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        return self.proj(x) if self.proj is not None else x

    def select(self, ctx: torch.Tensor, word_mask: torch.Tensor, turn_mask: torch.Tensor) -> torch.Tensor:
        """Selector scores [B, U] in [0, 1]; turns below gamma (and empty slots) get 0."""
        B, U, L, d = ctx.shape
        flat_mask = word_mask.view(B * U, L)
        attended = self.selector_attn(ctx.view(B * U, L, d), ctx.view(B * U, L, d), flat_mask, flat_mask)
        utt_vec = masked_mean(attended.view(B, U, L, d), word_mask, dim=2)          # [B, U, d]
        hop_scores = []
        for h in range(1, self.config.hops + 1):
            last = torch.zeros(U, dtype=torch.bool, device=ctx.device)
            last[max(U - h, 0):] = True
            in_key = turn_mask & last                                               # [B, U]
            n_key = in_key.sum(1).clamp(min=1).to(ctx.dtype).view(B, 1, 1)
            key = (ctx * in_key.view(B, U, 1, 1).to(ctx.dtype)).sum(1) / n_key      # [B, L, d], word-wise mean
            key_mask = (word_mask & in_key.unsqueeze(-1)).any(1)                    # [B, L]
            key = self.selector_attn(key, key, key_mask, key_mask)
            # word level: each turn word's best match among the key words, averaged over the turn
            sim = self.selector_word(attended.view(B, U * L, d), key).view(B, U, L, L)
            sim = sim.masked_fill(~key_mask.view(B, 1, 1, L), NEG).max(-1).values
            word_rel = masked_mean(sim.unsqueeze(-1), word_mask, dim=2).squeeze(-1)  # [B, U]
            utt_rel = F.cosine_similarity(utt_vec, masked_mean(key, key_mask, 1).unsqueeze(1), dim=-1, eps=1e-6)
            hop_scores.append(self.config.alpha * word_rel + (1 - self.config.alpha) * utt_rel)
        score = torch.sigmoid(self.hop_fuse(torch.stack(hop_scores, -1)).squeeze(-1))  # [B, U]
        keep = turn_mask & (score >= self.config.gamma)
        return score * keep.to(score.dtype)

    def match(self, utt, h_utt, utt_mask, resp, h_resp, resp_mask) -> torch.Tensor:
        """Matching vectors [N, match_dim] for N (turn, response) pairs: embeddings (utt, resp) and
        self-attended representations (h_utt, h_resp) of both sides, with their word masks."""
        x_utt = self.utt_resp_attn(h_utt, h_resp, utt_mask, resp_mask)   # turn words attend to the response
        x_resp = self.resp_utt_attn(h_resp, h_utt, resp_mask, utt_mask)  # and the other way round
        maps = []
        for bil, (a, b) in zip(self.bilinear, ((utt, resp), (h_utt, h_resp), (x_utt, x_resp))):
            maps += [bil(a, b), pairwise_cosine(a, b)]
        maps = torch.stack(maps, dim=1)                                 # [N, 6, L, Lr]
        valid = (utt_mask.unsqueeze(2) & resp_mask.unsqueeze(1)).unsqueeze(1)
        maps = maps * valid.to(maps.dtype)
        return self.cnn(maps, utt_mask.sum(1), resp_mask.sum(1))

    def forward(self, context: torch.Tensor, response: torch.Tensor,
                context_index: torch.Tensor | None = None) -> torch.Tensor:
        """context [C, U, L], response [B, Lr] token ids -> matching logits [B].

        context_index [B] (optional) says which of the C contexts each response goes with; left out,
        C = B and row i goes with row i. When many candidates share a context (mining, R10
        validation, a context with its negatives in training), the context-only work (selector,
        turn self-attention) is done once per context instead of once per pair.
        """
        C, U, L = context.shape
        B = response.shape[0]
        if context_index is None:
            context_index = torch.arange(B, device=context.device)
        word_mask = context != PAD
        turn_mask = word_mask.any(-1)                                   # [C, U]
        resp_mask = response != PAD
        ctx = self.drop(self.embed_words(context))
        resp = self.drop(self.embed_words(response))
        ctx = ctx * self.select(ctx, word_mask, turn_mask).view(C, U, 1, 1)
        # every real turn of every context, self-attended once (empty turn slots are never matched)
        c_idx, u_idx = turn_mask.nonzero(as_tuple=True)
        turn_id = torch.full((C, U), -1, dtype=torch.long, device=context.device)
        turn_id[c_idx, u_idx] = torch.arange(len(c_idx), device=context.device)
        turns, turns_mask = ctx[c_idx, u_idx], word_mask[c_idx, u_idx]
        h_turns = self.utt_attn(turns, turns, turns_mask, turns_mask)
        h_resp = self.resp_attn(resp, resp, resp_mask, resp_mask)
        # (response, turn) pairs: response b with each real turn of its context
        pair_turns = turn_mask[context_index]                           # [B, U]
        b_idx, pu_idx = pair_turns.nonzero(as_tuple=True)
        t = turn_id[context_index[b_idx], pu_idx]
        vectors = self.match(turns[t], h_turns[t], turns_mask[t], resp[b_idx], h_resp[b_idx], resp_mask[b_idx])
        per_turn = vectors.new_zeros(B, U, vectors.shape[-1])
        per_turn[b_idx, pu_idx] = vectors
        h = vectors.new_zeros(B, self.config.gru_hidden)
        for u in range(U):  # empty slots leave the state unchanged
            step = pair_turns[:, u].unsqueeze(-1).to(h.dtype)
            h = step * self.gru(per_turn[:, u], h) + (1 - step) * h
        return self.out(self.drop(h)).squeeze(-1)
