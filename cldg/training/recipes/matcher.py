"""MatcherRecipe: MSN trained with BCE against random negatives (`train-matcher`)."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from cldg.matching.evaluation import evaluate_scores
from cldg.matching.msn import score_pairs_reference
from cldg.matching.training import Pair, epoch_batches
from cldg.training.losses import matching_bce_loss


class MatcherRecipe:
    """Each step: B true pairs and neg_ratio x B random negatives (`cldg.matching.training.epoch_batches`);
    validation: R10@1/2/5 and MRR on 1 true + 9 random valid responses, criterion 1 - MRR."""

    def __init__(self, train_pairs: Sequence[Pair], train_keys: Sequence[Any], valid_pairs: Sequence[Pair],
                 valid_sets: np.ndarray, batch_size: int, neg_ratio: int, seed: int, score_batch_size: int,
                 device: torch.device, on_step: Callable[[int], None] | None = None):
        self.train_pairs, self.train_keys, self.valid_sets = train_pairs, train_keys, valid_sets
        self.valid_ctx, self.valid_resp = [p[0] for p in valid_pairs], [p[1] for p in valid_pairs]
        self.batch_size, self.neg_ratio, self.seed = batch_size, neg_ratio, seed
        self.score_batch_size, self.device = score_batch_size, device
        self.on_step = on_step  # called with the number of the step about to run (tests simulate crashes)
        self.batches_per_epoch = -(-len(train_pairs) // batch_size)

    def batches(self, epoch: int, start: int):
        return epoch_batches(self.train_pairs, self.train_keys, self.batch_size, self.neg_ratio, self.seed, epoch,
                             start)

    def loss(self, model, batch, step: int):
        loss, accuracy = matching_bce_loss(model(batch.context, batch.response, batch.context_index), batch.labels)
        if self.on_step is not None:
            self.on_step(step + 1)
        return loss, {"accuracy": accuracy, "tokens": int(batch.response.ne(0).sum())}

    def validate(self, model) -> dict[str, float]:
        metrics = evaluate_scores(
            lambda c, r: score_pairs_reference(model, list(zip(c, r)), self.score_batch_size, self.device),
            self.valid_ctx, self.valid_resp, self.valid_sets)
        return {"criterion": 1.0 - metrics["MRR"], **metrics}
