"""Transformer encoder-decoder (Vaswani et al., 2017) over the flat context.

Decoding re-runs the decoder over the prefix at every step (no key/value cache): responses are short
(<= ~40 tokens), and this keeps the step exactly equal to teacher forcing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from cldg.errors import CldgError
from cldg.models import register_model
from cldg.models.base import DialogueModel
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
    layer_first_keys = ()

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
        T = tokens.size(1)
        if self.config.positions == "learned":
            if T > self.config.max_positions:
                raise CldgError(f"a sequence of {T} tokens is longer than this transformer's learned positions "
                                f"({self.config.max_positions}); use a shorter --max-len")
            pos = self.positions.weight[:T]
        elif T > self.pos_table.size(0):  # sinusoids extend to any length
            pos = sinusoidal_table(T, self.config.embedding_dim).to(self.pos_table)
        else:
            pos = self.pos_table[:T]
        return self.dropout(self.embedding(tokens) * math.sqrt(self.config.embedding_dim) + pos)

    def _decode(self, tokens: torch.Tensor, memory: torch.Tensor, mem_pad: torch.Tensor) -> torch.Tensor:
        T = tokens.size(1)
        causal = torch.ones(T, T, dtype=torch.bool, device=tokens.device).triu(1)
        out = self.decoder(self._embed(tokens), memory, tgt_mask=causal, tgt_key_padding_mask=tokens.eq(PAD),
                           memory_key_padding_mask=mem_pad)
        return self.out(out)

    def init_decoding(self, batch) -> dict:
        mem_pad = batch.context.eq(PAD)
        mem_pad = mem_pad & ~mem_pad.all(1, keepdim=True)  # an empty context attends to its pads, not to NaN
        memory = self.encoder(self._embed(batch.context), src_key_padding_mask=mem_pad)
        return {"memory": memory, "mem_pad": mem_pad,
                "prefix": torch.empty(batch.context.size(0), 0, dtype=torch.long, device=batch.context.device)}

    def forward(self, batch) -> torch.Tensor:
        state = self.init_decoding(batch)
        return self._decode(batch.response_in, state["memory"], state["mem_pad"])

    def decode_step(self, state: dict, prev_tokens: torch.Tensor):
        prefix = torch.cat([state["prefix"], prev_tokens.unsqueeze(1)], 1)
        logits = self._decode(prefix, state["memory"], state["mem_pad"])[:, -1]
        return logits, {**state, "prefix": prefix}
