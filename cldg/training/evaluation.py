"""Teacher-forced likelihood of pairs: the validation criterion of pretraining and the reference
perplexity that `evaluate` reports."""
from __future__ import annotations

import math

import torch

from cldg.text.tokenizer import PAD
from cldg.training.losses import nll_loss


def perplexity(nll: float) -> float:
    """exp(token NLL) in float32, capped at exp(50) (an untrained model's NLL overflows nothing)."""
    return float(torch.exp(torch.tensor(min(nll, 50.0))))


@torch.inference_mode()
def mean_nll(model, pairs, batch_size: int, device) -> float:
    """Token-level NLL of `pairs` (an EncodedPairs) under `model`."""
    total, tokens = 0.0, 0
    for batch in pairs.iter_batches(batch_size, 0, 0, shuffle=False):
        batch = batch.to(device)
        loss, n = nll_loss(model(batch), batch.response_out, PAD)
        total += float(loss) * n
        tokens += n
    return total / max(tokens, 1)


def reference_perplexity(model, tokenizer, contexts, references, limits, device, batch_size: int = 64) -> float:
    """exp(token NLL) of the human responses given their contexts."""
    from cldg.data.batching import EncodedPairs

    model.eval()
    nll = mean_nll(model, EncodedPairs(tokenizer, contexts, references, limits), batch_size, device)
    return math.exp(min(nll, 50.0))
