"""MLERecipe: maximum likelihood on (context, response) pairs, the reference's training (`pretrain`)."""
from __future__ import annotations

import itertools

import torch

from cldg.data.batching import EncodedPairs
from cldg.text.tokenizer import PAD
from cldg.training import distributed
from cldg.training.evaluation import mean_nll, perplexity
from cldg.training.losses import nll_loss


class MLERecipe:
    """Token NLL of the response under teacher forcing; validation: the mean token NLL of the valid pairs."""

    def __init__(self, train: EncodedPairs, valid: EncodedPairs, batch_size: int, seed: int, device: torch.device,
                 dist: distributed.DistInfo | None = None):
        self.train, self.valid, self.batch_size, self.seed, self.device = train, valid, batch_size, seed, device
        self.dist = dist or distributed.current()
        self.batches_per_epoch = -(-len(train) // batch_size) // self.dist.world_size

    def batches(self, epoch: int, start: int):
        epoch_batches = self.train.iter_batches(self.batch_size, self.seed, epoch, rank=self.dist.rank,
                                                world_size=self.dist.world_size)
        return itertools.islice(epoch_batches, start, None)  # a resumed run skips the batches it trained on

    def loss(self, model, batch, step: int):
        loss, n_tokens = nll_loss(model(batch), batch.response_out, PAD)
        return loss, {"tokens": n_tokens, "nll": loss.item(),
                      "real_token_share": n_tokens / max(batch.response_out.numel(), 1)}

    def validate(self, model) -> dict[str, float]:
        nll = mean_nll(model, self.valid, self.batch_size, self.device)
        return {"criterion": nll, "nll": nll, "ppl": perplexity(nll)}
