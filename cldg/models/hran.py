"""HRAN (Xing et al., 2018): hierarchical recurrent attention network.

At each decoding step, word-level attention inside every turn gives turn vectors, a backward
utterance-level GRU runs over them (last turn first), and utterance-level attention combines its
states. Choice made here: the attention query is the decoder GRU's output at the current step
(Luong style) rather than the previous state (Bahdanau style), so teacher forcing is one batched pass
and step-by-step decoding gives identical numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cldg.models import register_model
from cldg.models.base import DialogueModel, at_positions, attention_mask_scores
from cldg.models.hred import TurnEncoder
from cldg.text.tokenizer import PAD


@dataclass
class HRANConfig:
    embedding_dim: int = 256
    hidden_size: int = 256
    num_layers: int = 2
    dropout: float = 0.1


@register_model("hran")
class HRAN(DialogueModel):
    config_class = HRANConfig
    layer_first_keys = ("hidden",)
    beam_static_keys = ("words", "word_pad")

    def __init__(self, vocab_size: int, config: HRANConfig):
        super().__init__(vocab_size, config)
        c = config
        H = c.hidden_size
        self.embedding = nn.Embedding(vocab_size, c.embedding_dim, padding_idx=PAD)
        self.encoder = TurnEncoder(c.embedding_dim, H, c.num_layers, c.dropout)
        self.bridge = nn.Linear(H, H)
        self.decoder = nn.GRU(c.embedding_dim, H, c.num_layers, batch_first=True,
                              dropout=c.dropout if c.num_layers > 1 else 0.0)
        self.word_attn = nn.Linear(H, H, bias=False)
        self.utt_rnn = nn.GRU(H, H, 1, batch_first=True)
        self.utt_attn = nn.Linear(H, H, bias=False)
        self.combine = nn.Linear(2 * H, H)
        self.dropout = nn.Dropout(c.dropout)
        self.out = nn.Linear(H, vocab_size)

    def init_decoding(self, batch) -> dict:
        enc = self.encoder(batch.context_turns, self.embedding)
        return {"words": enc["words"], "word_pad": enc["word_pad"], "hidden": torch.tanh(self.bridge(enc["final"]))}

    def _attend(self, query: torch.Tensor, words: torch.Tensor, word_pad: torch.Tensor,
                at: torch.Tensor | None = None) -> torch.Tensor:
        """query [B, T, H]; words [B, U, L, H] -> logits [B, T, V] (or [N, V] at the positions `at`)."""
        B, T, H = query.shape
        U = words.size(1)
        # word level: one attention per (step, turn)
        scores = torch.einsum("bth,bulh->btul", self.word_attn(query), words)
        scores = attention_mask_scores(scores, word_pad.unsqueeze(1))
        turn_vecs = torch.einsum("btul,bulh->btuh", torch.softmax(scores, -1), words)   # [B, T, U, H]
        # utterance level: backward GRU over the turns (last turn first), then attention
        turn_pad = word_pad.all(-1)                                                     # [B, U] empty slots
        rev = turn_vecs.flip(2).reshape(B * T, U, H)
        states, _ = self.utt_rnn(rev)
        states = states.view(B, T, U, H)
        rev_pad = turn_pad.flip(1)
        u_scores = torch.einsum("bth,btuh->btu", self.utt_attn(query), states)
        u_scores = attention_mask_scores(u_scores, rev_pad.unsqueeze(1))
        ctx = torch.einsum("btu,btuh->bth", torch.softmax(u_scores, -1), states)
        return self.out(self.dropout(torch.tanh(self.combine(at_positions(torch.cat([query, ctx], -1), at)))))

    group_forward = True

    def forward(self, batch, shared_contexts=None, at=None) -> torch.Tensor:
        state = self.encode_shared(batch, shared_contexts)
        out, _ = self.decoder(self.dropout(self.embedding(batch.response_in)), state["hidden"])
        return self._attend(out, state["words"], state["word_pad"], at)

    def decode_step(self, state: dict, prev_tokens: torch.Tensor):
        out, hidden = self.decoder(self.embedding(prev_tokens).unsqueeze(1), state["hidden"])
        logits = self._attend(out, state["words"], state["word_pad"]).squeeze(1)
        return logits, {**state, "hidden": hidden}
