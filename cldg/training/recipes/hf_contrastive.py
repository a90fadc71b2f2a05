"""Group-wise contrastive learning for an `hf:` reference and target (cldg/models/hf.py), in the model's own tokens.

The groups, their batching and the losses are contrastive-train's (cldg.training.groups, losses.contrastive_loss);
only the scoring differs: a group batch carries its sequences as text (`TextPairs`), the model tokenizes them, and
log p(r|c) is summed over its own response tokens (EOS or end of turn included). The reference's log-probs come from
the refcache, which `reference_cache.sequence_logprobs` fills through the same `make_batch`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from cldg.training import distributed
from cldg.training.groups import combine_group_loss
from cldg.training.recipes.contrastive import ContrastiveRecipe


@dataclass
class TextPairs:
    """Sequences of a group batch as text; the hf: model tokenizes them when it scores them."""

    contexts: list[list[str]]
    responses: list[str]

    def to(self, device) -> TextPairs:
        return self


@dataclass
class HFTextIndex:
    """Contexts and responses by pair id, as text (contexts cut to the reference's turns); `limits` is what the
    refcache fingerprint records: the turns and the model's tokenization (tokenizer files, token limits)."""

    contexts: dict[int, list[str]]
    responses: dict[int, str]
    limits: dict

    def context(self, pid: int) -> tuple[str]:
        return (" ".join(self.contexts[pid]),)  # the reference pass sorts sequences by length: characters do

    def response(self, pid: int) -> str:
        return self.responses[pid]

    def batch(self, seqs: list[tuple[int, int]]) -> TextPairs:
        turns = self.limits["max_context_turns"]
        return TextPairs([list(self.contexts[c])[-turns:] for c, _ in seqs], [self.responses[r] for _, r in seqs])


def hf_group_loss(model, gb, variant: str = "eq4", mle_weight: float = 0.0, mle_only: bool = False,
                  beta: float = 1.0, anneal: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """contrastive_group_loss (cldg.training.groups) for an hf: model: D = log p_model - cached log p_reference of
    every sequence, the contrastive loss on beta * D, the NLL of the groups' own pairs (per token)."""
    hf = distributed.unwrap(model)
    out = hf.response_output(hf.make_batch(gb.seqs.contexts, gb.seqs.responses))
    token_logps = out.token_logprobs()
    d = token_logps.sum(-1) - gb.ref_logp
    own = gb.self_index
    n_own = int(out.mask[own].sum())
    nll = -token_logps[own].sum() / max(n_own, 1)
    if mle_only:
        return nll, {"tokens": n_own, "nll": nll.item()}
    return combine_group_loss(d, nll, gb, int(out.mask.sum()), variant, mle_weight, beta, anneal)


class HFContrastiveRecipe(ContrastiveRecipe):
    """ContrastiveRecipe with the groups scored by the hf: model in its own tokens."""

    group_loss = staticmethod(hf_group_loss)
