"""MMI-bidi (Li et al., 2016a): a forward model p(r|c) and a backward model p(c|r) saved as one model.

Teacher forcing and step-by-step decoding are the forward model's (so `evaluate`'s reference perplexity is
log p(r|c)); `cldg.decoding.search.generate` sees `rerank_scores` and decodes by reranking the forward model's
N-best list (cldg.decoding.rerank). The two models are any registered models (the reference's architecture);
their names and configs are in this model's config, so `model.json` rebuilds both.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from cldg.models import build_model, register_model
from cldg.models.base import DialogueModel


@dataclass
class MMIConfig:
    forward: dict = field(default_factory=dict)   # {"name": registered model, "config": its config}
    backward: dict = field(default_factory=dict)  # the same for the backward model p(c|r)
    lam: float = 0.5                              # weight of log p(c|r)
    gamma: float = 0.0                            # weight of the response length |r| (tokens)
    nbest: int = 200                              # the N-best list's size (Li et al.'s beam, B = 200)
    max_turn_len: int = 40                        # the limits the backward model was trained with
    max_response_len: int = 40
    score_batch_size: int = 512                   # candidates scored at once


@register_model("mmi")
class MMIBidi(DialogueModel):
    config_class = MMIConfig

    def __init__(self, vocab_size: int, config: MMIConfig):
        super().__init__(vocab_size, config)
        self.forward_model = build_model(config.forward["name"], vocab_size, **config.forward["config"])
        self.backward_model = build_model(config.backward["name"], vocab_size, **config.backward["config"])
        self.lam, self.gamma, self.nbest = config.lam, config.gamma, config.nbest

    @property
    def embedding(self):  # the forward model's (init_embeddings)
        return self.forward_model.embedding

    @property
    def beam_static_keys(self):
        return self.forward_model.beam_static_keys

    def forward(self, batch) -> torch.Tensor:
        return self.forward_model(batch)

    def init_decoding(self, batch) -> dict[str, Any]:
        return self.forward_model.init_decoding(batch)

    def decode_step(self, state, prev_tokens):
        return self.forward_model.decode_step(state, prev_tokens)

    def reorder_state(self, state, index):
        return self.forward_model.reorder_state(state, index)

    def rerank_scores(self, batch, index: torch.Tensor, responses: list[list[int]]):
        """(log p(r|c), log p(c|r)) of each response, row i's context being batch row index[i]."""
        from cldg.decoding.rerank import pair_logprobs, responses_batch, swapped_batch

        c = self.config
        fwd, bwd = [], []
        for start in range(0, len(responses), c.score_batch_size):
            part, idx = responses[start:start + c.score_batch_size], index[start:start + c.score_batch_size]
            fwd.append(pair_logprobs(self.forward_model, responses_batch(batch, idx, part, c.max_response_len)))
            bwd.append(pair_logprobs(self.backward_model,
                                     swapped_batch(batch, idx, part, c.max_turn_len, c.max_response_len)))
        return torch.cat(fwd), torch.cat(bwd)
