"""CVAE (Zhao et al., 2017, the CVAE of "Learning discourse-level diversity ... with conditional VAEs").

A bidirectional GRU encodes each context turn and the response, a GRU over the turn vectors gives the context c;
the recognition network q(z|x, c) is a linear map of [x; c], the prior network p(z|c) an MLP (tanh hidden layer)
of c, both to the mean and log-variance of a diagonal Gaussian z; the decoder GRU starts from a linear map of
[c; z]; the bag-of-words head is an MLP of [c; z] to the vocabulary. Defaults are the released code's sizes
(embedding 200, turn encoder 300 per direction, context 600, decoder 400, latent 200).

The model exposes its parts (`encode_context`, `encode_response`, `recognition`, `prior`, `decode_logits`,
`bow_logits`); the ELBO, the KL and the bag-of-words loss are computed by the recipe (cldg.training.recipes.cvae)
with cldg.training.losses. Teacher forcing (`forward`) uses the prior's mean (evaluate's reference perplexity);
decoding samples z from the prior once per context (`init_decoding`: from the context's own generator when the
decoder has row seeds, as evaluate's has, so a context's z does not depend on its batch; else the global torch
RNG) and then decodes with the chosen method.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cldg.models import register_model
from cldg.models.base import DialogueModel, real_turns_first, row_randn, turn_count, utterance_vectors
from cldg.text.tokenizer import PAD


@dataclass
class CVAEConfig:
    embedding_dim: int = 200
    utterance_size: int = 300   # per direction
    context_size: int = 600
    decoder_size: int = 400
    latent_size: int = 200
    prior_hidden: int = 400     # max(2 x latent, 100) in the released code
    bow_hidden: int = 400
    dropout: float = 0.0


@register_model("cvae")
class CVAE(DialogueModel):
    config_class = CVAEConfig

    def __init__(self, vocab_size: int, config: CVAEConfig):
        super().__init__(vocab_size, config)
        c = config
        self.embedding = nn.Embedding(vocab_size, c.embedding_dim, padding_idx=PAD)
        self.utterance = nn.GRU(c.embedding_dim, c.utterance_size, batch_first=True, bidirectional=True)
        self.context = nn.GRU(2 * c.utterance_size, c.context_size, batch_first=True)
        self.recognition_net = nn.Linear(2 * c.utterance_size + c.context_size, 2 * c.latent_size)
        self.prior_net = nn.Sequential(nn.Linear(c.context_size, c.prior_hidden), nn.Tanh(),
                                       nn.Linear(c.prior_hidden, 2 * c.latent_size))
        self.init_state = nn.Linear(c.context_size + c.latent_size, c.decoder_size)
        self.decoder = nn.GRU(c.embedding_dim, c.decoder_size, batch_first=True)
        self.output = nn.Linear(c.decoder_size, vocab_size)
        self.bow = nn.Sequential(nn.Linear(c.context_size + c.latent_size, c.bow_hidden), nn.Tanh(),
                                 nn.Linear(c.bow_hidden, vocab_size))
        self.drop = nn.Dropout(c.dropout)

    def encode_utterances(self, tokens: torch.Tensor) -> torch.Tensor:
        """[N, L] right-padded -> [N, 2 x utterance_size] (the final states of both directions; 0 for empty rows)."""
        return utterance_vectors(tokens, self.embedding, self.utterance, self.drop)

    def encode_context(self, batch) -> torch.Tensor:
        """c [B, context_size]: the context GRU's state after the last turn, run over the context's own turns only.

        Turn slots are left-padded to the batch's most turns; the padding slots (those before a row's first
        non-empty turn) are skipped (a packed sequence), so c does not depend on the other contexts of the batch."""
        B, U, L = batch.context_turns.shape
        turns = self.encode_utterances(batch.context_turns.reshape(B * U, L)).view(B, U, -1)
        n_turns = turn_count(batch.context_turns).clamp_min(1)                           # real turns per row
        packed = nn.utils.rnn.pack_padded_sequence(real_turns_first(turns, n_turns), n_turns.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        _, h = self.context(packed)
        return h[-1]

    def encode_response(self, batch) -> torch.Tensor:
        return self.encode_utterances(batch.response_out)

    def recognition(self, c: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-variance) of q(z | x, c)."""
        return self.recognition_net(torch.cat([x, c], -1)).chunk(2, -1)

    def prior(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-variance) of p(z | c)."""
        return self.prior_net(c).chunk(2, -1)

    def decode_logits(self, batch, c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h0 = self.init_state(torch.cat([c, z], -1)).unsqueeze(0)
        out, _ = self.decoder(self.drop(self.embedding(batch.response_in)), h0)
        return self.output(self.drop(out))

    def bow_logits(self, c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.bow(torch.cat([c, z], -1))

    def forward(self, batch) -> torch.Tensor:
        c = self.encode_context(batch)
        return self.decode_logits(batch, c, self.prior(c)[0])

    def init_decoding(self, batch, row_generators: list[torch.Generator] | None = None) -> dict[str, Any]:
        """z ~ p(z|c): row b's noise from row_generators[b] when given, else from the global torch RNG."""
        c = self.encode_context(batch)
        mu, logvar = self.prior(c)
        noise = torch.randn_like(mu) if row_generators is None else row_randn(row_generators, mu.shape[1:], mu)
        z = mu + noise * torch.exp(0.5 * logvar)
        return {"hidden": self.init_state(torch.cat([c, z], -1)).unsqueeze(0)}

    def decode_step(self, state, prev_tokens):
        out, h = self.decoder(self.embedding(prev_tokens).unsqueeze(1), state["hidden"])
        return self.output(out[:, 0]), {"hidden": h}
