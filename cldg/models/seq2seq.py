"""Seq2seq: bidirectional LSTM encoder over the flat context, LSTM decoder with attention.

Luong-style "general" attention computed on the decoder's output (after the RNN), so teacher forcing
runs the whole response in one LSTM call and decoding step by step gives the same numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from cldg.errors import CldgError
from cldg.models import register_model
from cldg.models.base import DialogueModel, at_positions, attention_mask_scores
from cldg.text.tokenizer import PAD


@dataclass
class Seq2SeqConfig:
    embedding_dim: int = 256
    hidden_size: int = 256
    num_layers: int = 2
    dropout: float = 0.1


@register_model("seq2seq")
class Seq2Seq(DialogueModel):
    config_class = Seq2SeqConfig
    layer_first_keys = ("hidden",)
    beam_static_keys = ("memory", "pad_mask")

    def __init__(self, vocab_size: int, config: Seq2SeqConfig):
        super().__init__(vocab_size, config)
        c = config
        if c.hidden_size % 2:
            raise CldgError(f"seq2seq: --hidden-size {c.hidden_size} must be even (two encoder directions of half size)")
        self.embedding = nn.Embedding(vocab_size, c.embedding_dim, padding_idx=PAD)
        self.encoder = nn.LSTM(c.embedding_dim, c.hidden_size // 2, c.num_layers, batch_first=True,
                               bidirectional=True, dropout=c.dropout if c.num_layers > 1 else 0.0)
        self.decoder = nn.LSTM(c.embedding_dim, c.hidden_size, c.num_layers, batch_first=True,
                               dropout=c.dropout if c.num_layers > 1 else 0.0)
        self.attn = nn.Linear(c.hidden_size, c.hidden_size, bias=False)
        self.combine = nn.Linear(2 * c.hidden_size, c.hidden_size)
        self.dropout = nn.Dropout(c.dropout)
        self.out = nn.Linear(c.hidden_size, vocab_size)

    def _encode(self, context: torch.Tensor):
        lengths = context.ne(PAD).sum(1).clamp_min(1)
        packed = pack_padded_sequence(self.dropout(self.embedding(context)), lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        out, (h, c) = self.encoder(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=context.size(1))
        # [layers*2, B, H/2] -> [layers, B, H]: forward and backward states side by side
        def merge(x):
            return x.view(self.config.num_layers, 2, x.size(1), x.size(2)).transpose(1, 2).reshape(
                self.config.num_layers, x.size(1), -1)
        return memory, context.eq(PAD), (merge(h), merge(c))

    def _attend(self, dec_out: torch.Tensor, memory: torch.Tensor, pad_mask: torch.Tensor,
                at: torch.Tensor | None = None) -> torch.Tensor:
        scores = torch.bmm(self.attn(dec_out), memory.transpose(1, 2))  # [B, T, L]
        scores = attention_mask_scores(scores, pad_mask.unsqueeze(1))
        ctx = torch.bmm(torch.softmax(scores, -1), memory)
        return self.out(self.dropout(torch.tanh(self.combine(at_positions(torch.cat([dec_out, ctx], -1), at)))))

    group_forward = True

    def forward(self, batch, shared_contexts=None, at=None) -> torch.Tensor:
        state = self.encode_shared(batch, shared_contexts)
        dec_out, _ = self.decoder(self.dropout(self.embedding(batch.response_in)), state["hidden"])
        return self._attend(dec_out, state["memory"], state["pad_mask"], at)

    def init_decoding(self, batch) -> dict:
        memory, pad_mask, hidden = self._encode(batch.context)
        return {"memory": memory, "pad_mask": pad_mask, "hidden": hidden}

    def decode_step(self, state: dict, prev_tokens: torch.Tensor):
        dec_out, hidden = self.decoder(self.embedding(prev_tokens).unsqueeze(1), state["hidden"])
        logits = self._attend(dec_out, state["memory"], state["pad_mask"]).squeeze(1)
        return logits, {**state, "hidden": hidden}
