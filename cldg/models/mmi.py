"""MMI (Li et al., 2016a): MMI-bidi, a forward model p(r|c) and a backward model p(c|r) saved as one model, and
MMI-antiLM, a forward model and a language model of responses p(r) saved as one model (`mmi-antilm`).

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


class ForwardReranker(DialogueModel):
    """A model that decodes as its `forward_model` does (teacher forcing, steps, beam state) and reranks N-best
    lists with a second model (cldg.decoding.rerank.generate_reranked)."""

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


@register_model("mmi")
class MMIBidi(ForwardReranker):
    config_class = MMIConfig

    def __init__(self, vocab_size: int, config: MMIConfig):
        super().__init__(vocab_size, config)
        self.forward_model = build_model(config.forward["name"], vocab_size, **config.forward["config"])
        self.backward_model = build_model(config.backward["name"], vocab_size, **config.backward["config"])
        self.lam, self.gamma, self.nbest = config.lam, config.gamma, config.nbest

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


@dataclass
class MMIAntiLMConfig:
    forward: dict = field(default_factory=dict)   # {"name": registered model, "config": its config}
    lm: dict = field(default_factory=dict)        # the language model p(r): the same, trained on empty contexts
    lam: float = 0.5                              # weight of the penalty log U_gamma(r)
    threshold: int = 3                            # gamma: the first tokens the penalty covers (g(k) = 1, k <= gamma)
    nbest: int = 200
    max_response_len: int = 40
    score_batch_size: int = 512


@register_model("mmi-antilm")
class MMIAntiLM(ForwardReranker):
    config_class = MMIAntiLMConfig
    objective = "antilm"  # how cldg.decoding.rerank.generate_reranked combines the scores

    def __init__(self, vocab_size: int, config: MMIAntiLMConfig):
        super().__init__(vocab_size, config)
        self.forward_model = build_model(config.forward["name"], vocab_size, **config.forward["config"])
        self.lm_model = build_model(config.lm["name"], vocab_size, **config.lm["config"])
        self.lam, self.threshold, self.nbest = config.lam, config.threshold, config.nbest

    def lm_prefix_logprobs(self, responses: list[list[int]], thresholds: list[int]) -> torch.Tensor:
        """[N, len(thresholds)]: log U_gamma of every response for every gamma (the LM's log-probs of its first
        gamma tokens, EOS counted as a token)."""
        from cldg.decoding.rerank import lm_batch, prefix_logprobs
        from cldg.text.tokenizer import PAD
        from cldg.training.losses import token_logprobs

        c, device = self.config, next(self.parameters()).device
        out = []
        for start in range(0, len(responses), c.score_batch_size):
            batch = lm_batch(responses[start:start + c.score_batch_size], c.max_response_len, device)
            out.append(prefix_logprobs(token_logprobs(self.lm_model(batch).float(), batch.response_out, PAD),
                                       thresholds))
        return torch.cat(out)

    def forward_logprobs(self, batch, index: torch.Tensor, responses: list[list[int]]) -> torch.Tensor:
        """log p(r|c) of each response, row i's context being batch row index[i]."""
        from cldg.decoding.rerank import pair_logprobs, responses_batch

        c = self.config
        return torch.cat([pair_logprobs(self.forward_model, responses_batch(batch, index[s:s + c.score_batch_size],
                                                                            responses[s:s + c.score_batch_size],
                                                                            c.max_response_len))
                          for s in range(0, len(responses), c.score_batch_size)])

    def rerank_scores(self, batch, index: torch.Tensor, responses: list[list[int]]):
        """(log p(r|c), log U_gamma(r)) of each response, row i's context being batch row index[i]."""
        return (self.forward_logprobs(batch, index, responses),
                self.lm_prefix_logprobs(responses, [self.threshold])[:, 0])
