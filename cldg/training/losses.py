"""Training criteria, kept apart from the models (fairseq style).

Every loss takes logits / log-probabilities and targets and returns a scalar (and what it logs);
no loss lives inside a model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, pad_id: int) -> torch.Tensor:
    """log p(target_t | ...) for every position, 0 at padding. logits [B, T, V], targets [B, T] -> [B, T]."""
    logp = F.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked.masked_fill(targets.eq(pad_id), 0.0)


def sequence_logprob(logits: torch.Tensor, targets: torch.Tensor, pad_id: int) -> torch.Tensor:
    """log p(r|c) = sum over the response's real tokens (EOS included) of log p(token). -> [B]."""
    return token_logprobs(logits, targets, pad_id).sum(-1)


def nll_loss(logits: torch.Tensor, targets: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, int]:
    """Token-level negative log-likelihood averaged over non-pad tokens; also returns the token count."""
    n_tokens = int(targets.ne(pad_id).sum())
    loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                           ignore_index=pad_id, reduction="sum")
    return loss / max(n_tokens, 1), n_tokens
