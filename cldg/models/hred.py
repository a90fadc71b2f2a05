"""HRED (Serban et al., 2016): a word-level GRU encodes each turn, an utterance-level GRU encodes the
sequence of turns, and a GRU decoder is conditioned on the final context state at every step."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from cldg.models import register_model
from cldg.models.base import DialogueModel, at_positions, real_turns_first, turn_count
from cldg.text.tokenizer import PAD


@dataclass
class HREDConfig:
    embedding_dim: int = 256
    hidden_size: int = 256
    num_layers: int = 2
    dropout: float = 0.1


class TurnEncoder(nn.Module):
    """Word-level GRU over every turn, then an utterance-level GRU over the turns of each context.

    Turn slots are left-padded (the last turn sits at U-1); empty slots are skipped by re-aligning the
    real turns to the left and packing, so padding never changes the encoding.
    """

    def __init__(self, embedding_dim: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        drop = dropout if layers > 1 else 0.0
        self.word_rnn = nn.GRU(embedding_dim, hidden, layers, batch_first=True, dropout=drop)
        self.utt_rnn = nn.GRU(hidden, hidden, layers, batch_first=True, dropout=drop)
        self.dropout = nn.Dropout(dropout)

    def forward(self, turns: torch.Tensor, embedding: nn.Embedding):
        B, U, L = turns.shape
        flat = turns.reshape(B * U, L)
        lengths = flat.ne(PAD).sum(1)
        packed = pack_padded_sequence(self.dropout(embedding(flat)), lengths.clamp_min(1).cpu(),
                                      batch_first=True, enforce_sorted=False)
        out, h = self.word_rnn(packed)
        words, _ = pad_packed_sequence(out, batch_first=True, total_length=L)  # [B*U, L, H]
        utt = h[-1].view(B, U, -1)                                                # [B, U, H]
        n_turns = turn_count(turns).clamp_min(1)                                  # real turns per row
        utt_left = real_turns_first(utt, n_turns)
        packed = pack_padded_sequence(utt_left, n_turns.cpu(), batch_first=True, enforce_sorted=False)
        utt_out, utt_h = self.utt_rnn(packed)
        utt_states, _ = pad_packed_sequence(utt_out, batch_first=True, total_length=U)
        return {
            "words": words.view(B, U, L, -1),            # word states per turn slot (right-aligned turns)
            "word_pad": turns.eq(PAD),                   # [B, U, L]
            "utterances": utt_left,                      # turn vectors, real turns first
            "utt_states": utt_states,                    # utterance-level states, real turns first
            "utt_pad": torch.arange(U, device=turns.device).unsqueeze(0) >= n_turns.unsqueeze(1),
            "final": utt_h,                              # [layers, B, H]
        }


@register_model("hred")
class HRED(DialogueModel):
    config_class = HREDConfig
    layer_first_keys = ("hidden",)
    beam_static_keys = ("context",)

    def __init__(self, vocab_size: int, config: HREDConfig):
        super().__init__(vocab_size, config)
        c = config
        self.embedding = nn.Embedding(vocab_size, c.embedding_dim, padding_idx=PAD)
        self.encoder = TurnEncoder(c.embedding_dim, c.hidden_size, c.num_layers, c.dropout)
        self.bridge = nn.Linear(c.hidden_size, c.hidden_size)
        self.decoder = nn.GRU(c.embedding_dim + c.hidden_size, c.hidden_size, c.num_layers, batch_first=True,
                              dropout=c.dropout if c.num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(c.dropout)
        self.out = nn.Linear(c.hidden_size, vocab_size)

    def init_decoding(self, batch) -> dict:
        enc = self.encoder(batch.context_turns, self.embedding)
        context = enc["final"][-1]                                     # [B, H]
        hidden = torch.tanh(self.bridge(enc["final"]))                 # [layers, B, H]
        return {"context": context, "hidden": hidden}

    def _step_inputs(self, tokens: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        emb = self.dropout(self.embedding(tokens))
        return torch.cat([emb, context.unsqueeze(1).expand(-1, emb.size(1), -1)], -1)

    group_forward = True

    def forward(self, batch, shared_contexts=None, at=None) -> torch.Tensor:
        state = self.encode_shared(batch, shared_contexts)
        out, _ = self.decoder(self._step_inputs(batch.response_in, state["context"]), state["hidden"])
        return self.out(self.dropout(at_positions(out, at)))

    def decode_step(self, state: dict, prev_tokens: torch.Tensor):
        out, hidden = self.decoder(self._step_inputs(prev_tokens.unsqueeze(1), state["context"]), state["hidden"])
        return self.out(out.squeeze(1)), {**state, "hidden": hidden}
