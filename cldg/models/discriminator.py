"""The hierarchical discriminator of REGS (Li et al., 2017, section 3.1): human vs generated responses.

Each context turn and the response are encoded by one word-level bidirectional GRU (its last forward and first
backward states); a turn-level GRU reads the turns' vectors and then the response's, and its last state gives the
logit of "a human wrote this response to this context". EOS is dropped from the response, so that whether a
response ended (sampled ones may be cut at the length limit) is no cue. Not a dialogue model: it lives only inside
the adversarial approach's checkpoints, the artifact saves the generator.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from cldg.models.base import real_turns_first, turn_count, utterance_vectors
from cldg.text.tokenizer import EOS, PAD


@dataclass
class DiscriminatorConfig:
    embedding_dim: int = 128
    hidden_size: int = 128


class HierarchicalDiscriminator(nn.Module):
    def __init__(self, vocab_size: int, config: DiscriminatorConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(vocab_size, config.embedding_dim, padding_idx=PAD)
        self.utterance = nn.GRU(config.embedding_dim, config.hidden_size, batch_first=True, bidirectional=True)
        self.dialogue = nn.GRU(2 * config.hidden_size, config.hidden_size, batch_first=True)
        self.out = nn.Linear(config.hidden_size, 1)

    def encode_utterances(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [N, L] -> [N, 2H]; an empty utterance (a turn slot without a turn) gives zeros."""
        return utterance_vectors(tokens, self.embedding, self.utterance)

    def forward(self, context_turns: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
        """context_turns [B, U, Lt] (a DialogueBatch's, left-padded turn slots), response [B, T] token ids -> logit
        [B]. The turn-level GRU reads each row's own turns and then its response (packed), never an empty slot, so
        a context's score does not depend on how many turns the other rows of its batch have."""
        B, U, Lt = context_turns.shape
        turns = self.encode_utterances(context_turns.reshape(B * U, Lt)).view(B, U, -1)
        reply = self.encode_utterances(response.masked_fill(response.eq(EOS), PAD))
        n_turns = turn_count(context_turns)                                       # real turns per row
        steps = torch.cat([real_turns_first(turns, n_turns), torch.zeros_like(turns[:, :1])], 1)
        steps = steps.scatter(1, n_turns.view(B, 1, 1).expand(B, 1, steps.size(-1)), reply.unsqueeze(1))
        packed = pack_padded_sequence(steps, (n_turns + 1).cpu(), batch_first=True, enforce_sorted=False)
        _, h = self.dialogue(packed)
        return self.out(h[-1]).squeeze(-1)
