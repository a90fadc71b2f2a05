"""Transformer encoder-decoder (Vaswani et al., 2017) over the flat context.

Decoding keeps a key/value cache: each step runs the decoder on the new token only, attending to the
cached keys and values of the earlier tokens (self-attention) and to the context's keys and values,
projected once per context (cross-attention). It uses the same weights as teacher forcing and gives the
same numbers up to float rounding; `use_kv_cache = False` re-runs the decoder over the whole prefix at
every step instead (the reference that tests compare with).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cldg.errors import CldgError
from cldg.models import register_model
from cldg.models.base import DialogueModel, at_positions
from cldg.text.tokenizer import PAD


@dataclass
class TransformerConfig:
    embedding_dim: int = 512
    num_heads: int = 8
    num_layers: int = 6
    ffn_dim: int = 2048
    dropout: float = 0.1
    max_positions: int = 512
    positions: str = "sinusoidal"  # or "learned"


def sinusoidal_table(n: int, dim: int) -> torch.Tensor:
    pos = torch.arange(n).unsqueeze(1).float()
    div = torch.exp(torch.arange(0, dim, 2).float() * (-math.log(10000.0) / dim))
    table = torch.zeros(n, dim)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div[: dim // 2])
    return table


@register_model("transformer")
class Transformer(DialogueModel):
    config_class = TransformerConfig
    # cached keys / values are [layers, B, heads, T, head_dim]: rows are dim 1
    layer_first_keys = ("self_k", "self_v", "cross_k", "cross_v")
    beam_static_keys = ("memory", "mem_pad", "cross_k", "cross_v")
    use_kv_cache = True

    def __init__(self, vocab_size: int, config: TransformerConfig):
        super().__init__(vocab_size, config)
        c = config
        if c.positions not in ("sinusoidal", "learned"):
            raise CldgError(f"transformer: positions must be sinusoidal or learned, not {c.positions!r}")
        if c.embedding_dim % c.num_heads:
            raise CldgError(f"transformer: --embedding-dim {c.embedding_dim} is not a multiple of --num-heads {c.num_heads}")
        self.embedding = nn.Embedding(vocab_size, c.embedding_dim, padding_idx=PAD)
        # std d^-1/2 (fairseq): after the sqrt(d) scaling in _embed, words and positions have the same scale
        nn.init.normal_(self.embedding.weight, 0.0, c.embedding_dim ** -0.5)
        with torch.no_grad():
            self.embedding.weight[PAD].zero_()
        if c.positions == "learned":
            self.positions = nn.Embedding(c.max_positions, c.embedding_dim)
        else:
            self.register_buffer("pos_table", sinusoidal_table(c.max_positions, c.embedding_dim), persistent=False)
        enc_layer = nn.TransformerEncoderLayer(c.embedding_dim, c.num_heads, c.ffn_dim, c.dropout, batch_first=True,
                                               norm_first=True)
        dec_layer = nn.TransformerDecoderLayer(c.embedding_dim, c.num_heads, c.ffn_dim, c.dropout, batch_first=True,
                                               norm_first=True)
        self.encoder = nn.TransformerEncoder(enc_layer, c.num_layers, enable_nested_tensor=False,
                                             norm=nn.LayerNorm(c.embedding_dim))
        self.decoder = nn.TransformerDecoder(dec_layer, c.num_layers, norm=nn.LayerNorm(c.embedding_dim))
        self.dropout = nn.Dropout(c.dropout)
        self.out = nn.Linear(c.embedding_dim, vocab_size)

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._embed_at(tokens, 0)

    def _decode(self, tokens: torch.Tensor, memory: torch.Tensor, mem_pad: torch.Tensor,
                at: torch.Tensor | None = None) -> torch.Tensor:
        T = tokens.size(1)
        causal = torch.ones(T, T, dtype=torch.bool, device=tokens.device).triu(1)
        out = self.decoder(self._embed(tokens), memory, tgt_mask=causal, tgt_key_padding_mask=tokens.eq(PAD),
                           memory_key_padding_mask=mem_pad)
        return self.out(at_positions(out, at))

    def encode_memory(self, batch) -> dict:
        """The encoded context alone: what teacher forcing needs (no decoding prefix, no key/value cache)."""
        mem_pad = batch.context.eq(PAD)
        mem_pad = mem_pad & ~mem_pad.all(1, keepdim=True)  # an empty context attends to its pads, not to NaN
        return {"memory": self.encoder(self._embed(batch.context), src_key_padding_mask=mem_pad), "mem_pad": mem_pad}

    def init_decoding(self, batch) -> dict:
        state = self.encode_memory(batch)
        memory = state["memory"]
        state["prefix"] = torch.empty(batch.context.size(0), 0, dtype=torch.long, device=batch.context.device)
        if self.use_kv_cache:
            B = batch.context.size(0)
            ks, vs = [], []
            for layer in self.decoder.layers:
                attn = layer.multihead_attn
                d = attn.embed_dim
                k = F.linear(memory, attn.in_proj_weight[d:2 * d], attn.in_proj_bias[d:2 * d])
                v = F.linear(memory, attn.in_proj_weight[2 * d:], attn.in_proj_bias[2 * d:])
                ks.append(self._heads(k))
                vs.append(self._heads(v))
            head_dim = self.config.embedding_dim // self.config.num_heads
            empty = memory.new_empty(len(self.decoder.layers), B, self.config.num_heads, 0, head_dim)
            state.update(cross_k=torch.stack(ks), cross_v=torch.stack(vs), self_k=empty, self_v=empty)
        return state

    group_forward = True

    def forward(self, batch, shared_contexts=None, at=None) -> torch.Tensor:
        state = self.encode_shared(batch, shared_contexts, self.encode_memory)  # the cross-attention cache is for decoding
        return self._decode(batch.response_in, state["memory"], state["mem_pad"], at)

    def decode_step(self, state: dict, prev_tokens: torch.Tensor):
        prefix = torch.cat([state["prefix"], prev_tokens.unsqueeze(1)], 1)
        if not self.use_kv_cache or "self_k" not in state:
            logits = self._decode(prefix, state["memory"], state["mem_pad"])[:, -1]
            return logits, {**state, "prefix": prefix}
        return self._cached_step(state, prefix)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, d] -> [B, heads, T, head_dim]."""
        B, T, _ = x.shape
        return x.view(B, T, self.config.num_heads, -1).transpose(1, 2)

    def _cached_step(self, state: dict, prefix: torch.Tensor):
        """One decoder pass over the newest token of `prefix`, attending to the cache (pre-norm layers,
        as nn.TransformerDecoderLayer with norm_first=True computes them)."""
        t = prefix.size(1) - 1
        x = self._embed_at(prefix[:, t:], t)
        B = x.size(0)
        pad = prefix.eq(PAD)
        self_mask = ~pad.view(B, 1, 1, t + 1) if bool(pad.any()) else None  # True = attend
        mem_mask = ~state["mem_pad"].view(B, 1, 1, -1)
        new_k, new_v = [], []
        for i, layer in enumerate(self.decoder.layers):
            sa, ca = layer.self_attn, layer.multihead_attn
            q, k, v = F.linear(layer.norm1(x), sa.in_proj_weight, sa.in_proj_bias).chunk(3, -1)
            k = torch.cat([state["self_k"][i], self._heads(k)], 2)
            v = torch.cat([state["self_v"][i], self._heads(v)], 2)
            new_k.append(k)
            new_v.append(v)
            h = F.scaled_dot_product_attention(self._heads(q), k, v, attn_mask=self_mask)
            x = x + layer.dropout1(sa.out_proj(h.transpose(1, 2).reshape(B, 1, -1)))
            d = ca.embed_dim
            q = F.linear(layer.norm2(x), ca.in_proj_weight[:d], ca.in_proj_bias[:d])
            h = F.scaled_dot_product_attention(self._heads(q), state["cross_k"][i], state["cross_v"][i],
                                               attn_mask=mem_mask)
            x = x + layer.dropout2(ca.out_proj(h.transpose(1, 2).reshape(B, 1, -1)))
            x = x + layer._ff_block(layer.norm3(x))
        logits = self.out(self.decoder.norm(x))[:, -1]
        return logits, {**state, "prefix": prefix, "self_k": torch.stack(new_k), "self_v": torch.stack(new_v)}

    def _embed_at(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """_embed for tokens that sit at positions start, start + 1, ... of their sequence."""
        T = start + tokens.size(1)
        if self.config.positions == "learned":
            if T > self.config.max_positions:
                raise CldgError(f"a sequence of {T} tokens is longer than this transformer's learned positions "
                                f"({self.config.max_positions}); use a shorter --max-len")
            pos = self.positions.weight[start:T]
        elif T > self.pos_table.size(0):
            pos = sinusoidal_table(T, self.config.embedding_dim).to(self.pos_table)[start:T]
        else:
            pos = self.pos_table[start:T]
        return self.dropout(self.embedding(tokens) * math.sqrt(self.config.embedding_dim) + pos)
